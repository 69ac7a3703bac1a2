"""Paired differences between two methods with a bootstrap 95% interval, over questions and seeds.

Every method of a seed is scored on the same held-out questions, so a method's edge over another is measured per
question (the difference of their scores on it) and the question's own difficulty cancels out. The seeds and the
questions are crossed: every seed answers the same questions, so a question that favours one method does so in every
seed. The interval therefore draws seeds with replacement and, once per resample, the questions with replacement,
the same question draw for every drawn seed, and takes the 2.5th and 97.5th percentiles of the mean difference: both
the spread between seeds and the finite question set widen it. (Drawing the questions anew for each seed would
average the question effect over the seeds and shrink its share of the variance by their number: with 3 seeds, such
a "95%" interval covered the true difference 72-77% of the time in simulations where the effect is per question.)
`variance_shares` says how much of the width each source makes."""

from __future__ import annotations

import torch

RESAMPLES = 4000


def as_differences(method: list[list[list[float]]], reference: list[list[list[float]]]) -> list[torch.Tensor]:
    return [torch.tensor(m, dtype=torch.float64) - torch.tensor(r, dtype=torch.float64) for m, r in zip(method, reference)]


def paired_difference(method: list[list[list[float]]], reference: list[list[list[float]]], resamples: int = RESAMPLES,
                      seed: int = 0) -> dict:
    """`method[i][s][q]`, `reference[i][s][q]`: the score of question q of held-out set i in seed s (pass@1 over
    sampled thoughts, or a greedy 0/1). The difference is the mean over sets of each set's mean difference (a set
    counts once, whatever its size), with its 95% bootstrap interval, in the scores' unit."""
    diffs = as_differences(method, reference)
    means = bootstrap_means(diffs, resamples, seed)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return dict(mean=torch.stack([d.mean() for d in diffs]).mean().item(), low=low, high=high)


def bootstrap_means(diffs: list[torch.Tensor], resamples: int, seed: int, seeds: bool = True,
                    questions: bool = True) -> torch.Tensor:
    """(resamples,) bootstrap means over sets of `diffs[i]` (seeds, questions): per resample one draw of the seeds
    with replacement (shared by every set: a seed's models answer all of them) and, per set, one draw of its questions
    with replacement, shared by every drawn seed. `seeds`/`questions` False keeps that axis as it is."""
    generator = torch.Generator().manual_seed(seed)
    n_seeds = diffs[0].shape[0]
    drawn_seeds = (torch.randint(n_seeds, (resamples, n_seeds, 1), generator=generator) if seeds
                   else torch.arange(n_seeds).expand(resamples, n_seeds)[:, :, None])
    means = []
    for d in diffs:
        n_questions = d.shape[1]
        drawn_questions = (torch.randint(n_questions, (resamples, 1, n_questions), generator=generator) if questions
                           else torch.arange(n_questions).expand(resamples, 1, n_questions))
        means.append(d[drawn_seeds, drawn_questions].mean(dim=(1, 2)))
    return torch.stack(means).mean(0)


def variance_shares(method: list[list[list[float]]], reference: list[list[list[float]]], resamples: int = RESAMPLES,
                    seed: int = 0) -> dict:
    """How much of the interval's width comes from the seeds and how much from the questions: the bootstrap variance
    of the mean difference with only the seeds resampled, and with only the questions, each as a share of their sum
    (about the whole variance when the two sources are independent)."""
    diffs = as_differences(method, reference)
    by_seeds = bootstrap_means(diffs, resamples, seed, questions=False).var().item()
    by_questions = bootstrap_means(diffs, resamples, seed, seeds=False).var().item()
    total = by_seeds + by_questions
    return dict(seeds=by_seeds / total if total else 0.0, questions=by_questions / total if total else 0.0)


# each method's gain is measured against Base given as much compute of next-token training, and against Base itself
REFERENCES = ("cpt-flop", "base")


def paired_to_reference(per_seed: list[dict], names: list[str], reference: str, methods: list[str]) -> dict:
    """Each method's paired difference to `reference` per held-out set and overall, for pass@1 and greedy accuracy
    with thinking and the information gain of thinking, and how much of its interval's variance the seeds and the
    questions make:
    {metric: {method: {row: {mean, low, high, variance_shares: {seeds, questions}}}}}."""
    rows = {**{f"{name} Avg": [name] for name in names}, "Overall": names}

    def scores(method, metric, sets):  # [set][seed][question]
        return [[s["scores"][method][name]["per_question"][metric] for s in per_seed] for name in sets]

    out = {}
    for metric in ("pass_at_1", "accuracy_think", "information_gain"):
        out[metric] = {}
        for method in (m for m in methods if m != reference):
            out[metric][method] = {row: {**paired_difference(scores(method, metric, sets), scores(reference, metric, sets)),
                                         "variance_shares": variance_shares(scores(method, metric, sets),
                                                                            scores(reference, metric, sets))}
                                   for row, sets in rows.items()}
    return out
