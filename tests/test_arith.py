"""The built-in arithmetic task: worked thoughts, and the warm-start corpus whose writer forgets carries."""

import re

from rlpt import arith


def test_written_sum_by_hand():
    assert arith.written_sum(347, 185) == ("7+5+0=12,4+8+1=13,3+1+1=05", "532")
    assert arith.written_sum(964, 494) == ("4+4+0=08,6+9+0=15,9+4+1=14", "1458")
    # forgetting every carry: 4+8 loses the 1 from 7+5, 3+1 the 1 from 4+8; the answer follows the wrong sums
    assert arith.written_sum(347, 185, forgets=lambda: True) == ("7+5+0=12,4+8+0=12,3+1+0=04", "422")
    assert arith.written_sum(964, 494, forgets=lambda: True) == ("4+4+0=08,6+9+0=15,9+4+0=13", "1358")
    assert arith.worked_thought(120, 345) == "0+5+0=05,2+4+0=06,1+3+0=04"


def test_warm_start_forgets_carries_at_the_rate_asked_and_answers_what_the_thought_spells():
    docs = arith.warm_start_documents(3000, seed=0, think_fraction=1.0, carry_forgotten=0.6)
    written = due = 0
    for doc in docs:
        a, b, thought, answer = re.fullmatch(r"(\d+)\+(\d+)=<think>(.*)</think>(\d+)\.", doc).groups()
        columns = [tuple(map(int, re.fullmatch(r"(\d)\+(\d)\+([01])=(\d\d)", c).groups())) for c in thought.split(",")]
        carry = 0
        for da, db, c, total in columns:  # every column adds up, and a carry is only ever written when due
            assert da + db + c == total and c <= carry
            due += carry
            written += c
            carry = total // 10
        assert answer == str(columns[-1][3]) + "".join(str(t % 10) for *_, t in reversed(columns[:-1]))
    assert 0.37 < written / due < 0.43  # 40% of the carries due are written
    right = arith.warm_start_documents(500, seed=0, think_fraction=1.0)
    assert all(d.split("</think>")[1] == f"{eval(d.split('=')[0])}." for d in right)  # no carry forgotten by default


def test_builtin_arith_warm_is_the_corpus_builtin_tiny_was_warm_started_on():
    from rlpt import tiny
    from rlpt.data import builtin_texts

    texts = [text for text, _ in builtin_texts("arith-warm")]
    assert texts == arith.warm_start_documents(40_000, seed=0, think_fraction=0.8, carry_forgotten=0.6)
    assert texts == tiny.warm_start_texts(tiny.RECIPES["tiny"])
    assert 0.78 < sum("<think>" in t for t in texts) / len(texts) < 0.82
