"""Full fine-tuning (train.mode=full) and the policy sharded over ranks with FSDP2
(train.sharding=fsdp; torchrun, gloo on CPU): a 2-rank sharded run logs what a 1-rank run of the
same global batch logs and ends with the same weights; its checkpoints resume on 2 ranks and on 1;
layouts that cannot work are config errors."""

import os
import shutil
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from tempo_bench.config import load_config
from tempo_bench.core.errors import ConfigError
from tempo_bench.run.checkpoint import latest_checkpoint, load_state
from tempo_bench.run.distributed import Ranks
from tempo_bench.run.memory_plan import OFFLOADED, model_shape, plan_memory

from test_distributed import ABS, ENV, REL, RESUMED_NOISE, histories, kill_one_rank_after_a_checkpoint, torchrun

FULL = ["run", "--preset", "toy-smoke", "--method", "tempo", "--quiet", "--set", "threads=1", "--set", "eval.size=4",
        "--set", "rollout.seeding=question", "--set", "train.checkpoint_every=1", "--set", "train.mode=full",
        "--set", "train.lr=1e-5", "--set", "train.minibatches=2"]
# measured (2 steps, this CPU): the sharded run's logged values differ from the 1-rank run's only
# by float summation order: policy/approx_kl 8e-5 relative (a difference of nearly equal
# log-probabilities), policy/loss 3e-6, grad_norm 4e-7; the final weights by 2e-8
NOISE = {"policy/approx_kl": (1e-3, 1e-9), "policy/loss": (1e-4, 1e-7), "policy/grad_norm": (1e-4, 1e-6)}
WEIGHTS_ATOL = 1e-6


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tempo_bench.commands.cli", *args]


def ran(command: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_same_logs(single, other, noise=NOISE):
    compared = [k for k in single if not k.startswith("time/")]
    assert set(other) == set(single)
    assert {"reward/mean", "policy/loss", "critic/value_loss", "eval/mean_at_k"} <= set(compared)
    for key in compared:
        assert [s for s, _ in other[key]] == [s for s, _ in single[key]], key  # every step logged once
        rel, abs_ = noise.get(key, (REL, ABS))
        for (step, a), (_, b) in zip(single[key], other[key]):
            assert b == pytest.approx(a, rel=rel, abs=abs_, nan_ok=True), (key, step)


def final_weights(out):
    (folder,) = (out / "tempo-bench").glob("tempo-s0-*/model")
    (tensors,) = folder.glob("*.safetensors")
    return load_file(str(tensors))


def test_full_fine_tuning_trains_every_weight_and_resumes_as_if_uninterrupted(tmp_path, created_store):
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    created_store(whole), created_store(halves)
    ran(cli(*FULL, "--set", "train.steps=3", "--out", str(whole)))
    ran(cli(*FULL, "--set", "train.steps=2", "--out", str(halves)))
    ran(cli(*FULL, "--set", "train.steps=3", "--out", str(halves), "--resume"))
    assert_same_logs(histories(whole)[1], histories(halves)[1], {**NOISE, **RESUMED_NOISE})
    trained, resumed = final_weights(whole), final_weights(halves)
    from tempo_bench.policy.model import resolve_model_path

    start = load_file(str(next(iter(__import__("pathlib").Path(resolve_model_path("toy")).glob("*.safetensors")))))
    moved = [name for name in start if name in trained and not (trained[name] == start[name]).all()]
    assert len(moved) == len(start), "full fine-tuning left weights untouched"  # every weight, not an adapter
    assert max(float((trained[k] - resumed[k]).abs().max()) for k in trained) < WEIGHTS_ATOL


@pytest.mark.slow
def test_two_sharded_ranks_killed_resume_on_two_and_on_one_as_one_rank_runs(tmp_path, created_store):
    """One 3-step 1-rank run; a 2-rank FSDP run of the same global batch, one rank SIGKILLed after a
    checkpoint; its folder resumed on 2 ranks, and a copy of it on 1 rank: both log what the 1-rank
    run logs, every step once, and end with its weights."""
    one, two, moved = tmp_path / "one", tmp_path / "two", tmp_path / "moved"
    created_store(one), created_store(two)
    sharded = [*FULL, "--set", "train.sharding=fsdp", "--set", "train.steps=3"]
    ran(cli(*FULL, "--set", "train.steps=3", "--out", str(one)))
    proc = subprocess.Popen(torchrun(*sharded, "--out", str(two)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        kill_one_rank_after_a_checkpoint(proc, two)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    (folder,) = (two / "tempo-bench").glob("tempo-s0-*")
    checkpoint = latest_checkpoint(folder)
    assert load_state(checkpoint)["step"] < 3 and (checkpoint / "policy" / ".metadata").is_file()
    shutil.copytree(two, moved)
    done = ran(torchrun(*sharded, "--out", str(two), "--resume"))
    assert "on 2 ranks" in done.stdout
    ran(cli(*FULL, "--set", "train.steps=3", "--set", "train.sharding=replicate", "--out", str(moved), "--resume"))
    single = histories(one)[1]
    for other in (two, moved):
        assert_same_logs(single, histories(other)[1], {**NOISE, **RESUMED_NOISE})
        reference, weights = final_weights(one), final_weights(other)
        assert max(float((reference[k] - weights[k]).abs().max()) for k in reference) < WEIGHTS_ATOL


def final_critic(out):
    (folder,) = (out / "tempo-bench").glob("tempo-s0-*/critic")
    (tensors,) = folder.glob("*.safetensors")
    return load_file(str(tensors)), __import__("torch").load(folder / "optimizer.pt")


def test_a_sharded_lora_critic_fits_what_one_rank_fits(tmp_path, created_store):
    """With the policy sharded, the critic is sharded too (here a LoRA critic on its own base, as in
    the 14B full preset): a 2-rank run logs the 1-rank run's critic metrics and saves the same
    critic (adapter, head and AdamW state), in the unsharded format."""
    one, two = tmp_path / "one", tmp_path / "two"
    created_store(one), created_store(two)
    lora_critic = [*FULL, "--set", "train.steps=2", "--set", "critic.lora=true", "--set", "train.checkpoint_every=0"]
    ran(cli(*lora_critic, "--out", str(one)))
    ran(torchrun(*lora_critic, "--set", "train.sharding=fsdp", "--out", str(two)))
    assert_same_logs(histories(one)[1], histories(two)[1])
    (weights, optimizer), (sharded_weights, sharded_optimizer) = final_critic(one), final_critic(two)
    assert any("lora_A" in name for name in weights) and set(sharded_weights) == set(weights)
    assert max(float((weights[k] - sharded_weights[k]).abs().max()) for k in weights) < WEIGHTS_ATOL
    moments = [(state["exp_avg"], sharded_optimizer["state"][i]["exp_avg"]) for i, state in optimizer["state"].items()]
    assert len(moments) == len(sharded_optimizer["state"]) and max(float((a - b).abs().max()) for a, b in moments) < 1e-9


@pytest.mark.parametrize("overrides, message", [
    (["train.sharding=fsdp"], "train.sharding=fsdp shards a fully fine-tuned policy: set train.mode=full"),
    (["train.mode=full", "train.offload=true"], "train.offload moves FSDP shards to host memory"),
    (["train.mode=full", "critic.share_base=true"], "critic.share_base: true needs a LoRA policy"),
    (["train.mode=full", "rollout.backend=vllm", "rollout.vllm.sync=lora"], "rollout.vllm.sync=lora serves a LoRA adapter"),
])
def test_layouts_that_cannot_work_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("toy-smoke", overrides)


def test_the_plan_shards_a_full_fine_tuning_run_over_its_ranks():
    from tempo_bench.run.memory_plan import model_shape

    config = load_config("qwen3-14b-aime24", ["train.mode=full", "train.sharding=fsdp", "critic.share_base=false",
                                              "rollout.backend=hf"])
    shape = model_shape(config.model.path)
    sharded = {p.name: p for p in plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=8).phases}["policy training"]
    one = {p.name: p for p in plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=1).phases}["policy training"]
    # by hand: float32 master weights (4 bytes), float32 gradients and AdamW moments (12), over 8 ranks;
    # the sampling copy and the gathered root and layers in bf16 (2), whole
    assert sharded.items["policy weights"] == pytest.approx(shape.params * 4 / 2**30 / 8)
    assert sharded.items["policy grads+AdamW"] == pytest.approx(shape.params * 12 / 2**30 / 8)
    assert sharded.items["sampling copy (gathered)"] == pytest.approx(shape.params * 2 / 2**30)
    root = 2 * shape.vocab * shape.hidden * 2
    assert sharded.items["FSDP gathered root + 2 layers"] == pytest.approx(
        (root + 2 * (shape.params * 2 - root) / shape.layers) / 2**30)
    # the weights reach the sampler one parameter at a time, the largest (embeddings) gathered in float32
    assert sharded.items["one gathered float32 parameter"] == pytest.approx(shape.vocab * shape.hidden * 4 / 2**30)
    assert one.items["policy weights"] == pytest.approx(shape.params * 4 / 2**30)  # one rank: all of it
    # the critic (its own bf16 base, LoRA) is sharded with the policy: 1/8 of it, its root and 2 layers whole
    assert sharded.items["critic weights"] == pytest.approx(shape.params * 2 / 2**30 / 8)
    assert sharded.items["critic gathered root + 2 layers"] == sharded.items["FSDP gathered root + 2 layers"]
    assert one.items["critic weights"] == pytest.approx(shape.params * 2 / 2**30)
    # hf rollouts keep a whole sampling copy on every rank (and a step's KV cache): no fit in 80 GB
    assert one.total - sharded.total > 150 and sharded.total > 80


def test_offload_needs_a_gpu_and_host_memory_for_the_shards():
    from tempo_bench.run.distributed import Ranks, check_same_config

    with pytest.raises(ConfigError, match="train.offload moves FSDP shards from the GPU.*on the CPU"):
        check_same_config(Ranks(), load_config("toy-smoke", ["train.mode=full", "train.sharding=fsdp",
                                                             "train.offload=true", "model.device=cpu"]))
    config = load_config("qwen3-14b-aime24", ["train.mode=full", "train.sharding=fsdp", "train.offload=true",
                                              "critic.share_base=false", "rollout.backend=hf"])
    roomy = plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=8, host_gb=2000.0)
    small = plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=8, host_gb=64.0)
    training = {p.name: p for p in roomy.phases}["policy training"]
    assert training.items["policy weights"] == training.items["policy grads+AdamW"] == 0.0  # in host memory
    # 8 ranks on this machine, each 1/8 of 14.8e9 x (4 + 12) bytes (220 GiB in all) and of the
    # critic's bf16 base, LoRA and AdamW: more than 64
    kept = {p.name: p for p in plan_memory(load_config("qwen3-14b-aime24", [
        "train.mode=full", "train.sharding=fsdp", "critic.share_base=false", "rollout.backend=hf"]),
        cuda_gpus=1, card_gb=80.0, ranks=8).phases}["policy training"].items
    assert 8 * (kept["policy weights"] + kept["policy grads+AdamW"]) == pytest.approx(220.1, abs=0.1)
    node = 8 * sum(kept[name] for name in OFFLOADED if name in kept)
    assert not any("train.offload keeps" in n for n in roomy.problems())
    assert any(f"train.offload keeps {node:.1f}" in n and "has 64.0 GiB" in n for n in small.problems())


def test_the_14b_full_fine_tuning_preset_fits_eight_80gb_gpus_by_the_plan():
    config = load_config("qwen3-14b-aime24-full")
    plan = plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=8, host_gb=1024.0)
    assert not plan.problems(), plan.lines()
    phases = {p.name: p for p in plan.phases}
    # vLLM's engine holds its copy of the weights inside its share: no gathered sampling copy besides
    assert all("sampling copy (gathered)" not in phase.items for phase in plan.phases)
    assert phases["rollout"].items["vLLM share"] == pytest.approx(0.7 * plan.card_gb)
    # the critic is sharded with the policy and, like it, offloaded: none of its shards on the GPU
    on_gpu = {p.name: p for p in plan_memory(load_config("qwen3-14b-aime24-full", ["train.offload=false"]),
                                             cuda_gpus=1, card_gb=80.0, ranks=8).phases}
    assert on_gpu["rollout"].items["critic weights"] == pytest.approx(model_shape("Qwen/Qwen3-14B").params * 2 / 2**30 / 8)
    assert "critic weights" not in {name for name, gib in phases["rollout"].items.items() if gib}
    assert max(phase.total for phase in plan.phases) <= plan.card_gb
    assert Ranks(0, 8).share(config.step_shape().questions) == range(0, 5)  # 30 + 10 questions, 5 per rank
    # the same run with hf rollouts: the sampling copy (27.5 GiB) comes back and it no longer fits
    hf = plan_memory(load_config("qwen3-14b-aime24-full", ["rollout.backend=hf"]), cuda_gpus=1, card_gb=80.0,
                     ranks=8, host_gb=1024.0)
    assert any("does not fit" in note for note in hf.problems())


def test_the_32b_full_fine_tuning_preset_fits_eight_80gb_gpus_with_engines_spanning_two_ranks():
    from tempo_bench.config import flatten
    from tempo_bench.run.distributed import check_same_config

    from test_distributed import FakeRanks

    config = load_config("qwen3-32b-aime24-full")
    plan = plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=8, host_gb=1024.0)
    assert not plan.problems(), plan.lines()
    shape = model_shape("Qwen/Qwen3-32B")
    rollout = {p.name: p for p in plan.phases}["rollout"]
    assert rollout.items["vLLM share"] > shape.params * 2 / 2**30 / 2  # its half of the weights, and a KV cache
    # offload moves the policy's and the critic's shards (what the GPU would hold without it) to host
    # memory, where each rank's sleeping half of the weights joins them: 8 ranks on the node
    kept = {p.name: p for p in plan_memory(load_config("qwen3-32b-aime24-full", ["train.offload=false"]), cuda_gpus=1,
                                           card_gb=80.0, ranks=8).phases}["rollout"].items
    shards = sum(kept[name] for name in OFFLOADED if name in kept)
    assert kept["critic weights"] == pytest.approx(shape.params * 2 / 2**30 / 8) and rollout.total == pytest.approx(
        kept["vLLM share"] + sum(gib for name, gib in kept.items() if name not in OFFLOADED and name != "vLLM share"))
    node = 8 * (shards + shape.params * 2 / 2**30 / 2)
    assert any(f"{node:.1f} GiB" in note for note in plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=8,
                                                                 host_gb=64.0).problems())
    # the 4 engines each sample their 2 ranks' shares of the 40 questions; 8 ranks launch it, 6 cannot
    assert [Ranks(r, 8).share(config.step_shape().questions, 2) for r in (0, 1, 7)] == [range(0, 10)] * 2 + [range(30, 40)]
    with pytest.raises(ConfigError, match="tensor_parallel_size=4 does not divide the 6 ranks"):
        other = load_config("qwen3-32b-aime24-full", ["rollout.vllm.tensor_parallel_size=4", "train.offload=false",
                                                      "model.device=auto", "train.prompts_per_step=32"])
        check_same_config(FakeRanks(flatten(other.model_dump()), world=6), other)


class PeerOf(Ranks):
    """Rank 0 of two sharded ranks whose peer answers every gather with ``peer(value)``."""

    def __init__(self, peer):
        super().__init__(0, 2, sharded=True)
        object.__setattr__(self, "peer", peer)

    def gather(self, value):
        return [value, self.peer(value)]


def test_a_rank_with_fewer_micro_batches_runs_zero_weight_ones_and_a_peer_nan_stops_both():
    import torch

    from tempo_bench.policy.batch import accumulated_step

    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    calls = []

    def loss_of(rows):
        calls.append(rows.tolist())
        return (weight * (rows.float().sum() + 1)).sum(), 1.0, {}

    def peer(micro_batches: int, broken: bool):  # its micro-batch count, its non-finite flag, no statistics
        return lambda value: broken if isinstance(value, bool) else {} if isinstance(value, dict) else micro_batches

    ranks = PeerOf(peer(3, False))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    accumulated_step(optimizer, [torch.tensor([4])], loss_of, 1.0, 1e9, "loss", ranks)
    assert calls == [[4], [0], [0]]  # its own pass, then two padding passes on row 0
    assert weight.grad.tolist() == [5.0, 5.0]  # the padding added nothing
    # the peer saw a non-finite loss: this rank stops too, after the same passes
    with pytest.raises(FloatingPointError, match="not finite on another rank"):
        accumulated_step(optimizer, [torch.tensor([4])], loss_of, 1.0, 1e9, "loss",
                         PeerOf(peer(1, True)))


def test_full_fine_tuning_on_several_ranks_must_be_sharded():
    from tempo_bench.config import flatten
    from tempo_bench.run.distributed import check_same_config

    from test_distributed import FakeRanks

    config = load_config("toy-smoke", ["rollout.seeding=question", "train.mode=full"])
    with pytest.raises(ConfigError, match="train.mode=full on several ranks needs train.sharding=fsdp"):
        check_same_config(FakeRanks(flatten(config.model_dump())), config)


SHARDED_AFTER_A_NO_GRAD_PASS = """
import copy, sys, torch, torch.distributed as dist
from tempo_bench.critic.model import value_backbone
from tempo_bench.policy.batch import accumulated_step
from tempo_bench.policy.model import resolve_model_path
from tempo_bench.policy.sharding import shard

dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
plain = value_backbone(resolve_model_path("toy"), None)
sharded = shard(copy.deepcopy(plain), torch.float32)
ids = torch.randint(3, 90, (2, 12), generator=torch.Generator().manual_seed(0))
norms = []
for model in (plain, sharded):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with torch.no_grad():  # an FSDP root keeps its parameters gathered after a forward pass
        model(input_ids=ids)
    loss_of = lambda rows: (model(input_ids=ids[rows]).logits.square().mean(), 1.0, {})
    norms.append(accumulated_step(optimizer, [torch.tensor([0]), torch.tensor([1])], loss_of, 2.0, 1e9, "loss")[1])
    assert all(p.grad is not None for group in optimizer.param_groups for p in group["params"])
print(*norms)
"""


def test_a_sharded_models_clip_norm_counts_every_parameter_after_a_no_grad_pass(tmp_path):
    """After a no-grad pass an FSDP root's module attributes are its gathered tensors, which never
    get a gradient: the step clips the optimiser's own (sharded) parameters, so the norm is the
    unsharded model's (it once left out the critic's embeddings and head: 0.15 against 0.83)."""
    done = ran([sys.executable, "-c", SHARDED_AFTER_A_NO_GRAD_PASS, str(tmp_path / "rendezvous")])
    plain, sharded = map(float, done.stdout.split())
    assert sharded == pytest.approx(plain, rel=1e-5)


FROM_RANK0 = """
import json, torch, torch.distributed as dist
from tempo_bench.config import load_config
from tempo_bench.policy.model import load_policy
from tempo_bench.policy.sharding import shard_from_rank0

dist.init_process_group("gloo")
model_cfg = load_config("toy-smoke").model.model_copy(update={"device": "cpu"})
built = []

def build(empty):
    built.append(empty)
    return load_policy(model_cfg, None, empty=empty)

sharded = shard_from_rank0(build, dist.get_rank() == 0, torch.float32)
whole = load_policy(model_cfg, None)  # the reference: read from the checkpoint here
weights = {name: param.full_tensor() for name, param in sharded.named_parameters()}
gap = max(float((weights[name] - param).abs().max()) for name, param in whole.named_parameters())
buffers = all(torch.equal(buffer, dict(whole.named_buffers())[name]) for name, buffer in sharded.named_buffers())
print(json.dumps({"rank": dist.get_rank(), "built": built, "gap": gap, "buffers": buffers}))
dist.destroy_process_group()
"""


def test_a_sharded_model_is_read_by_rank_0_alone_and_broadcast_into_every_ranks_shards(tmp_path):
    """Every rank builds the model without weights and shards it; rank 0 alone also reads the
    checkpoint, and its weights fill every rank's shards (a whole model in one host memory, none
    on a GPU); the rotary tables, computed by the constructor, survive."""
    import json

    script = tmp_path / "from_rank0.py"
    script.write_text(FROM_RANK0)
    done = ran([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script)])
    reports = sorted((json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")),
                     key=lambda report: report["rank"])
    assert [report["built"] for report in reports] == [[True, False], [True]]  # rank 1 reads no weights
    assert all(report["gap"] == 0.0 and report["buffers"] for report in reports)
