"""Next-token (teacher-forced) training on documents: the warm start of `builtin:tiny`, and the continued-pretraining
(CPT) baseline. Plain causal-LM cross-entropy, averaged over the non-pad tokens of a batch."""

from __future__ import annotations

import math
import random

import torch
from tqdm.auto import tqdm

from rlpt.generation import right_pad
from rlpt.logprobs import output_head, token_logprobs


def tokenize_documents(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text (with the tokenizer's BOS), closed by EOS: the documents of next-token training."""
    return [tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in texts]


def next_token_loss(model, ids: torch.Tensor, mask: torch.Tensor, tokens: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of each token given the ones before it, pads excluded; divided by `tokens` instead of the
    batch's own count when given (a micro-batch's share of a larger batch's mean). From the final hidden states a
    chunk of tokens at a time where `rlpt.logprobs.output_head` allows (the full logits of 16 documents of 512 tokens
    at a 151k vocabulary are 5 GB in float32), else from the model's logits."""
    keep = mask[:, 1:].float()
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, 0)  # a pad id may lie outside the vocabulary
    split = output_head(model)
    if split is not None:
        body, head = split
        logp = token_logprobs(body(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1], head, targets)
    else:
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, -1).gather(2, targets[:, :, None]).squeeze(2)
    return -(logp * keep).sum() / (keep.sum() if tokens is None else tokens)


def cosine_lr(step: int, total: int, warmup: int, peak: float, floor: float = 0.1) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor * peak`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def shuffled_batches(docs: list[list[int]], batch_size: int, rng: random.Random):
    """Endless batches of document indices, a fresh shuffle every epoch (a corpus smaller than a batch gives batches
    of the whole corpus)."""
    batch_size = min(batch_size, len(docs))
    while True:
        order = list(range(len(docs)))
        rng.shuffle(order)
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield order[start : start + batch_size]


def train_next_token(
    model,
    docs: list[list[int]],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    pad_id: int,
    seed: int = 0,
    warmup: int = 50,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    desc: str = "next-token",
    after_step=None,
) -> list[float]:
    """Train `model` for `steps` AdamW steps on shuffled, padded batches of `docs` (epochs repeat as needed).
    Documents are not packed together: a tiny model learns the task far slower when it must also learn to ignore the
    document before (measured on the arithmetic warm start). The model stays in eval mode, without dropout, as RLP's
    policy runs: CPT and RLP then differ in their objective alone (GPT-2's dropout of 0.1 would otherwise be on in
    one and off in the other). `after_step(step, losses)`, when given, is called after every step (1-based), e.g. to
    score the model along the way. Returns the loss of every step."""
    batches = shuffled_batches(docs, batch_size, random.Random(seed))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.eval()
    bar = tqdm(range(steps), desc=desc, dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        ids, mask = right_pad([docs[i] for i in next(batches)], pad_id)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, steps, warmup, lr) if schedule == "cosine" else lr
        loss = next_token_loss(model, ids, mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if after_step is not None:
            after_step(step + 1, losses)
    return losses
