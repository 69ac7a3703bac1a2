"""The reference thought engine: simple enough to be obviously right, the oracle the fast engine is tested against.

Every (context, thought) is its own row: the prompt `x_<t <think>` is re-encoded for each of the G thoughts, S_pred
comes from one more full forward over `x_<t <think> c </think>` (followed by `x_t .. x_{t+K-2}` for a reward of K
tokens), S_ema from a forward over `x_<t` (and the same K - 1 tokens), and the update's log-probs from a full forward
over `x_<t <think> c`. Rows never share attention, so no thought can see x_>=t.
"""

from __future__ import annotations

import torch

from rlpt.generation import Chooser, decode, right_pad
from rlpt.logprobs import chosen_logprobs
from rlpt.rollout.base import Context, Rollouts, RolloutSpec, layers_checkpointed


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


def padded_continuations(continuations: list[tuple[int, ...]], width: int, device) -> torch.Tensor:
    """(N, width) the continuations' tokens, a shorter one padded with its own first token (those slots are ignored)."""
    return torch.tensor([list(c) + [c[0]] * (width - len(c)) for c in continuations], device=device)


def greedy_matches(logprobs: torch.Tensor, continuations: list[tuple[int, ...]]) -> torch.Tensor:
    """(N,) whether every token of row i's continuation is the most likely one in its slot of the log-probs (N, K, V):
    teacher-forced, the greedy continuation is c."""
    n, width, _ = logprobs.shape
    lengths = torch.tensor([len(c) for c in continuations], device=logprobs.device)
    hits = logprobs.argmax(-1) == padded_continuations(continuations, width, logprobs.device)
    return (hits | (torch.arange(width, device=logprobs.device)[None, :] >= lengths[:, None])).all(-1)


def discounted_scores(logprobs: torch.Tensor, continuations: list[tuple[int, ...]], discount: float = 1.0,
                      excluded: list[int] = ()) -> torch.Tensor:
    """sum_k discount^k logprobs[i, k, c_k] per row (N,) from log-probs (N, K, V) whose slot k predicts token k of
    row i's continuation (slots past a shorter continuation are ignored); each term optionally renormalised without
    the `excluded` ids."""
    n, width, _ = logprobs.shape
    device = logprobs.device
    targets = padded_continuations(continuations, width, device)
    terms = baseline_logprob(logprobs.flatten(0, 1), targets.flatten(), excluded).view(n, width)
    weights = torch.tensor([[discount**k if k < len(c) else 0.0 for k in range(width)] for c in continuations],
                           device=device, dtype=terms.dtype)
    return (terms * weights).sum(-1)


def continuation_logprobs(model, prompts: list[list[int]], continuations: list[tuple[int, ...]], pad_id: int,
                          discount: float = 1.0, excluded: list[int] = ()) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """S = sum_k discount^k log p(c_k | prompt c_<k) per row (N,), teacher-forced and untempered (see
    `discounted_scores`); the log-probs (N, V) right after the prompt; and whether every c_k is the most likely token
    there (N,): the greedy continuation is c."""
    ids, mask = right_pad([p + list(c[:-1]) for p, c in zip(prompts, continuations)], pad_id)
    device = next(model.parameters()).device
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
    width = max(len(c) for c in continuations)
    # term k of row i is predicted by the logits at len(prompt_i) - 1 + k
    index = torch.tensor([[len(p) - 1 + k for k in range(width)] for p in prompts], device=device).clamp(max=ids.size(1) - 1)
    logprobs = torch.log_softmax(logits.gather(1, index[:, :, None].expand(-1, -1, logits.size(-1))).float(), -1)
    return (discounted_scores(logprobs, continuations, discount, excluded), logprobs[:, 0],
            greedy_matches(logprobs, continuations))


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
        scored = [c.scored for c in contexts]
        s_pred, after_thought, answer_right = continuation_logprobs(
            policy, closed, [s for s in scored for _ in range(G)], spec.pad_id, spec.reward_discount)
        excluded = [think.open_id, think.close_id] if spec.baseline_excludes_think else []
        s_ema, _, _ = continuation_logprobs(
            teacher, [list(c.prefix) for c in contexts], scored, spec.pad_id, spec.reward_discount, excluded)
        shape = (len(contexts), G)
        return Rollouts(contexts, thoughts, s_pred.view(shape), s_ema, after_thought.argmax(-1).view(shape),
                        answer_right.view(shape))

    def thought_logprobs(self, model, rollouts: Rollouts, rows: list[int], spec: RolloutSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """Tempered log-probs (N, L) of the sampled thought tokens of `rows` (with grad), and their mask (N, L)."""
        G = spec.group_size
        prompts = [list(rollouts.contexts[r // G].prefix) + [spec.think.open_id] for r in rows]
        thoughts = [rollouts.thoughts[r] for r in rows]
        ids, mask = right_pad([p + t for p, t in zip(prompts, thoughts)], spec.pad_id)
        device = next(model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        width = max(len(t) for t in thoughts)
        # thought token u of row i sits at len(prompt_i) + u and is predicted by the output one position earlier
        index = torch.tensor([[len(p) - 1 + u for u in range(width)] for p in prompts], device=device)
        index = index.clamp(max=ids.size(1) - 1)
        tokens = torch.tensor([t + [spec.pad_id] * (width - len(t)) for t in thoughts], device=device)
        def forward(run):
            with layers_checkpointed(model, spec.checkpoint_layers):
                return run(input_ids=ids, attention_mask=mask, use_cache=False)

        def pick(states):  # (N, S, X) -> the (N, W, X) positions that predict the thought tokens
            return states.gather(1, index[:, :, None].expand(-1, -1, states.size(-1)))

        logp = chosen_logprobs(model, forward, tokens, spec.temperature, spec.think.close_id, pick)
        thought_mask = torch.tensor([[1.0] * len(t) + [0.0] * (width - len(t)) for t in thoughts], device=device)
        return logp, thought_mask
