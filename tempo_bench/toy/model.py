"""The embedded tiny model: a character-level tokenizer and a small Llama, pretrained here.

`tempo-bench toy-model build` runs :func:`build`; it is deterministic from its seed (one CPU thread,
seeded data and initialisation) and writes a standard transformers checkpoint that
``AutoTokenizer`` / ``AutoModelForCausalLM`` load, plus ``manifest.json`` (seed, config, data hash,
weights hash, scores of the base policy on the toy test set).
"""

from __future__ import annotations

import hashlib
import json
import math
import string
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from tempo_bench.core.assets import CRITIC_BASE_DIR, RLVR_DIR, SHIPPED_DIR, VERIFIER_DIR  # noqa: F401 (re-exported)
from tempo_bench.tasks.addition import data_hash, pretraining_corpus

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
# Printable ASCII without the exotic whitespace: room for other toy formats without a new tokenizer.
CHARACTERS = [c for c in string.printable if c not in "\t\r\x0b\x0c"]


def build_tokenizer():
    """A one-token-per-character tokenizer. The ``Fuse`` decoder joins tokens without the spaces a
    word-level decoder would insert; the space character is an ordinary token."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
    )


@dataclass
class ToyModelSpec:
    """Everything the build depends on; stored in the manifest."""

    seed: int = 0
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 192
    corpus_size: int = 40_000
    corpus_digits: tuple[int, ...] = (1, 2, 3, 4)
    misconception_rate: float = 0.95
    corpus_chain_fraction: float = 0.3
    steps: int = 800
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    eval: dict = field(default_factory=lambda: {"k": 8, "max_new_tokens": 96})


def critic_backbone_spec() -> ToyModelSpec:
    """The critic's backbone: the same corpus and recipe at about 4x the parameters (hidden 128, 6
    layers). A self-critic of the policy's size could not rank its answers on the toy (docs/regimes.md,
    "The symmetric regime"); the capacity gap stands in for the paper's verify-easier-than-generate."""
    return ToyModelSpec(hidden_size=128, num_layers=6, intermediate_size=512, lr=0.002)


def corpus_of(spec: ToyModelSpec) -> list[str]:
    return pretraining_corpus(spec.corpus_size, spec.seed, spec.corpus_digits, spec.misconception_rate,
                              spec.corpus_chain_fraction)


def build_model(spec: ToyModelSpec, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config)


def encode_corpus(texts: list[str], tokenizer) -> list[tuple[list[int], int]]:
    """(token ids ending in EOS, prompt length) per text; the loss covers the response only."""
    out = []
    for text in texts:
        prompt_end = text.index("\n") + 1
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append((ids, prompt_end))
    return out


def _batch(examples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id)
    attention = torch.zeros((len(examples), width), dtype=torch.long)
    labels = torch.full((len(examples), width), -100)
    for row, (ids, prompt_len) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    return input_ids, attention, labels


def pretrain(model, encoded, spec: ToyModelSpec, progress=None) -> list[float]:
    """Next-token cross-entropy on responses, AdamW with warmup and cosine decay. Returns losses."""
    gen = torch.Generator().manual_seed(spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)

    def lr_at(step: int) -> float:
        if step < spec.warmup_steps:
            return spec.lr * (step + 1) / spec.warmup_steps
        frac = (step - spec.warmup_steps) / max(1, spec.steps - spec.warmup_steps)
        return spec.lr * 0.5 * (1 + math.cos(math.pi * frac))

    pad_id = model.config.pad_token_id
    model.train()
    losses = []
    for step in range(spec.steps):
        idx = torch.randint(len(encoded), (spec.batch_size,), generator=gen).tolist()
        input_ids, attention, labels = _batch([encoded[i] for i in idx], pad_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    return losses


def weights_hash(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def build(out_dir: Path, spec, score_fn=None, show_progress: bool = True, corpus=None, extra: dict | None = None) -> dict:
    """Pretrain the toy model deterministically and write checkpoint + manifest to ``out_dir``.

    ``spec``: a ToyModelSpec (or any spec with its architecture and recipe fields). ``corpus``:
    ``(texts, encoded)`` to train on instead of the policy's corpus (the verifier backbone's).
    ``score_fn(model_dir) -> dict`` scores the saved checkpoint (the manifest's ``scores``);
    ``extra`` is merged into the manifest."""
    from tqdm.auto import tqdm

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # bitwise determinism: the reduction order must not depend on cores
    torch.use_deterministic_algorithms(True)
    try:
        start = time.perf_counter()
        tokenizer = build_tokenizer()
        texts, encoded = corpus(tokenizer) if corpus is not None else (corpus_of(spec), None)
        encoded = encoded if encoded is not None else encode_corpus(texts, tokenizer)
        model = build_model(spec, tokenizer)
        with tqdm(total=spec.steps, desc=f"pretrain {out_dir.name}", disable=not show_progress) as bar:
            losses = pretrain(model, encoded, spec, bar)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    _portable_tokenizer_config(out_dir)
    manifest = {
        "spec": asdict(spec),
        "model_config": model.config.to_diff_dict(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "data_hash": data_hash(texts),
        "weights_hash": weights_hash(model),
        "final_loss": sum(losses[-50:]) / min(50, len(losses)),
        "torch_version": torch.__version__,
        "build_seconds": round(time.perf_counter() - start, 1),
        "rebuild": "tempo-bench toy-model build",
        **(extra or {}),
    }
    if score_fn is not None:
        manifest["scores"] = score_fn(out_dir)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _portable_tokenizer_config(out_dir: Path) -> None:
    """Name the class that every transformers release knows (v5 writes its new backend name)."""
    path = out_dir / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg.pop("backend", None)
    path.write_text(json.dumps(cfg, indent=2) + "\n")
