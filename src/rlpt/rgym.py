"""reasoning-gym's generators (Apache-2.0, offline) as RLP corpora and evaluation sets: `reasoning_gym:NAME`, with
`?size=N&seed=S` (defaults 1000 and 0), in `data.path` and `eval.tasks`.

- As a corpus, each problem is one plain-text document: `Question: ...`, the generator's worked solution when its
  metadata has one (`Solution: ...`, the paper's "SFT-style" corpus), then `Answer: ...`. With
  `rlp.positions: first:Answer:` RLP thinks once, right before the answer.
- As an evaluation set, the model sees `Question: ...\\nAnswer:`, thinks, answers, and the answer (up to the end of its
  line) is scored by the generator's own checker; full marks count as correct.
Draw the evaluation set with another seed than the corpus. Generators repeat themselves (two seeds of
`gsm_symbolic` share about 3% of their questions), so training leaves out of its evaluation set every question that
also occurs in its corpus.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import parse_qsl

from rlpt.errors import UserError

PREFIX = "reasoning_gym:"
SOLUTION_KEYS = ("answer_cot", "solution", "cot")


def parse(spec: str) -> tuple[str, int, int]:
    """`reasoning_gym:NAME?size=N&seed=S` -> (NAME, N, S)."""
    name, _, query = spec.removeprefix(PREFIX).partition("?")
    options = dict(parse_qsl(query))
    unknown = set(options) - {"size", "seed"}
    if not name or unknown:
        raise UserError(f"{spec!r}: expected reasoning_gym:NAME?size=N&seed=S (unknown: {sorted(unknown)})")
    try:
        return name, int(options.get("size", 1000)), int(options.get("seed", 0))
    except ValueError as exc:
        raise UserError(f"{spec!r}: size and seed must be integers") from exc


@lru_cache(maxsize=8)
def dataset(spec: str):
    try:
        import reasoning_gym
    except ImportError as exc:
        raise UserError(f"{spec}: needs reasoning-gym: pip install 'rlpt[gym]'") from exc
    name, size, seed = parse(spec)
    try:
        return reasoning_gym.create_dataset(name, size=size, seed=seed)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{spec}: reasoning-gym cannot make {name!r} ({exc})") from exc


def prompt(question: str) -> str:
    return f"Question: {question.strip()}\nAnswer:"


def document(entry: dict) -> str:
    solution = next((str(entry["metadata"][k]).strip() for k in SOLUTION_KEYS if entry.get("metadata", {}).get(k)), None)
    worked = f"Solution: {solution}\n" if solution else ""
    return f"Question: {entry['question'].strip()}\n{worked}Answer: {entry['answer']}"


def documents(spec: str) -> list[tuple[str, str]]:
    """(text, source) per problem."""
    return [(document(entry), f"{spec}#{i}") for i, entry in enumerate(dataset(spec))]


def heldout(spec: str, limit: int | None = None, corpus: str | None = None) -> list[dict]:
    """The problems of `spec` (at most `limit`), without those whose question also occurs in `corpus` (another
    reasoning_gym spec)."""
    seen = {entry["question"] for entry in dataset(corpus)} if corpus and corpus.startswith(PREFIX) else set()
    return [entry for entry in dataset(spec) if entry["question"] not in seen][:limit]


def questions(spec: str, limit: int | None = None, corpus: str | None = None) -> list[dict]:
    """Evaluation tasks of `heldout`: the prompt, the reference answer, and `score(answer) -> bool` by the generator's
    checker."""
    data = dataset(spec)
    return [dict(question=prompt(entry["question"]), answer=str(entry["answer"]),
                 score=lambda answer, entry=entry: data.score_answer(answer, entry) >= 1.0)
            for entry in heldout(spec, limit, corpus)]
