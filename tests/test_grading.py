"""Answer extraction, equivalence and majority clustering."""

import pytest

from tempo_bench.core.metrics import majority_cluster
from tempo_bench.grading.answers import (
    answers_equivalent,
    canonical_number,
    cluster_answers,
    extract_answer,
    is_correct,
)


@pytest.mark.parametrize("text,expected", [
    ("7+5=12 |2\n#### 632\n", "632"),
    ("so \\boxed{\\frac{1}{2}} done", "\\frac{1}{2}"),
    ("first \\boxed{3} then \\boxed{4}", "4"),
    ("nested \\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
    ("The answer is 42.", "42"),
    ("#### 1,000", "1,000"),
    ("no answer here", None),
    ("unbalanced \\boxed{12", None),
    ("#### \n", None),
    # reasoning models: the answer follows the last </think>; thinking that never closed has none
    ("<think>try \\boxed{3}</think>\nSo \\boxed{5}", "5"),
    ("<think>maybe \\boxed{3} or #### 4", None),
    ("we think that... </think>\n#### 12", "12"),  # the chat template opened the block in the prompt
    ("<think>a</think><think>b \\boxed{1}</think> The answer is 7.", "7"),
    ("<think>a</think>", None),
    # DAPO's answer line, on the last line only
    ("Step 1...\nAnswer: 42", "42"),
    ("Step 1...\n**Answer:** $\\frac{1}{2}$\n\n", "\\frac{1}{2}"),
    ("Answer: 42\nand then more reasoning", None),
    ("<think>Answer: 3</think>\nAnswer: 4", "4"),
    ("Answer: $", None),
    ("\\boxed{3}\nAnswer: 4", "3"),  # a box first, as before
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_an_unfinished_thought_neither_answers_nor_votes_and_choices_read_after_thinking():
    from tempo_bench.grading.answers import Grader
    from tempo_bench.tasks import get_task

    answers, clusters = Grader().grade_group(["<think>it is \\boxed{7}", "<think>x</think>\\boxed{7}", "\\boxed{8}"])
    assert answers == [None, "7", "8"] and clusters == [None, 0, 1]
    gpqa = get_task("gpqa")
    assert gpqa.extract_answer("<think>The answer is (B)</think>\nThe answer is (C).") == "C"
    assert gpqa.extract_answer("<think>The answer is (B)") is None
    assert gpqa.extract_answer("Reasoning.\nAnswer: D") == "D"


def test_canonical_number():
    assert canonical_number("025") == "25"
    assert canonical_number("142.0") == "142"
    assert canonical_number("1,000") == "1000"
    assert canonical_number("0.50") == "0.5"
    assert canonical_number("\\frac{1}{2}") is None


@pytest.mark.parametrize("a,b,same", [
    ("025", "25", True), ("142.0", "142", True), ("\\frac{1}{2}", "0.5", True),
    ("\\frac{1}{2}", "1/2", True), ("3", "4", False), ("(1, 2)", "(1,2)", True), ("x", "y", False),
])
def test_answers_equivalent(a, b, same):
    assert answers_equivalent(a, b) is same
    assert answers_equivalent(b, a) is same


def test_is_correct():
    assert is_correct("7+5=12 |2\n#### 632\n", "632")
    assert not is_correct("#### 631", "632")
    assert not is_correct("garbage", "632")


def test_cluster_answers_merges_equivalent_forms_in_first_seen_order():
    ids = cluster_answers(["0.5", None, "\\frac{1}{2}", "3", "03", "1/2"])
    assert ids == [0, None, 0, 1, 1, 0]


def test_majority_cluster_ties_and_empty():
    assert majority_cluster([1, 0, 0, 1]) == 1  # tie: first seen wins
    assert majority_cluster([None, 2, 2, 1]) == 2
    assert majority_cluster([None, None]) is None


def test_long_numbers_stay_exact():
    # the default decimal context rounds at 28 digits: two different 40-digit answers must differ
    assert canonical_number("9" * 40) != canonical_number("9" * 39 + "8")
    assert canonical_number("1" + "0" * 40) == "1" + "0" * 40
    assert not answers_equivalent("9" * 40, "9" * 39 + "8")


def test_model_output_is_never_evaluated_as_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    answers_equivalent("1", payload)
    is_correct(f"\\boxed{{{payload}}}", "1")
    cluster_answers([payload, "1"])
    assert not marker.exists()
