"""`tempo-bench probe`: before any TTT run, can the critic rank a test question's answers better
than majority vote? (DESIGN section 5, lessons 1 and 5.) A critic-based method can only beat
standard TTT where it can, so this is measured first.

On k fresh samples of the starting policy per test question, it reports the policy's accuracy
(mean@k, maj@k, pass@k) and the within-question AUROC of two scores against the hidden truth:
majority vote (a sample's answer-cluster frequency, the ranking TTRL-style rewards induce) and
the starting critic's value; then the critic's again after ``estep_rounds`` E-steps on fresh
labeled rollouts of the same policy (recalibration without any policy change), and on the labeled
probe questions for reference. Test labels are used for these metrics only.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from tempo_bench.core import metrics as M
from tempo_bench.core.loggers import MemoryLogger
from tempo_bench.critic.ops import StepProbe, critic_quality
from tempo_bench.policy.batch import generation_batch
from tempo_bench.rollout import SamplingParams
from tempo_bench.run.run import build_run


def cluster_frequency(clusters: list[list[int | None]]) -> np.ndarray:
    """[G, k]: the share of a question's samples in each sample's answer cluster (0: no answer)."""
    out = np.zeros((len(clusters), len(clusters[0])))
    for i, ids in enumerate(clusters):
        counts = Counter(c for c in ids if c is not None)
        out[i] = [counts[c] / len(ids) if c is not None else 0.0 for c in ids]
    return out


def probe_asymmetry(config, k: int = 8, estep_rounds: int = 4, progress: bool = True) -> dict:
    """The measurements above, on the setup a TEMPO run of ``config`` would start from."""
    run = build_run(config.model_copy(update={"method": "tempo"}), MemoryLogger(), out_dir=Path(config.out) / "probe")
    try:
        return _measure(run, k, estep_rounds)
    finally:
        run.close()


def sample_test_questions(run, k: int):
    """k samples of the run's current policy per evaluation question, at the run's sampling
    settings: (batch, answer clusters, hidden-key truth [G, k]; metrics only)."""
    questions, sampling = run.eval_questions, run.sampling
    generation = run.backend.generate([q.prompt for q in questions], SamplingParams(
        n=k, temperature=sampling.temperature, top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens))
    answers, clusters = run.grader.grade_generation(generation)
    truth = run.grader.correctness([run.task.answer_key.answer(q.id) for q in questions], answers)
    return generation_batch(generation, run.pad_id), clusters, truth


def _measure(run, k: int, estep_rounds: int) -> dict:
    questions, ops = run.eval_questions, run.critic_ops
    batch, clusters, truth = sample_test_questions(run, k)

    def critic_on_test() -> dict:
        return critic_quality(ops.critic.score(batch)[1].reshape(len(questions), k).numpy(), truth)

    result = {
        "questions": len(questions), "k": k,
        "policy": {"mean_at_k": M.mean_at_k(truth), "maj_at_k": M.maj_at_k(clusters, truth),
                   "pass_at_k": M.pass_at_k(truth, k)},
        "majority_vote_auroc_within": M.auroc_within(cluster_frequency(clusters), truth),
        "critic_start": critic_on_test(),
        "critic_start_probe": {k2.split("/")[-1]: v for k2, v in ops.probe(0, StepProbe()).items()},
    }
    for round_ in range(1, estep_rounds + 1):  # each round a step of its own, probe samples drawn with it
        ops.estep(round_, StepProbe())
    result["critic_recalibrated"] = critic_on_test()
    probe = ops.probe(estep_rounds + 1, StepProbe())
    result["critic_recalibrated_probe"] = {k2.split("/")[-1]: v for k2, v in probe.items()}
    result["estep_rounds"] = estep_rounds
    return result


def report(result: dict) -> str:
    p = result["policy"]
    rows = [
        ("majority vote (cluster frequency)", result["majority_vote_auroc_within"], None, None),
        ("starting critic", result["critic_start"]["auroc_within"], result["critic_start"]["ece"],
         result["critic_start_probe"]["auroc_within"]),
        (f"critic after {result['estep_rounds']} E-steps", result["critic_recalibrated"]["auroc_within"],
         result["critic_recalibrated"]["ece"], result["critic_recalibrated_probe"]["auroc_within"]),
    ]
    lines = [f"policy on {result['questions']} test questions: mean@{result['k']} {p['mean_at_k']:.3f}, "
             f"maj@{result['k']} {p['maj_at_k']:.3f}, pass@{result['k']} {p['pass_at_k']:.3f}", "",
             f"{'score':36s} {'test AUROC-within':>18s} {'test ECE':>9s} {'probe AUROC-within':>19s}"]
    for name, auroc, ece, probe in rows:
        def fmt(v):
            return "-" if v is None or not np.isfinite(v) else f"{v:.3f}"
        lines.append(f"{name:36s} {fmt(auroc):>18s} {fmt(ece):>9s} {fmt(probe):>19s}")
    better = result["critic_recalibrated"]["auroc_within"] > result["majority_vote_auroc_within"]
    lines += ["", "the recalibrated critic ranks test answers " + ("BETTER" if better else "no better") +
              " than majority vote"]
    return "\n".join(lines)


def main(config, k: int, estep_rounds: int, out: str | None) -> int:
    result = probe_asymmetry(config, k, estep_rounds)
    print(report(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
