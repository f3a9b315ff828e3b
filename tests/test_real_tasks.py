"""Real benchmark files (../shared/data): every task loads, and every gold answer, written in
several equivalent forms, grades correct, while wrong answers grade incorrect."""

import re
from pathlib import Path

import pytest

from tempo_bench.grading.answers import canonical_number
from tempo_bench.tasks import get_task
from tempo_bench.tasks.real import read_rows

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FILES = {
    "aime24": "ttrl/AIME-TTT.json",
    "amc": "ttrl/AMC-TTT.json",
    "math500": "ttrl/MATH-TTT.json",
    "gpqa": "ttrl/GPQA-TTT.json",
    "gsm8k": "gsm8k/test.jsonl",
    "gsm8k_train": "gsm8k/train.jsonl",
}
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark files not found at {DATA}")


def equivalent_forms(gold: str) -> list[str]:
    """Ways a model could write the gold answer that a grader must accept."""
    forms = [gold, f"\\dfrac{{{gold[6:]}" if gold.startswith("\\frac{") else gold]
    number = canonical_number(gold)
    if number is not None:
        forms += [number, f"{number}.0" if "." not in number else number + "0"]
        if len(number) <= 3 and "." not in number and not number.startswith("-"):
            forms.append(number.zfill(3))  # AIME style
        if len(number) > 3 and "." not in number and not number.startswith("-"):
            forms.append(f"{int(number):,}")
    frac = re.fullmatch(r"\\frac\{(-?\d+)\}\{(\d+)\}", gold)
    if frac:
        forms.append(f"{frac[1]}/{frac[2]}")
    return forms


def wrong_answer(gold: str) -> str:
    number = canonical_number(gold)
    return str(int(float(number)) + 1) if number is not None else f"{gold}+1"


def responses(form: str) -> list[str]:
    return [f"We compute carefully.\nSo the final answer is $\\boxed{{{form}}}$.",
            f"Reasoning...\nThe answer is ${form}$."]


@needs_data
@pytest.mark.parametrize("name", ["aime24", "amc", "math500", "gsm8k"])
def test_math_tasks_grade_gold_in_equivalent_forms(name):
    task = get_task(name)
    questions = task.load(DATA / FILES[name])
    assert len(questions) == len(read_rows(DATA / FILES[name]))
    failures = []
    for q in questions:
        for form in equivalent_forms(q.answer):
            for text in responses(form):
                if not task.is_correct(text, q.answer):
                    failures.append((q.id, q.answer, text))
        if task.is_correct(responses(wrong_answer(q.answer))[0], q.answer):
            failures.append((q.id, q.answer, "wrong answer accepted"))
    assert not failures, f"{len(failures)} grading failures, e.g. {failures[:5]}"


@needs_data
def test_gsm8k_train_is_a_labeled_pool_with_hash_answers():
    questions = get_task("gsm8k_train").load(DATA / FILES["gsm8k_train"], limit=200)
    assert len(questions) == 200 and all("####" not in q.answer for q in questions)
    assert all(canonical_number(q.answer) is not None for q in questions)
    assert "\\boxed{}" in questions[0].prompt


@needs_data
def test_gpqa_letters():
    task = get_task("gpqa")
    questions = task.load(DATA / FILES["gpqa"])
    assert len(questions) == 198 and {q.answer for q in questions} <= set("ABCD")
    for q in questions:
        other = "A" if q.answer != "A" else "B"
        assert task.is_correct(f"... so \\boxed{{{q.answer}}}", q.answer)
        assert task.is_correct(f"The answer is ({q.answer.lower()}).", q.answer)
        assert task.is_correct(f"Answer: {q.answer}", q.answer)
        assert not task.is_correct(f"\\boxed{{{other}}}", q.answer)
        assert not task.is_correct("I am not sure.", q.answer)


def test_verl_parquet_and_bad_files(tmp_path):
    import pandas as pd

    path = tmp_path / "dapo.parquet"
    pd.DataFrame([{"prompt": [{"role": "user", "content": "What is 1+1?"}], "reward_model": {"ground_truth": "2"}},
                  {"prompt": [{"role": "user", "content": "3*3?"}], "reward_model": {"ground_truth": "9"}}]).to_parquet(path)
    task = get_task("dapo17k")
    questions = task.load(path)
    assert [q.answer for q in questions] == ["2", "9"] and questions[0].prompt.startswith("What is 1+1?")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "1"}\n{"question": "q2"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: no parseable gold answer"):
        get_task("gsm8k").load(bad)
    with pytest.raises(ValueError, match="does not exist"):
        task.load(tmp_path / "missing.json")
    with pytest.raises(ValueError, match=r"unknown task 'aime' \(did you mean"):
        get_task("aime")
