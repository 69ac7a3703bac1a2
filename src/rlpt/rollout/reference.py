"""The reference thought engine: simple enough to be obviously right, the oracle the fast engine is tested against.

Every (context, thought) is its own row: the prompt `x_<t <think>` is re-encoded for each of the G thoughts, S_pred
comes from one more full forward over `x_<t <think> c </think>`, S_ema from a forward over `x_<t` alone, and the
update's log-probs from a full forward over `x_<t <think> c`. Rows never share attention, so no thought can see
x_>=t.
"""

from __future__ import annotations

import torch

from rlpt.generation import Chooser, decode, right_pad
from rlpt.rollout.base import Context, Rollouts, RolloutSpec


def last_token_logprobs(model, sequences: list[list[int]], pad_id: int) -> torch.Tensor:
    """(N, V) float32 log-softmax of the logits after the last token of each sequence (untempered)."""
    ids, mask = right_pad(sequences, pad_id)
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
    last = torch.tensor([len(s) - 1 for s in sequences], device=device)
    return torch.log_softmax(logits[torch.arange(len(sequences), device=device), last], dim=-1)


def baseline_logprob(logprobs: torch.Tensor, targets: torch.Tensor, excluded: list[int]) -> torch.Tensor:
    """log p(x_t), optionally renormalised over the vocabulary without the `excluded` ids (the think tags)."""
    chosen = logprobs.gather(1, targets[:, None]).squeeze(1)
    if not excluded:
        return chosen
    kept = logprobs.clone()
    kept[:, excluded] = float("-inf")
    return chosen - torch.logsumexp(kept, dim=-1)


class ReferenceEngine:
    name = "reference"

    @torch.no_grad()
    def rollout(self, policy, teacher, contexts: list[Context], spec: RolloutSpec, choose: Chooser) -> Rollouts:
        """G thoughts per context chosen by `choose` (a tempered sampler in training), with S_pred and S_ema."""
        think, G = spec.think, spec.group_size
        prompts = [list(c.prefix) + [think.open_id] for c in contexts for _ in range(G)]
        thoughts = decode(
            policy, prompts, max_new_tokens=spec.max_thought_tokens, stop_ids=[think.close_id], choose=choose,
            pad_id=spec.pad_id, banned_first_ids=[think.close_id],
        )
        closed = [p + t + ([] if t and t[-1] == think.close_id else [think.close_id]) for p, t in zip(prompts, thoughts)]
        device = next(policy.parameters()).device
        targets = torch.tensor([c.target for c in contexts], device=device)
        after_thought = last_token_logprobs(policy, closed, spec.pad_id)
        s_pred = after_thought.gather(1, targets.repeat_interleave(G)[:, None])
        excluded = [think.open_id, think.close_id] if spec.baseline_excludes_think else []
        s_ema = baseline_logprob(last_token_logprobs(teacher, [list(c.prefix) for c in contexts], spec.pad_id), targets, excluded)
        shape = (len(contexts), G)
        return Rollouts(contexts, thoughts, s_pred.view(shape), s_ema, after_thought.argmax(-1).view(shape))

    def thought_logprobs(self, model, rollouts: Rollouts, rows: list[int], spec: RolloutSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Tempered log-probs (N, L) of the sampled thought tokens of `rows` (with grad), and their mask (N, L)."""
        G = spec.group_size
        prompts = [list(rollouts.contexts[r // G].prefix) + [spec.think.open_id] for r in rows]
        thoughts = [rollouts.thoughts[r] for r in rows]
        ids, mask = right_pad([p + t for p, t in zip(prompts, thoughts)], spec.pad_id)
        device = next(model.parameters()).device
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        width = max(len(t) for t in thoughts)
        # thought token u of row i sits at len(prompt_i) + u and is predicted by the logits one position earlier
        index = torch.tensor([[len(p) - 1 + u for u in range(width)] for p in prompts], device=device)
        index = index.clamp(max=logits.size(1) - 1)
        picked = logits.gather(1, index[:, :, None].expand(-1, -1, logits.size(-1))).float() / spec.temperature
        tokens = torch.tensor([t + [spec.pad_id] * (width - len(t)) for t in thoughts], device=device)
        logp = torch.log_softmax(picked, dim=-1).gather(2, tokens[:, :, None]).squeeze(2)
        thought_mask = torch.tensor([[1.0] * len(t) + [0.0] * (width - len(t)) for t in thoughts], device=device)
        return logp, thought_mask
