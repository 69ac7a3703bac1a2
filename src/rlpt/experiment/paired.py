"""Paired differences between two methods with a 95% interval, over questions and seeds.

Every method of a seed is scored on the same held-out questions, so a method's edge over another is measured per
question (the difference of their scores on it) and the question's own difficulty cancels out. The seeds and the
questions are crossed: every seed answers the same questions, so a question that favours one method does so in every
seed, and each seed (each RL run) may carry its own shift on every question. The mean difference over S seeds and Q
questions then varies by two sources:
- the seeds: the variance of the S seed means, over S, known from S - 1 degrees of freedom (2 with 3 seeds);
- the questions: the variance of the Q question means (each averaged over the seeds), over Q, from Q - 1.
The interval gives each source its own Student's t half-width and adds them in quadrature:
    mean +- sqrt(t(S - 1)^2 * seeds + t(Q - 1)^2 * questions)
so it is a t interval over the seed means (t = 4.30 with 3 seeds) when the seeds make the spread and the question
bootstrap's (about 1.97) when the questions do. Each part also holds the seed-by-question noise once, so the sum counts
it twice: wider than it must be, never narrower. In simulated experiments of 3 seeds x 200 questions
(`tests/test_paired.py`) it held the truth 95-99.8% of the time whatever the seeds' share, where Welch-Satterthwaite's
single t fell to 89% and the crossed bootstrap that drew 3 seeds with replacement to 93% at a per-seed shift of 8
points, 88% at 12 and toward 75% as the seeds dominate (it sees at most 3 seed values and no allowance for how little
3 seeds say). `variance_shares` says how much of the width each source makes."""

from __future__ import annotations

import math

import torch


def as_differences(method: list[list[list[float]]], reference: list[list[list[float]]]) -> list[torch.Tensor]:
    return [torch.tensor(m, dtype=torch.float64) - torch.tensor(r, dtype=torch.float64) for m, r in zip(method, reference)]


def variance_parts(diffs: list[torch.Tensor]) -> tuple[float, float]:
    """(seeds, questions): the variance of the mean difference over sets (each set counts once) that the seeds make
    and that the questions make. With one seed the seeds' part is 0: it cannot be estimated, and the interval is then
    of the questions alone."""
    n_sets, n_seeds = len(diffs), diffs[0].shape[0]
    seed_means = torch.stack([d.mean(1) for d in diffs]).mean(0)  # (S,): each seed's mean over sets
    seeds = seed_means.var().item() / n_seeds if n_seeds > 1 else 0.0
    questions = sum(d.mean(0).var().item() / d.shape[1] for d in diffs if d.shape[1] > 1) / n_sets**2
    return seeds, questions


def t_975(df: float) -> float:
    """The 97.5th percentile of Student's t with `df` (real, > 0) degrees of freedom, by bisection on its CDF: no
    SciPy needed (1.96 for df = inf)."""
    if df == float("inf"):
        return 1.959964
    low, high = 0.0, 1000.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if t_cdf(middle, df) < 0.975 else (low, middle)
    return (low + high) / 2


SIMPSON = torch.linspace(0, 1, 2001, dtype=torch.float64)
SIMPSON_WEIGHTS = torch.tensor([1.0] + [4.0, 2.0] * 999 + [4.0, 1.0], dtype=torch.float64) / (3 * 2000)


def t_cdf(x: float, df: float) -> float:
    """P(T <= x) for x >= 0: 1 - I_b(df / 2, 1 / 2) / 2 at b = df / (df + x^2), the regularized incomplete beta
    function's integral of u^(a-1) (1-u)^(-1/2) over [0, b] by Simpson's rule after u = b v^(1/a), which takes away
    its singularity at 0."""
    a, bound = df / 2, df / (df + x * x)
    u = bound * SIMPSON ** (1 / a)
    integral = ((1 - u).clamp(min=1e-300) ** -0.5 * SIMPSON_WEIGHTS).sum().item() * bound**a / a
    beta = math.exp(math.lgamma(a) + math.lgamma(0.5) - math.lgamma(a + 0.5))
    return 1 - integral / beta / 2


def paired_difference(method: list[list[list[float]]], reference: list[list[list[float]]]) -> dict:
    """`method[i][s][q]`, `reference[i][s][q]`: the score of question q of held-out set i in seed s (pass@1 over
    sampled thoughts, or a greedy 0/1). The difference is the mean over sets of each set's mean difference (a set
    counts once, whatever its size), with its 95% interval, in the scores' unit."""
    diffs = as_differences(method, reference)
    mean = torch.stack([d.mean() for d in diffs]).mean().item()
    seeds, questions = variance_parts(diffs)
    seeds_t = t_975(diffs[0].shape[0] - 1) if seeds > 0 else 0.0
    questions_t = t_975(min(d.shape[1] for d in diffs) - 1) if questions > 0 else 0.0
    half = (seeds_t**2 * seeds + questions_t**2 * questions) ** 0.5
    return dict(mean=mean, low=mean - half, high=mean + half)


def variance_shares(method: list[list[list[float]]], reference: list[list[list[float]]]) -> dict:
    """How much of the interval's variance the seeds make and how much the questions: each part as a share of their
    sum."""
    seeds, questions = variance_parts(as_differences(method, reference))
    total = seeds + questions
    return dict(seeds=seeds / total if total else 0.0, questions=questions / total if total else 0.0)


# each method's gain is measured against Base given as much compute of next-token training, and against Base itself
REFERENCES = ("cpt-flop", "base")


def paired_to_reference(per_seed: list[dict], names: list[str], reference: str, methods: list[str]) -> dict:
    """Each method's paired difference to `reference` per held-out set and overall, for the best answer, pass@1 and
    greedy accuracy with thinking, accuracy without it and the information gain of thinking, and how much of its
    interval's variance the seeds and the questions make:
    {metric: {method: {row: {mean, low, high, variance_shares: {seeds, questions}}}}}."""
    rows = {**{f"{name} Avg": [name] for name in names}, "Overall": names}

    def scores(method, metric, sets):  # [set][seed][question]
        return [[s["scores"][method][name]["per_question"][metric] for s in per_seed] for name in sets]

    out = {}
    for metric in ("accuracy_best", "pass_at_1", "accuracy_think", "accuracy_nothink", "information_gain"):
        out[metric] = {}
        for method in (m for m in methods if m != reference):
            out[metric][method] = {row: {**paired_difference(scores(method, metric, sets), scores(reference, metric, sets)),
                                         "variance_shares": variance_shares(scores(method, metric, sets),
                                                                            scores(reference, metric, sets))}
                                   for row, sets in rows.items()}
    return out


def lead_change(per_seed: list[dict], names: list[str], reference: str, methods: list[str],
                metric: str = "pass_at_1") -> dict:
    """How each method's lead over `reference` moved with post-training, per question and seed: (method +Post -
    reference +Post) - (method - reference), over the held-out sets, with its interval. Whether a lead "shrinks" or
    "grows" is read from this interval, not from two means: {method: {mean, low, high}}."""

    def lead(method, ref):  # [set][seed][question]
        return [[[a - b for a, b in zip(s["scores"][method][name]["per_question"][metric],
                                        s["scores"][ref][name]["per_question"][metric])] for s in per_seed]
                for name in names]

    return {m: paired_difference(lead(f"{m}-post", f"{reference}-post"), lead(m, reference))
            for m in methods if m != reference}

