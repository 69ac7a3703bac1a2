"""RLP in the paper's own setting (`--methods rlp-mixed,cpt-mixed`): thoughts at random positions of ordinary text in
which the task's stories are diluted, not at a marker before each answer. The mixed corpus is the suites' training
stories and passages of Shakespeare's plays, PROSE_PARTS characters of prose to one of stories, shuffled; the prose
comes from the plays before the held-out ones (`prose.HELDOUT_PLAYS`), so the prose loss is still measured on text
in no corpus. After the run, its thoughts (rollouts.jsonl) are sorted by where they were placed: in prose, in a
story before its answer, or at the answer itself."""

from __future__ import annotations

import json
import random
import statistics
from collections import defaultdict
from pathlib import Path

from rlpt.batch import SIGNAL_TOLERANCE
from rlpt.errors import UserError

PROSE_PARTS = 3  # characters of prose per character of stories
KINDS = ("prose", "story", "answer")  # where a thought is placed: in prose, in a story before its answer, at the answer
EXAMPLES = 6  # thoughts at prose positions shown in table.md


def prose_passages(texts: list[tuple[str, str]], length: int, characters: int, marker: str, seed: int) -> list[str]:
    """Passages of consecutive lines of `texts` (a play's speaker names are lines of their own), each just over
    `length` characters, drawn in a seeded order until they hold `characters` characters; none holds `marker` (a
    passage must not read as a story). Lines, not speeches: a speech can run to thousands of characters."""
    lines = [line.strip() for text, _ in texts for line in text.splitlines() if line.strip()]
    passages, current = [], []
    for line in lines:
        current.append(line)
        if sum(len(p) for p in current) >= length:
            passage = "\n".join(current)
            if marker not in passage:
                passages.append(passage)
            current = []
    random.Random(seed).shuffle(passages)
    chosen, total = [], 0
    for passage in passages:
        chosen.append(passage)
        total += len(passage)
        if total >= characters:
            return chosen
    raise UserError(f"the plays hold {total} characters of prose passages, {characters} asked for the mixed corpus")


def mixed_documents(stories: list[str], texts: list[tuple[str, str]], marker: str, seed: int = 0) -> list[str]:
    """The stories and PROSE_PARTS times their characters of prose passages (about a story's length each), shuffled."""
    length = round(statistics.mean(len(s) for s in stories))
    prose = prose_passages(texts, length, PROSE_PARTS * sum(len(s) for s in stories), marker, seed)
    documents = stories + prose
    random.Random(seed).shuffle(documents)
    return documents


def write_mixed_corpus(path: Path, stories: list[str], marker: str) -> str:
    """The mixed corpus as JSONL (`data.path` of `rlp-mixed` and `cpt-mixed`), from the plays before the held-out."""
    from rlpt.experiment.prose import HELDOUT_PLAYS
    from rlpt.data import shakespeare_texts

    texts = shakespeare_texts()[:-HELDOUT_PLAYS]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in mixed_documents(stories, texts, marker)))
    return str(path)


def position_kind(prefix: str, story: bool, marker: str) -> str:
    """Where a thought after `prefix` (the document's text before x_t) was placed."""
    if not story:
        return "prose"
    return "answer" if marker in prefix else "story"


def signal_by_kind(run_dir: Path, cfg, marker: str) -> dict:
    """From a run's rollouts.jsonl: for each kind of position, the contexts drawn, the share of their groups with signal
    (rewards not all equal), the mean |advantage| and the mean reward (nats; the information gain); and the
    highest-advantage thought of EXAMPLES prose contexts of the last step, with the text around it."""
    from rlpt.data import load_documents
    from rlpt.models import load_tokenizer

    tokenizer = load_tokenizer(cfg.model.name_or_path)
    documents = {d.source: d.ids for d in load_documents(cfg.data, tokenizer)}
    stories = {source for source, ids in documents.items() if marker in tokenizer.decode(ids)}
    groups = defaultdict(list)  # (step, doc, position) -> its rows
    with open(run_dir / "rollouts.jsonl") as handle:
        for line in handle:
            row = json.loads(line)
            groups[row["step"], row["doc"], row["position"]].append(row)
    table = {kind: dict(contexts=0, signal=0, advantage=[], reward=[]) for kind in KINDS}
    last, examples = max(step for step, _, _ in groups), []
    for (step, doc, position), rows in groups.items():
        kind = position_kind(tokenizer.decode(documents[doc][:position]), doc in stories, marker)
        cell = table[kind]
        rewards = [r["reward"] for r in rows]
        cell["contexts"] += 1
        cell["signal"] += max(rewards) - min(rewards) > SIGNAL_TOLERANCE
        cell["advantage"] += [abs(r["advantage"]) for r in rows]
        cell["reward"] += rewards
        if kind == "prose" and step == last and len(examples) < EXAMPLES:
            best = max(rows, key=lambda r: r["advantage"])
            examples.append(dict(context=rows[0]["context"], scored=rows[0]["scored"], thought=best["thought_text"],
                                 advantage=best["advantage"], reward=best["reward"]))
    kinds = {kind: dict(contexts=c["contexts"], with_signal=c["signal"],
                        advantage_abs=statistics.mean(c["advantage"]) if c["advantage"] else 0.0,
                        reward=statistics.mean(c["reward"]) if c["reward"] else 0.0) for kind, c in table.items()}
    return dict(kinds=kinds, examples=examples, last_step=last)
