"""Assemble a training run from a config: the run folder, the model, the data, the engine, the evaluation before and
after, and the closing summary. `rlpt train` is a thin shell around `train()`."""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

import torch
import yaml

from rlpt import checkpoint, config as config_lib, distributed, lora
from rlpt.data import after_marker, load_documents, make_contexts
from rlpt.evaluate import exact_match_accuracy, load_eval_set, mean_interval
from rlpt.models import load_model_and_tokenizer
from rlpt.report import NO_SIGNAL, SIGNAL_WARNING
from rlpt.rollout import make_engine
from rlpt.errors import UserError
from rlpt.rollout.base import checkpointing_keeps_dropout_off
from rlpt.rollout.decoding import documents_and_baseline
from rlpt.trainer import RlpTrainer, least_squares_trend

RUN_FILES = ("metrics.jsonl", "rollouts.jsonl", "summary.json", "checkpoints", "tensorboard", "wandb", "report.html")
PROBE_DOCUMENTS = 32
PROBE_CONTEXTS = 256  # of those documents' contexts at most (`all` positions would make thousands)


def keep_lines_up_to(path: Path, step: int) -> None:
    """Drop rows written after the checkpoint we resume from (their steps will be redone)."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
        path.write_text("".join(row + "\n" for row in rows))


def warn_on_changed_config(saved_file: Path, cfg) -> None:
    """Resuming with other settings is allowed (to train longer, say) but should never go unnoticed."""
    if not saved_file.is_file():
        return
    saved = yaml.safe_load(saved_file.read_text()) or {}
    current = config_lib.to_dict(cfg)
    changed = [
        f"{section}.{key}: {saved[section][key]!r} -> {value!r}"
        for section, values in current.items() for key, value in values.items()
        if f"{section}.{key}" != "train.max_steps" and saved.get(section, {}).get(key, value) != value
    ]
    if changed:
        print("rlpt: warning: resuming with a changed config: " + "; ".join(changed), flush=True)


def probe_baseline(teacher, probe, spec) -> list[float]:
    """S_ema of a fixed set of contexts: its change over the run is the teacher's drift. Taken as the engines take it
    (`documents_and_baseline`: one forward over each document, the head at the probed positions only), a document
    at a time: all contexts at once, each its own sequence, held 64 sequences of 2,048 tokens in one forward at the
    paper's lengths."""
    s_ema = [0.0] * len(probe)
    by_document: dict[int, list[int]] = {}
    for i, c in enumerate(probe):
        by_document.setdefault(c.doc, []).append(i)
    for members in by_document.values():
        values = documents_and_baseline(teacher, [probe[i] for i in members], spec)[-1]
        for i, value in zip(members, values.tolist()):
            s_ema[i] = value
    return s_ema


def evaluate_tasks(cfg, model, tokenizer, think) -> dict | None:
    """Greedy accuracy with thinking on `eval.tasks` and, for the built-in sets, the share of right worked thoughts."""
    if not cfg.eval.tasks:
        return None
    questions, _ = load_eval_set(cfg.eval.tasks, cfg.eval.max_questions, corpus=cfg.data.path)
    if not questions:
        return None
    result = exact_match_accuracy(
        model, tokenizer, think, questions, use_thought=True, max_thought_tokens=cfg.eval.max_thought_tokens)
    return {key: result[key] for key in ("accuracy", "thought_correct", "correct") if key in result}


def check_inputs(cfg, run_dir: Path, fresh: bool) -> None:
    """Every name and file the run reads, checked before any model is built, converted or tokenised: on a fresh
    machine a missing corpus is an error in a second, not after minutes of warming up `builtin:tiny`."""
    from rlpt.data import check_corpus
    from rlpt.evaluate import check_eval_set
    from rlpt.models import check_model_source

    if fresh or checkpoint.latest(run_dir) is None:  # a resumed run reads its checkpoint, not the model
        check_model_source(cfg.model.name_or_path)
    check_corpus(cfg.data, marker=after_marker(cfg.rlp.positions), answers=cfg.rlp.positions == "answer")
    if cfg.train.next_token_data:
        check_corpus(dataclasses.replace(cfg.data, path=cfg.train.next_token_data), "train.next_token_data")
    if cfg.eval.tasks:
        check_eval_set(cfg.eval.tasks, "eval.tasks")


def train(cfg, run_dir: Path, fresh: bool = False) -> dict:
    """Train (on this process, or as one rank of a torchrun job) and return the run's summary."""
    device = distributed.resolve_device(cfg.train.device)
    compute_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.model.dtype]
    with distributed.session(cfg.train.parallel, device, compute_dtype, cfg.train.dist_timeout_s) as world:
        return train_in(world, cfg, run_dir, device, fresh)


def prepare_run_dir(cfg, run_dir: Path, fresh: bool) -> Path | None:
    """The checkpoint to resume from (None: a fresh start, with every file of an earlier run removed)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    resume_from = None if fresh else checkpoint.latest(run_dir)
    if resume_from is None:  # a fresh start: nothing of an earlier run may mix into this one
        for name in RUN_FILES:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    else:
        warn_on_changed_config(run_dir / "config.yaml", cfg)
    config_lib.save(cfg, run_dir / "config.yaml")
    return resume_from


def train_in(world: distributed.World, cfg, run_dir: Path, device: torch.device, fresh: bool) -> dict:
    created = not run_dir.exists()
    try:
        return train_in_folder(world, cfg, run_dir, device, fresh)
    except BaseException:
        if world.main:
            discard_if_unstarted(run_dir, created)
        raise


def discard_if_unstarted(run_dir: Path, created: bool) -> None:
    """A run that failed before its first step (a bad corpus found while tokenising, a model that does not load,
    Ctrl-C in the warm start) leaves no folder holding only its config.yaml; one with a step or a checkpoint is kept
    as it is."""
    metrics = run_dir / "metrics.jsonl"
    if checkpoint.latest(run_dir) is not None or (metrics.is_file() and metrics.stat().st_size):
        return
    for name in ("config.yaml", *RUN_FILES):
        target = run_dir / name
        shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
    if created and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def train_in_folder(world: distributed.World, cfg, run_dir: Path, device: torch.device, fresh: bool) -> dict:
    resume_from = prepare_run_dir(cfg, run_dir, fresh) if world.main else None
    resume_from = distributed.all_gather(resume_from)[0]  # rank 0 decides, every rank follows
    torch.manual_seed(cfg.train.seed)
    model_source = str(resume_from) if resume_from else cfg.model.name_or_path
    # float32 master weights; a LoRA checkpoint keeps its adapter apart, to train on
    policy, tokenizer, think = load_model_and_tokenizer(model_source, "float32", device, adapter="train")
    if cfg.model.lora and not lora.is_lora(policy):
        policy = lora.wrap(policy, cfg.model.lora)
    with distributed.main_first(world):  # rank 0 tokenises the corpus files into the cache; the others then read it
        documents = load_documents(cfg.data, tokenizer, after_marker(cfg.rlp.positions))
        next_token_documents = (load_documents(dataclasses.replace(cfg.data, path=cfg.train.next_token_data), tokenizer)
                                if cfg.train.next_token_data else [])
    probe = make_contexts(documents[:PROBE_DOCUMENTS], cfg.rlp.positions, cfg.train.seed, step=-1)[:PROBE_CONTEXTS]
    per_step = cfg.train.batch_documents * world.size
    if world.main and len(documents) < per_step:
        print(f"rlpt: note: the corpus holds {len(documents)} document window{'s' if len(documents) != 1 else ''} and a "
              f"step takes {per_step} (train.batch_documents x processes): windows repeat within a step", flush=True)

    engine = make_engine(cfg.rlp.engine, policy, cfg.rlp.compile_decoding)  # probes the unwrapped model
    if world.main:
        print(f"rlpt: engine: {engine.name}", flush=True)
    if cfg.train.gradient_checkpointing and engine.name == "recurrent":
        raise UserError("train.gradient_checkpointing: the recurrent engine does not recompute layers yet (its update's "
                        "rows write their recurrent states into a cache, which a recomputed layer would write twice); "
                        "turn it off: the update's micro-batches are sized to train.memory_gb instead")
    if cfg.train.gradient_checkpointing and not checkpointing_keeps_dropout_off(policy):
        raise UserError("train.gradient_checkpointing: this model's layers apply dropout themselves once checkpointing "
                        "marks them as training (OPT and Falcon do), so the update would score thoughts with noise; "
                        "turn checkpointing off or set the model's dropout to 0 in its config.json")
    distributed.parallelize(policy, world)
    trainer = RlpTrainer(cfg, policy, tokenizer, think, documents, engine, run_dir, device, world, next_token_documents)
    probe_spec = dataclasses.replace(trainer.spec, baseline_excludes_think=False)  # the plain log p(x_t | x_<t)
    if resume_from is not None:
        trainer.restore(resume_from)
        saved = run_dir / "summary.json"
        summary = json.loads(saved.read_text()) if saved.is_file() else {}
        if trainer.state["step"] >= cfg.train.max_steps and summary.get("steps") == trainer.state["step"]:
            return {**summary, "already_done": True} if world.main else {}  # nothing to do: say so, not "finished"
        if world.main:
            print(f"rlpt: resuming from {resume_from} (step {trainer.state['step']})", flush=True)
            for name in ("metrics.jsonl", "rollouts.jsonl"):
                keep_lines_up_to(run_dir / name, trainer.state["step"])
    else:
        with trainer.autocast(), distributed.gathered(policy):
            trainer.state["before"] = {
                "eval": evaluate_tasks(cfg, policy, tokenizer, think),
                "probe_s_ema": probe_baseline(policy, probe, probe_spec),  # phi_0 = theta_0
            }
    began = time.perf_counter()
    trainer.run()
    train_seconds = time.perf_counter() - began

    with trainer.autocast(), distributed.gathered(policy):  # every rank evaluates (sharded forwards are collective)
        eval_after = evaluate_tasks(cfg, policy, tokenizer, think)
        after = probe_baseline(trainer.ema.model, probe, probe_spec) if trainer.ema.initialized else None
    if not world.main:
        return {}
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    before = trainer.state["before"]
    summary = summarize(history, before.get("eval"), eval_after)
    if after is not None:
        drift = [a - b for a, b in zip(after, before["probe_s_ema"])]
        summary["s_ema_drift"] = sum(drift) / len(drift)
        summary["s_ema_drift_abs"] = sum(abs(d) for d in drift) / len(drift)
    summary["train_seconds_this_session"] = train_seconds
    summary["processes"] = world.size
    summary["engine"] = engine.name
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def summarize(history: list[dict], eval_before: dict | None, eval_after: dict | None) -> dict:
    rewards = [row["reward_mean"] for row in history]
    slope, slope_t = least_squares_trend(rewards)
    window = min(10, max(1, len(history) // 2))  # first and last N steps, N <= half the run: they never overlap
    first, last = history[:window], history[-window:]

    def mean(key, rows):
        return sum(r[key] for r in rows) / max(1, len(rows))

    summary = dict(
        steps=len(history), reward_slope=slope, reward_slope_t=slope_t, window=window,
        reward_mean_first=mean("reward_mean", first), reward_mean_last=mean("reward_mean", last),
        loss_last=mean("loss", last), thought_len_mean=mean("thought_len_mean", history),
        thought_truncated_frac=mean("thought_truncated_frac", history), s_ema_mean_first=mean("s_ema_mean", first),
        s_ema_mean_last=mean("s_ema_mean", last), nonfinite_skipped=history[-1]["nonfinite_skipped"] if history else 0,
        step_seconds_mean=mean("step_seconds", history), thought_tokens=sum(r["thought_tokens"] for r in history),
    )
    if history and "groups_with_signal" in history[0]:
        summary.update(groups_with_signal=mean("groups_with_signal", history),
                       distinct_thoughts_mean=mean("distinct_thoughts_mean", history))
    if eval_before is not None and eval_after is not None:
        summary.update(accuracy_think_before=eval_before["accuracy"], accuracy_think_after=eval_after["accuracy"],
                       accuracy_change_ci95=paired_interval(eval_before["correct"], eval_after["correct"]))
        if "thought_correct" in eval_before:
            summary.update(thought_correct_before=eval_before["thought_correct"],
                           thought_correct_after=eval_after["thought_correct"])
    return summary


def paired_interval(before: list[bool], after: list[bool]) -> float | None:
    """Half-width of the 95% interval of the mean per-question change in correctness (normal approximation)."""
    return mean_interval([float(a) - float(b) for a, b in zip(after, before)])


def change_reading(summary: dict) -> str:
    """' (+8.2 points, 95% interval +-3.1: a real change)', or '...: within the noise', for the accuracy line."""
    if "accuracy_change_ci95" not in summary:
        return ""
    change = 100 * (summary["accuracy_think_after"] - summary["accuracy_think_before"])
    if summary["accuracy_change_ci95"] is None:
        return f" ({change:+.1f} points; no interval from fewer than 2 questions)"
    half = 100 * summary["accuracy_change_ci95"]
    verdict = "a real change" if abs(change) > half else "within the noise"
    return f" ({change:+.1f} points, 95% interval +-{half:.1f}: {verdict})"


def reward_reading(summary: dict) -> str:
    """Whether the reward moved: its least-squares trend over the steps, against twice its standard error."""
    if summary["steps"] < 3:
        return "no trend from fewer than 3 steps"
    slope, t = summary["reward_slope"], summary["reward_slope_t"]
    verdict = ("it rose" if slope > 0 else "it fell") if abs(t) > 2 else "no clear trend"
    return f"trend {slope:+.4f}/step (t = {t:+.2f}: {verdict})"


def format_summary(summary: dict, run_dir: Path) -> str:
    if summary.get("already_done"):
        head = (f"rlpt: {run_dir} is already at train.max_steps = {summary['steps']}: nothing to train (raise "
                "train.max_steps to go on, or --fresh to start over). Its summary:")
    else:
        head = f"rlpt: finished {summary['steps']} step{'s' if summary['steps'] != 1 else ''} -> {run_dir}"
    lines = [head]
    n = summary.get("window", 10)  # a summary written before the window was recorded: 10 steps
    for key in ("reward_mean_first", "reward_mean_last"):
        summary.setdefault(key, summary.get(f"{key}10"))
    steps = f"{n} step{'s' if n > 1 else ''}"
    lines.append(
        f"  reward (information gain, nats): first {steps} {summary['reward_mean_first']:+.3f}, last {steps} "
        f"{summary['reward_mean_last']:+.3f}; {reward_reading(summary)}"
    )
    lines.append(
        f"  thoughts: {summary['thought_len_mean']:.1f} tokens on average, {100 * summary['thought_truncated_frac']:.0f}% cut at "
        f"the limit; {summary['thought_tokens']} thought tokens in all"
    )
    if "groups_with_signal" in summary:
        lines.append(f"  signal: {100 * summary['groups_with_signal']:.0f}% of groups had rewards that differ "
                     f"({summary['distinct_thoughts_mean']:.1f} distinct thoughts per group on average)")
        if summary["groups_with_signal"] < SIGNAL_WARNING:
            lines.append(f"  {NO_SIGNAL}")
    if "s_ema_drift" in summary:
        lines.append(f"  EMA teacher drift on probe contexts: {summary['s_ema_drift']:+.4f} nats (mean |change| {summary['s_ema_drift_abs']:.4f})")
    if "accuracy_think_before" in summary:
        lines.append(
            f"  exact-match accuracy with thinking: {100 * summary['accuracy_think_before']:.1f}% before -> "
            f"{100 * summary['accuracy_think_after']:.1f}% after{change_reading(summary)}"
        )
    if "thought_correct_before" in summary:
        lines.append(
            f"  greedy thought exactly the worked one: {100 * summary['thought_correct_before']:.1f}% before -> "
            f"{100 * summary['thought_correct_after']:.1f}% after"
        )
    if summary["nonfinite_skipped"]:
        lines.append(f"  WARNING: {summary['nonfinite_skipped']} steps skipped for a non-finite loss or gradient")
    lines.append(f"  files: config.yaml metrics.jsonl summary.json checkpoints/ (latest: {(run_dir / 'checkpoints' / 'latest').read_text().strip() if (run_dir / 'checkpoints' / 'latest').is_file() else 'none'})")
    lines.append(f"  next: rlpt report {run_dir}   (plots, and the thoughts with their rewards when dumped)")
    lines.append(f"        rlpt eval --model {run_dir} --tasks FILE.jsonl|builtin:arith   (the trained model on questions)")
    return "\n".join(lines)
