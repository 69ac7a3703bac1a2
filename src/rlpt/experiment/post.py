"""Post-training after every method (the paper's "+Post" rows): the same recipe, data and steps for each model.

1. SFT: next-token training on worked examples with correct thoughts (`question <think>thought</think>answer.`),
   drawn from each suite's training side and apart from every pretraining corpus (no problem of the warm start or
   of the RLP/CPT corpus the suites write, `47+38=` and `38+47=` being one; a `--data` corpus of your own is not
   searched) and from every held-out question (the suites' and a `--tasks` file's).
2. RLVR: `rlpt train` on question/answer records of the same side (other questions than SFT's) with the verifier
   reward (`rlp.reward=verifier`, `rlp.positions=answer`): G sampled thoughts per question, each followed by the
   model's greedy answer, reward 1 when it is right and 0 otherwise or when the thought was cut; the group advantages
   and the clipped surrogate are RLP's.

The SFT model lands in `runs/[seed-S/]METHOD-post/sft/`, the RLVR run in `runs/[seed-S/]METHOD-post/`, and the
post-trained model in `models/[seed-S/]METHOD-post/`, each skipped when it exists.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlpt.cache import build_folder
from rlpt.experiment.budgets import Budget
from rlpt.models import load_model_and_tokenizer
from rlpt.suites import ANSWER_TOKENS

POST_SEED = 555  # the post-training problems' draw: another than the corpora's (0, 10,000 + seed) and the selection's


def pretraining_keys(suite, budget: Budget, seed: int) -> set[str]:
    """The problems (`suite.key`: commuted twins are one) of a suite's pretraining corpora for `seed`: its warm start
    and the RLP/CPT training corpus."""
    return ({suite.key(p.question) for p in suite.warm_start_problems(budget.warm_documents, seed)}
            | {suite.key(p.question) for p in suite.training_problems(budget.corpus_documents)})


def post_training_data(suites, budget: Budget, seed: int, folder: Path, held_out: list[str] = ()) -> tuple[list[str], Path]:
    """The SFT documents (worked, right) and the RLVR question/answer JSONL (written under `folder`): per suite,
    `post_sft_examples` and then `post_rl_questions` distinct training-side problems, none in a pretraining corpus
    and none a held-out question (`held_out`: the suites' and a user's `--tasks`), twins included."""
    sft, records = [], []
    for suite in suites:
        exclude = pretraining_keys(suite, budget, seed) | {suite.key(q) for q in held_out}
        problems = suite.problems(budget.post_sft_examples + budget.post_rl_questions, POST_SEED + seed, heldout=False,
                                  exclude=exclude)
        sft += [p.worked() for p in problems[: budget.post_sft_examples]]
        records += [{"question": p.question, "answer": f"{p.answer}."} for p in problems[budget.post_sft_examples :]]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rlvr.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return sft, path


def supervised_fine_tuning(model_folder: Path, folder: Path, documents: list[str], budget: Budget, seed: int,
                           name: str) -> Path:
    """SFT of the model in `model_folder` on `documents` (next-token, the budget's steps, batch and learning rate),
    saved to `folder`."""
    from rlpt.pretrain import tokenize_documents, train_next_token

    def build(tmp):
        model, tokenizer, _ = load_model_and_tokenizer(str(model_folder))
        train_next_token(model, tokenize_documents(tokenizer, documents), steps=budget.post_sft_steps,
                         batch_size=budget.post_sft_batch, lr=budget.post_sft_lr, pad_id=tokenizer.pad_token_id,
                         seed=seed, warmup=max(1, budget.post_sft_steps // 10), desc=f"{name} SFT (seed {seed})")
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return build_folder(folder, build)


def rlvr_settings(budget: Budget) -> dict:
    """The RLVR run's settings (with `rlp.reward=verifier`) beside the budget's RL ones (G, L, temperature, batch): a
    thought before each record's answer, the whole answer scored, its own steps and learning rate."""
    return dict(positions="answer", reward_tokens=ANSWER_TOKENS, steps=budget.post_rl_steps, lr=budget.post_rl_lr)
