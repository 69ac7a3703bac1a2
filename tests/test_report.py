"""`rlpt report`: the HTML page of a run, rendered in a real headless browser (Debian's chromium)."""

import re
import shutil
import subprocess

import pytest

from rlpt.cli import main
from rlpt.errors import UserError
from rlpt.report import PLOTS, build, gain_by_position, svg_plot


def test_gain_by_position_hand_worked():
    rows = [dict(doc="a", position=3, reward=1.0), dict(doc="a", position=3, reward=-0.5),
            dict(doc="a", position=5, reward=0.25), dict(doc="b", position=3, reward=2.0)]
    assert gain_by_position(rows) == {"a": {3: (0.25, 2), 5: (0.25, 1)}, "b": {3: (2.0, 1)}}


def test_svg_plot_scales_points_into_the_frame():
    svg = svg_plot("t", [dict(step=1, x=0.0), dict(step=3, x=2.0)], ["x"], width=170, height=150)
    # frame: left 60, top 24, 100 x 100; step 1 -> x 60, step 3 -> x 160; value 0 -> y 124, 2 -> y 24
    assert 'points="60.0,124.0 160.0,24.0"' in svg
    assert svg_plot("t", [dict(step=1)], ["x"]) == ""


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
    assert len(re.findall(r'<svg class="plot"', dom)) == len(PLOTS)  # every metric plot
    last_step = [line for line in (run / "rollouts.jsonl").read_text().splitlines() if '"step": 3' in line]
    # the rollout table was filled by the page's script, in the browser: one row per thought of the last step
    assert len(re.findall(r'<tr( style="[^"]*")?><td>', dom)) == len(last_step) > 0
    assert 'class="tok gain"' in dom  # the document shaded by information gain


def test_rollout_colours_follow_the_size_of_the_advantage_in_chromium(tmp_path):
    """A group whose rewards agree has advantages of ~1e-7: uncoloured, not the step's brightest green and red (the
    colour was the advantage over the step's maximum). The table shows the text before t and the scored tokens."""
    import json

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("no chromium on this machine (Debian: apt-get install chromium)")
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps(dict(step=1, reward_mean=0.5, loss=0.1)) + "\n")
    rows = [dict(step=1, doc="builtin:arith#7", position=9, context="347+185=", scored="532.", thought_text=text,
                 reward=reward, advantage=advantage)
            for text, reward, advantage in [("same", 1.0, 1e-7), ("same", 1.0, -1e-7),
                                            ("carries", 9.2, 1.5), ("forgets", 4.2, -1.5)]]
    (run / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(page)]) == 0
    dom = subprocess.run([browser, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    table = dom[dom.index('id="rollouts"'):]
    cells = re.findall(r"<tr( style=\"[^\"]*\")?><td>builtin:arith#7, t = 9</td><td class=\"thought\">347\+185=</td>"
                       r"<td class=\"thought\">532\.</td><td class=\"thought\">(\w+)</td>", table)
    assert [(thought, bool(style)) for style, thought in cells] == [
        ("same", False), ("same", False), ("carries", True), ("forgets", True)]
    assert "rgba(40, 160, 60, 0.5)" in table and "rgba(210, 50, 40, 0.5)" in table  # full at |advantage| >= 1
