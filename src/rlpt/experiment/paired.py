"""Paired differences between two methods with a bootstrap 95% interval, over questions and seeds.

Every method of a seed is scored on the same held-out questions, so a method's edge over another is measured per
question (the difference of their scores on it) and the question's own difficulty cancels out. The interval resamples
seeds with replacement, then within each drawn seed its questions with replacement, and takes the 2.5th and 97.5th
percentiles of the mean difference: both the spread between seeds and the finite question set widen it."""

from __future__ import annotations

import torch

RESAMPLES = 4000


def paired_difference(method: list[list[list[float]]], reference: list[list[list[float]]], resamples: int = RESAMPLES,
                      seed: int = 0) -> dict:
    """`method[i][s][q]`, `reference[i][s][q]`: the score of question q of held-out set i in seed s (pass@1 over
    sampled thoughts, or a greedy 0/1). The difference is the mean over sets of each set's mean difference (a set
    counts once, whatever its size), with its 95% bootstrap interval, in the scores' unit."""
    diffs = [torch.tensor(m, dtype=torch.float64) - torch.tensor(r, dtype=torch.float64) for m, r in zip(method, reference)]
    generator = torch.Generator().manual_seed(seed)
    seeds = diffs[0].shape[0]
    drawn_seeds = torch.randint(seeds, (resamples, seeds, 1), generator=generator)
    means = torch.stack([
        d[drawn_seeds, torch.randint(d.shape[1], (resamples, seeds, d.shape[1]), generator=generator)].mean(dim=(1, 2))
        for d in diffs
    ]).mean(0)
    low, high = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return dict(mean=torch.stack([d.mean() for d in diffs]).mean().item(), low=low, high=high)
