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
from pathlib import Path

from rlpt.errors import UserError

PLOTS = [  # (title, metrics drawn together)
    ("reward (information gain, nats)", ["reward_mean"]),
    ("groups whose rewards differ (the rest teach nothing)", ["groups_with_signal"]),
    ("S_pred and S_ema (log p of the next token)", ["s_pred_mean", "s_ema_mean"]),
    ("loss", ["loss"]),
    ("thought length (tokens)", ["thought_len_mean"]),
    ("thoughts cut at the limit", ["thought_truncated_frac"]),
    ("gradient norm", ["grad_norm"]),
    ("clipped token fraction", ["clip_frac"]),
    ("seconds per step", ["step_seconds"]),
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


def svg_plot(title: str, history: list[dict], keys: list[str], width: int = 420, height: int = 200) -> str:
    """A line plot of `keys` against the step, as an inline SVG, with round ticks on both axes."""
    series = [(k, [(r["step"], r[k]) for r in history if isinstance(r.get(k), (int, float))]) for k in keys]
    points = [p for _, s in series for p in s]
    if not points:
        return ""
    x_ticks, _ = nice_ticks(min(p[0] for p in points), max(max(p[0] for p in points), min(p[0] for p in points) + 1))
    x_ticks = [t for t in x_ticks if t == int(t)] or x_ticks  # steps are whole numbers
    y_ticks, decimals = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
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
        f'<title>{html.escape(title)}</title>'
        f'<text x="{left}" y="14" font-size="12" font-weight="bold">{html.escape(title)}</text>'
        f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#bbb"/>' + axes
        + "".join(lines) + f'<text x="{left}" y="{height - 4}" font-size="10">step; {legend}</text></svg>'
    )


def gain_by_position(rollouts: list[dict]) -> dict[str, dict[int, tuple[float, int]]]:
    """doc -> position -> (mean reward over every thought placed there, number of thoughts)."""
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rollouts:
        sums[row["doc"]][row["position"]].append(row["reward"])
    return {doc: {t: (sum(v) / len(v), len(v)) for t, v in by_t.items()} for doc, by_t in sums.items()}


def document_tokens(run_dir: Path, source: str, longest: int) -> list[str] | None:
    """The tokens of the run's document `source` (read again through the run's config and tokenizer), or None when
    the corpus or the tokenizer is not at hand any more."""
    from rlpt import checkpoint, config as config_lib
    from rlpt.data import after_marker, load_documents
    from rlpt.models import load_tokenizer, resolve_model_path

    try:
        cfg = config_lib.load(str(run_dir / "config.yaml"))
        latest = checkpoint.latest(run_dir)
        tokenizer = load_tokenizer(str(latest) if latest else resolve_model_path(cfg.model.name_or_path))
        documents = load_documents(cfg.data, tokenizer, after_marker(cfg.rlp.positions))
    except (UserError, OSError):
        return None
    match = next((d for d in documents if d.source == source and len(d.ids) > longest), None)
    return [tokenizer.decode([i]) for i in match.ids] if match else None


def where_thinking_helps(run_dir: Path, rollouts: list[dict]) -> str:
    gains = gain_by_position(rollouts)
    if not gains:
        return "<p>No rollouts: train with <code>--set train.dump_rollouts=true</code> to see them here.</p>"
    source = max(gains, key=lambda d: (len(gains[d]), d))  # the document with the most positions thought about
    tokens = document_tokens(run_dir, source, max(gains[source]))
    if tokens is None:
        return f"<p>The document {html.escape(source)} could not be read again (its corpus or tokenizer is gone).</p>"
    scale = max(abs(g) for g, _ in gains[source].values()) or 1.0
    spans = []
    for t, token in enumerate(tokens):
        text = html.escape(token).replace("\n", "&#x21b5;<br>")
        if t in gains[source]:
            gain, count = gains[source][t]
            hue = 210 if gain >= 0 else 25
            alpha = 0.15 + 0.85 * abs(gain) / scale
            spans.append(f'<span class="tok gain" style="background:hsla({hue},80%,50%,{alpha:.2f})" '
                         f'title="t = {t}: mean information gain {gain:+.4f} nats over {count} thoughts">{text}</span>')
        else:
            spans.append(f'<span class="tok">{text}</span>')
    return (f"<p>{html.escape(source)}: each token on which thoughts were scored is shaded by the mean information gain "
            f"of those thoughts (blue: thinking made the token likelier; orange: less likely; the strongest is "
            f"{scale:.3f} nats). Hover for the numbers.</p><div class=\"doc\">{''.join(spans)}</div>")


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
                               [r.reward.toFixed(4), ""], [r.advantage.toFixed(4), ""]]) {{
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
    return PAGE.format(
        title=html.escape(run_dir.name), summary=html.escape("; ".join(facts)),
        plots="".join(svg_plot(title, history, keys) for title, keys in PLOTS),
        helps=where_thinking_helps(run_dir, rollouts), rollouts=data.replace("</", "<\\/"),
        floor=ADVANTAGE_FLOOR, full=ADVANTAGE_FULL,
    )


def write(run_dir: Path, out: Path | None = None) -> Path:
    out = out or run_dir / "report.html"
    out.write_text(build(run_dir))
    return out
