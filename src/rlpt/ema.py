"""The EMA teacher phi of RLP (arXiv 2510.01265, Section 3): the no-think baseline S_ema = log p_phi(x_t | x_<t).

phi is a float32 copy of the model, never trained. It is set to theta lazily, at the first batch (Algorithm 1,
step 4), and after every optimizer step (not every micro-batch) becomes phi <- tau phi + (1 - tau) theta.
After k updates from phi_0 with models theta_1..theta_k:
    phi_k = tau^k phi_0 + (1 - tau) sum_{j=1..k} tau^(k-j) theta_j.
Under FSDP the teacher is sharded like the model and each rank updates its own shard. Saved with checkpoints as
`ema.safetensors` (or, sharded, in the checkpoint's `dcp/`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_model, save_model

from rlpt.distributed import local


def frozen_copy(policy: torch.nn.Module, shard: Callable | None = None) -> torch.nn.Module:
    """A float32, frozen, eval-mode copy of `policy`, built from its config rather than deep-copied (a DDP-wrapped
    module refuses deepcopy, and a sharded teacher must be laid out like the policy before it holds any weights)."""
    from transformers import AutoModelForCausalLM

    config = policy.config
    with torch.device("meta"):
        copy = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=config._attn_implementation)
    copy.to_empty(device=next(policy.parameters()).device)  # memory, not initialised: the policy's values go in
    copy.tie_weights()  # to_empty allocates each tensor anew, which unties a tied head
    if shard is not None:
        shard(copy)
    with torch.no_grad():
        for mine, theirs in zip(copy.parameters(), policy.parameters(), strict=True):
            local(mine).copy_(local(theirs))
        for mine, theirs in zip(copy.buffers(), policy.buffers(), strict=True):  # rotary tables: not made on meta
            mine.copy_(theirs)
    return copy.eval().requires_grad_(False)


class EmaTeacher:
    def __init__(self, decay: float, shard: Callable | None = None):
        self.decay = decay
        self.shard = shard  # lays the teacher out like the policy (FSDP), or None
        self.model = None  # set from the policy at the first batch

    @property
    def initialized(self) -> bool:
        return self.model is not None

    def init_from(self, policy: torch.nn.Module) -> None:
        """phi <- theta, as float32, frozen, in eval mode."""
        self.model = frozen_copy(policy, self.shard)

    @torch.no_grad()
    def update(self, policy: torch.nn.Module) -> None:
        """phi <- tau phi + (1 - tau) theta, once per optimizer step (each rank on its own shard)."""
        pairs = list(zip(self.model.parameters(), policy.parameters(), strict=True))
        # one fused call over all tensors (7x faster on CPU than a loop of lerp_)
        torch._foreach_lerp_([local(e) for e, _ in pairs], [local(p).detach().float() for _, p in pairs], 1.0 - self.decay)

    def save(self, path: Path) -> None:
        save_model(self.model, str(path))  # handles tied weights

    def load(self, path: Path, policy: torch.nn.Module) -> None:
        """Restore phi saved by `save`; `policy` gives the architecture (and, sharded, the layout)."""
        self.init_from(policy)
        if self.shard is None:
            load_model(self.model, str(path), device=str(next(policy.parameters()).device))
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from transformers import AutoModelForCausalLM

        full = AutoModelForCausalLM.from_config(policy.config, dtype=torch.float32)  # unsharded, on the CPU
        load_model(full, str(path))  # resolves tied weights, saved once
        set_model_state_dict(self.model, full.state_dict(), options=StateDictOptions(full_state_dict=True))
