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
    """transformers 5 renamed `past_key_values` to `cache`; accept both."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def gumbel_sampler(temperature: float, generator: torch.Generator) -> Chooser:
    """Sample from softmax(logits / T) by the Gumbel-max trick. The noise is drawn as one (N, V) block per step from
    `generator` (a CPU generator), so the draws depend only on the seed and the row order, not on the device or on
    how the logits were computed."""

    def choose(logits: torch.Tensor, step: int) -> torch.Tensor:
        uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float32).clamp_(1e-20, 1.0)
        return (logits / temperature - torch.log(-torch.log(uniform)).to(logits.device)).argmax(-1)

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
