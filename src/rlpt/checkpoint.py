"""Atomic checkpoints and resume.

`RUN/checkpoints/step-N/` holds the HF model and tokenizer (`save_pretrained`), `ema.safetensors`, `optimizer.pt`,
`rng.pt` and `trainer_state.json`. A checkpoint is written into a temporary folder and renamed when complete, then
`RUN/checkpoints/latest` (a one-line file naming the folder) is replaced atomically: a crash mid-write leaves the
previous checkpoint usable. Loading uses safetensors and `torch.load(weights_only=True)`: no pickle.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def build_folder(folder: Path, build) -> Path:
    """A model folder written whole or not at all: `build(tmp)` writes into a temporary sibling, which is renamed to
    `folder` when complete. A folder that already holds a model (config.json) is kept as it is."""
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(tmp)
        os.replace(tmp, folder)  # also replaces an empty folder
    except OSError:
        if not (folder / "config.json").is_file():  # a concurrent build may have won the rename
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def save(run_dir: Path, step: int, model, tokenizer, ema, optimizer, state: dict) -> Path:
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".step-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    ema.save(tmp / "ema.safetensors")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save(rng, tmp / "rng.pt")
    (tmp / "random_state.json").write_text(json.dumps(random.getstate()))
    (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_atomic(root / "latest", final.name + "\n")
    return final


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    return folder if (folder / "trainer_state.json").is_file() else None


def restore(folder: Path, ema, policy, optimizer) -> dict:
    """Load the EMA, optimizer and RNG state of `folder` (the model is loaded from it by the caller)."""
    ema.load(folder / "ema.safetensors", policy)
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = json.loads((folder / "random_state.json").read_text())
    random.setstate((version, tuple(internal), gauss))
    return json.loads((folder / "trainer_state.json").read_text())
