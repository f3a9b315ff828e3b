"""The embedded task: solutions, the planted misconception, determinism, tokenizer round trip."""

from tempo_bench.grading.answers import extract_answer
from tempo_bench.tasks.addition import (
    Addition,
    pretraining_corpus,
    sample_questions,
    solution,
)
from tempo_bench.toy.model import build_tokenizer


def test_solution_is_correct_and_extractable():
    for a, b in [(347, 285), (999, 1), (5, 7), (1234, 8766)]:
        q = Addition(a, b)
        assert extract_answer(solution(q)) == str(a + b)


def test_worked_solution_format():
    assert solution(Addition(347, 285)) == "7+5=12 |2\n4+8+1=13 |32\n3+2+1=6 |632\n#### 632\n"


def test_misconception_drops_chain_carry():
    q = Addition(745, 255)  # 5+5=10, then 4+5+1 is a chain carry
    assert q.has_chain_carry and not Addition(111, 222).has_chain_carry
    assert extract_answer(solution(q, forget_chain_carry=True)) == "990"
    assert solution(Addition(111, 222), forget_chain_carry=True) == solution(Addition(111, 222))


def test_sampling_is_deterministic_and_respects_chain_fraction():
    a = sample_questions(40, 7, (3,), 0.25)
    assert a == sample_questions(40, 7, (3,), 0.25)
    assert a != sample_questions(40, 8, (3,), 0.25)
    assert sum(q.has_chain_carry for q in a) == 10 and len(set(a)) == 40
    assert all(100 <= q.a <= 999 for q in a)
    corpus = pretraining_corpus(50, 0, (1, 2, 3), 0.5, 0.3)
    assert corpus == pretraining_corpus(50, 0, (1, 2, 3), 0.5, 0.3)


def test_tokenizer_round_trips_spaces_and_newlines(tmp_path):
    from transformers import AutoTokenizer

    build_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Q:347+285\n7+5=12 |2\n#### 632\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tok.decode(ids) == text
