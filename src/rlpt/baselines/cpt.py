"""Continued pretraining (CPT): next-token training of the same base model on the same documents as RLP, with two
budgets (arXiv 2510.01265, Appendix 11):
- token-matched: as many tokens as the documents the RLP run read;
- FLOP-matched: T_flop = n * l_seq * bs * iters + T_inp tokens, where n is the number of rollouts per context (G),
  l_seq the rollout length (`rlp.max_thought_tokens`; the thought, not the prompt), bs the contexts per step, iters
  the steps and T_inp the document tokens RLP read. rlpt takes n * bs * iters as the RLP run's own count of contexts
  rolled out times G (its `drawn_contexts` metric summed: with dynamic sampling, the dropped groups too), and T_inp as
  its `document_tokens` metric summed, with the tokens of its next-token term (`next_token_tokens`) where it has one.
"""

from __future__ import annotations

import math

from rlpt.pretrain import train_next_token


def flop_matched_tokens(n: int, l_seq: int, batch: float, iters: int, input_tokens: int) -> int:
    """The paper's CPT budget T_flop = n * l_seq * bs * iters + T_inp."""
    return round(n * l_seq * batch * iters + input_tokens)


def budgets_from_run(history: list[dict], group_size: int, max_thought_tokens: int) -> dict:
    """The token-matched and FLOP-matched CPT budgets of an RLP run, from its metrics.jsonl rows."""
    steps = len(history)
    contexts = sum(row.get("drawn_contexts", row["contexts"]) for row in history)  # dynamic sampling: every draw
    # the documents RLP read, and those its next-token term (`train.next_token_data`) trained on
    input_tokens = sum(row["document_tokens"] + row.get("next_token_tokens", 0) for row in history)
    return dict(
        rlp_steps=steps, contexts_per_step=contexts / max(1, steps), input_tokens=input_tokens,
        thought_tokens=sum(row["thought_tokens"] for row in history),
        token_matched=input_tokens,
        flop_matched=flop_matched_tokens(group_size, max_thought_tokens, contexts / max(1, steps), steps, input_tokens),
    )


def continued_pretraining(model, documents: list[list[int]], token_budget: int, *, batch_size: int, lr: float,
                          pad_id: int, seed: int, desc: str) -> dict:
    """Next-token training on `documents` (token ids, shuffled, epochs repeated as needed) until `token_budget` tokens have
    been trained on, at a constant learning rate. Returns the steps, tokens and losses."""
    mean_length = sum(len(d) for d in documents) / len(documents)
    steps = max(1, math.ceil(token_budget / (mean_length * batch_size)))
    losses = train_next_token(model, documents, steps=steps, batch_size=batch_size, lr=lr, pad_id=pad_id, seed=seed,
                              warmup=1, schedule="constant", desc=desc)
    return dict(steps=steps, tokens=round(steps * batch_size * mean_length), losses=losses)
