"""The paired interval of `rlpt experiment`'s table: hand-worked cases, and its coverage in simulated experiments."""

import random

import pytest
import torch

from rlpt.experiment.paired import paired_difference, t_975, variance_parts, variance_shares


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


def test_student_t_quantiles_from_the_table():
    for df, expected in ((1, 12.7062), (2, 4.3027), (3, 3.1824), (10, 2.2281), (30, 2.0423), (float("inf"), 1.9600)):
        assert t_975(df) == pytest.approx(expected, abs=2e-4), df


def test_interval_by_hand():
    """3 seeds x 2 questions, differences [[1, 3], [2, 4], [3, 5]]: seed means 2, 3, 4 (variance 1, over 3 seeds:
    1/3, at t with 2 degrees of freedom); question means 2 and 4 (variance 2, over 2 questions: 1, at t with 1)."""
    diffs = [[1.0, 3.0], [2.0, 4.0], [3.0, 5.0]]
    assert variance_parts([torch.tensor(diffs, dtype=torch.float64)]) == pytest.approx((1 / 3, 1.0))
    result = paired_difference([diffs], [[[0.0, 0.0]] * 3])
    half = (4.3027**2 / 3 + 12.7062**2 * 1.0) ** 0.5
    assert result == pytest.approx(dict(mean=3.0, low=3.0 - half, high=3.0 + half), abs=1e-3)
    assert variance_shares([diffs], [[[0.0, 0.0]] * 3]) == pytest.approx(dict(seeds=0.25, questions=0.75))


def coverage(seed_shift: float, simulations: int, question_sd: float = 0.3, noise_sd: float = 0.3,
             generator_seed: int = 0) -> float:
    """How often the 95% interval holds the true difference (0.1) over simulated experiments of 3 seeds x 200
    questions: a per-question effect (sd `question_sd`, the same in every seed), a per-seed shift on every question
    (sd `seed_shift`: each RL run lands somewhat apart), and noise (sd `noise_sd`) on each seed's answer to each question."""
    rng = torch.Generator().manual_seed(generator_seed)
    covered = 0
    for _ in range(simulations):
        per_question = question_sd * torch.randn(200, generator=rng, dtype=torch.float64)
        per_seed = seed_shift * torch.randn(3, 1, generator=rng, dtype=torch.float64)
        diffs = 0.1 + per_question[None, :] + per_seed + noise_sd * torch.randn(3, 200, generator=rng, dtype=torch.float64)
        result = paired_difference([diffs.tolist()], [[[0.0] * 200] * 3])
        covered += result["low"] <= 0.1 <= result["high"]
    return covered / simulations


def test_interval_covers_the_true_difference_when_questions_make_the_spread():
    """A question that favours one method favours it in every seed (effect sd 1): a bootstrap that drew the questions
    anew for each seed averaged that effect over the seeds and covered the truth 72.5% of the time here."""
    assert coverage(0.0, 200, question_sd=1.0) >= 0.92


@pytest.mark.parametrize("noise_sd", [0.3, 1.0])
@pytest.mark.parametrize("seed_shift", [0.04, 0.08, 0.12, 0.3])
def test_interval_covers_the_true_difference_whatever_the_seeds_share(seed_shift, noise_sd):
    """Each seed carries its own shift of 4 to 30 points. The crossed bootstrap (3 seeds drawn with replacement)
    covered the truth 93% of the time at 8 points, 88% at 12 and about 75% as the seeds dominate; one t with
    Welch-Satterthwaite's degrees of freedom fell to 89-92% between the two regimes."""
    assert coverage(seed_shift, 300, noise_sd=noise_sd) >= 0.93


def test_variance_shares_by_hand():
    """Differences that vary only between seeds owe all their spread to the seeds; differences that vary only
    between questions (the same in every seed), all of it to the questions."""
    by_seed = [[[0.2 * (s % 2)] * 30 for s in range(6)]]
    by_question = [[[0.2 * (q % 2) for q in range(30)] for _ in range(6)]]
    zeros = [[[0.0] * 30 for _ in range(6)]]
    assert variance_shares(by_seed, zeros) == pytest.approx(dict(seeds=1.0, questions=0.0))
    assert variance_shares(by_question, zeros) == pytest.approx(dict(seeds=0.0, questions=1.0))


def test_lead_change_is_the_difference_of_differences_by_hand():
    """RLP leads CPT by 0.5 on each question before post-training and by 0.2 after: its lead shrinks by 0.3 on every
    question and seed, an interval of no width; the report reads "shrinks" from it."""
    from rlpt.experiment.paired import lead_change
    from rlpt.experiment.report import lead_verdict

    def seed(rlp, cpt, rlp_post, cpt_post):
        score = lambda v: {"q": {"per_question": {"pass_at_1": v}}}  # noqa: E731
        return {"scores": {"rlp": score(rlp), "cpt-flop": score(cpt), "rlp-post": score(rlp_post),
                           "cpt-flop-post": score(cpt_post)}}

    per_seed = [seed([0.9, 0.6], [0.4, 0.1], [0.9, 0.7], [0.7, 0.5]), seed([1.0, 0.5], [0.5, 0.0], [1.0, 0.6], [0.8, 0.4])]
    change = lead_change(per_seed, ["q"], "cpt-flop", ["cpt-flop", "rlp"])["rlp"]
    assert change == pytest.approx(dict(mean=-0.3, low=-0.3, high=-0.3))
    assert lead_verdict(change) == "shrinks"
    assert lead_verdict(dict(mean=0.1, low=-0.1, high=0.3)) == "no change beyond the interval"
    assert lead_verdict(dict(mean=0.3, low=0.1, high=0.5)) == "grows"
