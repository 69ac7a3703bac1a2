"""What the fast engines (`packed.py`, `recurrent.py`) share: the documents they read, the teacher's no-think
baseline, and the lockstep decoding of every row of a step, each row continuing its own context through the engine's
`next_logits`."""

from __future__ import annotations

import torch

from rlpt.generation import Chooser, right_pad
from rlpt.logprobs import output_head
from rlpt.rollout.base import RolloutSpec
from rlpt.rollout.reference import discounted_scores


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype, rows: int) -> torch.Tensor:
    """Boolean (Q, K) 'may attend', the same for every row -> additive float mask (rows, 1, Q, K): 0 where allowed,
    the dtype's min elsewhere. One (Q, K) mask seen by every row, not a copy a row (256 rows of 2,048 tokens would
    make 4 GB of copies in float32)."""
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[None, None].expand(rows, 1, -1, -1)


def documents_of(contexts, scored: bool = False) -> tuple[list[list[int]], list[int]]:
    """The shortest document pieces that hold every context (the longest prefix of each document, in order of first
    appearance; with `scored`, followed by the tokens the reward teacher-forces, x_t .. x_{t+K-2}) and, per context,
    the index of its piece. Later tokens are never needed."""
    longest: dict[int, tuple[int, ...]] = {}
    for c in contexts:
        piece = c.prefix + c.scored[:-1] if scored else c.prefix
        if len(piece) > len(longest.get(c.doc, ())):
            longest[c.doc] = piece
    order = list(longest)
    index = {doc: i for i, doc in enumerate(order)}
    return [list(longest[doc]) for doc in order], [index[c.doc] for c in contexts]


@torch.no_grad()
def documents_and_baseline(teacher, contexts, spec: RolloutSpec):
    """The document pieces the contexts need (with the tokens the reward teacher-forces), right-padded on the teacher's
    device, each context's piece, its scored tokens (B, K) and their counts (B,), and S_ema (B,): one teacher forward
    per document, the logits at t - 1 + k predicting x_{t+k}."""
    device = next(teacher.parameters()).device
    think = spec.think
    docs, doc_of_context = documents_of(contexts, scored=True)
    ids, pad_mask = (x.to(device) for x in right_pad(docs, spec.pad_id))
    positions = torch.tensor([c.position for c in contexts], device=device)
    context_doc = torch.tensor(doc_of_context, device=device)
    scored = [c.scored for c in contexts]
    width = max(len(s) for s in scored)
    answers = torch.tensor([list(s) + [spec.pad_id] * (width - len(s)) for s in scored], device=device)  # (B, K)
    at = (positions[:, None] - 1 + torch.arange(width, device=device)[None, :]).clamp(max=ids.size(1) - 1)  # (B, K)
    split = output_head(teacher)
    if split is not None:  # the head only where a context reads it, not over every document token
        body, head = split
        hidden = body(input_ids=ids, attention_mask=pad_mask).last_hidden_state
        teacher_logits = head(hidden[context_doc[:, None], at])
    else:
        teacher_logits = teacher(input_ids=ids, attention_mask=pad_mask).logits[context_doc[:, None], at]
    excluded = [think.open_id, think.close_id] if spec.baseline_excludes_think else []
    teacher_logprobs = torch.log_softmax(teacher_logits.float(), -1)  # (B, K, V)
    s_ema = discounted_scores(teacher_logprobs, scored, spec.reward_discount, excluded)
    lengths = torch.tensor([len(s) for s in scored], device=device)
    return docs, doc_of_context, ids, pad_mask, answers, lengths, s_ema


def decoding_steps(spec: RolloutSpec, answer_width: int) -> int:
    """Steps of a decoding loop: `<think>`, up to L thought tokens, `</think>`, then the scored tokens x_t .. ."""
    return spec.max_thought_tokens + 1 + answer_width


def decode_thoughts(next_logits, row_answer, row_answer_length, spec: RolloutSpec, choose: Chooser):
    """Lockstep decoding of N thought rows, `next_logits(feed, step)` giving each row's logits (N, V) after it is fed
    `feed` (N,) at step `step` (the engine's: each row continues its own context). Returns the thoughts, S_pred (N,)
    over each row's answer tokens `row_answer` (N, K) (the first `row_answer_length` of them), the most likely
    token after `</think>` (N,), and whether each answer token was the most likely one (N,)."""
    think, (N, _), device = spec.think, row_answer.shape, row_answer.device
    rows = torch.arange(N, device=device)
    feed = torch.full((N,), think.open_id, device=device)
    sampling = torch.ones(N, dtype=torch.bool, device=device)  # still drawing thought tokens
    pending = torch.ones(N, dtype=torch.bool, device=device)  # S_pred not complete yet
    scoring = torch.zeros(N, dtype=torch.bool, device=device)  # past </think>: reading the answer's terms
    read = torch.zeros(N, dtype=torch.long, device=device)  # answer terms read so far
    s_pred = torch.zeros(N, device=device)
    predicted = torch.zeros(N, dtype=torch.long, device=device)
    right = torch.ones(N, dtype=torch.bool, device=device)
    forced = torch.zeros(N, dtype=torch.bool, device=device)  # cut at the limit: </think> goes in next
    tokens = torch.full((N, spec.max_thought_tokens), spec.pad_id, dtype=torch.long, device=device)
    lengths = torch.zeros(N, dtype=torch.long, device=device)
    for step in range(decoding_steps(spec, row_answer.size(1))):
        logits = next_logits(feed, step).float()
        scoring |= pending & (feed == think.close_id)  # the logits after </think> predict x_t: S_pred, untempered
        if scoring.any():
            term = torch.log_softmax(logits[scoring], -1).gather(1, row_answer[scoring, read[scoring]][:, None])
            s_pred[scoring] += spec.reward_discount ** read[scoring].float() * term.squeeze(1)
            first = scoring & (read == 0)
            predicted[first] = logits[first].argmax(-1)
            right[scoring] &= logits[scoring].argmax(-1) == row_answer[scoring, read[scoring]]
            read += scoring.long()
            finished = scoring & (read == row_answer_length)
            pending &= ~finished
            scoring &= ~finished
            if not pending.any():
                break
        feed = torch.where(forced, torch.full_like(feed, think.close_id), torch.full_like(feed, spec.pad_id))
        # a row reading its answer is fed the token it just scored (teacher forcing): the next logits give the next
        feed = torch.where(scoring, row_answer[rows, (read - 1).clamp(min=0)], feed)
        forced = torch.zeros_like(forced)
        if sampling.any():  # the same rows and steps as the reference engine: the same draws
            if step == 0:  # a thought has at least one token
                logits[:, think.close_id] = float("-inf")
            drawn = choose(logits, step).to(device)
            tokens[:, step] = torch.where(sampling, drawn, tokens[:, step])
            lengths += sampling.long()
            feed = torch.where(sampling, drawn, feed)
            ended = sampling & (drawn == think.close_id)
            forced = sampling & ~ended & (lengths == spec.max_thought_tokens)
            sampling &= ~(ended | forced)
    thoughts = [row[:n].tolist() for row, n in zip(tokens.cpu(), lengths.cpu().tolist())]
    return thoughts, s_pred, predicted, right
