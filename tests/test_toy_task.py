"""The embedded task: solutions, the planted misconception, determinism, tokenizer round trip."""

from tempo_bench.grading import extract_answer
from tempo_bench.toy.model import build_tokenizer
from tempo_bench.toy.task import Addition, pretraining_corpus, sample_questions, solution


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


def test_missing_addend_solution_checks_its_guess():
    from tempo_bench.toy.task import MissingAddend, search_solution

    q = MissingAddend(347, 285)
    assert q.prompt == "Q:?+285=632\n" and q.answer == "347"
    right = search_solution(q, q.a)
    assert right == "x=347\n7+5=12 |2\n4+8+1=13 |32\n3+2+1=6 |632\n#### 347\n"
    # the planted error forgets every borrow of 632 - 285: (2-5)%10, (3-8)%10, 6-2 -> 457, whose
    # written check ends in a partial that does not match the prompt's 632
    assert q.is_hard and q.no_borrow_guess() == 457
    wrong = search_solution(q, q.no_borrow_guess())
    assert extract_answer(wrong) == "457" and "|742\n" in wrong
    easy = MissingAddend(111, 222)  # 333 - 222 needs no borrow: the planted error is harmless there
    assert not easy.is_hard and easy.no_borrow_guess() == 111
    overflow = MissingAddend(600, 500)  # 1100 - 500: the borrow comes from the extra digit
    assert overflow.is_hard and overflow.no_borrow_guess() != 600


def test_missing_addend_sampling_and_corpus():
    from tempo_bench.toy.task import MissingAddend

    qs = sample_questions(30, 3, (3,), 1.0, MissingAddend)
    assert all(isinstance(q, MissingAddend) and q.is_hard for q in qs) and len(set(qs)) == 30
    corpus = pretraining_corpus(400, 0, (1, 2, 3), 0.5, 0.3, missing_addend_share=0.5, borrow_misconception_rate=1.0)
    searches = [t for t in corpus if t.startswith("Q:?+")]
    assert 150 < len(searches) < 250
    for text in searches:  # with rate 1 every hard question's guess is the no-borrow one
        prompt, response = text.split("\n", 1)
        b, c = map(int, prompt[len("Q:?+"):].split("="))
        q = MissingAddend(c - b, b)
        assert extract_answer(response) == str(q.no_borrow_guess() if q.is_hard else q.a)
