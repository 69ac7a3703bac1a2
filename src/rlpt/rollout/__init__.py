"""Thought engines: sample G thoughts per (document, position), score them, and give the update's log-probs."""

from rlpt.rollout.base import Context, RolloutSpec, Rollouts

__all__ = ["Context", "RolloutSpec", "Rollouts"]
