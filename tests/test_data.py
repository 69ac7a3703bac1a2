"""Corpora, windows, position rules, and the errors bad input gets."""

import random

import pytest

from rlpt.config import DataConfig
from rlpt.data import Document, after_marker, load_documents, make_contexts, positions, windows
from rlpt.errors import UserError
from rlpt.tiny import char_tokenizer


@pytest.fixture(scope="module")
def tok():
    return char_tokenizer()


def cfg(path, **kw):
    return DataConfig(path=str(path), **kw)


def test_text_jsonl_folder_glob_and_builtin(tmp_path, tok):
    (tmp_path / "a.txt").write_text("hello world\n\nsecond block")
    (tmp_path / "b.jsonl").write_text('{"text": "one doc"}\n\n{"text": "two doc", "x": 1}\n')
    docs = load_documents(cfg(tmp_path), tok)
    assert [d.source.split("/")[-1] for d in docs] == ["a.txt", "b.jsonl:1", "b.jsonl:3"]
    assert docs[1].ids == tok("one doc")["input_ids"]
    split = load_documents(cfg(tmp_path / "a.txt", split_paragraphs=True), tok)
    assert len(split) == 2 and split[1].source.endswith("a.txt:2")
    assert len(load_documents(cfg(tmp_path / "*.jsonl"), tok)) == 2
    arith = load_documents(cfg("builtin:arith"), tok)
    assert len(arith) == 20_000 and tok.decode(arith[0].ids, skip_special_tokens=True).endswith(".")


def test_windows_cut_long_documents(tmp_path, tok):
    (tmp_path / "long.txt").write_text("x" * 25)  # 26 ids with <bos>
    docs = load_documents(cfg(tmp_path / "long.txt", max_length=10), tok)
    assert [len(d.ids) for d in docs] == [10, 10, 6]


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "empty"),
        ('{"text": "fine"}\n{"text": broken\n', "b.jsonl:2: malformed JSON"),
        ('{"text": "fine"}\n{"body": "x"}\n', "b.jsonl:2: no string field 'text'"),
        ('{"text": ""}\n', "shorter than 2 tokens"),
    ],
)
def test_bad_files_name_file_and_line(tmp_path, tok, content, message):
    (tmp_path / "b.jsonl").write_text(content)
    with pytest.raises(UserError, match=message):
        load_documents(cfg(tmp_path / "b.jsonl"), tok)


def test_missing_path_and_no_usable_position(tmp_path, tok):
    with pytest.raises(UserError, match="not a file, a folder or a glob"):
        load_documents(cfg(tmp_path / "nope.txt"), tok)
    (tmp_path / "a.txt").write_text("no marker here")
    with pytest.raises(UserError, match="no usable position after '='"):
        load_documents(cfg(tmp_path / "a.txt"), tok, after_text="=")


def test_position_rules():
    doc = Document(list(range(10)), "d")  # usable t: 1..9
    rng = random.Random(0)
    assert positions(doc, "all", rng) == list(range(1, 10))
    assert positions(doc, "every:3", rng) == [3, 6, 9]
    assert positions(doc, "list:0,2,5,12", rng) == [2, 5]
    picked = positions(doc, "random:4", rng)
    assert len(picked) == 4 and len(set(picked)) == 4 and all(1 <= t < 10 for t in picked)
    assert positions(doc, "random:40", rng) == list(range(1, 10))


def test_after_rule_starts_after_the_marker(tok):
    from rlpt.documents import first_position_after

    text = "12+34=46."
    first = first_position_after(tok, text, "=")
    ids = tok(text)["input_ids"]
    assert tok.decode(ids[first:]) == "46."
    doc = Document(ids, "d", first)
    assert [tok.decode([ids[t]]) for t in positions(doc, "after:=", random.Random(0))] == ["4", "6", "."]
    assert [tok.decode([ids[t]]) for t in positions(doc, "first:=", random.Random(0))] == ["4"]


def test_first_marker_takes_one_position_per_text_however_it_is_windowed(tmp_path, monkeypatch, tok):
    """A 16-token window limit cut this text into 5 windows, and every window after the marker's got a context at
    t = 1: positions [13], [1], [1], [1], [1]. `first:=` is the token after the first '=' of the text, once."""
    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    text = "123456+654321=777777. " + "and then a long tail of text " * 2  # <bos> + 14 characters: t = 15
    (tmp_path / "long.txt").write_text(text)
    docs = load_documents(cfg(tmp_path / "long.txt", max_length=16), tok, after_marker("first:="))  # via the cache
    assert len(docs) == 5
    contexts = make_contexts(list(docs), "first:=", seed=0, step=0)
    assert [(c.doc, c.position, tok.decode([c.target])) for c in contexts] == [(0, 15, "7")]
    after = make_contexts(list(docs), "after:=", seed=0, step=0)  # after: still takes every token after it
    assert [c.position for c in after if c.doc == 0] == [15] and {c.doc for c in after} == {0, 1, 2, 3, 4}
    in_memory = windows(text, "t", tok, 16, "=")  # the in-memory path of built-in corpora
    assert [d.holds_marker for d in in_memory] == [True, False, False, False, False]
    # a window that starts at the marker's first token has no prefix for it: no first: position there
    edge = windows("12345678901234=" + "9" * 20, "t", tok, 16, "=")
    assert make_contexts(edge, "first:=", 0, 0) == []
