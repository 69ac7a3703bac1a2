"""Corpus files, tokenised once into an on-disk cache and read back on demand: corpora larger than memory train.

Every file of `data.path` (text, JSONL, `.parquet`, `.arrow`, or a folder written by `Dataset.save_to_disk`) streams
through the tokenizer once, record by record (JSONL line by line, `datasets` streaming, or the memory-mapped Arrow
files of a saved dataset), into a cache per corpus file: the token ids of every window in one flat file, and an index
of (start, length, first usable position, record label). Training reads a window when it needs it, from a memory
map, so the corpus never sits in memory, and a second run (or another rank) skips tokenising. The cache is keyed by
the file (path, size, modification time), the tokenizer and the settings that change the windows or the records.
"""

from __future__ import annotations

import hashlib
import json
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from itertools import accumulate
from pathlib import Path

from rlpt.errors import UserError

DATASET_SUFFIXES = {".parquet", ".arrow"}
FORMATS = {".parquet": "parquet", ".arrow": "arrow"}


def is_saved_dataset(path: Path) -> bool:
    """A folder written by `Dataset.save_to_disk`."""
    return path.is_dir() and (path / "state.json").is_file() and (path / "dataset_info.json").is_file()


def is_dataset_file(path: Path) -> bool:
    return path.is_file() and path.suffix in DATASET_SUFFIXES


def datasets_module():
    try:
        import datasets
    except ImportError as exc:
        raise UserError("data.path: .parquet/.arrow files and saved datasets need `datasets`: pip install 'rlpt[data]'") from exc
    return datasets


def records(source: Path, data_cfg) -> Iterator[tuple[int, str, int | None]]:
    """(label, text, answer_at) of every record of a corpus file, streamed. The label names the record in sources and
    errors: the line of a JSONL record, the block of a text file split into paragraphs, the row of a dataset; -1 for a
    text file that is one document. `answer_at` is where the answer of a question/answer record starts in its text
    (None for any other record)."""
    from rlpt.documents import JSONL_SUFFIXES, read_nonempty

    if is_saved_dataset(source) or is_dataset_file(source):
        yield from dataset_rows(source, data_cfg.text_field)
        return
    fmt = data_cfg.format if data_cfg.format != "auto" else ("jsonl" if source.suffix in JSONL_SUFFIXES else "text")
    if fmt == "text":
        content = read_nonempty(source)
        if not data_cfg.split_paragraphs:
            yield -1, content, None
            return
        yield from ((i + 1, block.strip(), None) for i, block in enumerate(content.split("\n\n")) if block.strip())
        return
    yield from jsonl_texts(source, data_cfg.text_field)


def jsonl_texts(source: Path, text_field: str) -> Iterator[tuple[int, str, int | None]]:
    """(line number, text, answer_at) of a JSONL file, read line by line: a record's text field, or a question/answer
    record ({"question": ..., "answer": ...}, as `rlpt eval` reads) as the question followed by its answer."""
    from rlpt.documents import jsonl_records

    for number, record in jsonl_records(source):
        if isinstance(record, dict) and isinstance(record.get(text_field), str):
            yield number, record[text_field], None
        elif isinstance(record, dict) and isinstance(record.get("question"), str) and isinstance(record.get("answer"), str):
            if not record["answer"].strip():
                raise UserError(f"{source}:{number}: the answer is empty")
            yield number, record["question"] + record["answer"], len(record["question"])
        else:
            raise UserError(f"{source}:{number}: no string field {text_field!r} (set data.text_field), nor string "
                            "fields 'question' and 'answer'")


def dataset_rows(source: Path, text_field: str) -> Iterator[tuple[int, str, None]]:
    """(row number, text, no answer) of a dataset file or saved dataset, streamed."""
    datasets = datasets_module()
    if is_saved_dataset(source):
        data = datasets.load_from_disk(str(source))  # memory-mapped Arrow: nothing is loaded up front
        if isinstance(data, datasets.DatasetDict):
            data = data["train"] if "train" in data else next(iter(data.values()))
    else:
        data = datasets.load_dataset(FORMATS[source.suffix], data_files=str(source), split="train", streaming=True)
    for number, record in enumerate(data):
        text = record.get(text_field)
        if not isinstance(text, str):
            raise UserError(f"{source}: row {number}: no string field {text_field!r} (set data.text_field)")
        yield number, text, None


def tokenizer_key(tokenizer) -> str:
    vocab = json.dumps(sorted(tokenizer.get_vocab().items())).encode()
    return hashlib.sha256(vocab + type(tokenizer).__name__.encode()).hexdigest()[:16]


INDEX_COLUMNS = 6  # per window: start in ids.u32, length, first position, holds the marker, record label, offset of
# the window in its record's tokens (in the key:
# a cache written with another layout is another folder)


def cache_folder(source: Path, tokenizer, data_cfg, after_text: str | None) -> Path:
    from rlpt.cache import cache_dir

    stat = source.stat() if source.is_file() else (source / "state.json").stat()
    key = json.dumps([str(source.resolve()), stat.st_size, stat.st_mtime_ns, tokenizer_key(tokenizer), data_cfg.max_length,
                      data_cfg.text_field, data_cfg.format, data_cfg.split_paragraphs, after_text, INDEX_COLUMNS])
    return cache_dir() / "tokens" / f"{source.stem}-{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def source_name(file: str, label: int) -> str:
    return file if label < 0 else f"{file}:{label}"


class CachedDocuments(Sequence):
    """The windows of one tokenised corpus file, read from their memory map on access."""

    def __init__(self, folder: Path, name: str):
        import numpy as np

        self.name = name
        self.index = np.load(folder / "index.npy")  # (windows, INDEX_COLUMNS)
        self.ids = np.memmap(folder / "ids.u32", dtype=np.uint32, mode="r") if self.index[:, 1].sum() else None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i):
        from rlpt.documents import Document, window_source

        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        start, length, first, holds_marker, label, offset = (int(v) for v in self.index[i])
        return Document(self.ids[start : start + length].tolist(), window_source(source_name(self.name, label), offset),
                        first, bool(holds_marker), offset)


def tokenise_into(folder: Path, source: Path, tokenizer, data_cfg, after_text: str | None) -> None:
    """Stream `source` through the tokenizer into `folder`: ids.u32 (all windows' ids) and index.npy."""
    import numpy as np

    from rlpt.documents import windows

    index = []
    written = 0
    with (folder / "ids.u32").open("wb") as out:
        for label, text, answer_at in records(source, data_cfg):
            for doc in windows(text, source_name(str(source), label), tokenizer, data_cfg.max_length, after_text,
                               answer_at):
                out.write(np.asarray(doc.ids, dtype=np.uint32).tobytes())
                index.append((written, len(doc.ids), doc.first_position, doc.holds_marker, label, doc.offset))
                written += len(doc.ids)
    np.save(folder / "index.npy", np.asarray(index, dtype=np.int64).reshape(-1, INDEX_COLUMNS))


def load(source: Path, tokenizer, data_cfg, after_text: str | None) -> CachedDocuments:
    """The cached windows of `source`, tokenised on first use."""
    from rlpt.cache import build_folder

    folder = cache_folder(source, tokenizer, data_cfg, after_text)
    if not (folder / "index.npy").is_file():
        print(f"rlpt: tokenising {source} (once; cached in {folder})", flush=True)
        build_folder(folder, lambda tmp: tokenise_into(Path(tmp), source, tokenizer, data_cfg, after_text),
                     marker="index.npy")
    return CachedDocuments(folder, str(source))


class Concatenated(Sequence):
    """Several corpora read as one sequence of documents."""

    def __init__(self, parts: list[Sequence]):
        self.parts = [p for p in parts if len(p)]
        self.ends = list(accumulate(len(p) for p in self.parts))  # one past each part's last document

    def __len__(self) -> int:
        return self.ends[-1] if self.ends else 0

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        part = bisect_right(self.ends, i)
        return self.parts[part][i - (self.ends[part - 1] if part else 0)]
