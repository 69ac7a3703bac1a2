"""Attention over a shared document prefix, for the packed engine.

Thought rows of one document all attend to that document's keys (before their own t) plus their own thought tokens.
Copying the document's keys and values into every row (an expanded KV cache) makes decoding memory-bound: each step
reads P*G copies of the same keys. Here the document's keys and values are kept once per document, and attention is
computed in two parts that share one softmax:
    scores = [ q . K_doc (masked to keys before t) ,  q . K_own (masked causally) ]
the first as one matrix product per document over all of its rows, the second per row. The function is registered
with transformers' AttentionInterface and selected only inside `shared_prefix_attention(model)`; called without a
`shared_prefix` argument it is plain SDPA.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache, DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward

NAME = "rlpt_shared_prefix"


class SharedPrefix:
    """The documents' keys/values per layer and, per row, its document, its t and its slot in a (documents, R) grid."""

    def __init__(self, cache, row_doc: torch.Tensor, row_t: torch.Tensor):
        self.row_t = row_t  # a row's own token j sits at position row_t + j
        # (B, H_kv, T, D) each, by layer index; None for a layer without attention (a hybrid model's Mamba layers)
        self.keys = [getattr(layer, "keys", None) for layer in cache.layers]
        self.values = [getattr(layer, "values", None) for layer in cache.layers]
        first = next(k for k in self.keys if k is not None)
        docs = first.shape[0]
        counts = torch.bincount(row_doc, minlength=docs)
        self.rows_per_doc = int(counts.max())
        first_row = torch.cumsum(counts, 0) - counts
        order = torch.argsort(row_doc, stable=True)
        rank = torch.empty_like(row_doc)
        rank[order] = torch.arange(row_doc.numel(), device=row_doc.device) - first_row[row_doc[order]]
        self.slot = row_doc * self.rows_per_doc + rank  # (N,)
        # rows already laid out as the grid (each document's rows together, as many for each): no copies needed
        self.identity = bool((self.slot == torch.arange(row_doc.numel(), device=row_doc.device)).all()) and (
            row_doc.numel() == docs * self.rows_per_doc)
        length = first.shape[2]
        allowed = torch.arange(length, device=row_t.device)[None, :] < row_t[:, None]  # (N, T): keys before t
        mask = torch.zeros(allowed.shape, dtype=first.dtype, device=row_t.device).masked_fill_(~allowed, float("-inf"))
        # additive, per grid slot (an empty slot sees every key: its scores are computed, then dropped)
        self.doc_mask = self.to_grid(mask[:, None, None, :]).view(docs, 1, self.rows_per_doc, 1, length)  # (B, 1, R, 1, T)

    @property
    def first_keys(self) -> torch.Tensor:
        """The keys of the first attention layer: what the shapes and the dtype are read from."""
        return next(k for k in self.keys if k is not None)

    def window_masks(self, query_positions: torch.Tensor, window: int, width: int):
        """A sliding-window layer's additive masks (a query at position p sees keys at positions > p - window): over
        the document's keys in the grid layout (B, 1, R, q, T), and over the row's own keys (N, 1, q, width)."""
        length = self.first_keys.shape[2]
        lowest = query_positions[:, :, None] - window  # (N, q, 1): keys at or below this position are out of sight
        doc_far = torch.arange(length, device=lowest.device)[None, None, :] <= lowest  # (N, q, T)
        own_positions = self.row_t[:, None, None] + torch.arange(width, device=lowest.device)[None, None, :]
        own_far = own_positions <= lowest  # (N, q, width)
        dtype = self.first_keys.dtype
        doc = torch.zeros(doc_far.shape, dtype=dtype, device=lowest.device).masked_fill_(doc_far, float("-inf"))
        own = torch.zeros(own_far.shape, dtype=dtype, device=lowest.device).masked_fill_(own_far, float("-inf"))
        q = query_positions.shape[1]
        return self.to_grid(doc[:, None]).view(-1, 1, self.rows_per_doc, q, length), own[:, None]

    def to_grid(self, rows: torch.Tensor) -> torch.Tensor:
        """(N, H, q, X) -> (B, H, R * q, X), zeros in empty slots."""
        n, heads, q, x = rows.shape
        if not self.identity:
            rows = rows.new_zeros(self.first_keys.shape[0] * self.rows_per_doc, heads, q, x).index_copy(0, self.slot, rows)
        return rows.view(-1, self.rows_per_doc, heads, q, x).transpose(1, 2).reshape(-1, heads, self.rows_per_doc * q, x)

    def from_grid(self, grid: torch.Tensor, q: int) -> torch.Tensor:
        """(B, H, R * q, X) -> (N, H, q, X)."""
        docs, heads, _, x = grid.shape
        rows = grid.view(docs, heads, self.rows_per_doc, q, x).transpose(1, 2).reshape(-1, heads, q, x)
        return rows if self.identity else rows.index_select(0, self.slot)


class OwnTokensLayer(DynamicLayer):
    """A cache layer for the rows' own thought tokens with room for `capacity` of them: each decoding step writes in
    place and attends to a view, instead of copying the whole cache by concatenation every step (no-grad decoding)."""

    def __init__(self, rows: int, heads: int, head_dim: int, capacity: int, like: torch.Tensor):
        super().__init__()
        self.key_buffer = like.new_empty(rows, heads, capacity, head_dim)
        self.value_buffer = like.new_empty(rows, heads, capacity, head_dim)
        self.length, self.device, self.is_initialized = 0, like.device, True
        self.keys, self.values = self.key_buffer[:, :, :0], self.value_buffer[:, :, :0]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return append_in_place(self, key_states, value_states)


def append_in_place(layer, key_states: torch.Tensor, value_states: torch.Tensor):
    """Write the new keys and values after the `layer.length` written into its buffers; its keys and values are then
    the written part (views, no copy)."""
    end = layer.length + key_states.shape[-2]
    layer.key_buffer[:, :, layer.length : end] = key_states
    layer.value_buffer[:, :, layer.length : end] = value_states
    layer.length = end
    layer.keys, layer.values = layer.key_buffer[:, :, :end], layer.value_buffer[:, :, :end]
    return layer.keys, layer.values


class FixedWidthLayer(OwnTokensLayer):
    """An own-token cache layer whose keys and values are always the whole buffer, written at the slot `write_at`
    holds (a tensor the decoding loop advances), so that a decoding step has the same shapes at every step, as
    `torch.compile` needs; the attention mask hides the slots not written yet."""

    def __init__(self, rows: int, heads: int, head_dim: int, capacity: int, like: torch.Tensor, write_at: torch.Tensor):
        super().__init__(rows, heads, head_dim, capacity, like)
        self.key_buffer.zero_(), self.value_buffer.zero_()  # masked, but never garbage (0 * NaN would be NaN)
        self.keys, self.values, self.write_at = self.key_buffer, self.value_buffer, write_at

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        self.key_buffer.index_copy_(2, self.write_at, key_states)
        self.value_buffer.index_copy_(2, self.write_at, value_states)
        return self.keys, self.values


def own_tokens_cache(prefix: SharedPrefix, rows: int, capacity: int, write_at: torch.Tensor | None = None) -> DynamicCache:
    """An empty cache for `rows` thought rows of up to `capacity` tokens, shaped like the documents' cache; of fixed
    width (`FixedWidthLayer`) when `write_at` is given."""
    cache = DynamicCache()
    if write_at is None:
        cache.layers = [OwnTokensLayer(rows, k.shape[1], k.shape[3], capacity, k) for k in prefix.keys]
    else:
        cache.layers = [FixedWidthLayer(rows, k.shape[1], k.shape[3], capacity, k, write_at) for k in prefix.keys]
    return cache


ACTIVE: list = []  # the prefix of the innermost `shared_prefix_attention(model, prefix)` block, for models that cannot
# take it as a forward keyword (a hybrid model's Mamba mixers pass every keyword on to kernels that refuse it)


def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, shared_prefix=None, **kwargs):
    if shared_prefix is None and ACTIVE:
        shared_prefix = ACTIVE[-1]  # None outside a block that names one
    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs)
    unsupported = [name for name in ("softcap", "s_aux") if kwargs.get(name) is not None]
    if unsupported:  # attention logit soft-capping, attention sinks: not reproduced here; the probe falls back
        raise NotImplementedError(f"shared-prefix attention does not support {unsupported}")
    kv_heads = key.shape[1]
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    layer = module.layer_idx
    doc_keys, doc_values = shared_prefix.keys[layer], shared_prefix.values[layer]  # (B, H_kv, T, D)
    (docs, _, length, _), (rows, heads, q, _), width = doc_keys.shape, query.shape, key.shape[2]
    rows_per_doc = shared_prefix.rows_per_doc
    query = query * scaling  # scaled once here, not in both score tensors (T + W wide, not head_dim)
    # Grouped-query attention without copying keys: query head h reads key head h // groups, so the queries of the
    # heads that share a key head are stacked as one taller matrix (a view) against that key head.
    # The softmax runs in the grid layout (B, H, R, q, T + W): the document scores come out of their matmul in it;
    # only the own-token scores (W: the thought so far, usually narrower than T) move into it, and only the outputs
    # (head_dim wide) out of it.
    grid_query = shared_prefix.to_grid(query).reshape(docs, kv_heads, -1, query.shape[-1])  # (B, H_kv, groups * R * q, D)
    doc_scores = (grid_query @ doc_keys.transpose(-1, -2)).view(docs, heads, rows_per_doc, q, length)
    own_scores = (query.reshape(rows, kv_heads, -1, query.shape[-1]) @ key.transpose(-1, -2)).view(rows, heads, q, width)
    if attention_mask is not None:
        own_scores = own_scores + attention_mask
    doc_mask = shared_prefix.doc_mask
    window = kwargs.get("sliding_window")  # this layer's window (Mistral, Qwen2, Gemma3), None for full attention
    if window is not None:
        doc_window, own_window = shared_prefix.window_masks(kwargs["position_ids"], window, width)
        doc_mask, own_scores = doc_mask + doc_window, own_scores + own_window
    own_scores = shared_prefix.to_grid(own_scores).view(docs, heads, rows_per_doc, q, width)
    scores = torch.cat([doc_scores + doc_mask, own_scores], dim=-1)
    weights = torch.softmax(scores.float(), dim=-1).to(query.dtype)
    doc_weights, own_weights = weights.split([length, width], dim=-1)
    doc_part = (doc_weights.reshape(docs, kv_heads, -1, length) @ doc_values).view(docs, heads, rows_per_doc * q, -1)
    own_weights = shared_prefix.from_grid(own_weights.reshape(docs, heads, rows_per_doc * q, width), q)
    own_part = (own_weights.reshape(rows, kv_heads, -1, width) @ value).view(rows, heads, q, -1)
    output = shared_prefix.from_grid(doc_part, q) + own_part
    return output.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, attention)


@contextmanager
def shared_prefix_attention(model, prefix: SharedPrefix | None = None):
    """Route the model's attention through `attention` for the calls inside the block; with `prefix`, every call
    reads that shared prefix (else each call passes its own `shared_prefix` keyword)."""
    configs = [c for c in (model.config, getattr(model.config, "text_config", None)) if c is not None]
    saved = [c._attn_implementation for c in configs]
    ACTIVE.append(prefix)
    try:
        for c in configs:
            c._attn_implementation = NAME
        yield
    finally:
        for c, name in zip(configs, saved):
            c._attn_implementation = name
        ACTIVE.pop()
