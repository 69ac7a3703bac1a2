"""Where one RLP step's time goes, for a run's own config: the step split into its phases, timed over a few steps of
the run's first batch (the same documents, positions and draws each time), after one untimed warm-up step.

Phases: the EMA teacher's forward over the documents (S_ema), the policy's forward over them (the keys and values the
thoughts attend to), decoding the thoughts (S_pred is read while decoding), the update's forward and backward over
the thoughts (with the loss), the next-token term beside RLP, the optimizer step with the EMA update, and the rest
(rewards, advantages, metrics). With the reference engine the first three are one phase.

    python bench/profile_step.py --config examples/smollm2_wordsum.yaml [--set key=value ...] [--steps 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

PHASES = ["teacher forward (S_ema)", "policy forward over the documents", "decoding the thoughts",
          "update forward + backward", "next-token term", "optimizer + EMA", "the rest"]


def profile(cfg, steps: int) -> dict[str, list[float]]:
    from rlpt import config as config_lib  # noqa: F401  (the config is loaded by the caller)
    from rlpt.data import after_marker, load_documents
    from rlpt.models import load_model_and_tokenizer
    from rlpt.rollout import make_engine, packed, recurrent
    from rlpt.trainer import RlpTrainer

    policy, tokenizer, think = load_model_and_tokenizer(cfg.model.name_or_path, "float32")
    documents = load_documents(cfg.data, tokenizer, after_marker(cfg.rlp.positions))
    extra = []
    if cfg.train.next_token_data:
        import dataclasses

        extra = load_documents(dataclasses.replace(cfg.data, path=cfg.train.next_token_data), tokenizer)
    engine = make_engine(cfg.rlp.engine, policy, cfg.rlp.compile_decoding)
    trainer = RlpTrainer(cfg, policy, tokenizer, think, documents, engine, Path("."), torch.device("cpu"),
                         next_token_documents=extra)
    times: dict[str, float] = defaultdict(float)

    @contextmanager
    def timed(phase):
        began = time.perf_counter()
        try:
            yield
        finally:
            times[phase] += time.perf_counter() - began

    def wrap(owner, name, phase):
        original = getattr(owner, name)

        def run(*args, **kwargs):
            with timed(phase):
                return original(*args, **kwargs)

        setattr(owner, name, run)

    # the teacher's forward is the rollout before the documents' forward (the packed engine's document_prefix, the
    # recurrent engine's document_states, timed in the rollout only: the update calls them too)
    documents_forward = {"packed": (packed, "document_prefix"), "recurrent": (recurrent, "document_states")}
    if engine.name in documents_forward:
        module, name = documents_forward[engine.name]
        original_forward = getattr(module, name)
        wrap(engine, "decode_thoughts", "decoding the thoughts")
        original_rollout = engine.rollout

        def rollout(*args, **kwargs):
            before = dict(times)
            wrap(module, name, "policy forward over the documents")
            try:
                with timed("rollout"):
                    out = original_rollout(*args, **kwargs)
            finally:
                setattr(module, name, original_forward)
            inner = sum(times[p] - before.get(p, 0.0) for p in ("policy forward over the documents", "decoding the thoughts"))
            times["teacher forward (S_ema)"] += times["rollout"] - before.get("rollout", 0.0) - inner
            return out

        engine.rollout = rollout
    else:
        wrap(engine, "rollout", "decoding the thoughts")
    wrap(trainer, "accumulate_gradients", "update forward + backward")
    wrap(trainer, "next_token_gradients", "next-token term")
    wrap(trainer.optimizer, "step", "optimizer + EMA")
    wrap(trainer.ema, "update", "optimizer + EMA")
    trainer.rlp_step(0)  # warm-up
    rows = defaultdict(list)
    for _ in range(steps):
        times.clear()
        began = time.perf_counter()
        metrics = trainer.rlp_step(0).metrics
        total = time.perf_counter() - began
        for phase in PHASES[:-1]:
            rows[phase].append(times[phase])
        rows["the rest"].append(total - sum(v for k, v in times.items() if k != "rollout"))
        rows["total"].append(total)
        rows["thought tokens"].append(metrics["thought_tokens"])
    return rows


def main() -> None:
    from rlpt import config as config_lib

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    cfg = config_lib.load(args.config, args.set)
    rows = profile(cfg, args.steps)
    total = statistics.median(rows["total"])
    tokens = statistics.median(rows["thought tokens"])
    print(f"one RLP step of {cfg.model.name_or_path}: {cfg.train.batch_documents} documents, G = {cfg.rlp.group_size}, "
          f"L <= {cfg.rlp.max_thought_tokens}, {tokens:.0f} thought tokens; median of {args.steps} steps: {total:.2f} s "
          f"({tokens / total:.0f} thought tokens/s)")
    print("| phase | s/step | share |")
    print("|---|---|---|")
    for phase in PHASES:
        seconds = statistics.median(rows[phase])
        if seconds > 0:
            print(f"| {phase} | {seconds:.2f} | {seconds / total:.0%} |")


if __name__ == "__main__":
    main()
