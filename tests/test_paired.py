"""The paired bootstrap interval of `rlpt experiment`'s table, on hand-worked cases."""

import random

import pytest

from rlpt.experiment.paired import paired_difference


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
