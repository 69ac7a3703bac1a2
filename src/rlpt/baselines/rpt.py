"""RPT (Reinforcement Pre-Training, arXiv 2506.08007): the same RL loop as RLP with a sparse, verifiable reward. After
its thought the model predicts the continuation; the reward is 1 when the prediction is a prefix of the ground-truth
continuation that ends on one of its token boundaries, else 0 (and 0 when the thought never closed: no answer).
Here the prediction is the model's most likely token after `</think>`, so with the same tokenizer a match means the
predicted token's text is the next token(s) of the document exactly."""

from __future__ import annotations

import torch

CONTINUATION_TOKENS = 8  # how far into the ground truth a (multi-token) prediction may reach


def prefix_match_reward(predicted: str, truth_tokens: list[str]) -> float:
    """1.0 when `predicted` equals the concatenation of the first k >= 1 ground-truth tokens, else 0.0.
    ("ab" against tokens ["a", "bc"] is a prefix of the text, but it ends inside a token: 0.)"""
    if not predicted:
        return 0.0
    text = ""
    for token in truth_tokens:
        text += token
        if text == predicted:
            return 1.0
        if len(text) >= len(predicted):
            return 0.0
    return 0.0


def rpt_rewards(rollouts, documents, tokenizer, close_id: int) -> torch.Tensor:
    """(B, G) RPT rewards of a batch; `documents` are the step's documents (Context.doc indexes them)."""
    B, G = rollouts.s_pred.shape
    truncated = rollouts.truncated(close_id).view(B, G)
    rewards = torch.zeros(B, G)
    for b, context in enumerate(rollouts.contexts):
        ids = documents[context.doc].ids[context.position : context.position + CONTINUATION_TOKENS]
        truth = [tokenizer.decode([i]) for i in ids]
        for g in range(G):
            if not truncated[b, g]:
                rewards[b, g] = prefix_match_reward(tokenizer.decode([int(rollouts.predicted[b, g])]), truth)
    return rewards.to(rollouts.s_pred.device)
