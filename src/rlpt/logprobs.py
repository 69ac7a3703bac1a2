"""Log-probabilities of chosen tokens without the logits of every token at once.

A vocabulary of 151,669 makes the logits of one group of 16 thoughts of 2,048 tokens 20 GB in float32. Here the
log-prob of each chosen token is computed from the model's final hidden states a chunk of tokens at a time: a chunk's
logits exist only while its log-probs are taken, and the backward recomputes them (`torch.utils.checkpoint`) instead
of keeping them. A chunk holds at most CHUNK_ELEMENTS logits, so the peak memory of this step does not grow with the
vocabulary.

It needs the model split into a body (hidden states) and an output head (a linear layer). `output_head` finds them
and checks them against the model's own logits; it gives None for a model whose logits are more than that
(soft-capped, scaled), whose weights are sharded, or whose gradients DDP would not average: the caller then takes the
log-probs from the model's full logits, as before.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

CHUNK_ELEMENTS = 2**24  # logits in one chunk (64 MB in float32), whatever the vocabulary
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling", "lm_head_multiplier")


SPLITS = weakref.WeakKeyDictionary()  # model -> its checked (body, head), or None


def output_head(model, root_forward_runs: bool = False):
    """(body, head) of a causal LM: `head(body(**inputs).last_hidden_state)` are its logits, checked once on a short
    input against the model's own. None, and the caller takes the full logits, when they differ (soft-capped, scaled,
    multiplied logits), when the weights are sharded (FSDP), when `model` is not a module (a LoRA run's EMA teacher
    is the policy's forward with other adapter weights: its parts would be the policy's), and under DDP unless the
    caller also runs the whole model with gradients (`root_forward_runs`): DDP averages the gradients of a backward
    only after a forward of the model it wraps."""
    if not isinstance(model, torch.nn.Module):
        return None
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT model: its wrapped LM
    wrapped = hasattr(model, "set_requires_gradient_sync")  # rlpt.distributed.is_wrapped
    if any(type(p).__name__ == "DTensor" for p in inner.parameters()) or (wrapped and not root_forward_runs):
        return None
    if model not in SPLITS:
        SPLITS[model] = checked_split(inner)
    return SPLITS[model]


@torch.no_grad()
def checked_split(inner):
    config = inner.config.get_text_config()
    if any(getattr(config, name, None) not in (None, 1.0) for name in LOGIT_TRANSFORMS):
        return None  # known to change the logits; the check below may miss it while the logits are small
    head = inner.get_output_embeddings()
    if not isinstance(head, torch.nn.Linear) or not hasattr(inner, "base_model"):
        return None
    device = head.weight.device
    ids = (torch.arange(1, 6, device=device) * 7 % inner.config.get_text_config().vocab_size)[None]
    try:
        split = head(inner.base_model(input_ids=ids).last_hidden_state)
        whole = inner(input_ids=ids).logits
    except Exception:  # a model whose body does not run alone: the full logits
        return None
    if split.shape != whole.shape or not torch.allclose(split.float(), whole.float(), atol=1e-4, rtol=1e-4):
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


def chosen_logprobs(model, forward, targets: torch.Tensor, temperature: float, banned_first: int,
                    pick=lambda states: states, root_forward_runs: bool = False) -> torch.Tensor:
    """Tempered log-probs (N, W) of `targets` (N, W), `banned_first` out of the softmax at position 0 of each row.
    `forward(run)` runs the engine's forward with `run`, the model or its body; `pick` takes the (N, W) positions that
    predict the targets out of its output. From the hidden states a chunk at a time where `output_head` allows, else
    from the model's full logits."""
    split = output_head(model, root_forward_runs)
    if split is not None:
        body, head = split
        return token_logprobs(pick(forward(body).last_hidden_state), head, targets, temperature, banned_first)
    logits = pick(forward(model).logits).float() / temperature
    logits[:, 0, banned_first] = float("-inf")
    return torch.log_softmax(logits, -1).gather(2, targets[:, :, None]).squeeze(2)

