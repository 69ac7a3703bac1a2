"""Log-probabilities of chosen tokens without the logits of every token at once.

A vocabulary of 151,669 makes the logits of one group of 16 thoughts of 2,048 tokens 20 GB in float32. Here the
log-prob of each chosen token is computed from the model's final hidden states a chunk of tokens at a time: a chunk's
logits exist only while its log-probs are taken, and the backward recomputes them instead of keeping them. A chunk
holds at most CHUNK_ELEMENTS logits, so the peak memory of this step does not grow with the vocabulary, and the
backward adds every chunk's share of the output head's gradient into one buffer (autograd would make a
vocabulary x hidden gradient per chunk, then add it).

It needs the model split into a body (hidden states) and an output head (a linear layer). `output_head` finds them
and checks them against the model's own logits; it gives None for a model whose logits are more than that
(soft-capped, scaled), whose weights are sharded, or whose gradients DDP would not average: the caller then takes the
log-probs from the model's full logits, as before.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F

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
    first = (torch.arange(width, device=targets.device) == 0).repeat(rows)
    flat = ChunkedLogprobs.apply(hidden.reshape(rows * width, -1), head.weight, head.bias, targets.reshape(-1), first,
                                 temperature, banned_first)
    return flat.view(rows, width)


def chunks(tokens: int, vocab: int):
    step = max(1, CHUNK_ELEMENTS // vocab)
    return [slice(start, start + step) for start in range(0, tokens, step)]


def chunk_logits(hidden, weight, bias, first, temperature: float, banned_first: int | None) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    logits /= temperature  # in place: no autograd records this (ChunkedLogprobs computes its own gradients)
    if banned_first is not None:
        logits[:, banned_first] = logits[:, banned_first].masked_fill(first, float("-inf"))
    return logits


def logsumexp_(logits: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp over the last dimension, computed in `logits` itself, which it overwrites: a chunk of a large
    vocabulary's logits is tens of megabytes, and a second one per chunk costs its allocation and page faults."""
    top = logits.amax(-1, keepdim=True)
    top = top.masked_fill_(top.isinf(), 0.0)  # a row of -inf gives -inf, not NaN (as torch.logsumexp)
    return logits.sub_(top).exp_().sum(-1).log_().add_(top.squeeze(-1))


class ChunkedLogprobs(torch.autograd.Function):
    """Forward: each chunk's logits, the chosen token's log-prob and the log-sum-exp, the logits dropped. Backward: each
    chunk's logits again, d logp / d logits = (onehot(target) - softmax) / temperature (the softmax from the kept
    log-sum-exp), then the chunk's share of the gradients of
    the hidden states, the head's weight and its bias. The backward recomputes in the dtype the forward's linear ran
    in (autocast's, when on), whatever autocast says when the backward runs."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, first, temperature, banned_first):
        out = torch.empty(len(targets), device=hidden.device, dtype=torch.float32)
        normalizers = torch.empty_like(out)  # each token's log-sum-exp, kept for the backward's softmax
        for piece in chunks(len(targets), weight.shape[0]):
            logits = chunk_logits(hidden[piece], weight, bias, first[piece], temperature, banned_first)
            chosen = logits.gather(1, targets[piece, None]).squeeze(1)
            normalizers[piece] = logsumexp_(logits)
            out[piece] = chosen - normalizers[piece]
        ctx.save_for_backward(hidden, weight, bias, targets, first, normalizers)
        ctx.temperature, ctx.banned_first = temperature, banned_first
        on = torch.is_autocast_enabled(hidden.device.type)
        ctx.compute = torch.get_autocast_dtype(hidden.device.type) if on else hidden.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, bias, targets, first, normalizers = ctx.saved_tensors
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_hidden = torch.empty_like(hidden) if need_hidden else None
        # the head's gradient sums hundreds of chunks: in float32 even when the weights are bfloat16 (FSDP's unsharded
        # parameters, a bfloat16 model), where a bfloat16 buffer lost ~1e-2 of it over 300 chunks
        summed = torch.promote_types(weight.dtype, torch.float32)
        grad_weight = torch.zeros_like(weight, dtype=summed) if need_weight else None
        grad_bias = torch.zeros_like(bias, dtype=summed) if need_bias else None
        compute = ctx.compute
        weight_c, bias_c = weight.to(compute), None if bias is None else bias.to(compute)  # cast once, not per chunk
        with torch.autocast(hidden.device.type, enabled=False):  # the forward's dtype, not the caller's autocast
            for piece in chunks(len(targets), weight.shape[0]):
                states = hidden[piece].to(compute)
                logits = chunk_logits(states, weight_c, bias_c, first[piece], ctx.temperature, ctx.banned_first)
                # the same logits as the forward's (same inputs, same dtype), so its log-sum-exp serves
                grad = logits.sub_(normalizers[piece, None]).exp_().mul_(-grad_out[piece, None])
                grad[torch.arange(len(grad), device=grad.device), targets[piece]] += grad_out[piece]
                grad = grad.div_(ctx.temperature).to(compute)
                if need_hidden:
                    grad_hidden[piece] = (grad @ weight_c).to(hidden.dtype)
                if need_weight and compute == summed:
                    grad_weight.addmm_(grad.t(), states)  # in place: no vocabulary x hidden gradient per chunk
                elif need_weight:
                    grad_weight.add_(grad.t() @ states)  # the chunk's product in the compute dtype, summed in float32
                if need_bias:
                    grad_bias.add_(grad.sum(0, dtype=summed))
        return (grad_hidden, grad_weight if grad_weight is None else grad_weight.to(weight.dtype),
                grad_bias if grad_bias is None else grad_bias.to(bias.dtype), None, None, None, None)


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

