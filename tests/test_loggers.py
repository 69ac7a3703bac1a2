"""train.report_to: TensorBoard event files hold every step's metrics; a W&B run is written offline in the run folder."""

import json

import pytest

from rlpt.cli import main


def short_run(run, model, report_to):
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={model}", "--set", "train.max_steps=3",
                 "--set", f"train.report_to={report_to}", "--set", "rlp.group_size=3", "--set", "rlp.max_thought_tokens=4",
                 "--set", "train.batch_documents=2", "--set", "eval.tasks="]) == 0
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tensorboard_gets_every_step(tmp_path, llama_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = short_run(tmp_path / "run", llama_dir, "jsonl,tensorboard")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("reward_mean")
    assert [s.step for s in scalars] == [1, 2, 3]
    assert [round(s.value, 5) for s in scalars] == [round(r["reward_mean"], 5) for r in rows]


def test_wandb_writes_an_offline_run(tmp_path, llama_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline by default
    rows = short_run(tmp_path / "run", llama_dir, "[jsonl, wandb]")
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-rlpt-*.wandb"))
    assert len(runs) == 1
    logged = runs[0].read_bytes()  # its history records hold each value as JSON text
    assert all(repr(r["reward_mean"]).encode() in logged for r in rows) and logged.count(b"reward_mean") >= len(rows)


def test_unknown_reporter_is_refused(tmp_path, llama_dir, capsys):
    assert main(["train", "--output", str(tmp_path / "run"), "--set", f"model.name_or_path={llama_dir}",
                 "--set", "train.report_to=jsonl,mlflow"]) == 2
    assert "train.report_to" in capsys.readouterr().err
