"""scripts/gpu_check.sh's measurement, checked on CPU with the toy's architecture: random weights
built from a config alone, one TEMPO and one standard-TTT step reported."""

import json

from tempo_bench.benchmarks.gpu_step import main
from tempo_bench.core.assets import SHIPPED_DIR


def test_gpu_step_reports_both_methods_from_random_weights(tmp_path, capsys):
    out = tmp_path / "reports.json"
    assert main(["--model-config", str(SHIPPED_DIR), "--device", "cpu", "--dtype", "float32", "--prompts", "2",
                 "--n", "2", "--max-new-tokens", "12", "--steps", "1", "--lora-r", "4", "--threads", "1",
                 "--json", str(out)]) == 0
    tempo, standard = json.loads(out.read_text())
    assert (tempo["method"], standard["method"]) == ("tempo", "standard_ttt")
    assert "critic" in tempo["phases_s"] and "critic" not in standard["phases_s"]
    # TEMPO trains on 2 unlabeled + 2 labeled (toy-smoke) questions x n=2; standard TTT samples n_vote=8
    assert 0 < tempo["generated_tokens"] <= 4 * 2 * 12 and 0 < standard["generated_tokens"] <= 2 * 8 * 12
    assert tempo["tokens_per_s"] > 0 and "peak_gib" not in tempo  # GPU memory only on a GPU
