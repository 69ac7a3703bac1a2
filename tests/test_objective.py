"""The RLP math against hand-worked cases (tolerance 1e-6) and an independent loop implementation."""

import math

import pytest
import torch

from rlpt.objective import (clip_fraction, clipped_surrogate_loss, group_advantages, information_gain, kl_penalty,
                            rank_advantages)


def test_information_gain_is_reasoned_minus_baseline_and_carries_no_gradient():
    s_pred = torch.tensor([[-1.0, -0.5], [-3.0, -2.0]], requires_grad=True)
    s_ema = torch.tensor([-2.0, -2.5], requires_grad=True)
    reward = information_gain(s_pred, s_ema)
    # row 0: -1 - (-2) = 1, -0.5 - (-2) = 1.5; row 1: -3 - (-2.5) = -0.5, -2 - (-2.5) = 0.5
    torch.testing.assert_close(reward, torch.tensor([[1.0, 1.5], [-0.5, 0.5]]), atol=1e-6, rtol=0)
    assert not reward.requires_grad


def test_group_advantages_hand_worked_with_the_g_over_g_minus_1_factor():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]])
    # row 0: mean 3, r - mean = [-2, -1, 0, 3], times G/(G-1) = 4/3 -> [-8/3, -4/3, 0, 4]; row 1: all equal -> 0
    expected = torch.tensor([[-8 / 3, -4 / 3, 0.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(group_advantages(rewards), expected, atol=1e-6, rtol=0)
    # dropping the factor would give [-2, -1, 0, 3]: the test above tells them apart
    assert not torch.allclose(group_advantages(rewards)[0], torch.tensor([-2.0, -1.0, 0.0, 3.0]), atol=1e-3)


def test_group_advantages_g2_and_errors():
    # G=2: 2/1 * (r - mean) = [-1, 1] for rewards [0, 1]
    torch.testing.assert_close(group_advantages(torch.tensor([[0.0, 1.0]])), torch.tensor([[-1.0, 1.0]]), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.tensor([[1.0], [2.0]]))


def test_rank_advantages_by_hand():
    """(wins - losses) / (G - 1), rewards within the tie apart tying: a -20-nat thought is one loss like any other;
    near-equal rewards give nothing (std normalisation would make them unit-size)."""
    rewards = torch.tensor([[0.0, 3.0, 3.005, -20.0], [1.0, 1.001, 0.999, 1.0]])
    expected = torch.tensor([[(1 - 2) / 3, 2 / 3, 2 / 3, -1.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(rank_advantages(rewards, tie=0.01), expected)
    assert rank_advantages(rewards, tie=0.0)[1].abs().sum() > 0  # no tie: the near-equal rewards are ranked
    with pytest.raises(ValueError, match="G >= 2"):
        rank_advantages(torch.tensor([[1.0]]), tie=0.01)
    broken = rank_advantages(torch.tensor([[0.0, float("nan")], [0.0, 1.0]]), tie=0.01)
    assert broken[0].isnan().all() and broken[1].tolist() == [-1.0, 1.0]  # NaN reaches the loss: the step is skipped


def test_group_advantages_optional_std_normalisation():
    rewards = torch.tensor([[1.0, 2.0, 3.0, 6.0]])
    std = rewards.std()  # unbiased: sqrt(((4+1+0+9)/3)) = sqrt(14/3)
    assert abs(std.item() - math.sqrt(14 / 3)) < 1e-6
    torch.testing.assert_close(group_advantages(rewards, normalize_std=True), group_advantages(rewards) / (std + 1e-6))



def test_a_group_of_equal_rewards_has_advantages_of_exactly_zero():
    # 0.1 sixteen times: the float32 mean is 7e-9 off 0.1 (checked below), which dividing by the std (0) + 1e-6 used
    # to scale up a million times
    rewards = torch.full((4, 16), 0.1)
    rewards[1, 3] = float("nan")
    rewards[2], rewards[3] = float("inf"), float("-inf")  # equal, but not finite
    assert rewards[0].mean().item() != rewards[0, 0].item()
    for normalize_std in (False, True):
        advantages = group_advantages(rewards, normalize_std=normalize_std)
        assert advantages[0].tolist() == [0.0] * 16  # exactly: the update skips such thoughts
        assert advantages[1:].isnan().all()  # a non-finite reward still reaches the loss, which skips the step

# A hand-worked batch of N=2 thoughts, L=3 slots, eps 0.2/0.2:
#   thought 0: A = +1, ratios [1.5, 0.5, 1.1], all 3 tokens real
#     min(rho A, clip(rho) A) = [min(1.5, 1.2), min(0.5, 0.8), min(1.1, 1.1)] = [1.2, 0.5, 1.1] -> L_0 = -2.8 / 3
#   thought 1: A = -2, ratios [1.3, 0.7, 1.0], last slot is padding
#     [min(-2.6, -2.4), min(-1.4, -1.6)] = [-2.6, -1.6] -> L_1 = 4.2 / 2 = 2.1
#   L = (L_0 + L_1) / 2 = (-0.933333 + 2.1) / 2 = 0.583333
RATIOS = torch.tensor([[1.5, 0.5, 1.1], [1.3, 0.7, 1.0]])
ADV = torch.tensor([1.0, -2.0])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])


def hand_case():
    logp = torch.log(RATIOS).clone().requires_grad_(True)
    return logp, torch.zeros(2, 3)


def test_clipped_surrogate_hand_worked_value():
    logp, logp_old = hand_case()
    loss = clipped_surrogate_loss(logp, logp_old, ADV, MASK, 0.2, 0.2)
    assert abs(loss.item() - (-2.8 / 3 + 2.1) / 2) < 1e-6


def test_clipped_surrogate_fails_without_clip_or_mask():
    logp, logp_old = hand_case()
    loss = clipped_surrogate_loss(logp, logp_old, ADV, MASK, 0.2, 0.2).item()
    no_clip = clipped_surrogate_loss(logp, logp_old, ADV, MASK, 1e9, 1e9).item()
    no_mask = clipped_surrogate_loss(logp, logp_old, ADV, torch.ones(2, 3), 0.2, 0.2).item()
    # without the clip: L_0 = -3.1/3, L_1 = 4.0/2 -> 0.483333; without the mask: L_1 = 6.2/3 -> 0.566667
    assert abs(no_clip - (-3.1 / 3 + 2.0) / 2) < 1e-6
    assert abs(no_mask - (-2.8 / 3 + 6.2 / 3) / 2) < 1e-6
    assert abs(loss - no_clip) > 0.05 and abs(loss - no_mask) > 0.01


def test_clipped_surrogate_hand_worked_gradient():
    logp, logp_old = hand_case()
    clipped_surrogate_loss(logp, logp_old, ADV, MASK, 0.2, 0.2).backward()
    # d/dlogp of -(1/N)(1/|c_i|) rho A where the unclipped term is the min, 0 where the clipped one is:
    #   thought 0: token 0 clipped (1.5 > 1.2, A > 0) -> 0; token 1: -(1/2)(1/3)(0.5)(1); token 2: -(1/2)(1/3)(1.1)(1)
    #   thought 1: token 0 unclipped min (-2.6 < -2.4) -> -(1/2)(1/2)(1.3)(-2); token 1 clipped (0.7 < 0.8, A < 0) -> 0
    expected = torch.tensor([[0.0, -0.5 / 6, -1.1 / 6], [2.6 / 4, 0.0, 0.0]])
    torch.testing.assert_close(logp.grad, expected, atol=1e-6, rtol=0)


def independent_rlp_loss(logp, logp_old, adv, mask, eps_low, eps_high):
    """Equation 8 written as plain loops over thoughts and tokens."""
    total = 0.0
    for i in range(logp.shape[0]):
        terms = []
        for u in range(logp.shape[1]):
            if mask[i, u] > 0:
                rho = torch.exp(logp[i, u] - logp_old[i, u])
                clipped = torch.clamp(rho, 1 - eps_low, 1 + eps_high)
                terms.append(torch.minimum(rho * adv[i], clipped * adv[i]))
        total = total - sum(terms) / len(terms)
    return total / logp.shape[0]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_implementation_of_equations_5_7_8(seed):
    gen = torch.Generator().manual_seed(seed)
    B, G, L = 3, 4, 7
    s_pred, s_ema = torch.randn(B, G, generator=gen), torch.randn(B, generator=gen)
    # eq. 5 and 7 by hand, per group
    expected_adv = torch.stack([
        torch.tensor([G / (G - 1) * ((s_pred[b, i] - s_ema[b]) - (s_pred[b] - s_ema[b]).mean()) for i in range(G)])
        for b in range(B)
    ])
    adv = group_advantages(information_gain(s_pred, s_ema))
    torch.testing.assert_close(adv, expected_adv, atol=1e-6, rtol=0)

    logp_old = torch.randn(B * G, L, generator=gen) - 2
    base = logp_old + 0.4 * torch.randn(B * G, L, generator=gen)  # ratios on both sides of the clip range
    lengths = torch.randint(1, L + 1, (B * G,), generator=gen)
    mask = (torch.arange(L)[None, :] < lengths[:, None]).float()
    ours_in, ref_in = base.clone().requires_grad_(True), base.clone().requires_grad_(True)
    ours = clipped_surrogate_loss(ours_in, logp_old, adv.flatten(), mask, 0.2, 0.28)
    ref = independent_rlp_loss(ref_in, logp_old, expected_adv.flatten(), mask, 0.2, 0.28)
    ours.backward()
    ref.backward()
    assert abs(ours.item() - ref.item()) < 1e-6
    torch.testing.assert_close(ours_in.grad, ref_in.grad, atol=1e-6, rtol=0)


def test_rho_one_gives_the_policy_gradient():
    # with logp_old = logp.detach() (one update per batch) the gradient is -(1/N) sum_i A_i (1/|c_i|) grad sum_u logp
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -0.7]], requires_grad=True)
    adv = torch.tensor([0.5, -1.5])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    clipped_surrogate_loss(logp, logp.detach(), adv, mask).backward()
    expected = torch.tensor([[-0.5 / 4, -0.5 / 4], [1.5 / 2, 0.0]])
    torch.testing.assert_close(logp.grad, expected, atol=1e-6, rtol=0)


def test_kl_penalty_k3_hand_worked():
    # p = 0.5, ref = 0.25: delta = log(0.25/0.5) = -log 2; exp(delta) - delta - 1 = 0.5 + log 2 - 1
    logp = torch.log(torch.tensor([[0.5, 0.9]]))
    ref = torch.log(torch.tensor([[0.25, 0.1]]))
    value = kl_penalty(logp, ref, torch.tensor([[1.0, 0.0]]))
    assert abs(value.item() - (0.5 + math.log(2) - 1)) < 1e-6
    assert kl_penalty(logp, logp, torch.ones(1, 2)).item() == 0.0


def test_clip_fraction_counts_active_clips_on_real_tokens():
    logp, logp_old = hand_case()
    # clipped and active: thought 0 token 0 (1.5, A>0) and thought 1 token 1 (0.7, A<0): 2 of 5 real tokens
    assert abs(clip_fraction(logp, logp_old, ADV, MASK).item() - 2 / 5) < 1e-6
