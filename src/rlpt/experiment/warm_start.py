"""Base: the model every method starts from, warm-started by next-token training on the suites' warm-start corpora
(worked examples whose writer sometimes slips), with its convergence curve."""

from __future__ import annotations

import json
from pathlib import Path

from rlpt.experiment.budgets import Budget
from rlpt.experiment.scoring import EvalSet, greedy_accuracy_of
from rlpt.models import load_model_and_tokenizer


def warm_start(folder: Path, suites, eval_sets: list[EvalSet], budget: Budget, seed: int) -> None:
    """Base: next-token training on the suites' warm-start corpora, of `budget.warm_from` (a model name: builtin:tiny,
    which already knows addition with worked thoughts, or builtin:smollm2-135m) or, without one, of a freshly
    initialised model of builtin:tiny's architecture. Its convergence curve, the mean loss and greedy accuracy with
    thinking on `eval_sets` (training-side problems, which the budget's length is chosen on, and the held-out sets, for
    information) at `budget.curve_points` points, lands in `warm_start.json`."""
    from rlpt.pretrain import tokenize_documents, train_next_token
    from rlpt.tiny import RECIPES, build_model, char_tokenizer

    if budget.warm_from:
        model, tokenizer, _ = load_model_and_tokenizer(budget.warm_from)
    else:
        tokenizer = char_tokenizer()
        model = build_model({**RECIPES["tiny"], "seed": seed}, tokenizer)
    texts = [d for s in suites for d in s.warm_start_documents(budget.warm_documents, seed, budget.think_fraction, budget.slip)]
    every, curve_points = max(1, budget.warm_steps // budget.curve_points), []

    def score(step, losses):
        if step % every == 0 or step == budget.warm_steps:
            window = losses[curve_points[-1]["step"] if curve_points else 0 :]  # the steps since the last point
            curve_points.append(dict(step=step, loss=sum(window) / len(window),
                                     **greedy_accuracy_of(model, tokenizer, eval_sets, budget)))

    train_next_token(model, tokenize_documents(tokenizer, texts), steps=budget.warm_steps, batch_size=budget.warm_batch,
                     lr=budget.warm_lr, pad_id=tokenizer.pad_token_id, seed=seed, desc=f"warm start (seed {seed})",
                     after_step=score)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "warm_start.json").write_text(json.dumps(curve_points))
