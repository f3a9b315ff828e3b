"""`tempo-bench probe`: the majority-vote score it compares the critic with, and the report."""

import json

import numpy as np

from tempo_bench.commands.cli import main
from tempo_bench.core.metrics import auroc_within
from tempo_bench.experiments.probe import cluster_frequency


def test_cluster_frequency_is_the_majority_vote_ranking():
    clusters = [[0, 0, 1, None], [2, 2, 2, 3]]
    assert np.allclose(cluster_frequency(clusters), [[0.5, 0.5, 0.25, 0.0], [0.75, 0.75, 0.75, 0.25]])
    # when the majority is right the score ranks perfectly; when it is wrong, perfectly backwards
    truth = np.array([[1, 1, 0, 0], [0, 0, 0, 1]])
    assert auroc_within(cluster_frequency(clusters), truth) == 0.5  # (1.0 + 0.0) / 2


def test_probe_reports_both_rankings(tmp_path, capsys):
    out = tmp_path / "probe.json"
    assert main(["probe", "--preset", "toy-smoke", "--estep-rounds", "1", "--k", "4", "--out", str(out),
                 "--set", "eval.size=8", "--set", f"out={tmp_path}"]) == 0
    text = capsys.readouterr().out
    assert "majority vote (cluster frequency)" in text and "critic after 1 E-steps" in text
    result = json.loads(out.read_text())
    assert result["questions"] == 8 and result["k"] == 4
    assert 0 <= result["majority_vote_auroc_within"] <= 1 and "auroc_within" in result["critic_recalibrated"]
