"""The built-in arithmetic task: 3-digit addition, generated deterministically in code.

Three views of the same problems:
- plain documents `347+185=532.`: the RLP training corpus (`builtin:arith`), no thoughts;
- worked documents `347+185=<think>7+5=12,4+8+1=13,3+1+1=5</think>532.`: shown in part of the warm-start corpus
  of `builtin:tiny`, so that the model knows what a useful thought looks like;
- questions `{"question": "347+185=", "answer": "532"}`: the held-out evaluation set.

Problems are split by a hash of the operands, so the held-out questions never appear in either corpus.
"""

from __future__ import annotations

import random

from rlpt import THINK_CLOSE, THINK_OPEN

LOW, HIGH = 100, 999  # 3-digit operands: ~1% whole answers right without a thought for a tiny model
HELDOUT_PER_MILLE = 100  # ~10% of all (a, b) pairs are held out for evaluation


def is_heldout(a: int, b: int) -> bool:
    """Deterministic split of operand pairs (Knuth's multiplicative hash)."""
    return ((a * 1009 + b) * 2654435761) % 2**32 % 1000 < HELDOUT_PER_MILLE


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


def worked_thought(a: int, b: int) -> str:
    """Column sums from the units up, with the carry written as '+1': '7+5=12,4+8+1=13,3+1+1=5'."""
    steps, carry = [], 0
    while a or b:
        da, db = a % 10, b % 10
        total = da + db + carry
        steps.append(f"{da}+{db}" + ("+1" if carry else "") + f"={total}")
        carry, a, b = total // 10, a // 10, b // 10
    return ",".join(steps)


def plain_document(a: int, b: int) -> str:
    return f"{a}+{b}={a + b}."


def worked_document(a: int, b: int) -> str:
    return f"{a}+{b}={THINK_OPEN}{worked_thought(a, b)}{THINK_CLOSE}{a + b}."


def rlp_documents(n: int, seed: int = 0) -> list[str]:
    """The `builtin:arith` corpus: plain documents from the training side of the split."""
    return [plain_document(a, b) for a, b in problems(n, seed, heldout=False)]


def warm_start_documents(n: int, seed: int, think_fraction: float) -> list[str]:
    """Training-side documents, a `think_fraction` of them with the worked thought."""
    rng = random.Random(seed + 1)
    return [
        worked_document(a, b) if rng.random() < think_fraction else plain_document(a, b)
        for a, b in problems(n, seed, heldout=False)
    ]


def heldout_questions(n: int, seed: int = 0) -> list[dict]:
    """The built-in evaluation set `builtin:arith`: question/answer pairs from the held-out side, each with its worked
    thought (to count how often the model's thought is the right one)."""
    return [{"question": f"{a}+{b}=", "answer": str(a + b), "thought": worked_thought(a, b)}
            for a, b in problems(n, seed, heldout=True)]
