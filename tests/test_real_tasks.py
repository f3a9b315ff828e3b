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


DAPO_INSTRUCTION = ("Solve the following math problem step by step. The last line of your response should be of "
                    "the form Answer: $Answer (without quotes) where $Answer is the answer to the problem.\n\n{}\n\n"
                    "Remember to put your answer on its own line after \"Answer:\".")


def test_dapo_pool_is_deduplicated_and_asked_with_its_own_instruction(tmp_path):
    """The hub file's shape (verl parquet, a chat prompt carrying DAPO's instruction) with each
    prompt repeated, as upstream DAPO issue #36 reports: each question once, asked as published
    (no second, \\boxed{} instruction), and a response that follows DAPO's instruction grades right."""
    import pandas as pd

    problems = {"What is 6*7?": "42", "What is 2+2?": "4", "What is 10-3?": "7"}
    rows = [{"data_source": "math_dapo", "prompt": [{"role": "user", "content": DAPO_INSTRUCTION.format(q)}],
             "ability": "MATH", "reward_model": {"ground_truth": a, "style": "rule-lighteval/MATH_v2"}}
            for _ in range(5) for q, a in problems.items()]
    rows.append({**rows[0], "reward_model": {"ground_truth": "41", "style": "rule"}})  # a repeat that disagrees
    path = tmp_path / "dapo.parquet"
    pd.DataFrame(rows).to_parquet(path)
    task = get_task("dapo17k")
    with pytest.warns(UserWarning, match="13 repeated questions dropped, 3 distinct kept; 1 of the repeats had"):
        questions = task.load(path)
    assert [q.answer for q in questions] == list(problems.values())
    assert questions[0].prompt == DAPO_INSTRUCTION.format("What is 6*7?")  # one instruction: DAPO's own
    assert "boxed" not in questions[0].prompt
    assert task.is_correct("6*7 is 6 sevens.\nAnswer: 42", "42")
    assert task.is_correct("<think>6*7... maybe 41</think>\nAnswer: $42$", "42")
    assert not task.is_correct("<think>6*7 = 42, so\nAnswer: 42", "42")  # cut off while thinking


def test_gpqa_from_its_hub_columns_has_fixed_shuffled_letters():
    from tempo_bench.tasks.real import gpqa_choice_row

    rows = [{"Question": f"Which is right ({i})?", "Correct Answer": f"right {i}", "Incorrect Answer 1": f"wrong a{i}",
             "Incorrect Answer 2": f"wrong b{i}", "Incorrect Answer 3": f"wrong c{i}", "Record ID": f"rec{i}"}
            for i in range(40)]
    made = [gpqa_choice_row(row) for row in rows]
    assert made == [gpqa_choice_row(row) for row in rows]  # the same letters every time
    for row, choice in zip(rows, made):
        listed = dict(line.split(". ", 1) for line in choice["Question"].split("\n\n", 1)[1].splitlines())
        assert sorted(listed) == list("ABCD") and listed[choice["answer"]] == row["Correct Answer"]
        assert choice["Question"].startswith(row["Question"])
    assert len({c["answer"] for c in made}) == 4  # the correct option is not always first
    counts = {letter: sum(c["answer"] == letter for c in made) for letter in "ABCD"}
    assert min(counts.values()) >= 4, counts


def test_gpqa_hub_rows_load_as_a_task(tmp_path):
    """The loader takes GPQA's hub columns (a local copy of Idavidrein/gpqa here: the hub is not
    reachable) and grades a response's letter."""
    import json

    rows = [{"Question": "What is H2O?", "Correct Answer": "water", "Incorrect Answer 1": "salt",
             "Incorrect Answer 2": "sand", "Incorrect Answer 3": "air", "Record ID": "r1"}]
    path = tmp_path / "gpqa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    task = get_task("gpqa")
    (question,) = task.load(path)
    assert "What is H2O?" in question.prompt and "A. " in question.prompt and "letter of the correct option" in question.prompt
    assert task.is_correct(f"... \\boxed{{{question.answer}}}", question.answer)


def write_task_file(folder: Path, **fields) -> Path:
    """A task of one's own: toy-format addition questions in JSONL and a task file naming them."""
    import json

    import yaml

    questions = [("Q:347+285\n", "632"), ("Q:12+9\n", "21"), ("Q:999+1\n", "1000"), ("Q:40+2\n", "42"),
                 ("Q:123+456\n", "579"), ("Q:5+5\n", "10")]
    (folder / "sums.jsonl").write_text("".join(json.dumps({"q": q, "gold": a}) + "\n" for q, a in questions))
    spec = {"data": "sums.jsonl", "question_field": "q", "answer_field": "gold", "grader": "integer",
            "template": "{question}", **fields}
    path = folder / "sums.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in spec.items() if v is not None}))
    return path


def test_a_task_file_loads_asks_and_grades(tmp_path):
    task = get_task(str(write_task_file(tmp_path, template="Add: {question}\nAnswer within \\boxed{}.")))
    questions = task.load()
    assert len(questions) == 6 and questions[0].answer == "632"
    assert questions[0].prompt == "Add: Q:347+285\nAnswer within \\boxed{}."  # literal braces stay literal
    assert task.is_correct("... #### 632", "632") and task.is_correct("\\boxed{0632}", "632")
    assert not task.is_correct("\\boxed{632.5}", "632") and not task.is_correct("#### 631", "632")


@pytest.mark.parametrize("fields,message", [
    ({"grader": None}, "missing field 'grader'"),
    ({"question_field": None}, "missing field 'question_field'"),
    ({"template": "no placeholder"}, "field 'template' must contain {question}"),
    ({"grader": "fuzzy"}, "field 'grader' is 'fuzzy'; choose one of math, integer, choice"),
    ({"answerfield": "gold"}, "unknown field 'answerfield'"),
    ({"grader": "choice"}, "no gold answer of field 'gold' is one the 'choice' grader can read (e.g. '632', '21', '1000')"),
])
def test_task_file_errors_name_the_file_and_field(tmp_path, fields, message):
    from tempo_bench.core.errors import DataError

    path = write_task_file(tmp_path, **fields)
    with pytest.raises(DataError) as err:
        get_task(str(path)).load()
    assert str(path) in str(err.value) or "sums.jsonl" in str(err.value)
    assert message in str(err.value)


def test_a_task_file_runs_where_a_task_name_goes(tmp_path, capsys):
    """In a run's task section, as test set and as labeled pool: a one-step run on the toy model
    (whose question form these are) finishes and reports its evaluation; a broken task file is an
    error before any run."""
    from tempo_bench.commands.cli import main
    from tempo_bench.config import load_config
    from tempo_bench.tasks import load_task_data

    path = write_task_file(tmp_path, template="{question}\n")  # the toy's prompt form
    task = f"task={{name: {path}, labeled: {path}, labeled_size: 0}}"
    data = load_task_data(load_config("toy-smoke", [task]).task)
    assert len(data.test) == 6 and data.grader.name == "sums"
    args = ["run", "--preset", "toy-smoke", "--quiet", "--method", "standard_ttt", "--set", task, "--set", "eval.size=6",
            "--set", "train.steps=1", "--set", "train.prompts_per_step=2", "--set", "eval.k=2", "--out", str(tmp_path / "out")]
    assert main(args) == 0
    assert "mean@k" in capsys.readouterr().out
    (tmp_path / "broken").mkdir()
    broken = write_task_file(tmp_path / "broken", grader="fuzzy")
    assert main([*args[:-4], "--set", f"task={{name: {broken}, labeled_size: 0}}", "--out", str(tmp_path / "o2")]) == 2
    assert "field 'grader' is 'fuzzy'" in capsys.readouterr().err and not (tmp_path / "o2").exists()


def test_eval_tasks_are_evaluated_beside_the_test_set_under_their_own_names(tmp_path):
    """eval.tasks (as TEMPO's scripts evaluate AIME 2025 beside 2024): every evaluation scores the
    extra benchmark with the run's sampling settings, logs it as eval_<name>/..., tags its rows in
    the per-sample artefact, and a sweep's objective may name it; no method sees it."""
    import json

    from tempo_bench.config import load_config
    from tempo_bench.core.loggers import MemoryLogger
    from tempo_bench.run.evaluation import eval_metric_names
    from tempo_bench.run.run import run_ttt

    path = write_task_file(tmp_path, template="{question}\n")
    config = load_config("toy-smoke", ["train.steps=1", "train.prompts_per_step=2", "eval.k=2", "eval.size=4",
                                       f"eval.tasks=[{{name: {path}, limit: 4}}]", f"out={tmp_path / 'out'}"])
    logger = MemoryLogger()
    run_ttt(config, logger, out_dir=tmp_path / "run", progress=False)
    assert [s for s, _ in logger.metrics["eval_sums/mean_at_k"]] == [0, 1]
    assert [s for s, _ in logger.metrics["eval/mean_at_k"]] == [0, 1]
    assert {k for k in logger.metrics if k.startswith("eval_sums/")} == \
        {k for k in eval_metric_names(config.eval) if k.startswith("eval_sums/")}
    rows = [json.loads(line) for line in logger.artifacts["rollouts/eval_step_00001.jsonl"].splitlines()]
    assert sum(r.get("task") == "sums" for r in rows) == 4 * 2 + 4  # 2 samples + 1 greedy per question
