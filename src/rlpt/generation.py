"""Batched, KV-cached decoding for Hugging Face causal LMs: the simple loop that the reference rollout engine and
evaluation share. Prompts are left-padded; position ids come from the attention mask, so a padded row sees exactly
what it would see alone."""

from __future__ import annotations

import inspect
from typing import Callable

import torch

# choose(logits (N, V) float32, step) -> next token ids (N,)
Chooser = Callable[[torch.Tensor, int], torch.Tensor]


def greedy(logits: torch.Tensor, step: int) -> torch.Tensor:
    return logits.argmax(-1)


def cache_kwarg(model) -> str:
    """transformers 5 renamed `past_key_values` to `cache`; accept both (a PEFT model passes either through)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


MASK32 = 0xFFFFFFFF
UNIFORM_BLOCK = 64  # decoding steps whose uniforms a sampler hashes at once


def mix32(x):
    """A 32-bit integer hash (the "lowbias32" finaliser), on Python ints or int64 tensors holding values < 2**32."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & MASK32
    return x ^ (x >> 16)


def hash_key(*parts):
    """One 32-bit key from non-negative integers (seed, step, document slot, position, ...); any part may be an int64
    tensor, and the key is then a tensor of keys, computed element-wise."""
    return hash_more(0x9E3779B9, *parts)


def hash_more(key, *parts):
    """`hash_key(*earlier, *parts)` from `key = hash_key(*earlier)`: the hash goes through the parts in order."""
    for part in parts:
        for word in (part & MASK32, part >> 32):
            key = mix32(((key ^ mix32(word & MASK32)) + 0x632BE5AB) & MASK32)
    return key


def temperature_sampler(temperature: float, seed: int, row_keys: list[int] | None = None) -> Chooser:
    """Sample from softmax(logits / T) by inverting its CDF at one uniform per row, the uniform a hash of (seed,
    row key, step). A row's draw depends only on its key and its own logits, never on which other rows share the batch:
    a (document, position) group samples the same thoughts on 1 rank or on 8. Without `row_keys`, rows are keyed by
    their index and by how many batches this sampler has begun (a call at step 0 begins one)."""
    batches = [-1]
    rows = [None if row_keys is None else hash_key(seed, torch.tensor(row_keys, dtype=torch.int64))]
    block = {}  # first step -> the uniforms (rows, UNIFORM_BLOCK) of that step and the next ones

    def uniforms(step: int) -> torch.Tensor:
        """= (hash_key(seed, row key, step) + 0.5) / 2**32, hashed for a block of steps at once (fewer small ops)."""
        first = step - step % UNIFORM_BLOCK
        if first not in block:
            block.clear()
            steps = torch.arange(first, first + UNIFORM_BLOCK, dtype=torch.int64)
            block[first] = (hash_more(rows[0][:, None], steps[None, :]).double() + 0.5) / 2**32
        return block[first][:, step - first]

    def choose(logits: torch.Tensor, step: int) -> torch.Tensor:
        if step == 0 and row_keys is None:  # a new batch of rows keyed by their index
            batches[0] += 1
            rows[0] = hash_key(seed, hash_key(batches[0], torch.arange(logits.size(0), dtype=torch.int64)))
            block.clear()
        uniform = uniforms(step)
        # float64: the CDF of a large vocabulary summed in float32 drifts by more than the smallest probabilities
        cdf = torch.softmax(logits.double() / temperature, -1).cumsum_(-1)
        drawn = torch.searchsorted(cdf, (uniform.to(cdf.device) * cdf[:, -1])[:, None], right=True)[:, 0]
        return drawn.clamp_(max=logits.size(-1) - 1)  # a zero-probability (banned) token is never the first above u

    return choose


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) ids and attention mask, padded on the right (for full forwards: positions need no correction)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p) :] = 1
    return ids, mask


@torch.no_grad()
def decode(
    model,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    stop_ids: list[int],
    choose: Chooser,
    pad_id: int,
    banned_ids: list[int] = (),
    banned_first_ids: list[int] = (),
) -> list[list[int]]:
    """Continue each prompt until it emits a token of `stop_ids` (kept) or has `max_new_tokens` tokens.
    `banned_ids` are never chosen; `banned_first_ids` not as the first new token (so a thought has >= 1 token)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id)
    ids, mask = ids.to(device), mask.to(device)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    stop = torch.tensor(stop_ids, device=device)
    out = torch.full((len(prompts), max_new_tokens), pad_id, dtype=torch.long, device=device)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    lengths = torch.zeros(len(prompts), dtype=torch.long, device=device)
    cache, cache_name = None, cache_kwarg(model)
    for step in range(max_new_tokens):
        result = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_name: cache})
        cache = result.get(cache_name)
        logits = result.logits[:, -1].float()
        banned = list(banned_ids) + (list(banned_first_ids) if step == 0 else [])
        if banned:
            logits[:, banned] = float("-inf")
        token = choose(logits, step).to(device)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out[:, step] = token
        lengths += (~done).long()
        done |= torch.isin(token, stop)
        if bool(done.all()):
            break
        ids = token[:, None]
        mask = torch.cat([mask, torch.ones_like(ids)], dim=1)
        positions = positions[:, -1:] + 1
    return [row[:n].tolist() for row, n in zip(out.cpu(), lengths.cpu().tolist())]
