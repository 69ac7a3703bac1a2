"""What every thought engine takes and returns."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlpt.data import Context
from rlpt.models import ThinkTokens


def ban_close_as_first(logits: torch.Tensor, close_id: int) -> torch.Tensor:
    """The sampler never draws `</think>` as a thought's first token (a thought has >= 1 token), so the update scores
    that token under the same renormalised distribution: its logit at thought position 0 is -inf. `logits` is
    (rows, thought positions, vocabulary), a tensor of the caller's own (changed in place)."""
    logits[:, 0, close_id] = float("-inf")
    return logits


@dataclass(frozen=True)
class RolloutSpec:
    group_size: int
    max_thought_tokens: int
    temperature: float
    think: ThinkTokens
    pad_id: int
    baseline_excludes_think: bool = False
    reward_discount: float = 1.0  # gamma: term k of a multi-token S_pred / S_ema is weighted gamma^k


@dataclass
class Rollouts:
    """G thoughts for each of B contexts; thought k of context b is row b * G + k."""

    contexts: list[Context]
    thoughts: list[list[int]]  # sampled tokens, with a sampled </think> (part of the action), without a forced one
    s_pred: torch.Tensor  # (B, G) log p_theta(x_t | x_<t <think> c </think>), untempered; summed over K tokens
    s_ema: torch.Tensor  # (B,) log p_phi(x_t | x_<t), untempered; summed over K tokens
    predicted: torch.Tensor  # (B, G) argmax_v p_theta(v | x_<t <think> c </think>): the answer RPT's reward checks

    def truncated(self, close_id: int) -> torch.Tensor:
        """(B*G,) True where the thought hit the length limit and its </think> was forced."""
        return torch.tensor([not t or t[-1] != close_id for t in self.thoughts])
