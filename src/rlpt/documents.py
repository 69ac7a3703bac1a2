"""A document: the token ids of one window of a text, where it came from, and where its usable positions start;
cutting a text into such windows; and reading the files texts come from, with errors that name the file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rlpt.errors import UserError

TEXT_SUFFIXES = {".txt", ".md", ".text"}
JSONL_SUFFIXES = {".jsonl", ".json"}


@dataclass
class Document:
    ids: list[int]
    source: str  # file:line (or builtin name), `@N` after it for a window from token N of its text: error messages,
    # rollout dumps, and the report's reading of a document again name one window
    first_position: int = 1  # smallest usable t (after:TEXT moves it)
    holds_marker: bool = True  # False for the windows of a long text after the one whose first_position follows
    # the marker: `first:TEXT` takes a position only in the window that holds the first token after TEXT
    offset: int = 0  # the window's first token in its text


def window_source(source: str, offset: int) -> str:
    """The name of the window of `source` that starts at token `offset`: the text's own name for its first window."""
    return source if offset == 0 else f"{source}@{offset}"


def read_nonempty(file: Path) -> str:
    try:
        content = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read ({exc})") from exc
    if not content.strip():
        raise UserError(f"{file}: the file is empty")
    return content


def jsonl_records(file: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed JSON) of every non-blank line, read line by line; a malformed line is an error naming file
    and line, and so is a file without any record."""
    seen = False
    try:
        with file.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    seen = True
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise UserError(f"{file}:{number}: malformed JSON line ({exc.msg})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{file}: cannot read ({exc})") from exc
    if not seen:
        raise UserError(f"{file}: the file is empty")


def first_token_from(offsets: list[tuple[int, int]], char: int) -> int | None:
    """Index of the first token (`offsets`: a tokenizer's offset mapping) that starts at or after character `char` (at
    least 1), or None."""
    for index, (start, stop) in enumerate(offsets):
        if start >= char and stop > start:
            return max(index, 1)
    return None


def marker_position(text: str, offsets: list[tuple[int, int]], marker: str) -> int | None:
    """Index of the first token that starts after the first `marker` in `text`, or None without a marker."""
    at = text.find(marker)
    return None if at < 0 else first_token_from(offsets, at + len(marker))


def first_position_after(tokenizer, text: str, marker: str) -> int | None:
    """`marker_position` of `text` as `tokenizer` splits it."""
    return marker_position(text, tokenizer(text, return_offsets_mapping=True)["offset_mapping"], marker)


def answer_start(text: str, offsets: list[tuple[int, int]], answer_at: int, source: str) -> int:
    """The first token of the answer of a question/answer record whose answer starts at character `answer_at`; an
    error where one token holds the end of the question and the start of the answer (the thought's place would be
    inside the answer)."""
    spanning = [text[a:b] for a, b in offsets if a < answer_at < b]
    if spanning:
        raise UserError(f"{source}: the token {spanning[0]!r} holds the end of the question and the start of the "
                        "answer, so no thought can go between them: end the question where the tokenizer splits "
                        "(e.g. without a trailing space, the answer starting with one)")
    return first_token_from(offsets, answer_at)


def windows(text: str, source: str, tokenizer, max_length: int, after_text: str | None,
            answer_at: int | None = None) -> list[Document]:
    """The documents of one text: windows of at most `max_length` tokens, those that hold a usable position. The
    positions of a question/answer record (`answer_at`: the character its answer starts at) start at its answer;
    those of another text after the first `after_text` (`after:`/`first:` rules), or at 1."""
    located = answer_at is not None or after_text is not None  # a position found by character: the offsets too
    encoded = tokenizer(text, return_offsets_mapping=True) if located else tokenizer(text)
    ids = encoded["input_ids"]
    if len(ids) < 2:
        raise UserError(f"{source}: document shorter than 2 tokens ({text[:40]!r})")
    first = 1
    if answer_at is not None:
        first = answer_start(text, encoded["offset_mapping"], answer_at, source)
    elif after_text is not None:
        first = marker_position(text, encoded["offset_mapping"], after_text)
    if first is None:
        return []
    out = []
    for start in range(0, len(ids), max_length):
        window = ids[start : start + max_length]
        if len(window) >= 2 and start + len(window) > first:
            out.append(Document(window, window_source(source, start), max(1, first - start),
                                holds_marker=first - start >= 1, offset=start))
    return out
