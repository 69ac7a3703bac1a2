"""The built-in arithmetic task: 3-digit addition, generated deterministically in code.

Three views of the same problems:
- plain documents `347+185=532.`: the RLP training corpus (`builtin:arith`), no thoughts;
- worked documents `347+185=<think>7+5+0=12,4+8+1=13,3+1+1=05</think>532.`: column sums from the units up, each
  `digit+digit+carry=two-digit sum` (a fixed width, so that a tiny model finds each column's digits at fixed
  offsets). In the warm-start corpus of `builtin:tiny` the writer often forgets a carry (`4+8+0=12`) and answers what
  the wrong sums spell, so the model writes right and wrong thoughts and copies its thought's answer;
- questions `{"question": "347+185=", "answer": "532"}`: the held-out evaluation set.

Problems are split by a hash of the unordered operand pair, so neither a held-out question nor its commuted twin
appears in any corpus.
"""

from __future__ import annotations

import random

from rlpt import THINK_CLOSE, THINK_OPEN

LOW, HIGH = 100, 999  # 3-digit operands: ~1% whole answers right without a thought for a tiny model
HELDOUT_PER_MILLE = 100  # ~10% of all (a, b) pairs are held out for evaluation


def pair_hash(a: int, b: int) -> int:
    """A deterministic hash of the unordered operand pair (Knuth's multiplicative hash): `194+641` and `641+194` hash
    alike, so no held-out question has its commuted twin in a training corpus."""
    low, high = min(a, b), max(a, b)
    return ((low * 1009 + high) * 2654435761) % 2**32


def is_heldout(a: int, b: int) -> bool:
    """Deterministic split of unordered operand pairs, `HELDOUT_PER_MILLE` of them held out."""
    return pair_hash(a, b) % 1000 < HELDOUT_PER_MILLE


def problems(n: int, seed: int, heldout: bool) -> list[tuple[int, int]]:
    """n distinct operand pairs from one side of the split, in a seeded order."""
    rng = random.Random(seed)
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < n:
        pair = (rng.randint(LOW, HIGH), rng.randint(LOW, HIGH))
        if pair not in seen and is_heldout(*pair) == heldout:
            seen.add(pair)
            out.append(pair)
    return out


def never() -> bool:
    """A writer who never slips: the default `forgets` of the written thoughts here and in `rlpt.suites`."""
    return False


def written_sum(a: int, b: int, forgets=never) -> tuple[str, str]:
    """The thought and the answer of someone adding column by column from the units up, '7+5+0=12,4+8+1=13,3+1+1=05'
    and '532'. `forgets()` is asked at every carry due: True writes '+0' instead of '+1', and the answer is then what
    the wrong sums spell (each column's last digit, the last column's whole sum)."""
    steps, totals, carry = [], [], 0
    while a or b:
        da, db = a % 10, b % 10
        if carry and forgets():
            carry = 0
        total = da + db + carry
        steps.append(f"{da}+{db}+{carry}={total:02d}")
        totals.append(total)
        carry, a, b = total // 10, a // 10, b // 10
    answer = str(totals[-1]) + "".join(str(t % 10) for t in reversed(totals[:-1]))
    return ",".join(steps), answer


def worked_thought(a: int, b: int) -> str:
    """The right thought: every carry written."""
    return written_sum(a, b)[0]


def plain_document(a: int, b: int) -> str:
    return f"{a}+{b}={a + b}."


def worked_document(a: int, b: int, forgets=never) -> str:
    thought, answer = written_sum(a, b, forgets)
    return f"{a}+{b}={THINK_OPEN}{thought}{THINK_CLOSE}{answer}."


def rlp_documents(n: int, seed: int = 0) -> list[str]:
    """The `builtin:arith` corpus: plain documents from the training side of the split."""
    return [plain_document(a, b) for a, b in problems(n, seed, heldout=False)]


def warm_start_documents(n: int, seed: int, think_fraction: float, carry_forgotten: float = 0.0) -> list[str]:
    """Training-side documents, a `think_fraction` of them with a worked thought whose writer forgets each carry due
    with probability `carry_forgotten`."""
    rng = random.Random(seed + 1)
    forgets = lambda: rng.random() < carry_forgotten  # noqa: E731
    return [
        worked_document(a, b, forgets) if rng.random() < think_fraction else plain_document(a, b)
        for a, b in problems(n, seed, heldout=False)
    ]


def heldout_questions(n: int, seed: int = 0) -> list[dict]:
    """The built-in evaluation set `builtin:arith`: question/answer pairs from the held-out side, each with its worked
    thought (to count how often the model's thought is the right one)."""
    return [{"question": f"{a}+{b}=", "answer": str(a + b), "thought": worked_thought(a, b)}
            for a, b in problems(n, seed, heldout=True)]
