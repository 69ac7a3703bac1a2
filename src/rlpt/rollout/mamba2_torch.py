"""How the recurrent engine runs a model's Mamba-2 mixers in PyTorch (what runs without the CUDA kernels of
`mamba-ssm`): its short forwards scan in short chunks (`short_chunks`), decoding takes a leaner one-token step
(`lean_steps`), and one forward over the documents records the mixers' states at every segment's end
(`recorded_segment_ends`, for `recurrent.one_pass`). All give the model's own states and outputs, up to rounding,
and all are left alone where the kernels run (CUDA with `mamba_ssm` installed).

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
MAX_SCAN_CHUNKS = 16  # chunks of a long sequence's scan at most, up to the model's own chunk (see `scan_chunk`)


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
def replaced(settings: list[tuple[object, str, object]]):
    """Inside, each (owner, name, value) of `settings` has `owner.name = value`; after, what it had before."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in settings]
    try:
        for owner, name, value in settings:
            setattr(owner, name, value)
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def mixer_modules(model) -> list:
    """The modeling modules that define the model's Mamba-2 mixers (each once)."""
    return list({type(m).__module__: sys.modules[type(m).__module__] for m in mamba_mixers(model)}.values())


def scan_chunk(length: int, model_chunk: int) -> int:
    """The chunk the engine scans a sequence of `length` tokens in: a power of two, SHORT_CHUNK at least, the model's
    own at most, and otherwise the smallest that makes at most MAX_SCAN_CHUNKS chunks. The chunked scan keeps a state
    per chunk (and a term that grows as their square) and matrices of chunk x chunk per chunk: short chunks suit the
    engine's 8-50-token segments and rows, and would keep 128 states (of 5 MB each at Nemotron-Nano-12B-v2's width)
    for a document of 2,048 tokens."""
    wanted = 1 << max(0, -(-length // MAX_SCAN_CHUNKS) - 1).bit_length()
    return max(SHORT_CHUNK, min(model_chunk, wanted))


@contextmanager
def short_chunks(model, length: int = 0):
    """Inside, the model's Mamba-2 mixers scan sequences of `length` tokens in `scan_chunk(length)`: SHORT_CHUNK for
    short ones. PyTorch's chunked scan pads a sequence to a whole chunk (128 or 256 tokens in the shipped configs) and
    costs the square of the chunk per chunk; the engine's forwards are mostly segments and thought rows of 8-50 tokens,
    where the model's chunk would spend most of its time on padding (8x at 256 rows of 33 tokens, chunk 128:
    docs/performance.md); a much smaller chunk (a tiny model's 4) costs more chunks. The chunk is the scan's own
    choice, not the model's: any size gives the same states and outputs, up to rounding. Left as it is where the
    mamba-ssm kernels run (CUDA with `mamba_ssm` installed), which have their own tuned chunk."""
    mixers = [] if kernels_run(model) else mamba_mixers(model)
    with replaced([(m, "chunk_size", scan_chunk(length, m.chunk_size)) for m in mixers]):
        yield


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


@contextmanager
def lean_steps(model):
    """Inside, the model's Mamba-2 mixers take `lean_state_update` for their one-token steps. The step is a function
    of the mixers' modeling module, so every model of that family in the process takes it while inside (rlpt decodes
    one model at a time)."""
    modules = [] if kernels_run(model) else mixer_modules(model)
    steps = [(module, getattr(module, NAME, None)) for module in modules]
    with replaced([(module, NAME, lean_state_update(step)) for module, step in steps
                   if callable(step) and not hasattr(step, "lean_original")]):  # not already inside another block
        yield


# ------------------------------------------------------------------------------------------------ one pass, every segment's end
SCAN, CONV, CHUNK_SCAN = "mamba2_scan_forward", "causal_conv1d_forward", "mamba2_chunk_scan"


def recording_modules(model, recurrent_layers: set[int]) -> list | None:
    """The modeling modules whose functions `recorded_segment_ends` wraps, or None where it cannot serve the model: a
    recurrent layer that is not a Mamba-2 mixer (gated DeltaNet), or mamba-ssm's kernels running."""
    if kernels_run(model) or {getattr(m, "layer_idx", None) for m in mamba_mixers(model)} != recurrent_layers:
        return None
    modules = mixer_modules(model)
    if not all(callable(getattr(m, f, None)) for m in modules for f in (SCAN, CONV, CHUNK_SCAN)):
        return None
    return modules


def segment_end_states(mixer, chunk_scan, x, B, C, dt, ends_of: list[list[int]]) -> dict[tuple[int, int], torch.Tensor]:
    """The mixer's SSM state (1, heads, head_dim, state) of document (batch row) d after each of its own ends
    `ends_of[d]` (increasing) tokens of its scan's inputs (b, T, ...), from a zero state, keyed (d, end): only the
    states a row reads, never every document's at every document's ends. Each segment's own state (from zero, over its
    tokens only) comes from the model's scan run on the segments apart, left-padded with zeros to a power of two (a
    zero input leaves a zero state zero; segments of about the same length in one call, so the padding stays under
    half); a segment then adds its own to the state before it, decayed by its total time step times A."""
    segments = [(d, start, end) for d, ends in enumerate(ends_of) for start, end in zip([0] + ends[:-1], ends)]
    heads, groups, size = mixer.num_heads, mixer.n_groups, mixer.ssm_state_size
    A = -torch.exp(mixer.A_log.float())
    step = torch.clamp(F.softplus(dt + mixer.dt_bias.to(dt.dtype)), *mixer.time_step_limit)  # as the scan takes it
    log_decay = step.float() * A  # (b, T, heads)
    by_width: dict[int, list[int]] = {}
    for k, (_, start, end) in enumerate(segments):
        by_width.setdefault(1 << (end - start - 1).bit_length(), []).append(k)
    own, decay = [None] * len(segments), [None] * len(segments)
    for width, picked in by_width.items():
        docs = torch.tensor([segments[k][0] for k in picked], device=x.device)[:, None]
        index = torch.tensor([[segments[k][2] - width + j for j in range(width)] for k in picked], device=x.device)
        real = index >= torch.tensor([segments[k][1] for k in picked], device=x.device)[:, None]  # the segment's tokens
        index = index.clamp(min=0)

        def apart(t, per_token, docs=docs, index=index, real=real):  # (b, T, ...) -> (segments, width, *per_token)
            picked = t[docs, index] * real.view(*real.shape, *[1] * (t.dim() - 2)).to(t.dtype)
            return picked.reshape(len(picked), width, *per_token)

        _, states = chunk_scan(apart(x, (heads, mixer.head_dim)), apart(dt, (heads,)), A, apart(B, (groups, size)),
                               apart(C, (groups, size)), chunk_size=min(width, mixer.chunk_size), dt_bias=mixer.dt_bias,
                               dt_softplus=True, dt_limit=mixer.time_step_limit, return_final_states=True)
        sums = apart(log_decay, (heads,)).sum(1)  # (segments, heads): each segment's total log-decay
        for i, k in enumerate(picked):
            own[k], decay[k] = states[i : i + 1], torch.exp(sums[i : i + 1])
    recorded, state = {}, None
    for k, (d, start, end) in enumerate(segments):  # one small step an end: the states are (1, heads, head_dim, state)
        state = own[k] if start == 0 else decay[k][:, :, None, None] * state + own[k]
        recorded[d, end] = state
    return recorded


@contextmanager
def recorded_segment_ends(modules: list, ends_of: list[list[int]], records: dict):
    """Inside, each Mamba-2 mixer's forward (from an empty cache) also leaves in `records[layer_idx]` its
    convolution's input and kernel width, and the SSM states of each document d after each of `ends_of[d]` tokens
    (`segment_end_states`), with their gradients: one forward over the documents gives the states that a pass in
    segments ending there leaves.
    """
    settings = []
    for module in modules:
        scan, conv, chunk_scan = (getattr(module, f) for f in (SCAN, CONV, CHUNK_SCAN))

        def recording_conv(conv1d, hidden_states, cache, layer_idx, *args, conv=conv, **kwargs):
            if kwargs.get("state_idx", 0) == 0 and not args:  # the mixers' one conv state (else: not recorded)
                records.setdefault(layer_idx, {})["conv"] = hidden_states, conv1d.kernel_size[0]
            return conv(conv1d, hidden_states, cache, layer_idx, *args, **kwargs)

        def recording_scan(mixer, x, B, C, dt, cache, *args, scan=scan, chunk_scan=chunk_scan, **kwargs):
            records.setdefault(mixer.layer_idx, {})["ssm"] = segment_end_states(mixer, chunk_scan, x, B, C, dt, ends_of)
            return scan(mixer, x, B, C, dt, cache, *args, **kwargs)

        settings += [(module, CONV, recording_conv), (module, SCAN, recording_scan)]
    with replaced(settings):
        yield


def states_at(record: dict, doc: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A recorded mixer's (conv, SSM) states of document `doc` after `end` tokens (one of its recorded ends), as its
    cache would hold them, a batch row of one: the convolution's last `width` inputs, zeros before the first token."""
    inputs, width = record["conv"]
    conv = inputs[doc : doc + 1, :, max(0, end - width) : end]
    return F.pad(conv, (width - conv.shape[-1], 0)), record["ssm"][doc, end]
