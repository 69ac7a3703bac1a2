"""`rlpt export`: a run becomes a plain HF folder that transformers loads, policy or EMA teacher."""

import torch
from transformers import AutoModelForCausalLM

from rlpt import config as config_lib
from rlpt.cli import main
from rlpt.run import train


def test_export_a_run_then_load_it_with_transformers(llama_dir, tmp_path, capsys):
    cfg = config_lib.load(None, [f"model.name_or_path={llama_dir}", "rlp.group_size=2", "rlp.max_thought_tokens=3",
                                 "rlp.positions=random:1", "train.batch_documents=2", "train.max_steps=2",
                                 "train.lr=1e-2", "eval.tasks="])
    run = tmp_path / "run"
    train(cfg, run)
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "teacher"), "--ema"]) == 0
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    teacher = AutoModelForCausalLM.from_pretrained(tmp_path / "teacher")
    trained = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "step-2")
    for p, q in zip(policy.parameters(), trained.parameters()):
        assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(policy.parameters(), teacher.parameters()))  # phi lags theta
    assert {f.name for f in (tmp_path / "policy").iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json",
                                                                  "generation_config.json"}
    assert not (tmp_path / "policy" / "optimizer.pt").exists()
    capsys.readouterr()
    assert main(["export", str(run), "--out", str(tmp_path / "policy")]) == 2  # never overwrites
    assert "exists and is not empty" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "neither a run folder with a checkpoint nor a model folder" in capsys.readouterr().err


def test_written_model_folders_are_readable_under_the_users_umask(llama_dir, tmp_path):
    """A folder built through a temporary one (0700), holding weights that safetensors writes 0600, gets the
    permissions of a new file: 0755 / 0644 under umask 022."""
    import os
    import stat

    from rlpt.export import export

    old = os.umask(0o022)
    try:
        out = export(llama_dir, tmp_path / "exported")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o644
