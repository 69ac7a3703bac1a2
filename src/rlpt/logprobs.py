"""Log-probabilities of chosen tokens without the logits of every token at once.

A vocabulary of 151,669 makes the logits of one group of 16 thoughts of 2,048 tokens 20 GB in float32. Here the
log-prob of each chosen token is computed from the model's final hidden states a chunk of tokens at a time: a chunk's
logits exist only while its log-probs are taken, and the backward recomputes them (`torch.utils.checkpoint`) instead
of keeping them. A chunk holds at most CHUNK_ELEMENTS logits, so the peak memory of this step does not grow with the
vocabulary.

It needs the model split into a body (hidden states) and an output head (a linear layer). `output_head` finds them,
and gives None for a model whose logits are more than that (soft-capped, scaled) or whose weights are sharded: the
caller then takes the log-probs from the model's full logits, as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 2**24  # logits in one chunk (64 MB in float32), whatever the vocabulary
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")  # logits beyond a linear head


def output_head(model):
    """(body, head) of a causal LM: `body(**inputs).last_hidden_state` are the hidden states its head maps to logits;
    None when the logits are not just `head(hidden)`, the weights are sharded (FSDP), or `model` is not a module
    (a LoRA run's EMA teacher is the policy's forward with other adapter weights: its parts would be the policy's)."""
    if not isinstance(model, torch.nn.Module):
        return None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model: its wrapped LM
    config = getattr(inner.config, "text_config", None) or inner.config
    if any(getattr(config, name, None) not in (None, 1.0) for name in LOGIT_TRANSFORMS):
        return None
    head = inner.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or any(type(p).__name__ == "DTensor" for p in inner.parameters()):
        return None
    return inner.base_model, head


def token_logprobs(hidden: torch.Tensor, head: torch.nn.Linear, targets: torch.Tensor, temperature: float = 1.0,
                   banned_first: int | None = None) -> torch.Tensor:
    """log softmax(head(hidden) / temperature)[targets] for hidden (N, W, H) and targets (N, W), a chunk of tokens at a
    time, in float32. With `banned_first`, that token is out of the softmax at position 0 of every row (the sampler
    never draws `</think>` as a thought's first token)."""
    rows, width = targets.shape
    flat_hidden, flat_targets = hidden.reshape(rows * width, -1), targets.reshape(-1)
    first = (torch.arange(width, device=targets.device) == 0).repeat(rows)
    chunk = max(1, CHUNK_ELEMENTS // head.out_features)
    parts = []
    for start in range(0, rows * width, chunk):
        piece = slice(start, start + chunk)
        args = (flat_hidden[piece], head.weight, head.bias, flat_targets[piece], first[piece], temperature, banned_first)
        parts.append(checkpoint(chunk_logprobs, *args, use_reentrant=False) if torch.is_grad_enabled()
                     else chunk_logprobs(*args))
    return torch.cat(parts).view(rows, width)


def chunk_logprobs(hidden, weight, bias, targets, first, temperature: float, banned_first: int | None):
    logits = F.linear(hidden, weight, bias).float() / temperature
    if banned_first is not None:
        logits[:, banned_first] = logits[:, banned_first].masked_fill(first, float("-inf"))
    return logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
