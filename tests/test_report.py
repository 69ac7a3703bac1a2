"""`rlpt report`: the HTML page of a run, rendered in a real headless browser (Debian's chromium)."""

import json
import re
import shutil
import subprocess

import pytest

from rlpt.cli import main
from rlpt.errors import UserError
from rlpt.report import Plot, build, gain_by_token, plots_of, script_safe, svg_plot


def test_gain_by_token_hand_worked():
    rows = [dict(doc="a", position=3, reward=1.0), dict(doc="a", position=3, reward=-0.5),
            dict(doc="a", position=5, reward=0.25), dict(doc="b", position=3, reward=2.0)]
    assert gain_by_token(rows) == {"a": {3: (0.25, 2), 5: (0.25, 1)}, "b": {3: (2.0, 1)}}
    # two tokens scored: a thought at 3 scores tokens 3 and 4, one at 5 tokens 5 and 6
    assert gain_by_token(rows, 2)["a"] == {3: (0.25, 2), 4: (0.25, 2), 5: (0.25, 1), 6: (0.25, 1)}


def test_svg_plot_scales_points_into_the_frame():
    svg = svg_plot(Plot("t", ["x"]), [dict(step=1, x=0.0), dict(step=3, x=2.0)], width=170, height=150)
    # frame: left 60, top 24, 100 x 100; step 1 -> x 60, step 3 -> x 160; value 0 -> y 124, 2 -> y 24
    assert 'points="60.0,124.0 160.0,24.0"' in svg
    assert svg_plot(Plot("t", ["x"]), [dict(step=1)]) == ""


def axis_labels(svg: str) -> list[float]:
    return [float(v) for v in re.findall(r'text-anchor="end">([-0-9.]+)</text>', svg)]


def test_axes_start_at_zero_or_span_a_stated_floor():
    """A thought length flat at 27 is drawn from 0 (not as a swing from 26.96 to 27.04); a loss of +-4e-7 (0 by
    construction) on an axis spanning 0.02, flat."""
    lengths = axis_labels(svg_plot(Plot("len", ["x"]), [dict(step=1, x=26.97), dict(step=2, x=27.03)]))
    assert lengths[0] == 0 and lengths[-1] >= 27.03
    loss = axis_labels(svg_plot(Plot("loss", ["x"], least_span=0.02), [dict(step=1, x=-4e-7), dict(step=2, x=4e-7)]))
    assert loss[0] <= -0.01 and loss[-1] >= 0.01


def test_plot_titles_follow_the_config():
    from rlpt import config as config_lib

    cfg = config_lib.load(None, ["rlp.reward_tokens=5"])
    titles = [plot.title for plot in plots_of(cfg)]
    assert "S_pred and S_ema (log p of the next 5 tokens)" in titles and any("next-token term" in t for t in titles)
    assert "0 by construction" in next(plot.note for plot in plots_of(cfg) if plot.title == "loss")
    assert "0 by construction" not in next(p.note for p in plots_of(config_lib.load(None, ["rlp.updates_per_batch=2"]))
                                           if p.title == "loss")


def test_embedded_json_cannot_end_the_script():
    embedded = script_safe(json.dumps(["<!--<script>", "</script>"]))
    assert "<" not in embedded and json.loads(embedded) == ["<!--<script>", "</script>"]


def test_report_needs_a_run(tmp_path):
    with pytest.raises(UserError, match="no metrics.jsonl"):
        build(tmp_path)


def test_report_renders_in_headless_chromium(tmp_path, llama_dir):
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}", "--set", "train.max_steps=3",
                 "--set", "train.dump_rollouts=true", "--set", "rlp.positions=all", "--set", "rlp.group_size=3",
                 "--set", "rlp.max_thought_tokens=4", "--set", "train.batch_documents=2", "--set", "eval.tasks="]) == 0
    assert main(["report", str(run)]) == 0
    page = run / "report.html"
    assert page.is_file()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    from rlpt import config as config_lib

    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    drawn = [p for p in plots_of(config_lib.load(str(run / "config.yaml"))) if any(k in history[0] for k in p.keys)]
    assert len(re.findall(r'<svg class="plot"', dom)) == len(drawn) > 5  # every metric plot the run has
    last_step = [line for line in (run / "rollouts.jsonl").read_text().splitlines() if '"step": 3' in line]
    # the rollout table was filled by the page's script, in the browser: one row per thought of the last step
    assert len(re.findall(r'<tr( style="[^"]*")?><td>', dom)) == len(last_step) > 0
    assert 'class="tok gain"' in dom  # the document shaded by information gain


def test_rollout_colours_follow_the_size_of_the_advantage_in_chromium(tmp_path):
    """A group whose rewards agree has advantages of ~1e-7: uncoloured, not the step's brightest green and red (the
    colour was the advantage over the step's maximum). The table shows the text before t and the scored tokens; an
    advantage that rounds to 0 reads 0.0000, never -0.0000. A thought holding `<!--<script>` (web text holds HTML)
    leaves the table filled: the embedded JSON escapes every `<`."""

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(dict(step=1, reward_mean=0.5, loss=0.1)) + "\n")
    rows = [dict(step=1, doc="builtin:arith#7", position=9, context="347+185=", scored="532.", thought_text=text,
                 reward=reward, advantage=advantage)
            for text, reward, advantage in [("same", 1.0, 1e-7), ("same", 1.0, -1e-7),
                                            ("carries", 9.2, 1.5), ("forgets", 4.2, -1.5), ("html<!--<script>", 1.0, 0.0)]]
    (run / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(page)]) == 0
    dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    table = dom[dom.index('id="rollouts"'):]
    cells = re.findall(r"<tr( style=\"[^\"]*\")?><td>builtin:arith#7, t = 9</td><td class=\"thought\">347\+185=</td>"
                       r"<td class=\"thought\">532\.</td><td class=\"thought\">([^<]+)</td>", table)
    assert [(thought, bool(style)) for style, thought in cells] == [
        ("same", False), ("same", False), ("carries", True), ("forgets", True), ("html&lt;!--&lt;script&gt;", False)]
    assert "&lt;!--&lt;script&gt;" in table and "-0.0000" not in table and "<td>+1.5000</td>" in table
    assert "rgba(40, 160, 60, 0.5)" in table and "rgba(210, 50, 40, 0.5)" in table  # full at |advantage| >= 1
