"""`rlpt`: train, eval and sample. User errors print one line (`rlpt: error: ...`) and exit 2, without a traceback."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlpt.errors import UserError
from rlpt.model_commands import cmd_eval, cmd_sample


def without_nproc(argv: list[str]) -> list[str]:
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out


def cmd_train(args) -> int:
    import os

    from rlpt import config, run

    cfg = config.load(args.config, args.set or [])  # errors show here, before any process starts
    if args.print_config:
        print(config.dumps(cfg), end="")
        return 0
    output = Path(args.output or Path("runs") / (Path(args.config).stem if args.config else "default"))
    run.check_inputs(cfg, output, args.fresh)
    if args.config is None:
        print("rlpt: no --config: " + ("the built-in demo's settings (docs/default-run.md)"
                                       if config.is_builtin_demo(None, args.set or [])
                                       else "the paper's defaults (docs/configuration.md)")
              + (", with your --set" if args.set else ""), flush=True)
    if args.nproc is not None:  # hand over to torchrun: one process per rank, this command line in each
        if args.nproc < 1:
            raise UserError("--nproc must be >= 1")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}",
                   "-m", "rlpt", *without_nproc(args.argv)]
        print("rlpt: " + " ".join(command), flush=True)
        # torchrun would give each process 1 thread; share the cores instead (an explicit setting is kept)
        os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // args.nproc)))
        os.execv(sys.executable, command)
    summary = run.train(cfg, output, fresh=args.fresh)
    if summary:  # rank 0 (every other rank returns nothing)
        print(run.format_summary(summary, output))
    return 0


def cmd_pretrain(args) -> int:
    from rlpt.cache import build_folder
    from rlpt.config import DataConfig
    from rlpt.data import check_corpus, load_documents
    from rlpt.models import check_model_source, load_model_and_tokenizer
    from rlpt.pretrain import train_next_token

    check_model_source(args.model, "--model")
    check_corpus(DataConfig(path=args.data, max_length=args.max_length), "--data")
    output = Path(args.output)
    if (output / "config.json").is_file():
        raise UserError(f"--output: {output} already holds a model")
    if args.steps < 1 or args.batch_size < 1 or args.lr <= 0:
        raise UserError("--steps and --batch-size must be >= 1 and --lr > 0")

    def build(tmp):
        model, tokenizer, _ = load_model_and_tokenizer(args.model)
        data = DataConfig(path=args.data, max_length=args.max_length)
        # a window shorter than the limit ends its text: it ends with EOS, as the model should learn to
        documents = [d.ids + ([tokenizer.eos_token_id] if len(d.ids) < args.max_length else [])
                     for d in load_documents(data, tokenizer)]
        losses = train_next_token(model, documents, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                  pad_id=tokenizer.pad_token_id, seed=args.seed, desc="pretrain")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        print(f"rlpt: next-token loss {losses[0]:.3f} at the first step, {sum(losses[-20:]) / len(losses[-20:]):.3f} "
              f"over the last 20")

    build_folder(output, build)
    print(f"rlpt: wrote {output}; train RLP on it with: rlpt train --set model.name_or_path={output} --set data.path=...")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlpt", description="RLP: Reinforcement as a Pretraining Objective (arXiv 2510.01265)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser("train", help="train a model with RLP (no --config: the built-in tiny default)")
    train.add_argument("--config", help="YAML file of model/data/rlp/train/eval sections")
    train.add_argument("--output", help="run folder (default runs/<config name> or runs/default); an existing run resumes")
    train.add_argument("--set", action="append", metavar="KEY=VALUE", help="override one key, e.g. rlp.group_size=4")
    train.add_argument("--fresh", action="store_true", help="start over even if the run folder has a checkpoint")
    train.add_argument("--nproc", type=int, help="run N processes on this machine (execs torchrun --standalone)")
    train.add_argument("--print-config", action="store_true", help="print the resolved config as YAML and exit")
    train.set_defaults(func=cmd_train)

    pre = sub.add_parser("pretrain", help="warm-start a model by next-token training (e.g. on documents with worked thoughts)")
    pre.add_argument("--model", required=True, help="HF model folder or builtin:tiny")
    pre.add_argument("--data", required=True, help="the documents (any data.path: a file, a folder, a glob, builtin:...)")
    pre.add_argument("--output", required=True, help="the HF folder to write (must not hold a model yet)")
    pre.add_argument("--steps", type=int, default=600)
    pre.add_argument("--batch-size", type=int, default=64, help="documents a step")
    pre.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (warm-up, then cosine decay)")
    pre.add_argument("--max-length", type=int, default=512, help="documents are cut into windows of this many tokens")
    pre.add_argument("--seed", type=int, default=0)
    pre.set_defaults(func=cmd_pretrain)

    ev = sub.add_parser("eval", help="exact-match accuracy with/without thinking; think vs no-think log-likelihood")
    ev.add_argument("--model", required=True, help="HF model folder, checkpoint folder, run folder or builtin:tiny")
    ev.add_argument("--tasks", required=True, help="JSONL of {question, answer} or {text} lines, or builtin:arith|math|science")
    ev.add_argument("--think", action=argparse.BooleanOptionalAction, default=True, help="answer after a thought (default)")
    ev.add_argument("--output", help="write the JSON result here too")
    ev.add_argument("--json", action="store_true", help="print the JSON result instead of the summary")
    ev.add_argument("--max-questions", type=int, default=256)
    ev.add_argument("--max-positions", type=int, default=512, help="document positions for the intrinsic metric")
    ev.add_argument("--positions", help="position rule for documents (default: the run's rlp.positions, `answer`: each "
                    "question's answer; first:MARKER, the answer, for the builtin sets; else all)")
    ev.add_argument("--reward-tokens", type=int, help="tokens scored from x_t on (default: the run's rlp.reward_tokens; "
                    "5, the answer, for the builtin sets; else 1)")
    ev.add_argument("--max-thought-tokens", type=int, default=64)
    ev.set_defaults(func=cmd_eval)

    sample = sub.add_parser("sample", help="sample thoughts at one position with their S_pred, S_ema and reward")
    sample.add_argument("--model", required=True, help="HF model folder, checkpoint folder, run folder or builtin:tiny")
    sample.add_argument("--prefix", required=True, help="the text x_<t")
    sample.add_argument("--next", required=True, help="the text that follows; its first token is x_t")
    sample.add_argument("--num-thoughts", type=int, default=8)
    sample.add_argument("--max-thought-tokens", type=int, default=64)
    sample.add_argument("--temperature", type=float, help="default: the run's rlp.temperature, else 0.7")
    sample.add_argument("--reward-tokens", type=int, help="tokens of --next scored (default: the run's "
                        "rlp.reward_tokens, else 1: the next token)")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--json", action="store_true", help="print one JSON object")
    sample.set_defaults(func=cmd_sample)
    exp = sub.add_parser("experiment", help="the paper's comparison: Base vs CPT (token/FLOP-matched) vs RPT vs RLP")
    exp.add_argument("--suite", default="math,science", help="comma-separated built-in suites (math, "
                     "science; wordsum and wordsum3 apart: their answers follow another marker)")
    exp.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1; the table gives mean +- std")
    exp.add_argument("--budget", default="small", help="small (the README's run), smollm2 (a real 135M model on "
                     "--suite wordsum or wordsum3: docs/smollm2.md) or test (seconds; for checks)")
    exp.add_argument("--output", default="runs/experiment", help="folder for table.md, results.json, plots/, models/")
    exp.add_argument("--ablate", action="store_true", help="also RLP over G in {2,4,8,16} and L in {8,16,32,64}")
    exp.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the RL runs, e.g. train.lr=3e-5")
    exp.add_argument("--model", help="your Base model (HF folder); default: warm-start the tiny model on the suites")
    exp.add_argument("--data", help="your training corpus (any data.path); default: the suites' corpora")
    exp.add_argument("--tasks", help="your held-out question/answer JSONL, evaluated beside the suites")
    exp.add_argument("--methods", help="run only these, comma-separated, of base, cpt-token, cpt-flop, cpt-flop4 (4x "
                     "its budget), rpt, rlp, rlp-answer, rlp-ntp (RLP with next-token training on the same corpus), "
                     "rlp-mixed, cpt-mixed (default: base, cpt-token, cpt-flop, rpt, rlp, rlp-answer; CPT needs an "
                     "RLP run)")
    exp.add_argument("--post", action="store_true", help="then the same post-training (SFT on worked examples, then "
                     "RLVR) after every method: the +Post tables, models/METHOD-post/")
    exp.set_defaults(func=cmd_experiment)

    export = sub.add_parser("export", help="a clean HF folder (model, tokenizer with think tags, generation config)")
    export.add_argument("run", help="run folder (its latest checkpoint), checkpoint folder or model folder")
    export.add_argument("--out", required=True, help="the folder to write (must not exist, or be empty)")
    export.add_argument("--ema", action="store_true", help="export the EMA teacher instead of the policy")
    export.set_defaults(func=cmd_export)

    report = sub.add_parser("report", help="a self-contained HTML page of a run: metric plots, rollouts, where thinking helps")
    report.add_argument("run", help="run folder")
    report.add_argument("--out", help="the HTML file to write (default RUN/report.html)")
    report.set_defaults(func=cmd_report)

    plan = sub.add_parser("plan", help="price a run: rollout and update tokens, FLOPs, FLOP-matched CPT budget, GPU-hours")
    from rlpt.plan import add_arguments as plan_arguments

    plan_arguments(plan)
    plan.set_defaults(func=cmd_plan)

    bench = sub.add_parser("bench", help="time one RLP step: reference vs packed engine vs next-token training")
    from rlpt.bench import build_parser as bench_arguments

    bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)
    return parser


def cmd_experiment(args) -> int:
    from rlpt import experiment

    suites = [s.strip() for s in args.suite.split(",") if s.strip()]
    output = Path(args.output)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    experiment.run(suites, args.seeds, args.budget, output, ablate=args.ablate, overrides=args.set or [],
                   model=args.model, data=args.data, tasks=args.tasks, methods=methods, post_train=args.post)
    print((output / "table.md").read_text())
    return 0


def cmd_export(args) -> int:
    from rlpt.export import export

    print(f"rlpt: exported {export(args.run, Path(args.out), ema=args.ema)}")
    return 0


def cmd_report(args) -> int:
    from rlpt.report import write

    print(f"rlpt: wrote {write(Path(args.run), Path(args.out) if args.out else None)}")
    return 0


def cmd_plan(args) -> int:
    from rlpt.plan import run

    print(run(args))
    return 0


def cmd_bench(args) -> int:
    from rlpt.bench import run

    return run(args)


def quiet_transformers() -> None:
    """Our own progress bars and summaries are the output; silence the library's loading bars and notices."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quiet_transformers()
    try:
        return args.func(args)
    except UserError as exc:
        print(f"rlpt: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlpt: interrupted (the last complete checkpoint is kept)", file=sys.stderr)
        return 130
