"""The paired bootstrap interval of `rlpt experiment`'s table, on hand-worked cases."""

import random

import pytest
import torch

from rlpt.experiment.paired import paired_difference, variance_shares


def test_a_constant_difference_has_no_spread():
    reference = [[[0.0, 1.0, 0.5, 0.25]]]
    method = [[[x + 0.125 for x in reference[0][0]]]]
    result = paired_difference(method, reference)
    assert result == pytest.approx(dict(mean=0.125, low=0.125, high=0.125))


def test_pairing_cancels_what_the_questions_share():
    """Scores that swing from 0 to 0.9 across questions, but one method is always 0.1 above the other: the paired
    interval is exactly 0.1, where resampling the two methods apart would give about 0.07 to 0.13."""
    rng = random.Random(0)
    reference = [[[rng.random() * 0.9 for _ in range(200)] for _ in range(3)]]
    method = [[[x + 0.1 for x in seed] for seed in reference[0]]]
    result = paired_difference(method, reference)
    assert result["low"] == pytest.approx(0.1) and result["high"] == pytest.approx(0.1)


def test_interval_of_coin_flips_by_hand():
    """One seed, 100 questions, differences +1 and -1 half each: mean 0, standard error 1/sqrt(100) = 0.1, so the
    95% interval is about +-1.96 * 0.1."""
    diffs = [1.0, -1.0] * 50
    result = paired_difference([[diffs]], [[[0.0] * 100]])
    assert result["mean"] == pytest.approx(0.0)
    assert -0.23 < result["low"] < -0.16 and 0.16 < result["high"] < 0.23


def test_seeds_widen_the_interval():
    """20 seeds whose difference is 0 or 0.2 (the same on every question, alternately): the spread of their mean is
    0.1 / sqrt(20) = 0.022, so the interval is about 0.1 +- 0.044, where each seed alone would have none. Drawing one
    seed per resample for every slot would give [0, 0.2]."""
    method = [[[0.2 * (s % 2)] * 30 for s in range(20)]]
    reference = [[[0.0] * 30 for _ in range(20)]]
    result = paired_difference(method, reference)
    assert result["mean"] == pytest.approx(0.1)
    assert 0.03 < result["low"] < 0.08 and 0.12 < result["high"] < 0.17


def test_each_set_counts_once():
    """Two held-out sets of different sizes, differences 0.1 and 0.3: the overall difference is their mean, 0.2."""
    result = paired_difference([[[0.1] * 10], [[0.3] * 200]], [[[0.0] * 10], [[0.0] * 200]])
    assert result == pytest.approx(dict(mean=0.2, low=0.2, high=0.2))


def test_interval_covers_the_true_difference_95_percent_of_the_time():
    """Seeds and questions are crossed: every seed answers the same questions, and a question that favours one method
    favours it in every seed (here a per-question effect of sd 1 around a true difference of 0.1, with noise of sd
    0.3 on each seed's answer to each question). Over 200 simulated experiments of 3 seeds x 200 questions, the 95%
    interval must hold the true difference about 95% of the time (96%). A bootstrap that draws the questions anew for
    each seed averages the question effect over the seeds: it covered it 72.5% of the time here."""
    rng = torch.Generator().manual_seed(0)
    covered, simulations = 0, 200
    for k in range(simulations):
        per_question = 0.1 + torch.randn(200, generator=rng, dtype=torch.float64)
        diffs = per_question[None, :] + 0.3 * torch.randn(3, 200, generator=rng, dtype=torch.float64)
        result = paired_difference([diffs.tolist()], [[[0.0] * 200] * 3], resamples=1000, seed=k)
        covered += result["low"] <= 0.1 <= result["high"]
    assert covered / simulations >= 0.9


def test_variance_shares_by_hand():
    """Differences that vary only between seeds owe all their spread to the seeds; differences that vary only
    between questions (the same in every seed), all of it to the questions."""
    by_seed = [[[0.2 * (s % 2)] * 30 for s in range(6)]]
    by_question = [[[0.2 * (q % 2) for q in range(30)] for _ in range(6)]]
    zeros = [[[0.0] * 30 for _ in range(6)]]
    assert variance_shares(by_seed, zeros) == pytest.approx(dict(seeds=1.0, questions=0.0))
    assert variance_shares(by_question, zeros) == pytest.approx(dict(seeds=0.0, questions=1.0))
