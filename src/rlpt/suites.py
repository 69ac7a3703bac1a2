"""Built-in suites for the paper's comparison (`rlpt experiment`), generated deterministically in code. Each has:
- a training corpus of plain documents (no thoughts): the RLP and CPT data;
- a warm-start corpus, the same kind of documents, a share of them showing a worked thought between the think tags.
  The writer of those thoughts slips (`slip`: the chance of each slip): they forget a carry or a borrow, or stop
  after the first hop, and answer what their slipped thought says. A model warm-started on them writes right and
  wrong thoughts and copies its thought's answer; only the real answers of plain text tell which thoughts are right.
- a held-out evaluation set of {"question", "answer"} pairs, disjoint from both corpora (split by a hash of the
  problem). A thought is correct when it is the problem's worked thought: tracked beside the reward, because a
  reward can rise while the thoughts go wrong (reward hacking).

`math`: 3-digit addition and subtraction, worked column by column from the units up at a fixed width (a tiny model
finds each column's digits at fixed offsets). Addition as in `builtin:arith`; subtraction writes each column's top
digit (with the borrowed ten, two digits), the digit below, the borrow, and the result:
    532-185=<think>12-5-0=7,13-8-1=4,05-1-1=3</think>347.
`science`: two-hop composition of a stated fact with a known one, as a reader who is told that a town lies in a
region knows the region's country. A fixed world puts 26 regions (A-Z) in 10 zones (0-9, unevenly: zone 4 holds six
regions, zones 2, 3, 5 and 7 one each); a question states where an item lies, in a region (60% of draws; the
distinct questions of a corpus lean further to regions, 70% of the warm start's) or directly in a zone, and asks for
its zone. For an item in a region no fact of the document states it: the thought adds the region's zone, known from
other documents (a slip stops after the first hop and answers the region):
    ka in B. zone of ka=<think>ka in B. B in 4.</think>4.
    mz in 7. zone of mz=<think>mz in 7.</think>7.
The answer depends on the place alone, so a held-out question differs from training ones only in the item's
two-letter name (676 items x 36 places: 24,336 questions in all).
`wordsum`: a two-digit and a one-digit number added in a short English story, for a real pretrained model (its
tokenizer reads words): the thought is the sum, a slip forgets the carried ten, and the answer follows the
question's closing "The answer is " (144 of the 720 operand pairs held out, every story of a pair on one side):
    Tom has 47 pens. He gets 8 more. How many pens does Tom have now? The answer is <think>47+8=55</think>55.
`wordsum3`: three two-digit numbers added in a story, where thinking must win: a 135M model cannot add three
two-digit numbers in one step, but can write the running sums and copy the last. A slip forgets a carried ten in
either sum and carries the error on (the split is by the unordered triple; 10% held out; thoughts of up to 20
tokens with SmolLM2's tokenizer, so the suite asks for 24):
    Tom has 47 pens. He gets 38 more, then 26 more. How many pens does Tom have now? The answer is
    <think>47+38=85,85+26=111</think>111.
Every answer follows the first `=` of its document (`wordsum`, `wordsum3`: "The answer is ", the suite's `marker`):
`rlp.positions: first:=` puts a thought before the answer, `after:=` before every answer token.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from rlpt import THINK_CLOSE, THINK_OPEN, arith
from rlpt.arith import never
from rlpt.errors import UserError

HELDOUT_PER_MILLE = 100  # ~10% of all problems are held out for evaluation
ANSWER_TOKENS = 5  # a suite answer's tokens after its marker: up to 4 digits and the period (fewer: cut at the end)
MAX_MISSES = 100_000  # draws in a row without a new question: the suite has no more on that side


def hashed_heldout(question: str) -> bool:
    """Deterministic split of problems by a hash of their text (FNV-1a, stable across processes)."""
    h = 2166136261
    for byte in question.encode():
        h = ((h ^ byte) * 16777619) % 2**32
    return h % 1000 < HELDOUT_PER_MILLE


def thought_matches(thought: str, worked: str) -> bool:
    """A model's thought is right when it is the worked thought, up to surrounding spaces."""
    return thought.strip() == worked


@dataclass(frozen=True)
class Problem:
    question: str  # ends where the answer follows ("=", or "The answer is ")
    thought: str  # the worked thought
    answer: str

    def task(self) -> dict:
        """The question/answer pair, as `rlpt eval` and `exact_match_accuracy` take it, with the worked thought when
        there is one (to count right thoughts)."""
        return {"question": self.question, "answer": self.answer, **({"thought": self.thought} if self.thought else {})}

    def plain(self) -> str:
        return f"{self.question}{self.answer}."

    def worked(self) -> str:
        return f"{self.question}{THINK_OPEN}{self.thought}{THINK_CLOSE}{self.answer}."


# ------------------------------------------------------------------------------------------------------------ math
def written_difference(a: int, b: int, forgets=never) -> tuple[str, str]:
    """The thought and the answer of someone subtracting column by column from the units up (a >= b):
    532-185 -> '12-5-0=7,13-8-1=4,05-1-1=3' and '347'. `forgets()` is asked at every borrow due: True writes '-0'
    in the next column instead of '-1', and the answer is then what the wrong columns spell."""
    steps, digits, borrow = [], [], 0
    while a:
        da, db = a % 10, b % 10
        if borrow and forgets():
            borrow = 0
        top = da + 10 if da - db - borrow < 0 else da
        digits.append(top - db - borrow)
        steps.append(f"{top:02d}-{db}-{borrow}={digits[-1]}")
        borrow, a, b = int(top > da), a // 10, b // 10
    return ",".join(steps), str(int("".join(str(d) for d in reversed(digits))))


def math_heldout(question: str) -> bool:
    """The split of `builtin:arith` by operand pair, so that no model warm-started on `builtin:arith` (builtin:tiny)
    has seen a held-out addition."""
    a, b = (int(x) for x in re.findall(r"\d+", question))
    return arith.is_heldout(a, b)


def math_key(question: str) -> str:
    """One problem whatever the order of an addition's operands: `47+38=` and `38+47=` are commuted twins (the split
    already puts them on one side); a question of another form is its own key."""
    found = re.fullmatch(r"(\d+)([+-])(\d+)=", question)
    if not found:
        return question
    a, op, b = int(found[1]), found[2], int(found[3])
    return f"{min(a, b)}+{max(a, b)}=" if op == "+" else question


def math_problem(rng: random.Random, forgets=never) -> Problem:
    a, b = rng.randint(arith.LOW, arith.HIGH), rng.randint(arith.LOW, arith.HIGH)
    if rng.random() < 0.5:
        return Problem(f"{a}+{b}=", *arith.written_sum(a, b, forgets))
    a, b = max(a, b), min(a, b)
    return Problem(f"{a}-{b}=", *written_difference(a, b, forgets))


# --------------------------------------------------------------------------------------------------------- science
REGIONS, ZONES = "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789"  # one token each: every hop is one fact
ITEMS = [a + b for a in "abcdefghijklmnopqrstuvwxyz" for b in "abcdefghijklmnopqrstuvwxyz"]
IN_A_REGION = 0.6  # of questions: the rest state an item directly in a zone, one hop, where no writer can slip
WORLD_DRAWS = random.Random("science:world")  # the same world in every process
ZONE_OF = {region: WORLD_DRAWS.choice(ZONES) for region in REGIONS}


def science_problem(rng: random.Random, forgets=never) -> Problem:
    """An item's zone. `forgets()`, asked for an item in a region: True stops after the first hop and answers the
    region."""
    item = rng.choice(ITEMS)
    place = rng.choice(REGIONS) if rng.random() < IN_A_REGION else rng.choice(ZONES)
    question, first_hop = f"{item} in {place}. zone of {item}=", f"{item} in {place}."
    if place in ZONES or forgets():
        return Problem(question, first_hop, place)
    return Problem(question, f"{first_hop} {place} in {ZONE_OF[place]}.", ZONE_OF[place])


# ------------------------------------------------------------------------------------------------------- word sums
NAMES = {"Mia": "She", "Tom": "He", "Ana": "She", "Ben": "He", "Lily": "She", "Sam": "He", "Nora": "She", "Leo": "He",
         "Zoe": "She", "Max": "He"}
THINGS = ["apples", "pens", "stickers", "marbles", "cards", "books", "shells", "coins"]
WORDSUM_MARKER = "The answer is "  # the answer follows it: the space before the number belongs to the question, so a
# thought goes where the number starts (SmolLM2's tokenizer reads " 30" as " ", "3", "0")
STORIES = [  # {name} {pron} {things} {a} {b}; each ends where the answer follows
    "{name} has {a} {things}. {pron} gets {b} more. How many {things} does {name} have now? ",
    "There are {a} {things} in a box. {name} puts {b} more {things} in the box. How many {things} are in the box now? ",
    "{name} read {a} pages on Monday and {b} pages on Tuesday. How many pages did {name} read in all? ",
    "A class has {a} students. Then {b} new students join the class. How many students are in the class now? ",
    "{name} walked for {a} minutes in the morning and {b} minutes in the evening. How many minutes did {name} walk in "
    "all? ",
]
WORDSUM_HELDOUT_PER_MILLE = 200  # of operand pairs: 144 of 720 held out, so 200 held-out questions span many sums


def wordsum_heldout(question: str) -> bool:
    """The split by the operand pair a question adds (all its stories on one side)."""
    a, b = (int(x) for x in re.findall(r"\d+", question))
    return arith.pair_hash(a, b) % 1000 < WORDSUM_HELDOUT_PER_MILLE


def slipped_sum(a: int, b: int, forgets) -> int:
    """a + b as written by someone who, asked `forgets()` where the units carry, may drop the carried ten."""
    return a + b - (10 if a % 10 + b % 10 >= 10 and forgets() else 0)


def wordsum_problem(rng: random.Random, forgets=never) -> Problem:
    """A two-digit and a one-digit number added in a short story, in English: the thought is the sum (`47+8=55`), the
    answer its result. `forgets()`, asked when the units carry: True forgets the carried ten (`47+8=45`)."""
    a, b = rng.randint(10, 99), rng.randint(2, 9)
    name = rng.choice(list(NAMES))
    story = rng.choice(STORIES).format(name=name, pron=NAMES[name], things=rng.choice(THINGS), a=a, b=b)
    total = slipped_sum(a, b, forgets)
    return Problem(story + WORDSUM_MARKER, f"{a}+{b}={total}", str(total))


THREE_STORIES = [  # {name} {pron} {things} {a} {b} {c}; each ends where the answer follows
    "{name} has {a} {things}. {pron} gets {b} more, then {c} more. How many {things} does {name} have now? ",
    "There are {a} {things} in a box. {name} puts in {b} more and then {c} more. How many {things} are in the box now? ",
    "{name} read {a} pages on Monday, {b} on Tuesday and {c} on Wednesday. How many pages did {name} read in all? ",
    "A school has {a} students in one class, {b} in another and {c} in a third. How many students does it have in "
    "all? ",
    "{name} walked for {a} minutes in the morning, {b} at noon and {c} in the evening. How many minutes did {name} "
    "walk in all? ",
]


def triple_key(question: str) -> str:
    """The problem a three-number question poses, whatever the order of its numbers: `10+47+85`."""
    return "+".join(str(n) for n in sorted(int(x) for x in re.findall(r"\d+", question)))


def wordsum3_heldout(question: str) -> bool:
    """The split by the unordered triple (every order and story of three numbers on one side)."""
    return hashed_heldout(triple_key(question))


def wordsum3_problem(rng: random.Random, forgets=never) -> Problem:
    """Three two-digit numbers added in a story: the thought is the running sums (`47+38=85,85+26=111`), the answer
    the last. A slip in the first sum is carried into the second."""
    a, b, c = (rng.randint(10, 99) for _ in range(3))
    name = rng.choice(list(NAMES))
    story = rng.choice(THREE_STORIES).format(name=name, pron=NAMES[name], things=rng.choice(THINGS), a=a, b=b, c=c)
    first = slipped_sum(a, b, forgets)
    total = slipped_sum(first, c, forgets)
    return Problem(story + WORDSUM_MARKER, f"{a}+{b}={first},{first}+{c}={total}", str(total))


# ----------------------------------------------------------------------------------------------------------- suites
@dataclass(frozen=True)
class Suite:
    name: str
    make: callable  # (rng, forgets) -> Problem, as written by a writer who slips whenever forgets() says so
    heldout: callable  # question -> bool: the side of the split
    marker: str = "="  # every answer follows the first occurrence of this text: `rlp.positions: first:MARKER`
    key: callable = lambda question: question  # question -> the problem it poses (twins written apart share one)
    thought_tokens: int = 0  # the thoughts this suite needs at least (its worked ones, the close tag, and room)

    def problems(self, n: int, seed: int, heldout: bool, forgets=never, exclude: set[str] = frozenset()) -> list[Problem]:
        """n distinct problems from one side of the split, none of whose keys (`key`) is in `exclude`, in a seeded
        order (the same order whatever `forgets`); a UserError when the side has fewer."""
        rng = random.Random(f"{self.name}:{seed}:{heldout}")
        seen, out, misses = set(), [], 0
        while len(out) < n:
            p = self.make(rng, forgets)
            if p.question not in seen and self.key(p.question) not in exclude and self.heldout(p.question) == heldout:
                seen.add(p.question)
                out.append(p)
                misses = 0
            elif (misses := misses + 1) > MAX_MISSES:
                side = "held-out" if heldout else "training-side"
                apart = f" apart from {len(exclude)} excluded" if exclude else ""
                raise UserError(f"suite {self.name}: {n} distinct {side} questions{apart} asked, only {len(out)} found")
        return out

    def training_problems(self, n: int, seed: int = 0) -> list[Problem]:
        """The problems of the RLP/CPT training corpus."""
        return self.problems(n, seed, heldout=False)

    def training_documents(self, n: int, seed: int = 0) -> list[str]:
        return [p.plain() for p in self.training_problems(n, seed)]

    def warm_start_problems(self, n: int, seed: int, forgets=never) -> list[Problem]:
        """The problems of the warm-start corpus (another seed's draw than the RLP corpus; science has so few
        questions that most are in both)."""
        return self.problems(n, seed + 10_000, False, forgets=forgets)

    def warm_start_documents(self, n: int, seed: int, think_fraction: float, slip: float = 0.0) -> list[str]:
        """Training-side documents (`warm_start_problems`), a `think_fraction` of them worked by a writer who slips
        with probability `slip` at each chance; the others plain, with the right answer."""
        rng, slips = random.Random(f"{self.name}:warm:{seed}"), random.Random(f"{self.name}:slips:{seed}")
        written = self.warm_start_problems(n, seed, forgets=lambda: slips.random() < slip)
        right = self.warm_start_problems(n, seed)
        return [w.worked() if rng.random() < think_fraction else r.plain() for w, r in zip(written, right)]

    def heldout_problems(self, n: int, seed: int = 0) -> list[Problem]:
        return self.problems(n, seed, heldout=True)

    def heldout_questions(self, n: int, seed: int = 0) -> list[dict]:
        return [p.task() for p in self.heldout_problems(n, seed)]


SUITES = {
    "math": Suite("math", math_problem, math_heldout, key=math_key),
    "science": Suite("science", science_problem, hashed_heldout),
    "wordsum": Suite("wordsum", wordsum_problem, wordsum_heldout, marker=WORDSUM_MARKER),
    "wordsum3": Suite("wordsum3", wordsum3_problem, wordsum3_heldout, marker=WORDSUM_MARKER, key=triple_key,
                      thought_tokens=24),
}


def get_suite(name: str) -> Suite:
    if name not in SUITES:
        raise UserError(f"unknown suite {name!r} (known: {', '.join(SUITES)})")
    return SUITES[name]
