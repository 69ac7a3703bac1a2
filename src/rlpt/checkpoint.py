"""Atomic checkpoints and resume.

`RUN/checkpoints/step-N/` holds the HF model and tokenizer (`save_pretrained`), `ema.safetensors`, `optimizer.pt`
(keyed by parameter name), `rng.pt` and `trainer_state.json`, written by rank 0. Under FSDP, the model, optimizer
and EMA teacher go instead into `dcp/`, written shard by shard by every rank with `torch.distributed.checkpoint`;
it loads into any world size, or into one process without a process group (the folder keeps `config.json` and the
tokenizer, so `rlpt eval`/`export` take it like any model folder). A checkpoint is written into a temporary folder
and renamed when complete, then
`RUN/checkpoints/latest` (a one-line file naming the folder) is replaced atomically: a crash mid-write leaves the
previous checkpoint usable. Loading uses safetensors and `torch.load(weights_only=True)`: no pickle.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


SHARDED = "dcp"


def save(run_dir: Path, step: int, model, tokenizer, ema, optimizer, state: dict, world=None) -> Path:
    """Write checkpoint `step` (a collective: every rank calls it)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from rlpt import lora
    from rlpt.cache import usual_permissions
    from rlpt.distributed import World, barrier

    world = world or World()
    root = run_dir / "checkpoints"
    final, tmp = root / f"step-{step}", root / f".step-{step}.tmp"
    if world.main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier()
    if world.sharded:
        import torch.distributed.checkpoint as dcp

        dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
                  "ema": get_model_state_dict(ema.model)}, checkpoint_id=tmp / SHARDED)
    if world.main:
        if world.sharded:
            model.config.save_pretrained(tmp)
        else:
            if lora.is_lora(model):
                lora.save(model, tmp)  # the frozen base, and the adapter in adapter/
            else:
                model.save_pretrained(tmp)
            ema.save(tmp / "ema.safetensors")
            torch.save(get_optimizer_state_dict(model, optimizer), tmp / "optimizer.pt")
        tokenizer.save_pretrained(tmp)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "random_state.json").write_text(json.dumps(random.getstate()))
        (tmp / "trainer_state.json").write_text(json.dumps({**state, "step": step}, indent=1))
        usual_permissions(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        write_atomic(root / "latest", final.name + "\n")
    barrier()
    return final


def read_sharded(folder: Path, entries: dict) -> None:
    """Fill the state dicts in `entries` (keys among model, optimizer, ema) from `folder`'s `dcp/`, resharded to
    this world (or to whole tensors in one process)."""
    import warnings

    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(entries, checkpoint_id=folder / SHARDED)


def load_sharded_weights(model, folder: Path, entry: str = "model") -> None:
    """Whole weights for an unsharded `model` from a sharded checkpoint (`entry`: model or ema)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, set_model_state_dict

    weights = get_model_state_dict(model)
    read_sharded(folder, {entry: weights})
    set_model_state_dict(model, weights)


def source(path: str) -> str:
    """What a command's model argument names: a run folder resolves to its latest checkpoint; a checkpoint folder,
    model folder, `builtin:` name or .gguf file is taken as it is."""
    latest_checkpoint = None if path.startswith("builtin:") else latest(Path(path))
    return str(latest_checkpoint) if latest_checkpoint is not None else path


def run_config(path: str):
    """The resolved config of the run that a command's model argument belongs to (a run folder, or a checkpoint
    folder inside one), or None (a model folder, an exported one, a `builtin:` name)."""
    from rlpt import config as config_lib

    if path.startswith("builtin:"):
        return None
    folder = Path(path)
    for run_dir in (folder, folder.parent.parent):
        if (run_dir / "config.yaml").is_file() and (run_dir / "checkpoints").is_dir():
            return config_lib.load(str(run_dir / "config.yaml"))
    return None


def latest(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    folder = run_dir / "checkpoints" / pointer.read_text().strip()
    return folder if (folder / "trainer_state.json").is_file() else None


def restore(folder: Path, ema, policy, optimizer) -> dict:
    """Load the EMA, optimizer and RNG state of `folder` (the model is loaded from it by the caller). Either layout
    loads into either parallelism."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict, set_optimizer_state_dict,
    )

    if (folder / SHARDED).is_dir():
        ema.init_from(policy)
        entries = {"optimizer": get_optimizer_state_dict(policy, optimizer), "ema": get_model_state_dict(ema.model)}
        read_sharded(folder, entries)
        set_optimizer_state_dict(policy, optimizer, entries["optimizer"])
        set_model_state_dict(ema.model, entries["ema"])
    else:
        ema.load(folder / "ema.safetensors", policy)
        saved = torch.load(folder / "optimizer.pt", weights_only=True)
        set_optimizer_state_dict(policy, optimizer, saved, options=StateDictOptions(full_state_dict=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    version, internal, gauss = json.loads((folder / "random_state.json").read_text())
    random.setstate((version, tuple(internal), gauss))
    return json.loads((folder / "trainer_state.json").read_text())
