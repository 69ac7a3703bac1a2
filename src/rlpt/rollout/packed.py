"""The packed thought engine (DESIGN.md section 4): dense RLP at the cost of the thought tokens.

Causal attention makes the keys and values of x_<t computed over the whole document identical to those of the prefix
alone. So, per batch:
- one teacher forward over each document gives S_ema at every chosen position;
- one policy forward over each document gives the KV of every context. The G thoughts at all P positions of a
  document then decode together: row (t, g) starts from `<think>` at position t and attends to the document's keys
  before t and to its own earlier thought tokens, through a 4D attention mask;
- S_pred is read from the logits right after `</think>` while decoding (a sampled `</think>` is fed back as usual;
  a thought cut at the limit is fed a forced one), untempered;
- the update packs `[document; <think> c_1; <think> c_2; ...]` into one sequence per document: each thought block
  attends to the document before its t and to itself, with position ids continuing from t. One forward+backward per
  document, logits only where thought tokens are predicted.
The sampling noise is drawn exactly as the reference engine draws it (one (N, V) block per step, rows in context
order), so both engines sample the same thoughts; tests hold them to the same rewards, losses and gradients.

A model whose attention ignores custom 4D masks (e.g. flash-attention kernels) fails a probe at start-up; the trainer
then uses the reference engine and says so.
"""

from __future__ import annotations

import torch

from rlpt.generation import Chooser, cache_kwarg, right_pad
from rlpt.rollout.base import Rollouts, RolloutSpec
from rlpt.rollout.reference import baseline_logprob


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Boolean (B, Q, K) 'may attend' -> additive float mask (B, 1, Q, K): 0 where allowed, the dtype's min elsewhere."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def documents_of(contexts) -> tuple[list[list[int]], list[int]]:
    """The shortest document pieces that hold every context (the longest prefix of each document, in order of first
    appearance) and, per context, the index of its piece. Tokens at or after the last chosen t are never needed."""
    longest: dict[int, tuple[int, ...]] = {}
    for c in contexts:
        if len(c.prefix) > len(longest.get(c.doc, ())):
            longest[c.doc] = c.prefix
    order = list(longest)
    index = {doc: i for i, doc in enumerate(order)}
    return [list(longest[doc]) for doc in order], [index[c.doc] for c in contexts]


@torch.no_grad()
def supports_custom_masks(model) -> bool:
    """Probe: a token masked from two earlier tokens (with its position id moved back) must give the same logits as
    the short sequence without them. False if the model errors or ignores the mask."""
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2, 3, 4]], device=device) % model.config.vocab_size
    allowed = torch.tensor([[[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]]], dtype=torch.bool, device=device)
    try:
        dtype = next(model.parameters()).dtype
        packed = model(input_ids=ids, attention_mask=additive_mask(allowed, dtype),
                       position_ids=torch.tensor([[0, 1, 2, 1]], device=device)).logits[0, -1]
        alone = model(input_ids=ids[:, [0, 3]]).logits[0, -1]
    except Exception:  # any model that cannot take the mask falls back, whatever the reason
        return False
    return bool(torch.allclose(packed.float(), alone.float(), atol=1e-3, rtol=1e-3))


class PackedEngine:
    name = "packed"

    @torch.no_grad()
    def rollout(self, policy, teacher, contexts, spec: RolloutSpec, choose: Chooser) -> Rollouts:
        device = next(policy.parameters()).device
        think, G = spec.think, spec.group_size
        docs, doc_of_context = documents_of(contexts)
        ids, pad_mask = (x.to(device) for x in right_pad(docs, spec.pad_id))
        positions = torch.tensor([c.position for c in contexts], device=device)
        targets = torch.tensor([c.target for c in contexts], device=device)
        context_doc = torch.tensor(doc_of_context, device=device)

        # S_ema: one teacher forward per document; the logits at t - 1 predict x_t
        teacher_logits = teacher(input_ids=ids, attention_mask=pad_mask).logits
        excluded = [think.open_id, think.close_id] if spec.baseline_excludes_think else []
        s_ema = baseline_logprob(torch.log_softmax(teacher_logits[context_doc, positions - 1].float(), -1), targets, excluded)

        # the documents' KV, then one cache row per thought
        cache_name = cache_kwarg(policy)
        prefill = policy(input_ids=ids, attention_mask=pad_mask, use_cache=True)
        cache = prefill.get(cache_name)
        row_context = torch.arange(len(contexts), device=device).repeat_interleave(G)  # (N,) rows in context order
        cache.reorder_cache(context_doc[row_context])
        row_t = positions[row_context]
        prefix_allowed = torch.arange(ids.size(1), device=device)[None, :] < row_t[:, None]  # (N, T): keys before t
        thoughts, s_pred = self.decode_thoughts(policy, cache, cache_name, prefix_allowed, row_t, targets[row_context],
                                                spec, choose)
        return Rollouts(contexts, thoughts, s_pred.view(len(contexts), G), s_ema)

    def decode_thoughts(self, policy, cache, cache_name, prefix_allowed, row_t, row_target, spec, choose):
        """Lockstep decoding of N thought rows over their shared document cache; returns thoughts and S_pred (N,)."""
        think, N, device = spec.think, row_t.numel(), row_t.device
        dtype = next(policy.parameters()).dtype
        feed = torch.full((N,), think.open_id, device=device)
        sampling = torch.ones(N, dtype=torch.bool, device=device)  # still drawing thought tokens
        pending = torch.ones(N, dtype=torch.bool, device=device)  # S_pred not read yet
        s_pred = torch.zeros(N, device=device)
        forced = torch.zeros(N, dtype=torch.bool, device=device)  # cut at the limit: </think> goes in next
        tokens = torch.full((N, spec.max_thought_tokens), spec.pad_id, dtype=torch.long, device=device)
        lengths = torch.zeros(N, dtype=torch.long, device=device)
        for step in range(spec.max_thought_tokens + 2):  # <think>, up to L thought tokens, a forced </think>
            allowed = torch.cat([prefix_allowed, torch.ones(N, step + 1, dtype=torch.bool, device=device)], dim=1)
            out = policy(input_ids=feed[:, None], position_ids=(row_t + step)[:, None],
                         attention_mask=additive_mask(allowed[:, None, :], dtype), use_cache=True, **{cache_name: cache})
            logits = out.logits[:, -1].float()
            closing = pending & (feed == think.close_id)  # the logits after </think>: S_pred, untempered
            s_pred[closing] = torch.log_softmax(logits[closing], -1).gather(1, row_target[closing][:, None]).squeeze(1)
            pending &= ~closing
            if not pending.any():
                break
            feed = torch.where(forced, torch.full_like(feed, think.close_id), torch.full_like(feed, spec.pad_id))
            forced = torch.zeros_like(forced)
            if sampling.any():  # same noise draws, in the same rows and steps, as the reference engine
                if step == 0:  # a thought has at least one token
                    logits[:, think.close_id] = float("-inf")
                drawn = choose(logits, step).to(device)
                tokens[sampling, step] = drawn[sampling]
                lengths += sampling.long()
                feed = torch.where(sampling, drawn, feed)
                ended = sampling & (drawn == think.close_id)
                forced = sampling & ~ended & (lengths == spec.max_thought_tokens)
                sampling &= ~(ended | forced)
        thoughts = [row[:n].tolist() for row, n in zip(tokens.cpu(), lengths.cpu().tolist())]
        return thoughts, s_pred

    def thought_logprobs(self, model, rollouts: Rollouts, rows: list[int], spec: RolloutSpec):
        """Tempered log-probs (N, L) of the thought tokens of `rows` (with grad) and their mask (N, L), one packed
        forward per document."""
        device = next(model.parameters()).device
        dtype = next(model.parameters()).dtype
        G = spec.group_size
        by_doc: dict[int, list[int]] = {}
        for i, r in enumerate(rows):
            by_doc.setdefault(rollouts.contexts[r // G].doc, []).append(i)
        per_row: dict[int, torch.Tensor] = {}
        for members in by_doc.values():
            contexts = [rollouts.contexts[rows[i] // G] for i in members]
            thoughts = [rollouts.thoughts[rows[i]] for i in members]
            prefix = max((c.prefix for c in contexts), key=len)
            ids, position_ids, allowed, predicting = pack_document(
                list(prefix), [(c.position, t) for c, t in zip(contexts, thoughts)], spec.think.open_id
            )
            logits = model(
                input_ids=ids[None].to(device), position_ids=position_ids[None].to(device),
                attention_mask=additive_mask(allowed[None].to(device), dtype), logits_to_keep=predicting.to(device),
            ).logits[0].float() / spec.temperature
            targets = torch.tensor([token for t in thoughts for token in t], device=device)
            token_logp = torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1)
            for i, piece in zip(members, token_logp.split([len(t) for t in thoughts])):
                per_row[i] = piece
        logp = torch.nn.utils.rnn.pad_sequence([per_row[i] for i in range(len(rows))], batch_first=True)
        lengths = torch.tensor([len(rollouts.thoughts[r]) for r in rows], device=device)
        mask = (torch.arange(logp.size(1), device=device)[None, :] < lengths[:, None]).float()
        return logp, mask


def pack_document(prefix: list[int], blocks: list[tuple[int, list[int]]], open_id: int):
    """One sequence `[prefix; <think> c_1[:-1]; <think> c_2[:-1]; ...]` for blocks (t_k, c_k).

    Returns ids (S,), position ids (S,) (block k continues from t_k), the (S, S) 'may attend' mask (the prefix is
    causal; block k sees the prefix before t_k and its own earlier tokens), and the indices (sum |c_k|,) whose logits
    predict the thought tokens, in block order."""
    ids, positions, owner, limit = list(prefix), list(range(len(prefix))), [-1] * len(prefix), [0] * len(prefix)
    for k, (t, thought) in enumerate(blocks):
        ids += [open_id] + thought[:-1]
        positions += range(t, t + len(thought))
        owner += [k] * len(thought)
        limit += [t] * len(thought)
    key = torch.arange(len(ids))
    owner, limit = torch.tensor(owner), torch.tensor(limit)
    causal = key[None, :] <= key[:, None]
    in_block = owner >= 0
    allowed = torch.where(
        in_block[:, None],
        (key[None, :] < limit[:, None]) | ((owner[:, None] == owner[None, :]) & causal),
        causal,
    )
    return torch.tensor(ids), torch.tensor(positions), allowed, key[in_block]
