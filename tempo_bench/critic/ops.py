"""The critic procedures every critic method shares, bound to one run's policy and data:

- ``estep``: TEMPO's E-step and the starting critic's warm-up: fresh rollouts of the CURRENT
  policy on labeled questions, graded with their true answers, fitted with the clipped value loss;
- ``fit_batch``: fit the critic on the current batch with targets the method makes itself (the
  online critic's pseudo-labels);
- ``probe``: the critic's calibration and within-question AUROC on a held-out labeled probe of
  current-policy rollouts (diagnostics, and the drift trigger of adaptive recalibration).

A step's probe is a :class:`StepProbe` that travels in the step's batch (``RolloutBatch.probe``):
its samples are drawn at most once per step, by the E-step in its own generate call or by the
first use, and its scores are cleared whenever the critic learns. Nothing here keeps state from
one step to the next.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from tempo_bench.core.effects import computed_by
from tempo_bench.core import metrics as M
from tempo_bench.core.seeds import SEEDING, Stream, step_seed
from tempo_bench.critic.model import Critic, saved_value_model, values_to_prob
from tempo_bench.critic.shared_base import is_shared_base_folder
from tempo_bench.grading.answers import GENERIC, Grader
from tempo_bench.policy.batch import TrainBatch, generation_batch
from tempo_bench.policy.model import resolve_model_path
from tempo_bench.rollout.base import Generation, RolloutBackend, SamplingParams
from tempo_bench.tasks.base import LabeledQuestion


def critic_quality(final_values: np.ndarray, correct: np.ndarray) -> dict[str, float]:
    """Calibration and ranking of critic values [G, N] against truth [G, N]."""
    prob = values_to_prob(torch.as_tensor(final_values)).numpy()
    return {
        "ece": M.ece(prob, correct),
        "brier": M.brier(prob, correct),
        "auroc": M.auroc(prob, correct),
        "auroc_within": M.auroc_within(prob, correct),
        # of the +1/-1 outcomes by the values (TEMPO's code logs it as vf_explained_var)
        "explained_variance": M.explained_variance(final_values, np.asarray(correct, dtype=float) * 2 - 1),
        "mean_value": float(np.mean(final_values)),
        "accuracy": float(np.mean(correct)),
    }


def rollout_labeled(
    backend: RolloutBackend, questions: list[LabeledQuestion], n: int, sampling: SamplingParams,
    grader: Grader = GENERIC, ranks=None,
) -> tuple[Generation, np.ndarray]:
    """n rollouts of the current policy per labeled question, and their true correctness [G, n].
    On several ranks (``ranks``) every rank draws them (an engine may span ranks) and keeps rank
    0's: the critic's data, and the decisions taken on it (an E-step due, a budget spent), are then
    the same on every rank, whose passes of a sharded critic are collectives."""
    generation = backend.generate([q.prompt for q in questions], SamplingParams(
        n=n, temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens))
    answers, _ = grader.grade_generation(generation)
    drawn = generation, grader.correctness([q.answer for q in questions], answers)
    return ranks.broadcast(drawn) if ranks is not None else drawn


@dataclass
class StepProbe:
    """The held-out labeled probe at one step: the current policy's samples of the probe questions
    with their true correctness [G, n] (None until drawn) and the current critic's critic/probe/*
    scores of them (None until scored, and again after the critic learns)."""

    rollouts: tuple[Generation, np.ndarray] | None = None
    scores: dict[str, float] | None = None


@dataclass
class CriticOps:
    critic: Critic
    backend: RolloutBackend
    pad_id: int
    pool: list[LabeledQuestion]  # D_L for E-steps (and labeled M-step rows)
    probe_questions: list[LabeledQuestion]  # held out from the pool
    cfg: object  # tempo_bench.config.CriticConfig
    sampling: SamplingParams
    seed: int
    log_text: object = None  # callable(text, artifact_file) for reliability-diagram data
    grader: Grader = GENERIC
    # the run's compute counter, shared: E-step rollouts and critic passes add to it
    tokens: dict[str, int] = field(default_factory=lambda: {"tokens/critic": 0, "tokens/estep_rollout": 0})
    estep_count: int = 0
    ranks: object = None  # a run's ranks (tempo_bench.run.distributed.Ranks): rank 0's labeled rollouts on every rank

    def _rollout_labeled(self, questions: list[LabeledQuestion], n: int) -> tuple[Generation, np.ndarray]:
        return rollout_labeled(self.backend, questions, n, self.sampling, self.grader, self.ranks)

    def estep(self, step: int, probe: StepProbe | None = None) -> dict[str, float]:
        """Recalibrate on fresh current-policy rollouts of ``cfg.estep_questions`` labeled
        questions drawn from the pool (seeded by step). The step's ``probe`` samples the same
        policy: where it is due and not drawn yet, its samples come from the E-step's own generate
        call (the per-token cost of a sampling loop is paid once)."""
        rng = random.Random(step_seed(self.seed, step, Stream.ESTEP_QUESTIONS))
        questions = rng.sample(self.pool, min(self.cfg.estep_questions, len(self.pool)))
        with_probe = (probe is not None and probe.rollouts is None and step % self.cfg.probe_every == 0
                      and self.cfg.probe_samples == self.cfg.estep_samples and bool(self.probe_questions))
        extra = self.probe_questions if with_probe else []
        with torch.random.fork_rng():
            torch.manual_seed(step_seed(self.seed, step, Stream.ESTEP_ROLLOUT))
            generation, correct = self._rollout_labeled(questions + extra, self.cfg.estep_samples)
        if with_probe:
            probe_ids = range(len(questions), len(questions) + len(extra))
            probe.rollouts = (generation.prompts(probe_ids), correct[len(questions):])
            generation, correct = generation.prompts(range(len(questions))), correct[: len(questions)]
        self.tokens["tokens/estep_rollout"] += generation.num_tokens
        batch = generation_batch(generation, self.pad_id)
        targets = torch.as_tensor(correct.reshape(-1), dtype=torch.float) * 2 - 1
        before_states, before = self.critic.score(batch)  # also the fit's pre-update values: one pass fewer
        stats = self._fit(batch, targets, torch.ones(len(targets)), self.cfg.estep_epochs, step, before_states)
        _, after = self.critic.score(batch)
        self.estep_count += 1
        if self.log_text is not None:
            self.log_text(json.dumps(_reliability(before, after, correct)), f"critic/reliability_step_{step:05d}.json")
        if probe is not None:
            probe.scores = None  # the critic learned
        return {**stats, "critic/estep": 1.0, "critic/estep_accuracy": float(correct.mean())}

    def fit_batch(self, batch: TrainBatch, targets: torch.Tensor, row_mask: torch.Tensor, step: int,
                  probe: StepProbe | None = None) -> dict[str, float]:
        """Fit on rows of the current batch with the method's own targets [B] (+1/-1)."""
        stats = self._fit(batch, targets, row_mask, self.cfg.online_epochs, step)
        if probe is not None:
            probe.scores = None  # the critic learned
        return stats

    def _fit(self, batch, targets, row_mask, epochs: int, step: int, old_values=None) -> dict[str, float]:
        generator = torch.Generator().manual_seed(step_seed(self.seed, step, Stream.CRITIC_FIT))
        stats = self.critic.fit(batch, targets, row_mask, epochs, self.cfg.cliprange_value,
                                self.cfg.minibatch_rows, generator, old_values)
        self.tokens["tokens/critic"] += stats.pop("tokens/critic_step")
        return stats

    def probe(self, step: int, probe: StepProbe) -> dict[str, float]:
        """critic/probe/* of the current critic on the step's probe samples: drawn now if no
        E-step drew them (seeded by step), scored now if the critic learned since."""
        if probe.rollouts is None:
            with torch.random.fork_rng():
                torch.manual_seed(step_seed(self.seed, step, Stream.PROBE_ROLLOUT))
                probe.rollouts = self._rollout_labeled(self.probe_questions, self.cfg.probe_samples)
        if probe.scores is None:
            generation, correct = probe.rollouts
            _, final = self.critic.score(generation_batch(generation, self.pad_id))
            values = critic_quality(final.reshape(correct.shape).numpy(), correct)
            probe.scores = {f"critic/probe/{k}": v for k, v in values.items()}
        return probe.scores


def _reliability(before: torch.Tensor, after: torch.Tensor, correct: np.ndarray) -> dict:
    """Reliability-diagram data of an E-step's rollouts, before and after the update."""
    flat = correct.reshape(-1)
    return {
        "before": M.calibration_bins(values_to_prob(before).numpy(), flat),
        "after": M.calibration_bins(values_to_prob(after).numpy(), flat),
    }


def starting_critic_key(config, pool: list[LabeledQuestion] = ()) -> str:
    """What the starting critic depends on: model, critic settings, data (the labeled questions
    it warms up on, not only the config naming them) and sampling."""
    import hashlib
    from pathlib import Path

    backbone = Path(resolve_model_path(config.critic.path or config.model.path)) / "manifest.json"
    spec = {
        "format": 3,  # bump when the critic's architecture or warm-up procedure changes
        "seeding": SEEDING,  # the warm-up's rollouts and minibatch order
        # a rebuilt toy backbone (same path, new weights) is another starting critic
        "backbone": json.loads(backbone.read_text()).get("weights_hash") if backbone.is_file() else None,
        # the settings it is computed from (a LoRA critic's rank, targets and arithmetic shape it; a
        # full-weight one's not), as tempo_bench/core/effects.py says which those are
        "settings": computed_by(config, "model", "critic", "task", "rollout.temperature", "rollout.top_p",
                                "rollout.max_new_tokens", *(["lora"] if config.critic.lora else [])),
        **({"shared_base": True} if config.critic_shares_base() else {}),  # saved in another format
        **({"lora_init": "seeded"} if config.critic.lora else {}),  # from critic.seed since 2026-12-03
        "warmup_questions": [[q.id, q.prompt, q.answer] for q in pool[: config.critic.warmup_questions]],
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def starting_critic(config, policy, backend: RolloutBackend, pad_id: int, pool: list[LabeledQuestion],
                    sampling: SamplingParams, cache_dir, grader: Grader = GENERIC,
                    cache: dict[str, Critic] | None = None, ranks=None) -> Critic:
    """The critic every critic method starts from: a trained critic (``critic.init``: the RLVR
    stage's, as in the paper), or else a fresh value head on the backbone, warmed up on labeled
    rollouts of the initial policy. Built once per key (starting_critic_key) and cached in memory
    (``cache``, shared by the runs of one process) and under ``cache_dir``; each run gets its own
    copy. A critic sharing the policy's base (critic.share_base) is built on ``policy`` and, for
    later runs, loaded from its saved folder onto theirs. With ``ranks`` of a sharded run it is
    sharded before any pass (sharded_critic) and warmed up sharded."""
    from pathlib import Path

    cfg = config.critic
    key = starting_critic_key(config, pool)
    path = Path(cache_dir) / key
    cache = {} if cache is None else cache
    init = Path(resolve_model_path(cfg.init, part="critic")) if cfg.init is not None else None
    if init is not None and not (init / "config.json").is_file():
        raise FileNotFoundError(f"critic.init: no saved critic in {init} (config.json missing)")
    saved = init or (path if (path / "config.json").is_file() else None)

    def warmed_and_saved(critic: Critic) -> Critic:
        if cfg.warmup_epochs:
            warm_up(critic, cfg, backend, pad_id, pool, sampling, grader, ranks)
        save_once(critic, path, main=ranks is None or ranks.main)
        return critic

    if ranks is not None and ranks.sharded:  # one run per process: no cache, no copy
        saved = ranks.broadcast(saved)  # rank 0's view of the folder: every rank takes the same (collective) path
        critic = sharded_critic(config, ranks, saved)
        return critic if saved is not None else warmed_and_saved(critic)
    if config.critic_shares_base():
        if is_shared_base_folder(path):
            return Critic.load(path, cfg, config.model, policy=policy, lora_cfg=config.lora)
        return warmed_and_saved(Critic.sharing_base(policy, cfg, config.lora))
    if key not in cache:
        if saved is not None:  # on the run's device and in its dtype, like a fresh one
            cache[key] = Critic.load(saved, cfg, config.model, lora_cfg=config.lora)
        else:
            cache[key] = warmed_and_saved(Critic.from_pretrained(cfg.path or config.model.path, cfg, config.model,
                                                                 config.lora))
    return cache[key].clone()


def sharded_critic(config, ranks, saved=None) -> Critic:
    """A sharded run's critic (train.sharding=fsdp): the one saved in the folder ``saved`` (weights
    and AdamW state) or a fresh value head on critic.path, built in host memory and filled from rank
    0's copy (Critic.sharded: no GPU holds it whole). A saved LoRA critic's frame is a fresh adapter
    of the run's lora settings on its base."""
    cfg, host = config.critic, config.model.model_copy(update={"device": "cpu"})

    def build(empty: bool):
        if saved is not None:  # (its AdamW state is read by Critic.sharded)
            return saved_value_model(saved, host, config.lora, empty)
        return Critic.from_pretrained(cfg.path or config.model.path, cfg, host, config.lora, empty=empty).model

    return Critic.sharded(build, cfg, ranks, getattr(torch, config.model.dtype), config.train.offload, saved)


def save_once(critic: Critic, path, main: bool = True) -> None:
    """Save a starting critic under ``path`` whole or not at all: written to a folder of this
    process, then renamed; where another process (a rank, a compare worker) built the same critic
    first, its folder stays. A sharded critic is gathered on every rank and written by rank 0
    (``main``)."""
    import os
    import shutil
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    critic.save(tmp, main)
    if not main:
        return
    try:
        os.replace(tmp, path)
    except OSError:  # the other process's copy is in place (a non-empty folder is not replaced)
        shutil.rmtree(tmp, ignore_errors=True)


def warm_up(critic: Critic, cfg, backend: RolloutBackend, pad_id: int, pool: list[LabeledQuestion],
            sampling: SamplingParams, grader: Grader, ranks=None) -> None:
    """Fit a fresh critic to the outcomes of labeled rollouts of the initial policy."""
    with torch.random.fork_rng():
        torch.manual_seed(step_seed(cfg.seed, 0, Stream.CRITIC_WARMUP))
        generation, correct = rollout_labeled(backend, pool[: cfg.warmup_questions], cfg.warmup_samples, sampling,
                                              grader, ranks)
    targets = torch.as_tensor(correct.reshape(-1), dtype=torch.float) * 2 - 1
    critic.fit(generation_batch(generation, pad_id), targets, torch.ones(len(targets)), cfg.warmup_epochs,
               cfg.warmup_cliprange, cfg.minibatch_rows, torch.Generator().manual_seed(step_seed(cfg.seed, 0, Stream.CRITIC_WARMUP)))
