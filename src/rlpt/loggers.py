"""Where a run's metrics go besides `metrics.jsonl` (always written): `train.report_to: [tensorboard, wandb]`.

- `tensorboard`: event files in `RUN/tensorboard/` (`tensorboard --logdir RUN/tensorboard`).
- `wandb`: a Weights & Biases run in `RUN/wandb/`, offline unless `WANDB_MODE` says otherwise (`wandb sync` uploads
  it later). Its project is `WANDB_PROJECT`, or rlpt.
Only rank 0 reports.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from rlpt.errors import UserError

CHOICES = ("jsonl", "tensorboard", "wandb")


class TensorBoard:
    def __init__(self, run_dir: Path, config: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise UserError("train.report_to: tensorboard needs the tensorboard package: pip install 'rlpt[report]'") from exc
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(flatten(config).items())))

    def log(self, metrics: dict, step: int) -> None:
        for key, value in numbers(metrics).items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Wandb:
    def __init__(self, run_dir: Path, config: dict):
        try:
            import wandb
        except ImportError as exc:
            raise UserError("train.report_to: wandb needs the wandb package: pip install 'rlpt[report]'") from exc
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "rlpt"), name=run_dir.name, dir=str(run_dir),
                              config=config, mode=os.environ.get("WANDB_MODE", "offline"), resume="allow",
                              id="rlpt-" + hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:12])  # resumes

    def log(self, metrics: dict, step: int) -> None:
        self.run.log(numbers(metrics), step=step)

    def close(self) -> None:
        self.run.finish()


def flatten(config: dict) -> dict:
    return {f"{section}.{key}": value for section, values in config.items() for key, value in values.items()}


def numbers(metrics: dict) -> dict:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"}


def open_all(names: list[str], run_dir: Path, config: dict) -> list:
    """The reporters named in `train.report_to` (jsonl is the metrics.jsonl every run writes)."""
    makers = {"tensorboard": TensorBoard, "wandb": Wandb}
    return [makers[name](run_dir, config) for name in names if name in makers]
