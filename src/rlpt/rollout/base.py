"""What every thought engine takes and returns."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint

from rlpt.data import Context
from rlpt.models import ThinkTokens


@dataclass(frozen=True)
class RolloutSpec:
    group_size: int
    max_thought_tokens: int
    temperature: float
    think: ThinkTokens
    pad_id: int
    baseline_excludes_think: bool = False
    reward_discount: float = 1.0  # gamma: term k of a multi-token S_pred / S_ema is weighted gamma^k
    checkpoint_layers: bool = False  # the update recomputes the thought rows' layers in the backward (less memory)


@dataclass
class Rollouts:
    """G thoughts for each of B contexts; thought k of context b is row b * G + k."""

    contexts: list[Context]
    thoughts: list[list[int]]  # sampled tokens, with a sampled </think> (part of the action), without a forced one
    s_pred: torch.Tensor  # (B, G) log p_theta(x_t | x_<t <think> c </think>), untempered; summed over K tokens
    s_ema: torch.Tensor  # (B,) log p_phi(x_t | x_<t), untempered; summed over K tokens
    predicted: torch.Tensor  # (B, G) argmax_v p_theta(v | x_<t <think> c </think>): the answer RPT's reward checks
    # (B, G) every scored token is the most likely one after the thought and the scored tokens before it: the model's
    # greedy answer is the scored text (what the verifier reward checks); None from code that does not score it
    answer_right: torch.Tensor | None = None

    def truncated(self, close_id: int) -> torch.Tensor:
        """(B*G,) True where the thought hit the length limit and its </think> was forced."""
        return torch.tensor([not t or t[-1] != close_id for t in self.thoughts])


def chunked_rollout(engine, policy, teacher, contexts: list[Context], spec: RolloutSpec, sampler_for,
                    contexts_per_chunk: int) -> Rollouts:
    """`engine.rollout` over `contexts` in chunks of `contexts_per_chunk` consecutive contexts (G rows each), so that
    the rows decoded at once stay bounded; `sampler_for(first, end)` gives the sampler of contexts[first:end]. A row's
    draws depend only on its key and its own logits, so the chunks sample what one pass would."""
    parts = [engine.rollout(policy, teacher, contexts[first : first + contexts_per_chunk], spec,
                            sampler_for(first, min(first + contexts_per_chunk, len(contexts))))
             for first in range(0, len(contexts), contexts_per_chunk)]
    return concatenated(parts)


def concatenated(parts: list[Rollouts]) -> Rollouts:
    """The groups of `parts`, in order, as one Rollouts."""
    if len(parts) == 1:
        return parts[0]
    right = None if any(p.answer_right is None for p in parts) else torch.cat([p.answer_right for p in parts])
    return Rollouts([c for p in parts for c in p.contexts], [t for p in parts for t in p.thoughts],
                    torch.cat([p.s_pred for p in parts]), torch.cat([p.s_ema for p in parts]),
                    torch.cat([p.predicted for p in parts]), right)


def groups_of(rollouts: Rollouts, groups: list[int]) -> Rollouts:
    """The groups (context indices) `groups` of `rollouts`, in that order."""
    G = rollouts.s_pred.size(1)
    index = torch.tensor(groups, dtype=torch.long)
    pick = (lambda x: None if x is None else x[index.to(x.device)])
    return Rollouts([rollouts.contexts[b] for b in groups],
                    [rollouts.thoughts[b * G + g] for b in groups for g in range(G)],
                    pick(rollouts.s_pred), pick(rollouts.s_ema), pick(rollouts.predicted), pick(rollouts.answer_right))


@contextmanager
def layers_checkpointed(model, enabled: bool, attention=None):
    """Inside, each of the model's decoder layers (transformers' `GradientCheckpointingLayer`) keeps no activations
    for the backward and recomputes them there. transformers does this only for a module in training mode; RLP keeps
    its modules in eval mode (no dropout), so the flag is set on the layer objects alone (their dropouts stay off)
    for the duration. `attention`, a context manager taking the model (the packed engine's shared-prefix attention),
    is entered again for the recomputation, which runs in the backward, outside the caller's block. Only for forwards
    that write no KV cache: a replayed layer would write it twice."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    def replay(function, *args):
        def run(*inner):
            if attention is None:
                return function(*inner)
            with attention(model):
                return function(*inner)

        return checkpoint(run, *args, use_reentrant=False)

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)] if enabled else []
    saved = [(m.training, m.gradient_checkpointing, m.__dict__.get("_gradient_checkpointing_func")) for m in layers]
    try:
        for m in layers:
            m.training, m.gradient_checkpointing, m._gradient_checkpointing_func = True, True, replay
        yield
    finally:
        for m, (training, flag, func) in zip(layers, saved):
            m.training, m.gradient_checkpointing = training, flag
            if func is None:
                m.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                m._gradient_checkpointing_func = func


def checkpointing_keeps_dropout_off(model) -> bool:
    """Whether `layers_checkpointed` leaves the model's forward as it is. Setting a layer's training flag turns on
    dropout that a layer applies itself (`F.dropout(..., training=self.training)`, as OPT's and Falcon's layers do);
    such a model would score its thoughts with noise. Checked on a short input: two checkpointed forwards against the
    plain one."""
    device = next(model.parameters()).device
    ids = (torch.arange(1, 9, device=device) * 5 % model.config.get_text_config().vocab_size)[None]
    with torch.no_grad():
        plain = model(input_ids=ids, use_cache=False).logits
    with torch.enable_grad(), layers_checkpointed(model, True):
        replays = [model(input_ids=ids, use_cache=False).logits.detach() for _ in range(2)]
    return all(torch.allclose(r, plain, atol=1e-5, rtol=1e-5) for r in replays)

