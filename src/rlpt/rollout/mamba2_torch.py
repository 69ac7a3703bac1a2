"""How the recurrent engine runs a model's Mamba-2 mixers in PyTorch (what runs without the CUDA kernels of
`mamba-ssm`): its short forwards scan in short chunks (`short_chunks`), and decoding takes a leaner one-token step
(`lean_steps`). Both give the model's own states and outputs, up to rounding, and both are left alone where the
kernels run (CUDA with `mamba_ssm` installed).

The one-token step: transformers' PyTorch `selective_state_update` expands the time step, its decay and B over every
(head_dim, state) element before using them: six passes over tensors as big as the state (rows x heads x head_dim x
state), and an exponential of all of it, where one value per head is enough. Here the decay is one exponential per
row and head and the update one fused multiply-add, in a third of the time (docs/performance.md). Decoding is
one-token steps of every row, so this step was most of a hybrid model's decoding time on CPU. `lean_steps(model)`
puts it in the modules of the model's Mamba-2 mixers (NemotronH, FalconH1, Mamba2, Bamba, Granite 4, Zamba2: each
defines `mamba2_selective_state_update`) and puts theirs back after. The reference engine keeps the model's own, so
the exactness tests hold this one to it; the start-up probe checks decoding against the model's own forward too.
"""

from __future__ import annotations

import functools
import importlib
import sys
from contextlib import contextmanager

import torch
import torch.nn.functional as F

NAME = "mamba2_selective_state_update"  # the function each Mamba-2 modeling module defines and its mixers call
SHORT_CHUNK = 16  # tokens in a chunk of the Mamba-2 scan in the engine's short forwards (see `short_chunks`)


def kernels_run(model) -> bool:
    """Whether the model's Mamba-2 mixers run mamba-ssm's kernels (on CUDA, where `mamba_ssm` imports)."""
    return next(model.parameters()).device.type == "cuda" and mamba_ssm_imports()


@functools.cache
def mamba_ssm_imports() -> bool:
    try:
        importlib.import_module("mamba_ssm")
        return True
    except Exception:  # not installed, or built for another torch: transformers falls back to PyTorch too
        return False


def mamba_mixers(model) -> list:
    """The model's Mamba-2 mixers: the modules with a scan chunk (`chunk_size`) and an `A_log`."""
    return [m for m in model.modules() if isinstance(getattr(m, "chunk_size", None), int) and hasattr(m, "A_log")]


@contextmanager
def short_chunks(model):
    """Inside, the model's Mamba-2 mixers scan in chunks of SHORT_CHUNK tokens. PyTorch's chunked scan pads a sequence
    to a whole chunk (128 or 256 tokens in the shipped configs) and costs the square of the chunk per chunk; the
    engine's forwards are segments and thought rows of 8-50 tokens, where it would spend most of its time on padding
    (8x at 256 rows of 33 tokens, chunk 128: docs/performance.md); a much smaller chunk (a tiny model's 4) costs more
    chunks. The chunk is the scan's own choice, not the model's: any size gives the same states and outputs, up to
    rounding. Left as it is where the mamba-ssm kernels run (CUDA with `mamba_ssm` installed), which have their own
    tuned chunk."""
    mixers = [] if kernels_run(model) else mamba_mixers(model)
    sizes = [m.chunk_size for m in mixers]
    for m in mixers:
        m.chunk_size = SHORT_CHUNK
    try:
        yield
    finally:
        for m, size in zip(mixers, sizes):
            m.chunk_size = size


def lean_state_update(original):
    """A `selective_state_update` with the contract of `original` (transformers' PyTorch fallback): `state` (b, h, p, n)
    updated in place, the output (b, h, p) returned. The time step, A, D and dt_bias come expanded over head_dim (and
    A over the state too), as the mixers pass them; anything else goes to `original`, and so do packed sequences."""

    def update(state, hidden_states, dt, A, B, C, D=None, dt_bias=None, dt_softplus=False, z=None, **kwargs):
        shapes = hidden_states.dim() == dt.dim() == A.dim() == 3
        strides = [] if not shapes else [dt.stride(-1), A.stride(-1), A.stride(-2)] + [
            x.stride(-1) for x in (D, dt_bias) if x is not None]
        packed = kwargs.get("cu_seqlens") is not None or kwargs.get("seq_idx") is not None
        if not shapes or any(strides) or packed:  # a stride of 0: the same value all along that dimension
            return original(state, hidden_states, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, z=z,
                            **kwargs)
        heads = hidden_states.shape[1]
        dt = dt[..., :1]  # (b, h, 1): one time step a head
        if dt_bias is not None:
            dt = dt + dt_bias[:, :1].to(dt.dtype)
        if dt_softplus:
            dt = F.softplus(dt)
        work = torch.promote_types(state.dtype, torch.float32)  # as transformers' step: float32 at least
        decay = torch.exp(dt.to(work) * A[:, 0, :1].to(work))  # (b, h, 1)
        per_head = heads // B.shape[1]
        B = B.repeat_interleave(per_head, dim=1)[:, :, None, :]  # (b, h, 1, n)
        C = C.repeat_interleave(per_head, dim=1)[:, :, :, None]  # (b, h, n, 1)
        increment = (dt * hidden_states)[..., None]  # (b, h, p, 1), times B (b, h, 1, n)
        if state.dtype == work:  # in place: the mixers hand over a copy of the cached state to write
            state.mul_(decay[..., None]).addcmul_(increment.to(work), B.to(work))
            new = state
        else:  # computed wider and rounded once, as transformers' step does
            new = torch.addcmul(state.to(work) * decay[..., None], increment.to(work), B.to(work))
            state.copy_(new)
        out = (new.to(C.dtype) @ C).squeeze(-1)
        if D is not None:
            out = out + hidden_states * D
        if z is not None:
            out = out * F.silu(z)
        return out.to(hidden_states.dtype)

    update.lean_original = original
    return update


def mixer_modules(model) -> list:
    """The modeling modules of the model's Mamba-2 mixers that define the step (each once)."""
    modules = {}
    for mixer in mamba_mixers(model):
        module = sys.modules.get(type(mixer).__module__)
        if module is not None and callable(getattr(module, NAME, None)):
            modules[module.__name__] = module
    return list(modules.values())


@contextmanager
def lean_steps(model):
    """Inside, the model's Mamba-2 mixers take `lean_state_update` for their one-token steps. The step is a function
    of the mixers' modeling module, so every model of that family in the process takes it while inside (rlpt decodes
    one model at a time)."""
    swapped = []
    for module in [] if kernels_run(model) else mixer_modules(model):
        original = getattr(module, NAME)
        if not hasattr(original, "lean_original"):  # not already inside another block
            setattr(module, NAME, lean_state_update(original))
            swapped.append((module, original))
    try:
        yield
    finally:
        for module, original in swapped:
            setattr(module, NAME, original)
