"""The methods trained from Base on the same corpus: the RL runs (RLP, RPT; `rlpt.run.train` with the budget's
settings) and continued pretraining (CPT, token- or FLOP-matched to an RLP run), and which of them a user asked for."""

from __future__ import annotations

import json
from pathlib import Path

from rlpt import config as config_lib
from rlpt.baselines import cpt
from rlpt.cache import build_folder
from rlpt.errors import UserError
from rlpt.experiment.budgets import Budget
from rlpt.experiment.report import DEFAULT_METHODS, METHODS
from rlpt.models import load_model_and_tokenizer


def rl_config(base: Path, corpus: str, budget: Budget, seed: int, reward: str, overrides: list[str],
              steps: int | None = None, lr: float | None = None, train: dict | None = None, **rlp) -> config_lib.Config:
    """An RL run's config from Base: the budget's settings (`steps` and `lr` if given instead of its RL runs'), the
    `rlp` keys and the `train` ones, then the user's `overrides`."""
    steps = budget.rl_steps if steps is None else steps
    cfg = config_lib.Config()
    config_lib.apply(cfg, {
        "model": {"name_or_path": str(base)},
        "data": {"path": str(corpus)},
        "rlp": {"group_size": budget.group_size, "max_thought_tokens": budget.thought_tokens,
                "temperature": budget.temperature, "reward": reward, **rlp},
        "train": {"lr": budget.lr if lr is None else lr, "batch_documents": budget.batch_documents, "max_steps": steps,
                  "seed": seed, "checkpoint_every": max(1, steps // budget.curve_points), **(train or {})},
        "eval": {"tasks": ""},
    }, "rlpt experiment")
    for text in overrides:
        config_lib.apply(cfg, config_lib.parse_override(text), f"--set {text}")
    config_lib.validate(cfg)
    return cfg


def rl_run(run_dir: Path, cfg) -> list[dict]:
    """Train (or finish) an RL run; returns its metrics rows."""
    from rlpt.run import train

    if not (run_dir / "summary.json").is_file():
        train(cfg, run_dir)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def export_checkpoint(run_dir: Path, folder: Path) -> Path:
    from rlpt.export import export

    return folder if (folder / "config.json").is_file() else export(str(run_dir), folder)


def continued_pretraining(base: Path, folder: Path, cfg, tokens: int, budget: Budget, seed: int, name: str) -> dict:
    """Next-token training of Base on the documents the RL runs read (`cfg.data`), at the RL runs' learning rate."""
    from rlpt.data import load_documents

    info = {}

    def build(tmp):
        model, tokenizer, _ = load_model_and_tokenizer(str(base))
        documents = [d.ids for d in load_documents(cfg.data, tokenizer)]
        info.update(cpt.continued_pretraining(
            model, documents, tokens, batch_size=budget.cpt_batch, lr=cfg.train.lr, pad_id=tokenizer.pad_token_id,
            seed=seed, desc=f"{name} (seed {seed})"))
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "cpt.json").write_text(json.dumps({k: v for k, v in info.items() if k != "losses"}))

    build_folder(folder, build)
    return json.loads((folder / "cpt.json").read_text())


def chosen_methods(names: list[str] | None, ablate: bool) -> list[str]:
    """The methods to run, in METHODS' order: DEFAULT_METHODS by default; Base always; CPT needs an RLP run to match."""
    if not names:
        return list(DEFAULT_METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UserError(f"--methods: unknown {', '.join(unknown)} (known: {', '.join(METHODS)})")
    chosen = [m for m in METHODS if m in names or m == "base"]
    if {"cpt-token", "cpt-flop", "cpt-flop4"} & set(chosen) and not {"rlp", "rlp-answer", "rlp-ntp"} & set(chosen):
        raise UserError("--methods: CPT is matched to an RLP run's budget: add rlp, rlp-answer or rlp-ntp")
    if "cpt-mixed" in chosen and "rlp-mixed" not in chosen:
        raise UserError("--methods: cpt-mixed is matched to the budget of rlp-mixed: add rlp-mixed")
    if ablate and "rlp" not in chosen:
        raise UserError("--ablate varies RLP (K = 1): add rlp to --methods")
    return chosen
