"""`rlpt report RUN_DIR`: one self-contained HTML page of a run (no network, no files beside it):

- the metrics of `metrics.jsonl` over the steps, as inline SVG plots;
- a rollout browser over `rollouts.jsonl` (runs with `train.dump_rollouts: true`): pick a step, see every thought
  with its reward and advantage, coloured by the advantage;
- "where thinking helps": a document of the run with each token shaded by the mean information gain of the thoughts
  placed before it.
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rlpt.errors import UserError

@dataclass(frozen=True)
class Plot:
    title: str
    keys: list[str]  # metrics drawn together
    note: str = ""  # a line under the plot: how to read it
    from_zero: bool = True  # the y axis includes 0 (a flat series near 27 is not drawn as a 26.96-27.04 swing)
    least_span: float = 0.0  # the y axis spans at least this much (so float noise around 0 stays flat)


def plots_of(cfg) -> list[Plot]:
    """The metric plots, titled for the run's settings (`cfg`: its config, or None when it cannot be read)."""
    tokens = cfg.rlp.reward_tokens if cfg else 1
    scored = "the next token" if tokens == 1 else f"the next {tokens} tokens"
    one_update = cfg is None or (cfg.rlp.updates_per_batch == 1 and cfg.rlp.kl_coef == 0)
    loss_note = ("About 0 by construction: with one update a batch the ratio is 1 and a group's advantages sum to 0, "
                 "so the loss is 0 up to float noise; its gradient, the policy gradient, is not." if one_update else
                 "The clipped surrogate (plus the KL term), averaged over the updates of a batch.")
    return [
        Plot("reward (information gain, nats)", ["reward_mean"], from_zero=False),
        Plot("groups whose rewards differ (the rest teach nothing)", ["groups_with_signal"], least_span=1.0),
        Plot(f"S_pred and S_ema (log p of {scored})", ["s_pred_mean", "s_ema_mean"]),
        Plot("loss", ["loss"], least_span=0.02, note=loss_note),
        Plot("next-token term's loss (train.next_token_data)", ["next_token_loss"]),
        Plot("thought length (tokens)", ["thought_len_mean"]),
        Plot("thoughts cut at the limit", ["thought_truncated_frac"], least_span=1.0),
        Plot("gradient norm", ["grad_norm"]),
        Plot("clipped token fraction", ["clip_frac"], least_span=0.01),
        Plot("seconds per step", ["step_seconds"]),
    ]


SIGNAL_WARNING = 0.5  # below this mean share of groups with signal, most of a run learns nothing
NO_SIGNAL = ("WARNING: in most groups the rewards are (nearly) equal: the thoughts agree, or differ only where the "
             "scored tokens do not depend on them, so there is nothing to learn from (advantages about 0). Score more "
             "of what a thought decides (rlp.reward_tokens, rlp.positions), sample more diverse thoughts "
             "(rlp.temperature), or start from a model less sure of its thoughts.")
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
ADVANTAGE_FLOOR = 1e-3  # rows with a smaller |advantage| are not coloured: their update is nil
ADVANTAGE_FULL = 1.0  # |advantage| at which a row's colour is full (the same at every step, not the step's maximum)
MAX_ROLLOUT_STEPS = 50  # the browser keeps the last steps: a long run's rollouts would make the page huge


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a run's JSONL file; none when it is missing or empty."""
    from rlpt.documents import jsonl_records

    return [row for _, row in jsonl_records(path)] if path.is_file() and path.stat().st_size else []


def nice_ticks(low: float, high: float, count: int = 4) -> tuple[list[float], int]:
    """Round tick values (1, 2 or 5 times a power of ten apart) covering [low, high], and the decimals their labels
    need: a flat series gets a range around its value instead of ticks like 2.554e-08."""
    if high - low <= 1e-9 * max(1.0, abs(low)):
        pad = max(abs(low) * 0.05, 1e-3)
        low, high = low - pad, high + pad
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.floor(low / step + 1e-9) * step
    ticks = [first + i * step for i in range(int(math.ceil((high - first) / step - 1e-9)) + 1)]
    return ticks, max(0, -math.floor(math.log10(step) + 1e-9))


def svg_plot(plot: Plot, history: list[dict], width: int = 420, height: int = 200) -> str:
    """A line plot of the plot's keys against the step, as an inline SVG, with round ticks on both axes; "" when no
    row holds them."""
    series = [(k, [(r["step"], r[k]) for r in history if isinstance(r.get(k), (int, float))]) for k in plot.keys]
    points = [p for _, s in series for p in s]
    if not points:
        return ""
    x_ticks, _ = nice_ticks(min(p[0] for p in points), max(max(p[0] for p in points), min(p[0] for p in points) + 1))
    x_ticks = [t for t in x_ticks if t == int(t)] or x_ticks  # steps are whole numbers
    low, high = min(p[1] for p in points), max(p[1] for p in points)
    if plot.from_zero:
        low, high = min(low, 0.0), max(high, 0.0)
    if high - low < plot.least_span:  # from 0 where 0 bounds the data, else centred on it
        middle = (low + high) / 2
        low, high = (0.0, plot.least_span) if plot.from_zero and low >= 0 else (middle - plot.least_span / 2,
                                                                             middle + plot.least_span / 2)
    y_ticks, decimals = nice_ticks(low, high)
    x0, x1, y0, y1 = x_ticks[0], x_ticks[-1], y_ticks[0], y_ticks[-1]
    left, top, plot_w, plot_h = 60, 24, width - 70, height - 50

    def px(x):
        return left + (x - x0) / (x1 - x0) * plot_w

    def py(y):
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    def xy(x, y):
        return f"{px(x):.1f},{py(y):.1f}"

    axes = "".join(f'<text x="{left - 4}" y="{py(y) + 3:.1f}" font-size="10" text-anchor="end">{y:.{decimals}f}</text>'
                   f'<line x1="{left}" x2="{left + plot_w}" y1="{py(y):.1f}" y2="{py(y):.1f}" stroke="#eee"/>'
                   for y in y_ticks)
    axes += "".join(f'<text x="{px(x):.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">{x:.0f}</text>'
                    for x in x_ticks)

    lines = [f'<polyline fill="none" stroke="{COLOURS[i % len(COLOURS)]}" stroke-width="1.5" points="'
             + " ".join(xy(x, y) for x, y in s) + '"/>' for i, (_, s) in enumerate(series) if s]
    legend = " ".join(f'<tspan fill="{COLOURS[i % len(COLOURS)]}">{html.escape(k)}</tspan>' for i, (k, _) in enumerate(series))
    return (
        f'<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
        f'<title>{html.escape(plot.title)}</title>'
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{html.escape(plot.title)}</text>'
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>' + axes
        + "".join(lines) + f'<text x="{left}" y="{height - 4}" font-size="10">step; {legend}</text></svg>'
    )


def plot_figure(plot: Plot, history: list[dict]) -> str:
    """The plot with its note under it; "" when no row holds its metrics."""
    svg = svg_plot(plot, history)
    note = f"<figcaption>{html.escape(plot.note)}</figcaption>" if plot.note else ""
    return f'<figure class="metric">{svg}{note}</figure>' if svg else ""


DOCUMENTS_SHOWN = 6  # in "where thinking helps": those with the most positions thought about


def gain_by_token(rollouts: list[dict], scored_tokens: int = 1) -> dict[str, dict[int, tuple[float, int]]]:
    """doc -> token index -> (mean reward of the thoughts whose reward scored that token, their number): a thought at
    t scores tokens t .. t + scored_tokens - 1 (`rlp.reward_tokens`; the document's end cuts the span, and no token
    past it is ever asked for)."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rollouts:
        for k in range(scored_tokens):
            sums[row["doc"]][row["position"] + k].append(row["reward"])
    return {doc: {t: (sum(v) / len(v), len(v)) for t, v in by_t.items()} for doc, by_t in sums.items()}


def documents_of_run(run_dir: Path, cfg, sources: list[str]) -> dict[str, list[str]]:
    """The tokens of the run's documents `sources` (read again through the run's config and tokenizer); none when the
    corpus or the tokenizer is not at hand any more."""
    from rlpt import checkpoint
    from rlpt.data import after_marker, load_documents
    from rlpt.models import load_tokenizer, resolve_model_path

    try:
        latest = checkpoint.latest(run_dir)
        tokenizer = load_tokenizer(str(latest) if latest else resolve_model_path(cfg.model.name_or_path))
        documents = load_documents(cfg.data, tokenizer, after_marker(cfg.rlp.positions))
    except (UserError, OSError):
        return {}
    wanted, found = set(sources), {}
    for document in documents:
        if document.source in wanted and document.source not in found:
            found[document.source] = [tokenizer.decode([i]) for i in document.ids]
            if len(found) == len(wanted):
                break
    return found


def shaded_document(tokens: list[str], gains: dict[int, tuple[float, int]], scale: float) -> str:
    spans = []
    for t, token in enumerate(tokens):
        text = html.escape(token).replace("\n", "&#x21b5;<br>")
        if t in gains:
            gain, count = gains[t]
            hue = 210 if gain >= 0 else 25
            alpha = 0.15 + 0.85 * abs(gain) / scale
            spans.append(f'<span class="tok gain" style="background:hsla({hue},80%,50%,{alpha:.2f})" '
                         f'title="token {t}: mean information gain {gain:+.4f} nats over {count} thoughts">{text}</span>')
        else:
            spans.append(f'<span class="tok">{text}</span>')
    return "".join(spans)


def where_thinking_helps(run_dir: Path, rollouts: list[dict], cfg) -> str:
    if not rollouts:
        return "<p>No rollouts: train with <code>--set train.dump_rollouts=true</code> to see them here.</p>"
    if cfg is None:
        return "<p>The run's config.yaml could not be read, so its documents cannot be shown.</p>"
    tokens_scored = cfg.rlp.reward_tokens
    gains = gain_by_token(rollouts, tokens_scored)
    positions = defaultdict(set)
    for row in rollouts:
        positions[row["doc"]].add(row["position"])
    shown = sorted(positions, key=lambda d: (-len(positions[d]), d))[:DOCUMENTS_SHOWN]
    texts = documents_of_run(run_dir, cfg, shown)
    if not texts:
        return "<p>The run's documents could not be read again (its corpus or tokenizer is gone).</p>"
    scale = max(abs(g) for doc in texts for g, _ in gains[doc].values()) or 1.0
    scored = "the token" if tokens_scored == 1 else f"the {tokens_scored} tokens from it on (rlp.reward_tokens)"
    blocks = "".join(f'<p class="source">{html.escape(doc)}</p><div class="doc">{shaded_document(texts[doc], gains[doc], scale)}</div>'
                     for doc in shown if doc in texts)
    return (f"<p>The {len(texts)} documents with the most positions thought about. A thought placed before a token is "
            f"rewarded for how much likelier it makes {scored}; each token is shaded by the mean information gain of "
            f"the thoughts whose reward scored it (blue: thinking made it likelier; orange: less likely; the strongest "
            f"is {scale:.3f} nats). Hover for the numbers.</p>{blocks}")


PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>rlpt report: {title}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }}
table {{ border-collapse: collapse; font-size: 13px; }}
td, th {{ border: 1px solid #ddd; padding: 3px 6px; vertical-align: top; }}
td.thought {{ font-family: monospace; white-space: pre-wrap; max-width: 60em; }}
.doc {{ font-family: monospace; line-height: 1.8; max-width: 80em; }}
.tok {{ white-space: pre; }}
figure.metric {{ margin: 0; max-width: 420px; }}
figcaption {{ font-size: 12px; color: #555; }}
p.source {{ font-size: 12px; color: #555; margin-bottom: 0.2em; }}
</style></head><body>
<h1>rlpt report: {title}</h1>
<p>{summary}</p>
<h2>Metrics</h2>
<div class="plots" id="plots">{plots}</div>
<h2>Rollouts</h2>
<p>Step <select id="step"></select> <span id="count"></span>. Rows are coloured by their advantage: green above the
group's mean reward, red below, fully at |advantage| &ge; {full}; none below {floor} (a group whose rewards agree
teaches nothing).</p>
<table id="rollouts"><thead><tr><th>document, t</th><th>... x_&lt;t</th><th>scored</th><th>thought</th><th>reward</th>
<th>advantage</th></tr></thead>
<tbody></tbody></table>
<h2>Where thinking helps</h2>
{helps}
<script type="application/json" id="rollout-data">{rollouts}</script>
<script>
const rows = JSON.parse(document.getElementById("rollout-data").textContent);
function signed(v) {{ const text = v.toFixed(4); return Number(text) === 0 ? "0.0000" : (v > 0 ? "+" : "") + text; }}
const steps = [...new Set(rows.map(r => r.step))].sort((a, b) => a - b);
const select = document.getElementById("step");
for (const s of steps) {{ const o = document.createElement("option"); o.value = s; o.textContent = s; select.appendChild(o); }}
function show(step) {{
  const body = document.querySelector("#rollouts tbody");
  body.replaceChildren();
  const mine = rows.filter(r => r.step == step);
  for (const r of mine) {{
    const tr = document.createElement("tr");
    const size = Math.abs(r.advantage);
    if (size >= {floor}) {{  // the colour says how much the update moves this thought, the same scale at every step
      const alpha = 0.1 + 0.4 * Math.min(1, size / {full});
      tr.style.background = r.advantage > 0 ? `rgba(40,160,60,${{alpha}})` : `rgba(210,50,40,${{alpha}})`;
    }}
    for (const [text, cls] of [[`${{r.doc}}, t = ${{r.position}}`, ""], [r.context ?? "", "thought"],
                               [r.scored ?? "", "thought"], [r.thought_text, "thought"],
                               [signed(r.reward), ""], [signed(r.advantage), ""]]) {{
      const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; tr.appendChild(td);
    }}
    body.appendChild(tr);
  }}
  document.getElementById("count").textContent = `${{mine.length}} thoughts`;
}}
select.addEventListener("change", () => show(select.value));
if (steps.length) {{ select.value = steps[steps.length - 1]; show(select.value); }}
else {{ document.getElementById("count").textContent = "no rollouts (train with --set train.dump_rollouts=true)"; }}
</script>
</body></html>
"""


def build(run_dir: Path) -> str:
    history = read_jsonl(run_dir / "metrics.jsonl")
    if not history:
        raise UserError(f"rlpt report: {run_dir} has no metrics.jsonl rows (not a run folder, or no step finished)")
    rollouts = read_jsonl(run_dir / "rollouts.jsonl")
    kept_steps = sorted({r["step"] for r in rollouts})[-MAX_ROLLOUT_STEPS:]
    shown = [r for r in rollouts if r["step"] in set(kept_steps)]
    summary_file = run_dir / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    facts = [f"{len(history)} steps", f"{sum(r.get('thought_tokens', 0) for r in history)} thought tokens"]
    if "reward_slope_t" in summary:
        facts.append(f"reward trend {summary['reward_slope']:+.4f}/step (t = {summary['reward_slope_t']:+.2f})")
    signal = [r["groups_with_signal"] for r in history if "groups_with_signal" in r]
    if signal:
        facts.append(f"{100 * sum(signal) / len(signal):.0f}% of groups with signal")
        if sum(signal) / len(signal) < SIGNAL_WARNING:
            facts.append(NO_SIGNAL)
    if "accuracy_think_before" in summary:
        facts.append(f"accuracy with thinking {100 * summary['accuracy_think_before']:.1f}% -> "
                     f"{100 * summary['accuracy_think_after']:.1f}%")
    keys = ("step", "doc", "position", "context", "scored", "thought_text", "reward", "advantage")
    data = json.dumps([{k: r[k] for k in keys if k in r} for r in shown])
    cfg = run_config(run_dir)
    return PAGE.format(
        title=html.escape(run_dir.name), summary=html.escape("; ".join(facts)),
        plots="".join(plot_figure(plot, history) for plot in plots_of(cfg)),
        helps=where_thinking_helps(run_dir, rollouts, cfg), rollouts=script_safe(data),
        floor=ADVANTAGE_FLOOR, full=ADVANTAGE_FULL,
    )


def script_safe(data: str) -> str:
    """JSON to embed in a `<script>` element: every `<` as its JSON escape, so that no text in the data (web text
    holds `<!--<script>` and `</script>`) can end the element or switch the HTML parser into another state. `<` only
    occurs inside JSON strings, where `\\u003c` reads back as the same character."""
    return data.replace("<", "\\u003c")


def run_config(run_dir: Path):
    """The run's config, or None when its config.yaml is missing or no longer reads."""
    from rlpt import config as config_lib

    try:
        return config_lib.load(str(run_dir / "config.yaml"))
    except (UserError, OSError):
        return None


def write(run_dir: Path, out: Path | None = None) -> Path:
    out = out or run_dir / "report.html"
    out.write_text(build(run_dir))
    return out
