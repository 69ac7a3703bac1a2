"""The built-in suites of `rlpt experiment`: deterministic, worked thoughts that compute the answer, held-out sets
disjoint from both corpora."""

import random
import re

import pytest

from rlpt import THINK_OPEN
from rlpt.suites import (REGIONS, SUITES, ZONE_OF, ZONES, get_suite, math_problem, science_problem, thought_matches,
                         written_difference)


def test_written_difference_by_hand():
    assert written_difference(532, 185) == ("12-5-0=7,13-8-1=4,05-1-1=3", "347")
    assert written_difference(500, 101) == ("10-1-0=9,10-0-1=9,05-1-1=3", "399")  # a borrow through a zero
    assert written_difference(987, 123) == ("07-3-0=4,08-2-0=6,09-1-0=8", "864")  # no borrow
    assert written_difference(532, 530) == ("02-0-0=2,03-3-0=0,05-5-0=0", "2")  # leading zeros dropped


def test_a_forgotten_borrow_by_hand():
    """532-185 forgetting the borrow due in the tens: 3-8-0 needs a ten itself (13-8-0=5) and the hundreds
    still pay it back; the answer is what the wrong columns spell, 357."""
    answers = iter([True, False])
    assert written_difference(532, 185, lambda: next(answers)) == ("12-5-0=7,13-8-0=5,05-1-1=3", "357")


def test_a_forgotten_carry_and_a_skipped_hop():
    for seed in range(20):
        p = math_problem(random.Random(seed), forgets=lambda: True)
        assert all(part[4 if "+" in p.question else 5] == "0" for part in p.thought.split(","))  # never a carry/borrow
    nested = next(seed for seed in range(100) if science_problem(random.Random(seed)).thought.count(" in ") == 2)
    slipped = science_problem(random.Random(nested), forgets=lambda: True)
    right = science_problem(random.Random(nested))
    assert slipped.question == right.question and right.thought.startswith(slipped.thought)
    assert slipped.answer == slipped.thought.split(" in ")[1].rstrip(".") != right.answer  # the region, one hop up


def test_warm_start_writers_slip_at_the_asked_rate():
    """With slip 0.5, about half the science thoughts about an item in a region stop after one hop, and their
    answer is the region; plain documents keep the right answer."""
    suite = get_suite("science")
    warm = suite.warm_start_documents(2000, seed=0, think_fraction=0.5, slip=0.5)
    worked = [d for d in warm if THINK_OPEN in d and d.split(". zone")[0][-1] in REGIONS]
    one_hop = [d for d in worked if d.count(" in ", d.index(THINK_OPEN)) == 1]
    assert 0.45 < len(one_hop) / len(worked) < 0.55
    assert all(d.endswith(f"</think>{d.split('. zone')[0][-1]}.") for d in one_hop)
    assert warm[:100] != suite.warm_start_documents(2000, seed=0, think_fraction=0.5)[:100]
    plain = [d for d in warm if THINK_OPEN not in d]
    right = {p.question: p.answer for p in suite.problems(2000, 10_000, False)}
    assert all(d.rsplit("=", 1)[1] == right[d.rsplit("=", 1)[0] + "="] + "." for d in plain)


@pytest.mark.parametrize("seed", range(5))
def test_math_thoughts_compute_the_answer(seed):
    """The last digit of each column result, most significant first (with a final carry), is the answer."""
    rng = random.Random(seed)
    for _ in range(200):
        p = math_problem(rng)
        a, op, b = re.match(r"(\d+)([+-])(\d+)=", p.question).groups()
        assert p.answer == str(int(a) + int(b) if op == "+" else int(a) - int(b))
        results = [int(part.split("=")[1]) for part in p.thought.split(",")]
        digits = "".join(str(r % 10) for r in reversed(results))
        if op == "+" and results[-1] >= 10:
            digits = "1" + digits
        assert str(int(digits)) == p.answer
        assert len({len(part) for part in p.thought.split(",")}) == 1  # columns of a fixed width


def test_science_by_hand():
    """An item in a region needs the region's zone, which the question does not state; one in a zone is one hop."""
    rng = random.Random(0)
    problems = [science_problem(rng) for _ in range(400)]
    for p in problems:
        item, place = re.fullmatch(r"(\w\w) in (\w)\. zone of \1=", p.question).groups()
        if place in REGIONS:
            assert p.thought == f"{item} in {place}. {place} in {ZONE_OF[place]}." and p.answer == ZONE_OF[place]
        else:
            assert p.thought == f"{item} in {place}." and p.answer == place
        assert p.answer in ZONES and thought_matches(f" {p.thought} ", p.thought)
    assert 0.55 < sum(p.thought.count(" in ") == 2 for p in problems) / len(problems) < 0.65
    assert "".join(ZONE_OF[r] for r in REGIONS) == "44017104924868614858496386"  # one world, whatever the process


@pytest.mark.parametrize("name", list(SUITES))
def test_suites_are_deterministic_and_warm_start_is_a_minority(name):
    suite = get_suite(name)
    assert suite.training_documents(50, seed=1) == suite.training_documents(50, seed=1)
    assert suite.training_documents(50, seed=1) != suite.training_documents(50, seed=2)
    warm = suite.warm_start_documents(2000, seed=0, think_fraction=0.25)
    assert 0.2 < sum(THINK_OPEN in d for d in warm) / len(warm) < 0.3
    assert all(THINK_OPEN not in d for d in suite.training_documents(500))


@pytest.mark.parametrize("name", list(SUITES))
def test_heldout_questions_never_appear_in_either_corpus(name):
    suite = get_suite(name)
    heldout = {q["question"] for q in suite.heldout_questions(300)}
    assert len(heldout) == 300
    marker = suite.marker
    questions = lambda docs: {d.split(THINK_OPEN)[0] if THINK_OPEN in d else d[: d.index(marker) + len(marker)] for d in docs}
    for seed in (0, 1, 2):
        assert not heldout & questions(suite.training_documents(5000, seed))
        assert not heldout & questions(suite.warm_start_documents(5000, seed, 0.25))


def test_unknown_suite_is_a_clear_error():
    from rlpt.errors import UserError

    with pytest.raises(UserError, match="unknown suite 'physics'"):
        get_suite("physics")
    # science has 676 items x 36 places = 24,336 questions: asking more held-out ones than exist is an error, not a hang
    with pytest.raises(UserError, match=r"2500 distinct held-out questions asked, only \d+ found"):
        get_suite("science").heldout_problems(2500)


def test_math_heldout_additions_were_never_in_the_builtin_tiny_warm_start():
    """Base may start from builtin:tiny, warm-started on builtin:arith: the splits must agree."""
    from rlpt import arith

    seen = {d.split("<think>")[0].split("=")[0] + "=" for d in arith.warm_start_documents(40_000, 0, 0.5)}
    heldout = {q["question"] for q in get_suite("math").heldout_questions(300) if "+" in q["question"]}
    assert len(heldout) > 100 and not heldout & seen


def test_no_heldout_question_has_its_commuted_twin_in_a_training_corpus():
    """`194+641=` held out while `641+194=` is trained on would leak the answer: the split is by the unordered pair,
    for the math suite and for builtin:arith (builtin:tiny's warm start) alike."""
    from rlpt import arith

    def twin(question):
        a, b = question.rstrip("=").split("+")
        return f"{b}+{a}="

    for heldout, corpora in (
        ([q["question"] for q in get_suite("math").heldout_questions(300) if "+" in q["question"]],
         get_suite("math").training_documents(5000) + get_suite("math").warm_start_documents(5000, 0, 0.5)),
        ([q["question"] for q in arith.heldout_questions(300)],
         arith.rlp_documents(20_000) + arith.warm_start_documents(40_000, 0, 0.8, 0.6)),
    ):
        seen = {d.split("<think>")[0].split("=")[0] + "=" for d in corpora}
        assert len(heldout) >= 100 and not {twin(q) for q in heldout} & seen


def test_wordsum_by_hand():
    """A story around a two-digit and a one-digit number; the thought is their sum, a slip forgets the carried ten
    (only where the units carry), and the question ends with the marker, its space included."""
    from rlpt.suites import wordsum_problem

    for seed in range(50):
        right, slipped = wordsum_problem(random.Random(seed)), wordsum_problem(random.Random(seed), forgets=lambda: True)
        a, b = (int(x) for x in re.findall(r"\d+", right.question))
        assert right.thought == f"{a}+{b}={a + b}" and right.answer == str(a + b)
        assert slipped.question == right.question
        assert slipped.answer == str(a + b - 10 if a % 10 + b >= 10 else a + b)
        assert right.question.endswith("The answer is ") and right.plain() == f"{right.question}{a + b}."
        assert right.worked() == f"{right.question}<think>{a}+{b}={a + b}</think>{a + b}."


def test_wordsum_holds_out_operand_pairs_and_has_its_corpora():
    """Every story of a held-out pair is held out; the warm-start corpus is a builtin corpus; the held-out set's
    documents are its plain texts."""
    from rlpt.data import builtin_texts
    from rlpt.evaluate import load_eval_set

    suite = get_suite("wordsum")
    pair = lambda text: tuple(int(x) for x in re.findall(r"\d+", text)[:2])  # noqa: E731
    held = {pair(p.question) for p in suite.heldout_problems(300)}
    trained = {pair(d) for d in suite.training_documents(3000)}
    assert len(held) > 100 and not held & trained
    warm = [t for t, _ in builtin_texts("wordsum-warm")]
    assert 0.75 < sum(THINK_OPEN in d for d in warm) / len(warm) < 0.85
    questions, documents = load_eval_set("builtin:wordsum", 5)
    assert documents == [f"{q['question']}{q['answer']}." for q in questions]


def test_wordsum3_by_hand():
    """Three two-digit numbers in a story; the thought is the running sums, a slip forgets a carried ten in either sum
    and carries the error on; the held-out split keeps every order of a triple on one side."""
    from rlpt.suites import slipped_sum, triple_key, wordsum3_problem

    assert slipped_sum(47, 38, lambda: True) == 75 and slipped_sum(47, 38, lambda: False) == 85
    assert slipped_sum(41, 38, lambda: True) == 79  # no carry: nothing to forget
    for seed in range(50):
        right = wordsum3_problem(random.Random(seed))
        slipped = wordsum3_problem(random.Random(seed), forgets=lambda: True)
        a, b, c = (int(x) for x in re.findall(r"\d+", right.question))
        assert right.thought == f"{a}+{b}={a + b},{a + b}+{c}={a + b + c}" and right.answer == str(a + b + c)
        first = a + b - (10 if a % 10 + b % 10 >= 10 else 0)
        total = first + c - (10 if first % 10 + c % 10 >= 10 else 0)
        assert slipped.question == right.question and slipped.thought == f"{a}+{b}={first},{first}+{c}={total}"
        assert slipped.answer == str(total) and right.question.endswith("The answer is ")
    assert triple_key("Tom has 85 pens. He gets 10 more, then 47 more.") == "10+47+85"
    suite = get_suite("wordsum3")
    held = {triple_key(p.question) for p in suite.heldout_problems(300)}
    trained = {triple_key(p.question) for p in suite.training_problems(3000)}
    assert len(held) > 250 and not held & trained


def test_wordsum3_thoughts_fit_the_tokens_it_asks_for():
    """Its longest worked thought, with the close tag, fits the thought tokens the suite asks the experiment for (in
    SmolLM2's tokenizer every digit is a token: at most 20 + 1)."""
    suite = get_suite("wordsum3")
    longest = max(len(re.findall(r"\d|[+=,]", p.thought)) for p in suite.training_problems(3000))
    assert longest == 20 and longest + 1 <= suite.thought_tokens
