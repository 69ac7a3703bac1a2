"""`rlpt plan`: the compute model, on the paper's setting and on a case small enough to count by hand."""

import json

import pytest

from rlpt.cli import main
from rlpt.plan import plan


def test_paper_setting_flop_matched_budget():
    # n=16, l_seq=2048, bs=512, iters=200, T_inp=170M: 16*2048*512*200 + 170e6 = 3,525,443,200 (~3.5B)
    assert plan(1.7e9, 170e6, 16, 2048, 512, 200, 32).cpt_flop_matched_tokens == 3_525_443_200
    # counting the mean context (170e6 / (512*200) = 1660.16 tokens) in l_seq gives the paper's "approximately 6B"
    with_prompt = plan(1.7e9, 170e6, 16, 2048, 512, 200, 32, count_prompt=True)
    assert with_prompt.l_seq == pytest.approx(2048 + 1660.15625)
    assert with_prompt.cpt_flop_matched_tokens == pytest.approx(6.245e9, rel=1e-3)


def test_small_case_by_hand():
    # N=10, T_inp=100, G=2, L=3, batch=4, steps=5: R = 2*3*4*5 = 120
    p = plan(10, 100, 2, 3, 4, 5, gpus=2, mfu=0.5, gpu_flops=1000)
    assert p.rollout_tokens == 120 and p.update_tokens == 220
    assert p.flops == 10 * (2 * 100 + 2 * 100 + 2 * 120 + 6 * 220)  # 19,600
    assert p.gpu_hours == pytest.approx(19_600 / 500 / 3600) and p.wall_hours == pytest.approx(p.gpu_hours / 2)


def test_cli(capsys):
    assert main(["plan", "--params", "1.7e9", "--tokens", "170e6", "--group-size", "16", "--thought-tokens", "2048",
                 "--batch", "512", "--steps", "200", "--gpus", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpt_flop_matched_tokens"] == 3_525_443_200
    assert main(["plan", "--params", "-1", "--tokens", "1", "--steps", "1"]) == 2
    assert "--params must be > 0" in capsys.readouterr().err
