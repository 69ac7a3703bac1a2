"""A step's batch of groups: which groups carry signal, and DAPO's dynamic sampling, which draws more rounds of
positions and keeps the groups with signal until the batch is full. Rolling out a round is the trainer's (`draw`);
choosing among the rounds is here, the same on any number of ranks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlpt import distributed
from rlpt.generation import hash_key
from rlpt.rollout import Rollouts
from rlpt.rollout.base import concatenated, groups_of

# rewards of one group closer than this (in nats) count as equal. Not float noise alone: thoughts that differ where the
# scored tokens do not depend on them (a middle column, when the reward scores the first answer digit) differ by
# 1e-5 to 1e-3 nats, which teaches nothing; 0.01 nats is a 1% change in the scored tokens' probability.
SIGNAL_TOLERANCE = 0.01


def group_has_signal(rewards: torch.Tensor) -> torch.Tensor:
    """(B,) True where a group's rewards (B, G) are not all equal: only such a group has non-zero advantages."""
    return (rewards.max(dim=-1).values - rewards.min(dim=-1).values) > SIGNAL_TOLERANCE


@dataclass
class Batch:
    """A step's groups and their rewards (B, G). `idle`: this rank has none, the rollouts a stand-in weighted 0.
    `drawn_contexts`: the contexts this rank rolled out to fill it, over `rounds` rounds of draws, `drawn_rewards`
    their rewards (every group drawn, kept or not)."""
    rollouts: Rollouts
    rewards: torch.Tensor
    idle: bool
    drawn_contexts: int
    rounds: int
    drawn_rewards: torch.Tensor


Draw = Callable[..., tuple[Rollouts, torch.Tensor, bool]]  # (round, exclude=keys) -> (rollouts, rewards, idle)


def sample_batch(draw: Draw, extra_rounds: int, seed: int, step: int, first: int) -> Batch:
    """Round 0 of `draw`; with `extra_rounds` R (dynamic sampling), up to 1 + R rounds, keeping the groups with signal
    (or a non-finite reward, which the step's safeguard must see) until as many as round 0 drew over all ranks. A
    round's groups are taken in an order hashed from (seed, step, round, slot, position), the same on any number of
    ranks and favouring no document or rank; a later round draws no (slot, position) already kept (fresh thoughts
    elsewhere: with a fixed rule such as `answer`, the positions that had none). If no round kept any group, round 0's
    batch stands, as without it. `first`: the slot of this rank's first document."""
    rollouts, rewards, idle = draw(0)
    drawn = 0 if idle else len(rollouts.contexts)
    if not extra_rounds:
        return Batch(rollouts, rewards, idle, drawn, 1, rewards[:0] if idle else rewards)
    first_round = (rollouts, rewards, idle)
    wanted = sum(distributed.all_gather(drawn))
    parts, kept, every_drawn = [], set(), []  # kept: the (slot, position) keys kept so far, over all ranks
    for round_ in range(1 + extra_rounds):
        if round_:
            rollouts, rewards, idle = draw(round_, frozenset(kept))
            drawn += 0 if idle else len(rollouts.contexts)
        keys = [] if idle else [(first + c.doc, c.position) for c in rollouts.contexts]
        if not idle:
            every_drawn.append(rewards)
        useful = (group_has_signal(rewards) | ~torch.isfinite(rewards).all(dim=-1)).tolist()
        candidates = [key for key, u in zip(keys, useful) if u]
        order = sorted((hash_key(seed, step, round_, *key), key)
                       for rank in distributed.all_gather(candidates) for key in rank)
        taken = {key for _, key in order[: wanted - len(kept)]}
        groups = [b for b, key in enumerate(keys) if key in taken]
        if groups:
            parts.append((groups_of(rollouts, groups), rewards[groups]))
        kept |= taken
        if len(kept) >= wanted:
            break
    every_drawn = torch.cat(every_drawn) if every_drawn else first_round[1][:0]
    if not kept:  # no group with signal anywhere: round 0's batch, as without dynamic sampling
        return Batch(*first_round, drawn, round_ + 1, every_drawn)
    if not parts:  # none of this rank's groups was kept: the last round's stand in, weighted 0
        return Batch(rollouts, rewards, True, drawn, round_ + 1, every_drawn)
    return Batch(concatenated([p for p, _ in parts]), torch.cat([r for _, r in parts]), False, drawn, round_ + 1,
                 every_drawn)
