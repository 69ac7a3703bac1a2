"""The EMA teacher: lazy float32 copy, closed form after k updates, checkpoint round trip."""

import torch
from transformers import AutoModelForCausalLM

from rlpt.ema import EmaTeacher


def test_ema_equals_closed_form_after_k_steps(llama_dir):
    policy = AutoModelForCausalLM.from_pretrained(llama_dir)
    tau, k = 0.9, 5
    ema = EmaTeacher(tau)
    assert not ema.initialized
    ema.init_from(policy)
    phi0 = {n: p.detach().clone() for n, p in ema.model.named_parameters()}
    thetas = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(k):
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
        thetas.append({n: p.detach().clone() for n, p in policy.named_parameters()})
        ema.update(policy)
    for name, value in ema.model.named_parameters():
        # phi_k = tau^k phi_0 + (1 - tau) sum_j tau^(k-j) theta_j
        closed = tau**k * phi0[name] + sum((1 - tau) * tau ** (k - j) * thetas[j - 1][name] for j in range(1, k + 1))
        torch.testing.assert_close(value, closed, atol=1e-6, rtol=1e-6)


def test_ema_is_float32_frozen_and_separate(llama_dir):
    policy = AutoModelForCausalLM.from_pretrained(llama_dir, dtype=torch.bfloat16)
    ema = EmaTeacher(0.999)
    ema.init_from(policy)
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in ema.model.parameters())
    assert not ema.model.training
    before = next(ema.model.parameters()).clone()
    with torch.no_grad():
        next(policy.parameters()).add_(1.0)
    torch.testing.assert_close(next(ema.model.parameters()), before)  # a copy, not a view of the policy


def test_ema_save_load_round_trip(llama_dir, tmp_path):
    policy = AutoModelForCausalLM.from_pretrained(llama_dir)
    ema = EmaTeacher(0.5)
    ema.init_from(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.mul_(2.0)
    ema.update(policy)
    ema.save(tmp_path / "ema.safetensors")
    restored = EmaTeacher(0.5)
    restored.load(tmp_path / "ema.safetensors", policy)
    for a, b in zip(ema.model.state_dict().values(), restored.model.state_dict().values()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
