"""`tempo-bench eval`: our evaluation of a saved adapter, and lm-evaluation-harness on the same
questions through a task we generate, agree question by question."""

import re

import pytest
from batches import trained_toy_policy

from tempo_bench.commands.cli import main
from tempo_bench.config import LoraConfig, ModelConfig
from tempo_bench.policy.model import load_policy


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    """A toy adapter with non-zero LoRA weights (so that loading it, or not, shows)."""
    policy = trained_toy_policy(seed=1)
    path = tmp_path_factory.mktemp("adapter")
    policy.save_pretrained(path)
    return path


def accuracy(line_name: str, out: str) -> float:
    return float(re.search(rf"{line_name}:\s+greedy accuracy ([0-9.]+)", out)[1])


def test_eval_agrees_with_lm_eval_on_a_toy_adapter(adapter, capsys):
    pytest.importorskip("lm_eval", reason="lm-eval not installed (pip install 'tempo-bench[lmeval]')")
    assert main(["eval", "--adapter", str(adapter), "--task", "toy", "--limit", "24", "--k", "2",
                 "--max-new-tokens", "80", "--lm-eval"]) == 0
    out = capsys.readouterr().out
    ours, theirs = accuracy("ours", out), accuracy("lm-eval", out)
    assert ours == theirs
    assert "identical greedy responses on 24/24 questions" in out


def test_the_adapter_changes_the_responses(adapter):
    """So that the agreement above means lm-eval loaded the adapter, not just the same base."""
    from tempo_bench.experiments import adapter_eval as E
    from tempo_bench.policy.model import load_tokenizer

    eval_set = E.load_eval_set("toy", None, 24)
    tokenizer = load_tokenizer("toy")
    trained = E.load_adapter_policy(adapter, E.adapter_base(adapter), "float32", "cpu")
    _, with_adapter = E.our_eval(trained, tokenizer, eval_set, None, 1, 80, 0)
    _, without = E.our_eval(load_policy(ModelConfig(), LoraConfig()), tokenizer, eval_set, None, 1, 80, 0)
    assert with_adapter != without


def test_eval_refuses_a_folder_without_an_adapter(tmp_path, capsys):
    assert main(["eval", "--adapter", str(tmp_path), "--task", "toy"]) == 2
    assert "not a peft adapter folder" in capsys.readouterr().err


def test_eval_refuses_an_unknown_task(adapter, capsys):
    assert main(["eval", "--adapter", str(adapter), "--task", "aime2"]) == 2
    assert "unknown task 'aime2'" in capsys.readouterr().err
