"""`rlpt experiment`: the paper's comparison (Table 1) at laptop scale, in one command.

Per seed: a tiny model is warm-started on the suites' warm-start corpora -> Base. From Base, on the same training
corpus (plain documents, no thoughts): CPT token-matched and FLOP-matched (`rlpt.baselines.cpt`), RPT (the RL loop
with RPT's sparse reward) and RLP. All five are evaluated on each suite's held-out questions: pass@1 with thinking
(averaged over k sampled thoughts), greedy accuracy with thinking, accuracy without thinking, how often the greedy
thought is the correct worked thought, and the intrinsic metric (mean log-likelihood of held-out next tokens with
and without thinking). The RL runs are also evaluated at their checkpoints, for the accuracy curves.

The same comparison runs on your own parts: `--model DIR` is Base (no warm start), `--data PATH` the training
corpus (any `data.path`), `--tasks FILE.jsonl` a held-out question/answer set (the format of `rlpt eval`).

Everything lands in the output folder: `table.md`, `results.json`, `plots/*.png`, `models/[seed-S/]METHOD/` (HF
folders for `rlpt eval --model`) and `runs/` (the RL runs). Each stage is skipped when its output exists, so an
interrupted experiment continues where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rlpt import config as config_lib
from rlpt.baselines import cpt
from rlpt.errors import UserError
from rlpt.data import Document, make_contexts
from rlpt.evaluate import exact_match_accuracy, intrinsic
from rlpt.generation import gumbel_sampler
from rlpt.models import load_model_and_tokenizer
from rlpt.suites import Problem, get_suite

METHODS = ["base", "cpt-token", "cpt-flop", "rpt", "rlp"]
LABELS = {"base": "Base", "cpt-token": "CPT (token-matched)", "cpt-flop": "CPT (FLOP-matched)", "rpt": "RPT", "rlp": "RLP"}
ABLATION_G, ABLATION_L = (2, 4, 8, 16), (8, 16, 32, 64)


@dataclass(frozen=True)
class Budget:
    warm_from: str | None  # the warm start continues this model (`builtin:tiny`), or starts from scratch (None)
    warm_documents: int  # per suite
    warm_steps: int
    warm_batch: int
    warm_lr: float
    think_fraction: float  # of warm-start documents that show a worked thought
    corpus_documents: int  # per suite: the RLP/RPT/CPT training corpus
    rl_steps: int
    batch_documents: int
    group_size: int
    thought_tokens: int
    lr: float  # RLP, RPT and CPT alike
    cpt_batch: int
    eval_questions: int  # per suite
    samples: int  # k of pass@1
    intrinsic_positions: int  # per suite
    curve_points: int  # checkpoints of each RL run that are evaluated


BUDGETS = {
    "test": Budget(warm_from=None, warm_documents=300, warm_steps=20, warm_batch=16, warm_lr=3e-3, think_fraction=0.25,
                   corpus_documents=100, rl_steps=2, batch_documents=2, group_size=2, thought_tokens=24, lr=1e-5,
                   cpt_batch=16, eval_questions=6, samples=2, intrinsic_positions=8, curve_points=2),
    "small": Budget(warm_from="builtin:tiny", warm_documents=20_000, warm_steps=1000, warm_batch=64, warm_lr=3e-3, think_fraction=0.25,
                    corpus_documents=10_000, rl_steps=100, batch_documents=16, group_size=8, thought_tokens=32, lr=1e-5,
                    cpt_batch=64, eval_questions=200, samples=4, intrinsic_positions=200, curve_points=4),
}


def built_once(folder: Path, build) -> Path:
    """`build(tmp)` writes a model folder; it is renamed into place when complete, and skipped when already there."""
    if (folder / "config.json").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        build(tmp)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def tokenized(tokenizer, texts: list[str]) -> list[list[int]]:
    return [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


@dataclass(frozen=True)
class EvalSet:
    """A held-out set: a suite's questions (with their worked thoughts) or a user's question/answer JSONL."""

    name: str
    problems: list[Problem]


def suite_eval_set(suite, budget: Budget) -> EvalSet:
    return EvalSet(suite.name.capitalize(), suite.heldout_problems(budget.eval_questions))


def file_eval_set(path: str, budget: Budget) -> EvalSet:
    from rlpt.evaluate import load_eval_set

    questions, _ = load_eval_set(path, budget.eval_questions)
    if not questions:
        raise UserError(f"--tasks {path}: no {{'question': ..., 'answer': ...}} line")
    return EvalSet(Path(path).stem, [Problem(q["question"], "", q["answer"]) for q in questions])


# ---------------------------------------------------------------------------------------------------- the models
def warm_start(folder: Path, suites, budget: Budget, seed: int) -> None:
    """Base: next-token training on the suites' warm-start corpora, of `budget.warm_from` (builtin:tiny, which
    already knows addition with worked thoughts: from scratch, a tiny model takes thousands of steps to learn the
    format) or of a freshly initialised model of the same architecture."""
    from transformers import AutoModelForCausalLM

    from rlpt.models import resolve_model_path
    from rlpt.pretrain import train_next_token
    from rlpt.tiny import RECIPES, build_model, char_tokenizer

    tokenizer = char_tokenizer()
    if budget.warm_from:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(budget.warm_from))
    else:
        model = build_model({**RECIPES["tiny"], "seed": seed}, tokenizer)
    texts = [d for s in suites for d in s.warm_start_documents(budget.warm_documents, seed, budget.think_fraction)]
    train_next_token(model, tokenized(tokenizer, texts), steps=budget.warm_steps, batch_size=budget.warm_batch,
                     lr=budget.warm_lr, pad_id=tokenizer.pad_token_id, seed=seed, desc=f"warm start (seed {seed})")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def rl_config(base: Path, corpus: str, budget: Budget, seed: int, reward: str, overrides: list[str], **rlp) -> config_lib.Config:
    cfg = config_lib.Config()
    config_lib.apply(cfg, {
        "model": {"name_or_path": str(base)},
        "data": {"path": str(corpus)},
        "rlp": {"group_size": budget.group_size, "max_thought_tokens": budget.thought_tokens, "positions": "first:=",
                "reward": reward, **rlp},
        "train": {"lr": budget.lr, "batch_documents": budget.batch_documents, "max_steps": budget.rl_steps,
                  "seed": seed, "checkpoint_every": max(1, budget.rl_steps // budget.curve_points)},
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

    built_once(folder, build)
    return json.loads((folder / "cpt.json").read_text())


# ------------------------------------------------------------------------------------------------- evaluation
def answer_contexts(tokenizer, problems: list[Problem]) -> list:
    """Every position of each answer (`question answer.`, t from the first answer token on): the intrinsic metric."""
    docs = [Document(tokenizer(p.plain())["input_ids"], "eval", len(tokenizer(p.question)["input_ids"])) for p in problems]
    return make_contexts(docs, "all", seed=0, step=0)


def evaluate_model(folder: Path, eval_sets: list[EvalSet], budget: Budget, seed: int, quick: bool = False) -> dict:
    """Per held-out set: pass@1 with thinking (k samples), greedy with thinking, without thinking, how often the
    greedy thought is the worked one (suites only), and the intrinsic metric. `quick`: greedy with thinking only."""
    model, tokenizer, think = load_model_and_tokenizer(str(folder))
    out = {}
    for eval_set in eval_sets:
        problems = eval_set.problems
        tasks = [{"question": p.question, "answer": p.answer} for p in problems]
        greedy = exact_match_accuracy(model, tokenizer, think, tasks, use_thought=True, max_thought_tokens=budget.thought_tokens)
        row = dict(accuracy_think=greedy["accuracy"])
        if not quick:
            samples = [
                exact_match_accuracy(model, tokenizer, think, tasks, use_thought=True, max_thought_tokens=budget.thought_tokens,
                                     choose_thought=gumbel_sampler(0.7, torch.Generator().manual_seed(seed * 1000 + k)))["accuracy"]
                for k in range(budget.samples)
            ]
            nothink = exact_match_accuracy(model, tokenizer, think, tasks, use_thought=False, max_thought_tokens=0)
            contexts = answer_contexts(tokenizer, problems)[: budget.intrinsic_positions]
            row.update(
                pass_at_1=sum(samples) / len(samples), accuracy_nothink=nothink["accuracy"],
                thought_correct=(sum(p.thought_correct(o["thought"]) for p, o in zip(problems, greedy["outputs"])) / len(problems)
                                 if all(p.thought for p in problems) else None),
                **intrinsic(model, tokenizer, think, contexts, max_thought_tokens=budget.thought_tokens),
                example=dict(question=tasks[0]["question"], thought=greedy["outputs"][0]["thought"],
                             answer=greedy["outputs"][0]["answer"], expected=tasks[0]["answer"]),
            )
        out[eval_set.name] = row
    return out


def curve(run_dir: Path, base_scores: dict, eval_sets, budget: Budget, seed: int) -> list[dict]:
    """Greedy accuracy with thinking at step 0 (Base) and at each checkpoint of an RL run."""
    points = [dict(step=0, **{s: base_scores[s]["accuracy_think"] for s in base_scores})]
    for folder in sorted((run_dir / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        scores = evaluate_model(folder, eval_sets, budget, seed, quick=True)
        points.append(dict(step=int(folder.name.split("-")[1]), **{s: scores[s]["accuracy_think"] for s in scores}))
    return points


# --------------------------------------------------------------------------------------------------- reporting
def headline(scores: dict, names: list[str], metric: str = "pass_at_1") -> dict:
    """Table 1's rows from one model's scores: each held-out set's metric (pass@1 with thinking), and their mean."""
    rows = {f"{name} Avg": scores[name][metric] for name in names}
    rows["Overall"] = sum(rows.values()) / len(rows)
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(per_seed: list[dict], names: list[str], metric: str = "pass_at_1") -> str:
    """Rows `NAME Avg` per held-out set and Overall, columns the methods; mean +- std over seeds, in percent."""
    lines = ["| | " + " | ".join(LABELS[m] for m in METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for row in headline(per_seed[0]["scores"]["base"], names, metric):
        cells = []
        for method in METHODS:
            mean, std = mean_std([100 * headline(seed["scores"][method], names, metric)[row] for seed in per_seed])
            cells.append(f"{mean:.1f} ± {std:.1f}" if len(per_seed) > 1 else f"{mean:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(results: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    seeds = results["seeds"]

    def save(fig, name):
        fig.tight_layout()
        written.append(folder / name)
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, method, unit in ((axes[0], "rlp", "information gain (nats)"), (axes[1], "rpt", "RPT reward (0/1)")):
        for seed in seeds:
            history = seed["rewards"][method]
            ax.plot(range(1, len(history) + 1), history, alpha=0.8, label=f"seed {seed['seed']}")
        ax.set(title=f"{LABELS[method]}: mean reward per step", xlabel="step", ylabel=unit)
        ax.legend(fontsize=7)
    save(fig, "reward.png")

    names = results["eval_sets"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, style in (("rlp", "-o"), ("rpt", "-s")):
            steps = [p["step"] for p in seeds[0]["curves"][method]]
            mean = [statistics.mean(seed["curves"][method][i][name] for seed in seeds) for i in range(len(steps))]
            ax.plot(steps, [100 * v for v in mean], style, label=LABELS[method])
        last = seeds[0]["curves"]["rlp"][-1]["step"]
        for method, style in (("cpt-token", ":"), ("cpt-flop", "--")):
            value = statistics.mean(seed["scores"][method][name]["accuracy_think"] for seed in seeds)
            ax.hlines(100 * value, 0, last, linestyles=style, colors="gray", label=f"{LABELS[method]} (end)")
        ax.set(title=f"{name}: greedy accuracy, thinking", xlabel="RL step", ylabel="% (mean of seeds)")
        ax.legend(fontsize=7)
    save(fig, "accuracy.png")

    if results.get("ablation"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
        for ax, key, values in ((axes[0], "G", ABLATION_G), (axes[1], "L", ABLATION_L)):
            points = [r for r in results["ablation"] if r["vary"] == key]
            ax.plot([r[key] for r in points], [100 * r["overall_pass_at_1"] for r in points], "-o", label="RLP")
            ax.axhline(100 * results["ablation_base_overall"], color="gray", linestyle=":", label="Base")
            ax.set(title=f"RLP: overall pass@1 against {key}", xlabel=key, ylabel="%", xscale="log")
            ax.set_xticks(values, [str(v) for v in values])
            ax.legend(fontsize=7)
        save(fig, "ablation.png")
    return written


# ------------------------------------------------------------------------------------------------------- driver
@dataclass(frozen=True)
class Plan:
    """What every seed shares: the held-out sets, the training corpus, Base (given, or warm-started per seed)."""

    output: Path
    seeds: int
    budget: Budget
    suites: list
    eval_sets: list[EvalSet]
    corpus: str  # data.path of the RL and CPT runs
    model: str | None  # a given Base, or None: warm-start one per seed
    overrides: list[str]

    def models(self, seed: int) -> Path:
        return self.output / "models" / f"seed-{seed}" if self.seeds > 1 else self.output / "models"

    def base(self, seed: int) -> Path:
        if self.model is not None:
            from rlpt.models import resolve_model_path

            return Path(resolve_model_path(self.model))
        return built_once(self.models(seed) / "base", lambda tmp: warm_start(tmp, self.suites, self.budget, seed))

    def rl_config(self, base: Path, seed: int, reward: str, **rlp):
        positions = {} if self.suites else {"positions": "all"}  # the suites' answers follow "="; a user corpus: all
        return rl_config(base, self.corpus, self.budget, seed, reward, self.overrides, **{**positions, **rlp})


def run_seed(plan: Plan, seed: int) -> dict:
    models, runs, timings = plan.models(seed), plan.output / "runs" / f"seed-{seed}", {}

    def timed(name, fn):
        began = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - began
        return value

    print(f"rlpt experiment: seed {seed}: Base", flush=True)
    base = timed("base", lambda: plan.base(seed))
    histories = {}
    for method, reward in (("rlp", "information_gain"), ("rpt", "rpt")):
        print(f"rlpt experiment: seed {seed}: {LABELS[method]}", flush=True)
        cfg = plan.rl_config(base, seed, reward)
        histories[method] = timed(method, lambda: rl_run(runs / method, cfg))
        export_checkpoint(runs / method, models / method)
    counters = cpt.budgets_from_run(histories["rlp"], cfg.rlp.group_size, cfg.rlp.max_thought_tokens)
    cpt_runs = {}
    for method, tokens in (("cpt-token", counters["token_matched"]), ("cpt-flop", counters["flop_matched"])):
        print(f"rlpt experiment: seed {seed}: {LABELS[method]} ({tokens} tokens)", flush=True)
        cpt_runs[method] = timed(method, lambda: continued_pretraining(base, models / method, cfg, tokens, plan.budget, seed, method))
    print(f"rlpt experiment: seed {seed}: evaluating", flush=True)
    folders = {m: (base if m == "base" else models / m) for m in METHODS}
    scores = timed("evaluation", lambda: {m: evaluate_model(folders[m], plan.eval_sets, plan.budget, seed) for m in METHODS})
    curves = timed("curves", lambda: {m: curve(runs / m, scores["base"], plan.eval_sets, plan.budget, seed) for m in ("rlp", "rpt")})
    return dict(seed=seed, scores=scores, curves=curves, cpt_budget=counters, cpt=cpt_runs, seconds=timings,
                rewards={m: [row["reward_mean"] for row in h] for m, h in histories.items()},
                thought_len={m: [row["thought_len_mean"] for row in h] for m, h in histories.items()})


def run_ablation(plan: Plan) -> tuple[list[dict], float]:
    """RLP from seed 0's Base with G in ABLATION_G (L fixed) and L in ABLATION_L (G fixed): Fig. 2's analogue."""
    base, budget, names = plan.base(0), plan.budget, [e.name for e in plan.eval_sets]
    settings = [("G", g, budget.thought_tokens) for g in ABLATION_G] + [("L", budget.group_size, l) for l in ABLATION_L]
    rows = []
    for vary, G, L in settings:
        run_dir = plan.output / "runs" / "ablation" / f"G{G}-L{L}"
        print(f"rlpt experiment: ablation G={G} L={L}", flush=True)
        rl_run(run_dir, plan.rl_config(base, 0, "information_gain", group_size=G, max_thought_tokens=L))
        scores = evaluate_model(export_checkpoint(run_dir, run_dir / "model"), plan.eval_sets, budget, 0)
        rows.append(dict(vary=vary, G=G, L=L, overall_pass_at_1=headline(scores, names)["Overall"], scores=scores))
    return rows, headline(evaluate_model(base, plan.eval_sets, budget, 0), names)["Overall"]


def run(suite_names: list[str], seeds: int, budget_name: str, output: Path, ablate: bool = False,
        overrides: list[str] = (), model: str | None = None, data: str | None = None, tasks: str | None = None) -> dict:
    """The whole comparison; writes table.md, results.json and plots/ under `output` and returns the results."""
    try:
        import matplotlib  # noqa: F401  (checked first: the plots come last, after minutes of training)
    except ImportError as exc:
        raise UserError("rlpt experiment draws plots with matplotlib: pip install 'rlpt[experiment]'") from exc
    if budget_name not in BUDGETS:
        raise UserError(f"--budget: unknown budget {budget_name!r} (known: {', '.join(BUDGETS)})")
    if seeds < 1:
        raise UserError("--seeds must be >= 1")
    suites = [get_suite(name) for name in suite_names]
    budget = BUDGETS[budget_name]
    eval_sets = [suite_eval_set(s, budget) for s in suites] + ([file_eval_set(tasks, budget)] if tasks else [])
    if not eval_sets:
        raise UserError("nothing to evaluate: name a --suite or give --tasks FILE.jsonl")
    if model is None and not suites:
        raise UserError("--model is needed when no --suite gives a warm-start corpus")
    if data is None and not suites:
        raise UserError("--data is needed when no --suite gives a training corpus")
    began = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    corpus = data
    if corpus is None:
        path = output / "data" / "train.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"text": d}) + "\n" for s in suites for d in s.training_documents(budget.corpus_documents)))
        corpus = str(path)
    plan = Plan(output, seeds, budget, suites, eval_sets, corpus, model, list(overrides))

    per_seed = [run_seed(plan, seed) for seed in range(seeds)]
    names = [e.name for e in eval_sets]
    results = dict(suites=suite_names, eval_sets=names, seeds=per_seed, budget=budget_name,
                   settings=dataclasses.asdict(budget), overrides=list(overrides), model=model, data=data, tasks=tasks,
                   methods=METHODS)
    if ablate:
        results["ablation"], results["ablation_base_overall"] = run_ablation(plan)
    results["summary"] = {
        m: {row: mean_std([headline(s["scores"][m], names)[row] for s in per_seed]) for row in headline(per_seed[0]["scores"][m], names)}
        for m in METHODS
    }
    results["wall_seconds"] = time.perf_counter() - began
    (output / "results.json").write_text(json.dumps(results, indent=1))
    written = plots(results, output / "plots")
    (output / "table.md").write_text(report(results, written, output))
    return results


def report(results: dict, plot_files: list[Path], output: Path) -> str:
    per_seed, names = results["seeds"], results["eval_sets"]
    spread = f"mean ± std over {len(per_seed)} seeds" if len(per_seed) > 1 else "one seed"
    sections = [
        (f"pass@1 with thinking, %, averaged over {results['settings']['samples']} sampled thoughts (temperature 0.7); "
         f"{spread}:", "pass_at_1"),
        ("Greedy accuracy with thinking, %:", "accuracy_think"),
        ("Accuracy without thinking (greedy), %:", "accuracy_nothink"),
    ]
    if all(per_seed[0]["scores"]["base"][n]["thought_correct"] is not None for n in names):
        sections.append(("Greedy thoughts that are the correct worked thought, %:", "thought_correct"))
    parts = [f"# rlpt experiment: {', '.join(names)}; budget `{results['budget']}`; {len(per_seed)} seed(s)", ""]
    for title, metric in sections:
        parts += [title, "", markdown_table(per_seed, names, metric), ""]
    parts += ["Intrinsic: mean log p(x_t) over held-out answer tokens, with a greedy thought / without (nats):", "",
              "| | " + " | ".join(LABELS[m] for m in METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for name in names:
        cells = [
            f"{statistics.mean(s['scores'][m][name]['logp_think'] for s in per_seed):.3f} / "
            f"{statistics.mean(s['scores'][m][name]['logp_nothink'] for s in per_seed):.3f}"
            for m in METHODS
        ]
        parts.append(f"| {name} | " + " | ".join(cells) + " |")
    counters = per_seed[0]["cpt_budget"]
    parts += [
        "",
        f"CPT budgets (seed 0): token-matched {counters['token_matched']} tokens; FLOP-matched {counters['flop_matched']} "
        f"tokens = G * L * contexts/step * steps + T_inp, from the RLP run ({counters['rlp_steps']} steps, "
        f"{counters['contexts_per_step']:.1f} contexts/step, T_inp = {counters['input_tokens']}).",
    ]
    if results.get("ablation"):
        parts += ["", "Ablation (RLP from seed 0's Base), overall pass@1 with thinking, %:", "",
                  "| G | L | overall |", "|---|---|---|"]
        parts += [f"| {r['G']} | {r['L']} | {100 * r['overall_pass_at_1']:.1f} |" for r in results["ablation"]]
        parts.append(f"| Base | | {100 * results['ablation_base_overall']:.1f} |")
    parts += ["", "Plots: " + ", ".join(str(p.relative_to(output)) for p in plot_files),
              f"Wall time: {results['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(parts)
