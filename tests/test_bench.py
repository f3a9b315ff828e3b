"""The benchmark command's pieces that are not timings: the majority-vote reward TRL trains on
in the step comparison, the goal table, and bad input. (Timings are never asserted.)"""

from tempo_bench.benchmarks.run import summary
from tempo_bench.benchmarks.trl_step import majority_vote_reward

from tempo_bench.commands.cli import main


def test_trl_majority_vote_reward_on_a_constructed_batch():
    reward = majority_vote_reward(generations=4)
    completions = ["#### 12", "#### 12", "#### 13", "no answer",   # prompt 1: majority 12
                   "#### 7", "#### 8", "#### 8", "#### 007"]       # prompt 2: 7 and 007 tie 8 -> first seen (7)
    assert reward(["p1"] * 4 + ["p2"] * 4, completions) == [1.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 1.0]


def test_summary_marks_each_goal():
    text = summary({"step_speedup_vs_trl": 1.9, "rollout_overhead_vs_generate": 0.7, "sweep_time_ratio": 0.44,
                    "peak_rss_mb": 757.0})
    lines = {line.split()[0]: line for line in text.splitlines()[2:]}
    assert lines["step_speedup_vs_trl"].endswith("NO")
    assert lines["rollout_overhead_vs_generate"].endswith("yes") and lines["peak_rss_mb"].endswith("yes")


def test_bench_rejects_unknown_sections(capsys):
    assert main(["bench", "--only", "trl,warp"]) == 2
    assert "unknown bench sections ['warp']" in capsys.readouterr().err
