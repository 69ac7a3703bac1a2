"""Compute where the signal is, side by side in one sitting: a recipe (the built-in default `rlpt train` unless
`--set` says otherwise) run with each of
- `every`: every thought through the update's forward and backward (rlpt before it skipped any),
- `skip`: thoughts of advantage exactly 0 left out of the update (rlpt's default; the same step, less work),
- `dynamic`: skip, and `rlp.dynamic_sampling=R` (rounds of draws until groups with signal fill the batch),
alternated (every, skip, dynamic, every, ...) over `train.seed`s, each run a fresh process after one warm-up run
that builds the model cache. Prints, per run and per setting: accuracy with a greedy thought on training-side
questions (`--training-side`: what settings are chosen on) and on the run's own held-out `eval.tasks`, training seconds
(the steps, without the evaluations), seconds a step, groups with signal, thoughts run in the update, and contexts
drawn over contexts trained. CPU, about 1.5 minutes a run of the built-in default:

    python bench/dynamic_sampling.py [--seeds 0,1,2] [--dynamic 3] [--settings every,skip,dynamic]
                                     [--config FILE] [--set KEY=VALUE ...] [--training-side arith|wordsum]

The SmolLM2 recipe (docs/smollm2.md), from its Base:
`--config examples/smollm2_wordsum.yaml --set model.name_or_path=BASE --set train.dump_rollouts=false
--training-side wordsum --no-warm-up` (BASE: `rlpt pretrain --model builtin:smollm2-135m --data builtin:wordsum-warm
--steps 240 --batch-size 16 --lr 1e-4 --max-length 64 --output BASE`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def train_every_thought(argv: list[str]) -> int:
    """`rlpt train` with every thought through the update, as before thoughts of advantage 0 were skipped."""
    from rlpt import trainer
    from rlpt.cli import main as cli

    trainer.rows_to_update = lambda advantages, kl_coef: list(range(advantages.numel()))
    return cli(argv)


def write_training_side(kind: str, path: Path) -> Path:
    """Training-side questions, the side the corpora come from, never the held-out ones: 256 sums of `builtin:arith`
    (seed 12345, as docs/default-run.md chose its settings on) or 200 word sums (seed 777, docs/smollm2.md)."""
    if kind == "arith":
        from rlpt.arith import problems, worked_thought

        tasks = [{"question": f"{a}+{b}=", "answer": str(a + b), "thought": worked_thought(a, b)}
                 for a, b in problems(256, 12345, heldout=False)]
    else:
        from rlpt.suites import get_suite

        tasks = [p.task() for p in get_suite(kind).problems(200, 777, heldout=False)]
    path.write_text("".join(json.dumps(t) + "\n" for t in tasks))
    return path


def training_side_accuracy(out: Path, tasks: Path) -> float:
    import yaml

    thought_tokens = yaml.safe_load((out / "config.yaml").read_text())["eval"]["max_thought_tokens"]
    done = subprocess.run([sys.executable, "-m", "rlpt", "eval", "--model", str(out), "--tasks", str(tasks), "--json",
                           "--max-thought-tokens", str(thought_tokens)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"rlpt eval {out} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return json.loads(done.stdout)["accuracy"]


def run(setting: str, seed: int, out: Path, args) -> dict:
    sets = ((["--config", args.config] if args.config else []) + [item for pair in args.set for item in ("--set", pair)]
            + ["--set", f"train.seed={seed}"])
    if setting == "dynamic":
        sets += ["--set", f"rlp.dynamic_sampling={args.dynamic}"]
    train = [__file__, "--every"] if setting == "every" else ["-m", "rlpt"]
    done = subprocess.run([sys.executable, *train, "train", "--output", str(out), *sets], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"rlpt train ({setting}, seed {seed}) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    group_size = int(next(line for line in (out / "config.yaml").read_text().splitlines()
                          if line.strip().startswith("group_size:")).split(":")[1])
    return dict(setting=setting, seed=seed, training_side=training_side_accuracy(out, args.tasks),
                heldout=summary.get("accuracy_think_after"),
                seconds=summary["train_seconds_this_session"], step_seconds=summary["step_seconds_mean"],
                signal=summary["groups_with_signal"],
                updated=sum(r["updated_thoughts"] for r in history) / (group_size * sum(r["contexts"] for r in history)),
                drawn=sum(r["drawn_contexts"] for r in history) / max(1, sum(r["contexts"] for r in history)))


def main() -> None:
    if sys.argv[1:2] == ["--every"]:  # internal: the `every` run, in its own process
        raise SystemExit(train_every_thought(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--dynamic", type=int, default=3, help="rlp.dynamic_sampling of the `dynamic` setting")
    parser.add_argument("--settings", default="every,skip,dynamic")
    parser.add_argument("--config", help="the recipe's YAML (default: the built-in default)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the recipe's settings")
    parser.add_argument("--training-side", default="arith", choices=["arith", "wordsum"],
                        help="the training-side questions scored after each run")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the untimed first run (the model is cached)")
    args = parser.parse_args()
    settings = args.settings.split(",")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        args.tasks = write_training_side(args.training_side, Path(tmp) / "training-side.jsonl")
        if not args.no_warm_up:
            run(settings[0], 0, Path(tmp) / "warm-up", args)  # builds the model cache: no run below pays for it
        for seed in (int(s) for s in args.seeds.split(",")):
            for setting in settings:
                rows.append(run(setting, seed, Path(tmp) / f"{setting}-{seed}", args))
                print(json.dumps(rows[-1]), flush=True)
    recipe = " ".join(([f"--config {args.config}"] if args.config else []) + [f"--set {s}" for s in args.set])
    print(f"\n{recipe or 'the built-in default'}, seeds {args.seeds}, dynamic sampling {args.dynamic} rounds")
    print("| setting | training-side accuracy (per seed) | held-out accuracy (per seed) | train seconds | s / step "
          "| groups with signal | thoughts updated | drawn / trained contexts |")
    print("|---|---|---|---|---|---|---|---|")
    percent = (lambda value: "-" if value is None else f"{100 * value:.1f}%")
    for setting in settings:
        mine = [r for r in rows if r["setting"] == setting]
        training_side = ", ".join(percent(r["training_side"]) for r in mine)
        heldout = ", ".join(percent(r["heldout"]) for r in mine)
        print(f"| {setting} | {training_side} | {heldout} | {statistics.mean(r['seconds'] for r in mine):.1f} | "
              f"{statistics.mean(r['step_seconds'] for r in mine):.2f} | {statistics.mean(r['signal'] for r in mine):.0%} | "
              f"{statistics.mean(r['updated'] for r in mine):.0%} | {statistics.mean(r['drawn'] for r in mine):.2f} |")


if __name__ == "__main__":
    main()
