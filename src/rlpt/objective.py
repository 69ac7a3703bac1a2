"""The RLP objective (arXiv 2510.01265, Section 3 and Algorithm 1, steps 6-8): pure tensor functions.

- Information-gain reward (eq. 5): r(c_i) = S_pred(c_i) - S_ema, with
  S_pred = log p_theta(x_t | x_<t, c_i) and S_ema = log p_phi(x_t | x_<t) from the EMA teacher (no thought).
  The reward is a constant for the policy update: it is returned detached.
- Group-relative advantage (eq. 7): A_i = G/(G-1) * (r_i - mean_j r_j) over the G thoughts of one (document, t).
  The G/(G-1) factor makes the leave-one-out baseline unbiased. Optional (off by default, not in the paper):
  dividing by the group's reward std; or (`rank_advantages`) bounded advantages from each thought's standing in its
  group.
- Clipped surrogate (eq. 8): per thought token u, rho_u = exp(logp_theta(u) - logp_old(u)),
  L_i = -(1/|c_i|) sum_u min(rho_u A_i, clip(rho_u, 1-eps_low, 1+eps_high) A_i), L = mean_i L_i.
  The paper does not state eps; we use PPO's 0.2 / 0.2.
- Optional KL penalty (off by default, as in the paper): the k3 estimator exp(q - p) - (q - p) - 1 per thought token,
  averaged like the surrogate, against a reference's log-probs.
"""

from __future__ import annotations

import torch


def information_gain(logp_reasoned: torch.Tensor, logp_baseline: torch.Tensor) -> torch.Tensor:
    """Rewards (B, G) from S_pred (B, G) and S_ema (B,); no gradient flows through them."""
    return (logp_reasoned - logp_baseline[:, None]).detach()


def verifier_reward(answer_right: torch.Tensor, truncated: torch.Tensor) -> torch.Tensor:
    """RLVR's reward (B, G): 1 where the model's answer after a closed thought is right, else 0; a thought cut at the
    length limit never gave an answer of its own (its `</think>` was forced), so it earns 0 whatever follows."""
    return (answer_right & ~truncated).float()


def checked_group_size(rewards: torch.Tensor, caller: str) -> int:
    """G of (B, G) rewards: advantages compare the thoughts of a group, so there must be two."""
    group_size = rewards.shape[-1]
    if group_size < 2:
        raise ValueError(f"{caller} needs G >= 2 thoughts per group, got G={group_size}")
    return group_size


def group_advantages(rewards: torch.Tensor, normalize_std: bool = False, eps: float = 1e-6) -> torch.Tensor:
    """A_i = G/(G-1) * (r_i - mean_j r_j) within each row of (B, G) rewards; detached."""
    group_size = checked_group_size(rewards, "group_advantages")
    rewards = rewards.detach()
    centred = rewards - rewards.mean(dim=-1, keepdim=True)
    # a group of equal rewards has advantages of exactly 0, as the formula says; the float mean can be an ulp off
    # them (for 44% of random values at G = 16), which dividing by the std + eps would scale up a million times
    equal = (rewards == rewards[..., :1]).all(dim=-1, keepdim=True) & torch.isfinite(rewards[..., :1])
    centred = torch.where(equal, 0.0, centred)  # (a group of infinite rewards stays NaN: the step is skipped)
    advantages = group_size / (group_size - 1) * centred
    if normalize_std:
        advantages = advantages / (rewards.std(dim=-1, keepdim=True) + eps)
    return advantages


def rank_advantages(rewards: torch.Tensor, tie: float) -> torch.Tensor:
    """Advantages (B, G) from each thought's standing in its group (not in the paper): (wins - losses) / (G - 1), a win
    being a reward above another's by more than `tie`; detached. In [-1, 1] and summing to 0 over a group, so a rare
    catastrophic thought (a wrong thought can cost 20 nats) weighs no more than any other loss, and rewards within
    `tie` of each other tie (dividing by the std would spread such near-equal rewards to unit size)."""
    group_size = checked_group_size(rewards, "rank_advantages")
    rewards = rewards.detach()
    gaps = rewards[..., :, None] - rewards[..., None, :]  # (B, G, G): r_i - r_j
    advantages = ((gaps > tie).sum(-1) - (gaps < -tie).sum(-1)).to(rewards.dtype) / (group_size - 1)
    # a non-finite reward makes its group's advantages NaN, as the mean-centred ones are: the trainer skips the step
    return torch.where(torch.isfinite(rewards).all(-1, keepdim=True), advantages, float("nan"))


def per_thought_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(N, L) token values -> (N,) mean over each thought's masked tokens (a thought with no token gives 0)."""
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1)


def clipped_surrogate_loss(
    logp: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
) -> torch.Tensor:
    """Scalar to minimise: eq. 8 over N thoughts of L token slots; `mask` (N, L) marks the thought's sampled tokens."""
    return per_thought_mean(clipped_surrogate_terms(logp, logp_old, advantages, eps_low, eps_high), mask).mean()


def clipped_surrogate_terms(logp, logp_old, advantages, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """Per-token -min(rho A, clip(rho) A), (N, L)."""
    ratio = torch.exp(logp - logp_old.detach())
    adv = advantages.detach()[:, None]
    return -torch.minimum(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)


def kl_penalty(logp: torch.Tensor, logp_ref: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over thoughts of the per-thought mean k3 estimate of KL(pi_theta || pi_ref) on the sampled tokens."""
    delta = logp_ref.detach() - logp
    return per_thought_mean(torch.exp(delta) - delta - 1, mask).mean()


def clip_fraction(logp, logp_old, advantages, mask, eps_low: float = 0.2, eps_high: float = 0.2) -> torch.Tensor:
    """Share of thought tokens whose clipped term is the active one (the gradient is cut there)."""
    ratio = torch.exp(logp - logp_old).detach()
    adv = advantages[:, None]
    clipped = ((ratio > 1 + eps_high) & (adv > 0)) | ((ratio < 1 - eps_low) & (adv < 0))
    mask = mask.bool()
    return (clipped & mask).sum() / mask.sum().clamp(min=1)
