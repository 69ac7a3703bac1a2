"""The EMA teacher phi of RLP (arXiv 2510.01265, Section 3): the no-think baseline S_ema = log p_phi(x_t | x_<t).

phi is a float32 copy of the model, never trained. It is set to theta lazily, at the first batch (Algorithm 1,
step 4), and after every optimizer step (not every micro-batch) becomes phi <- tau phi + (1 - tau) theta.
After k updates from phi_0 with models theta_1..theta_k:
    phi_k = tau^k phi_0 + (1 - tau) sum_{j=1..k} tau^(k-j) theta_j.
Saved and restored with checkpoints as `ema.safetensors`.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model


class EmaTeacher:
    def __init__(self, decay: float):
        self.decay = decay
        self.model = None  # set from the policy at the first batch

    @property
    def initialized(self) -> bool:
        return self.model is not None

    def init_from(self, policy: torch.nn.Module) -> None:
        """phi <- theta, as float32, frozen, in eval mode."""
        self.model = copy.deepcopy(policy).float().eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, policy: torch.nn.Module) -> None:
        """phi <- tau phi + (1 - tau) theta, once per optimizer step."""
        for ema_param, param in zip(self.model.parameters(), policy.parameters()):
            ema_param.lerp_(param.detach().float(), 1.0 - self.decay)

    def save(self, path: Path) -> None:
        save_model(self.model, str(path))  # handles tied weights

    def load(self, path: Path, policy: torch.nn.Module) -> None:
        """Restore phi saved by `save`; `policy` gives the architecture."""
        self.init_from(policy)
        load_model(self.model, str(path), device=str(next(policy.parameters()).device))
