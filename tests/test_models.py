"""Loading local HF folders: tokenizer as saved, think tags, ids inside the embedding."""

import pytest
from transformers import AutoTokenizer

from rlpt.errors import UserError
from rlpt.models import load_model_and_tokenizer

TEXT = "12 + 34 = 46. <think>2+4</think>"


@pytest.mark.parametrize("fixture", ["llama_dir", "qwen2_dir"])
def test_local_folder_loads_with_think_tags_and_ids_inside_the_vocabulary(fixture, request):
    folder = request.getfixturevalue(fixture)
    model, tokenizer, think = load_model_and_tokenizer(folder)
    ids = tokenizer(TEXT)["input_ids"]
    vocab = model.get_input_embeddings().weight.shape[0]
    assert max(ids) < vocab and len(tokenizer) <= vocab
    assert tokenizer.decode(ids, skip_special_tokens=False).endswith(TEXT)  # spaces survive: the saved pre-tokenizer
    assert tokenizer.convert_ids_to_tokens([think.open_id, think.close_id]) == ["<think>", "</think>"]


def test_qwen2_trap_is_real_so_the_test_above_can_fail(qwen2_dir):
    # AutoTokenizer picks Qwen2Tokenizer for a qwen2 folder and changes the tokenization of the saved tokenizer.
    auto = AutoTokenizer.from_pretrained(qwen2_dir)
    _, ours, _ = load_model_and_tokenizer(qwen2_dir)
    assert auto(TEXT)["input_ids"] != ours(TEXT)["input_ids"]


def test_think_tags_added_and_embeddings_resized(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(["<pad>", "<eos>", "a", "b", " "])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=5, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    model, tokenizer, think = load_model_and_tokenizer(str(tmp_path))
    assert (think.open_id, think.close_id) == (5, 6)
    assert model.get_input_embeddings().weight.shape[0] == 7
    assert tokenizer("a<think>b</think>", add_special_tokens=False)["input_ids"] == [2, 5, 3, 6]


def test_existing_think_tags_are_kept(llama_dir):
    model, tokenizer, think = load_model_and_tokenizer(llama_dir)  # the char tokenizer has them, like Qwen3
    assert (think.open_id, think.close_id) == (4, 5)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)


def test_bad_model_path_and_dtype(tmp_path, llama_dir):
    with pytest.raises(UserError, match="not a local Hugging Face model folder"):
        load_model_and_tokenizer(str(tmp_path / "nothing"))
    with pytest.raises(UserError, match="model.dtype"):
        load_model_and_tokenizer(llama_dir, dtype="float8")
    with pytest.raises(UserError, match="unknown built-in model"):
        load_model_and_tokenizer("builtin:huge")


def test_builtin_tiny_is_built_once_and_cached(tmp_path, monkeypatch):
    from rlpt import tiny

    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setitem(tiny.RECIPES, "tiny", {**tiny.RECIPES["tiny"], "steps": 3, "warm_start_documents": 100})
    first = tiny.builtin_model_path("tiny")
    assert (first / "config.json").is_file() and (first / "recipe.json").is_file()
    mtime = (first / "config.json").stat().st_mtime
    assert tiny.builtin_model_path("tiny") == first and (first / "config.json").stat().st_mtime == mtime
    model, tokenizer, think = load_model_and_tokenizer("builtin:tiny")
    assert model.config.model_type == "llama" and think.open_id == tokenizer.convert_tokens_to_ids("<think>")
    assert list(tmp_path.iterdir()) == [first]  # no temporary folder left behind


def test_a_build_killed_midway_leaves_no_temporary_folder_for_ever(tmp_path):
    """kill -9 during a build skips its clean-up; the next build removes the temporary folders of dead processes
    (and leaves a live build's alone)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from rlpt.cache import build_folder

    target = tmp_path / "builtin-tiny-abc"
    script = ("import sys, time; from pathlib import Path; from rlpt.cache import build_folder\n"
              "build_folder(Path(sys.argv[1]), lambda tmp: ((tmp / 'part').write_text('x'), time.sleep(60)))")
    child = subprocess.Popen([sys.executable, "-c", script, str(target)])
    deadline = time.time() + 60
    while not list(tmp_path.glob(".builtin-tiny-abc-*/part")) and time.time() < deadline:
        time.sleep(0.1)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(list(tmp_path.glob(".builtin-tiny-abc-*"))) == 1  # what kill -9 leaves behind
    live = tmp_path / f".builtin-tiny-abc-pid{os.getpid()}-other"  # a build in progress in a live process
    live.mkdir()
    build_folder(target, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "builtin-tiny-abc"]
