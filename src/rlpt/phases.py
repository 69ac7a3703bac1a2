"""Where one RLP step's time goes: a trainer's step split into its phases, timed over a few steps of the same batch
(the same documents, positions and draws each time), after one untimed warm-up step.

Phases: the EMA teacher's forward over the documents (S_ema), the policy's forward over them (the keys and values the
thoughts attend to), decoding the thoughts (S_pred is read while decoding), the update's forward and backward over
the thoughts (with the loss), the next-token term beside RLP, the optimizer step with the EMA update, and the rest
(rewards, advantages, metrics). With the reference engine the first three are one phase.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from contextlib import contextmanager

PHASES = ["teacher forward (S_ema)", "policy forward over the documents", "decoding the thoughts",
          "update forward + backward", "next-token term", "optimizer + EMA", "the rest"]


def phase_times(trainer, steps: int, step: int = 0, warmup: bool = True) -> dict[str, list[float]]:
    """Seconds per phase (and "total", "thought tokens") for each of `steps` runs of `trainer.rlp_step(step)`, after
    an untimed one if `warmup`. The trainer's engine, optimizer and EMA are wrapped for good: use a trainer made for
    this."""
    from rlpt.rollout import packed, recurrent

    engine = trainer.engine
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
    if warmup:
        trainer.rlp_step(step)
    rows = defaultdict(list)
    for _ in range(steps):
        times.clear()
        began = time.perf_counter()
        metrics = trainer.rlp_step(step).metrics
        total = time.perf_counter() - began
        for phase in PHASES[:-1]:
            rows[phase].append(times[phase])
        rows["the rest"].append(total - sum(v for k, v in times.items() if k != "rollout"))
        rows["total"].append(total)
        rows["thought tokens"].append(metrics["thought_tokens"])
    return rows


def phase_table(rows: dict[str, list[float]]) -> str:
    """Median seconds and share of the step per phase, as a markdown table."""
    total = statistics.median(rows["total"])
    lines = ["| phase | s/step | share |", "|---|---|---|"]
    for phase in PHASES:
        seconds = statistics.median(rows[phase])
        if seconds > 0:
            lines.append(f"| {phase} | {seconds:.2f} | {seconds / total:.0%} |")
    lines.append(f"| whole step | {total:.2f} | 100% |")
    return "\n".join(lines)
