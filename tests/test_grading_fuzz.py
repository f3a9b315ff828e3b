"""Grader robustness: thousands of random and adversarial model outputs through extraction,
clustering and grading. No exception escapes, and every verdict comes within the time limit."""

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tempo_bench.grading.answers import (
    answers_equivalent,
    cluster_answers,
    extract_answer,
)
from tempo_bench.tasks import get_task

LIMIT_S = 6.0  # the verdict budget is 5 s (tempo_bench.grading.answers.VERDICT_TIMEOUT_S)
GOLDS = ["204", "\\frac{14}{3}", "\\left( 3, \\frac{\\pi}{2} \\right)", "90^\\circ", "\\text{Evelyn}", "B", "1,000"]

latex_atoms = st.sampled_from(["\\frac{", "}", "{", "\\sqrt{", "^", "_", "\\pi", "\\left(", "\\right)", "\\boxed{",
                               "x", "=", "1", "0.5", "\\text{", "$", "\\\\", "\\$", "####", "answer is", "(", ")",
                               ",", "-", "\\infty", "\\cdot", "e", "i", "\n"])
adversarial = st.one_of(
    st.text(max_size=300),  # arbitrary unicode
    st.lists(latex_atoms, max_size=200).map("".join),  # unbalanced, nested LaTeX soup
    st.integers(min_value=1, max_value=400).map(lambda n: "\\boxed{" + "\\frac{1}{" * n + "2" + "}" * n + "}"),
    st.integers(min_value=1, max_value=5000).map(lambda n: f"#### {'9' * n}"),  # huge numbers
    st.integers(min_value=1, max_value=300).map(lambda n: "The answer is $" + "(" * n + "1" + ")" * n + "$."),
    st.integers(min_value=1000, max_value=100_000).map(lambda n: "step. " * (n // 6) + "\\boxed{42}"),  # long
    st.text(alphabet="{}\\$#()^_", max_size=500),  # only special characters
)


@settings(max_examples=2000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(response=adversarial, gold_index=st.integers(min_value=0, max_value=len(GOLDS) - 1))
def test_grading_never_raises_and_answers_in_time(response, gold_index):
    gold = GOLDS[gold_index]
    answer = timed(extract_answer, response)
    assert answer is None or isinstance(answer, str)
    for name in ("math500", "gsm8k", "gpqa"):
        assert timed(get_task(name).is_correct, response, gold) in (True, False)
    if answer is not None:
        assert timed(answers_equivalent, gold, answer) in (True, False)
        ids = timed(cluster_answers, [answer, gold, None, answer])
        assert ids[0] == ids[3] and ids[2] is None


def timed(fn, *args):
    """Call ``fn``; every verdict must come within the budget."""
    start = time.monotonic()
    out = fn(*args)
    assert time.monotonic() - start < LIMIT_S, f"{fn.__name__} took over {LIMIT_S} s"
    return out


thoughts = st.text(max_size=200).filter(lambda t: "<think>" not in t and "</think>" not in t)


@settings(max_examples=500, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(thought=thoughts, guess=st.integers(0, 10**6), answer=st.integers(0, 10**6),
       form=st.sampled_from(["\\boxed{{{}}}", "Answer: {}", "#### {}", "The answer is {}."]))
def test_answers_are_read_after_the_thinking_and_never_from_an_unfinished_one(thought, guess, answer, form):
    """Whatever the thinking holds (a guess in any form included), a closed block's answer is the
    one after it, and an unclosed block answers nothing."""
    guessed = f"{thought}\n{form.format(guess)}"
    assert extract_answer(f"<think>{guessed}</think>\n\n{form.format(answer)}") == str(answer)
    assert extract_answer(f"<think>{guessed}") is None
    assert extract_answer(f"{guessed}</think>\n{form.format(answer)}") == str(answer)
