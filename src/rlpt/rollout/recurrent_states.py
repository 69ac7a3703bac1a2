"""A model's recurrent states in its own cache (`DynamicCache`), as the recurrent engine (`recurrent.py`) takes, keeps
and hands them to thought rows: the conv and SSM states of Mamba-2 mixers and the states of gated DeltaNet linear
attention, by layer, beside attention layers' keys and values."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer, LinearAttentionCacheLayerMixin

from rlpt.generation import cache_kwarg
from rlpt.rollout.shared_prefix import append_in_place


def assign_conv_state(layer, conv_states, state_idx=0, conv_kernel_size=None, **kwargs):
    """`LinearAttentionLayer.update_conv_state`, keeping a new tensor instead of copying into the old one."""
    if not layer.is_conv_states_initialized[state_idx]:
        layer.lazy_initialization(conv_states=conv_states, state_idx=state_idx, conv_kernel_size=conv_kernel_size)
    if state_idx == 0:
        layer.cumulative_length_linear.add_(conv_states.shape[-1])
    width = layer.conv_kernel_size[state_idx]
    if layer.has_previous_state[state_idx]:
        full = torch.cat([layer.conv_states[state_idx], conv_states], dim=-1)
    else:
        layer.has_previous_state[state_idx] = True
        full = F.pad(conv_states, (width - conv_states.shape[-1], 0)) if conv_states.shape[-1] < width else conv_states
    layer.conv_states[state_idx] = full[..., -width:]
    return full


def assign_recurrent_state(layer, recurrent_states, state_idx=0, **kwargs):
    """`LinearAttentionLayer.update_recurrent_state`, keeping the new state instead of copying it into the old one."""
    if not layer.is_recurrent_states_initialized[state_idx]:
        layer.lazy_initialization(recurrent_states=recurrent_states, state_idx=state_idx)
    last = recurrent_states if isinstance(recurrent_states, torch.Tensor) else recurrent_states[-1]
    layer.recurrent_states[state_idx] = last
    return last


SUBCLASSES = {}  # (a cache layer's class, the methods replaced) -> its subclass with them


def with_methods(layer, **methods) -> None:
    """Give `layer` `methods` by making it an instance of a subclass of its class that has them. Bound to the instance
    instead, each would hold a reference cycle (layer -> method -> layer) that only the garbage collector frees, and
    with it the layer's states and their graph: at the paper's lengths, gigabytes a micro-batch, until a collection."""
    key = (type(layer), tuple(sorted(methods.items())))
    if key not in SUBCLASSES:
        SUBCLASSES[key] = type(type(layer).__name__, (type(layer),), methods)
    layer.__class__ = SUBCLASSES[key]


def assigning(cache: DynamicCache) -> DynamicCache:
    """`cache` with every recurrent layer assigning its new states (see the module's docstring)."""
    for layer in cache.layers:
        if isinstance(layer, LinearAttentionCacheLayerMixin):
            with_methods(layer, update_conv_state=assign_conv_state, update_recurrent_state=assign_recurrent_state)
    return cache


def keys_in_place(layer, key_states, value_states, *args, **kwargs):
    """`DynamicLayer.update` into buffers of `layer.capacity` tokens, written in place: decoding a row's L tokens by
    concatenation would copy its keys at every step (O(L^2) copies)."""
    if layer.key_buffer is None:
        rows, heads, _, width = key_states.shape
        layer.key_buffer = key_states.new_empty(rows, heads, layer.capacity, width)
        layer.value_buffer = value_states.new_empty(rows, heads, layer.capacity, value_states.shape[-1])
        layer.is_initialized, layer.device = True, key_states.device
    return append_in_place(layer, key_states, value_states)


def preallocated(cache: DynamicCache, capacity: int) -> DynamicCache:
    """`cache` with its attention layers (empty) writing keys and values in place, up to `capacity` tokens a row."""
    for layer in cache.layers:
        if attends(layer):
            layer.capacity, layer.length, layer.key_buffer, layer.value_buffer = capacity, 0, None, None
            with_methods(layer, update=keys_in_place)
    return cache


def new_cache(model) -> DynamicCache:
    return assigning(DynamicCache(config=model.config))


def is_recurrent(layer) -> bool:
    """A cache layer of conv and recurrent states (a Mamba mixer, linear attention; FalconH1's keeps keys too)."""
    return isinstance(layer, LinearAttentionCacheLayerMixin)


def attends(layer) -> bool:
    """A cache layer of attention keys and values (alone, or beside recurrent states)."""
    return isinstance(layer, DynamicLayer)


def cache_layers(model) -> list:
    return DynamicCache(config=model.config).layers


ATTENTION = weakref.WeakKeyDictionary()  # model -> whether any of its layers attends


def has_attention(model) -> bool:
    if model not in ATTENTION:
        ATTENTION[model] = any(attends(layer) for layer in cache_layers(model))
    return ATTENTION[model]


@dataclass
class States:
    """One batch row's recurrent states, by layer index and state index: {layer: {state: (conv, recurrent)}}."""

    layers: dict

    def zeros(self) -> "States":
        return States({i: {k: tuple(None if x is None else torch.zeros_like(x) for x in pair) for k, pair in states.items()}
                       for i, states in self.layers.items()})


def taken(cache: DynamicCache, rows: list[int]) -> list[States]:
    """The recurrent states `cache` holds now of each batch row of `rows`, copied (a later step would write into
    them), a batch row of one each."""
    def row(x, r):
        return None if x is None else x[r : r + 1].clone()

    return [States({i: {k: (row(layer.conv_states[k], r), row(layer.recurrent_states[k], r))
                        for k in range(layer.number_of_states) if layer.has_previous_state[k]}
                    for i, layer in enumerate(cache.layers) if is_recurrent(layer)}) for r in rows]


def rows_cache(model, states: list[States]) -> DynamicCache:
    """A fresh cache whose row i starts from `states[i]` in the recurrent layers (its attention layers empty)."""
    cache = new_cache(model)
    for i, layer in enumerate(cache.layers):
        if not is_recurrent(layer) or i not in states[0].layers:
            continue
        for k in states[0].layers[i]:
            conv = [s.layers[i][k][0] for s in states]
            recurrent = [s.layers[i][k][1] for s in states]
            if conv[0] is not None:
                layer.conv_states[k] = torch.cat(conv)
                layer.is_conv_states_initialized[k] = True
                layer.conv_kernel_size[k] = conv[0].shape[-1]
                layer.device, layer.dtype = conv[0].device, conv[0].dtype
            if recurrent[0] is not None:
                layer.recurrent_states[k] = torch.cat(recurrent)
                layer.is_recurrent_states_initialized[k] = True
            layer.has_previous_state[k] = True
    return cache


def inputs(model, cache, positions: torch.Tensor, own_mask: torch.Tensor | None = None) -> dict:
    """The keywords of a forward that continues `cache`: the cache, and for a model with attention the tokens'
    positions and the attention masks (each row's own tokens, `own_mask`, additive; none for the recurrent layers,
    every row token before a row's padding being real). A model of recurrent layers only takes neither."""
    kwargs = {cache_kwarg(model): cache}
    if has_attention(model):
        kwargs.update(position_ids=positions, attention_mask={"full_attention": own_mask, "linear_attention": None})
    return kwargs


FRESH = weakref.WeakKeyDictionary()  # model -> ((device, dtype), the zero states of one row: a prefix of no token)


@torch.no_grad()
def fresh_states(model) -> States:
    """The states of an empty prefix: zeros, shaped by a forward over two tokens; made again when the model has moved
    to another device or dtype."""
    weight = next(model.parameters())
    where = (weight.device, weight.dtype)
    if FRESH.get(model, (None,))[0] != where:
        cache = new_cache(model)
        model(input_ids=torch.zeros(1, 2, dtype=torch.long, device=weight.device), use_cache=True, logits_to_keep=1,
              **inputs(model, cache, torch.arange(2, device=weight.device)[None]))
        FRESH[model] = where, taken(cache, [0])[0].zeros()
    return FRESH[model][1]
