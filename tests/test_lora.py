"""LoRA through PEFT: the base stays frozen, the EMA teacher is the base plus an EMA of the adapters (and holds the
adapters alone), checkpoints resume exactly, and `rlpt export` merges the adapters into a plain HF folder."""

import json
import shutil

import pytest
import torch
from safetensors import safe_open

from rlpt import checkpoint
from rlpt.cli import main
from rlpt.models import load_model_and_tokenizer

pytest.importorskip("peft")


def lora_run(run, model_dir, steps=4):
    """A LoRA run with dropout on its adapters: RLP runs them without (one deterministic policy samples, scores and
    is updated), so the run is reproducible and resumes exactly."""
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={model_dir}",
                 "--set", "model.lora={r: 4, alpha: 8, dropout: 0.3, target_modules: [q_proj, v_proj, up_proj]}",
                 "--set", f"train.max_steps={steps}", "--set", "train.checkpoint_every=2", "--set", "train.lr=1e-2",
                 "--set", "rlp.group_size=3", "--set", "rlp.max_thought_tokens=4", "--set", "train.batch_documents=2",
                 "--set", "rlp.ema_decay=0.5", "--set", "eval.tasks="]) == 0
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, llama_dir):
    run = tmp_path_factory.mktemp("lora") / "run"
    return run, lora_run(run, llama_dir)


def test_the_teacher_holds_the_adapters_alone_and_the_base_stays_frozen(trained, llama_dir):
    run, _ = trained
    folder = checkpoint.latest(run)
    with safe_open(str(folder / "ema.safetensors"), "pt") as f:
        names = list(f.keys())
        ema_numel = sum(f.get_tensor(n).numel() for n in names)
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    # 2 layers x (q, v: 32 -> 32, up: 32 -> 64) at rank 4: A is 4 x in, B is out x 4
    assert ema_numel == 2 * (2 * (4 * 32 + 32 * 4) + (4 * 32 + 64 * 4))
    assert (folder / "ema.safetensors").stat().st_size < ema_numel * 4 + 8192  # float32 tensors and a header
    base, _, _ = load_model_and_tokenizer(llama_dir)
    frozen, _, _ = load_model_and_tokenizer(str(folder), adapter="train")
    weights = {n.replace(".base_layer.", "."): p for n, p in frozen.get_base_model().named_parameters() if "lora_" not in n}
    assert weights.keys() == dict(base.named_parameters()).keys()
    for name, p in base.named_parameters():
        torch.testing.assert_close(weights[name], p, atol=0, rtol=0)


def test_export_merges_the_adapters_of_the_policy_and_of_the_teacher(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from rlpt.lora import AdapterEmaTeacher

    run, _ = trained
    folder = checkpoint.latest(run)
    policy, _, _ = load_model_and_tokenizer(str(folder), adapter="train")
    teacher = AdapterEmaTeacher(0.5)
    teacher.load(folder / "ema.safetensors", policy)
    ids = torch.tensor([[1, 5, 9, 13, 4, 7]])
    for flag, reference in (([], policy), (["--ema"], teacher.model)):
        out = tmp_path / f"export{''.join(flag)}"
        assert main(["export", str(run), "--out", str(out), *flag]) == 0
        assert not (out / "adapter").exists()
        merged = AutoModelForCausalLM.from_pretrained(out)
        with torch.no_grad():
            torch.testing.assert_close(merged(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # the teacher is not the policy: the EMA lags it
        assert (policy(input_ids=ids).logits - teacher.model(input_ids=ids).logits).abs().max() > 1e-4


def test_adapters_with_dropout_compute_one_function(llama_dir):
    from rlpt import lora

    policy = lora.wrap(load_model_and_tokenizer(llama_dir)[0], {"r": 2, "dropout": 0.5})
    with torch.no_grad():  # B = 0 would hide the dropout on the adapter's input
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    first, second = (policy(input_ids=ids).logits for _ in range(2))
    assert not policy.training and torch.equal(first, second)


def test_adapter_ema_update_hand_worked(llama_dir):
    from rlpt import lora

    policy = lora.wrap(load_model_and_tokenizer(llama_dir)[0], {"r": 2})
    ema = lora.AdapterEmaTeacher(0.75)
    ema.init_from(policy)
    name, param = next((n, p) for n, p in policy.named_parameters() if p.requires_grad)
    before = param.detach().clone()
    with torch.no_grad():
        param.add_(1.0)
    ema.update(policy)
    torch.testing.assert_close(ema.tensors[name], 0.75 * before + 0.25 * (before + 1.0))


def test_a_lora_run_resumes_exactly(trained, llama_dir, tmp_path):
    run, uninterrupted = trained
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    (resumed / "checkpoints" / "latest").write_text("step-2\n")
    rows = lora_run(resumed, llama_dir)
    for a, b in zip(uninterrupted, rows):
        for key in ("reward_mean", "s_pred_mean", "s_ema_mean", "grad_norm"):
            assert abs(a[key] - b[key]) < 1e-6, (a["step"], key)
