"""How big `rlpt experiment` runs: `small` (the README's run) and `test` (seconds, for checks).

`small` continues `builtin:tiny` on the suites' warm-start corpora, whose writers slip (60% of carries, borrows and
second hops), for 2,000 steps. The length is judged on 100 training-side problems per suite (seed 777), never on the
held-out questions: with recipe 3 of `builtin:tiny`, greedy accuracy with a thought on them was 11 / 25 / 25 / 23 / 23%
(math) and 51 / 46 / 48 / 47 / 47% (science) at steps 400 / 800 / 1,200 / 1,600 / 2,000, and the loss 1.098 / 0.496 /
0.438 / 0.420 / 0.420: both stop moving by step 1,600, so Base is converged on its warm start, while the writer's
greedy habit of slipping keeps it in the 20-60% band (docs/experiments.md, sections 8-9 and 11). Its RL runs take the
built-in default's settings (lr 1e-4, temperature 1.0, G = 8), chosen on training-side problems
(docs/default-run.md). Its post-training (`--post`) was chosen on the same 100 training-side problems per suite from
seed 0's Base, so that neither SFT nor the whole post-training takes Base to the ceiling on math (science is at
94-100% after any post-training tried: it leaves no room):
SFT on 128 worked examples per suite, 16 steps of 16 at lr 3e-5 (Base 23 / 47% -> 36 / 94%; lr 1e-4 to 1e-3 or more
steps took math to 56-99% and science to 97-100%), then RLVR for 30 steps at lr 1e-5 (math 83%, science 100%; at
lr 1e-4 math was at 98% by step 10, at 3e-5 at 100% by step 20). docs/experiments.md, section 13."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Budget:
    warm_from: str | None  # the warm start continues this model (`builtin:tiny`, a model folder), or starts a tiny
    # model from scratch (None)
    warm_documents: int  # per suite
    warm_steps: int
    warm_batch: int
    warm_lr: float
    think_fraction: float  # of warm-start documents that show a worked thought
    slip: float  # the chance that the writer of a worked thought slips at each carry, borrow or hop
    corpus_documents: int  # per suite: the RLP/RPT/CPT training corpus
    rl_steps: int
    batch_documents: int
    group_size: int
    thought_tokens: int
    lr: float  # RLP, RPT and CPT alike
    temperature: float  # of the RL runs' thoughts
    cpt_batch: int
    eval_questions: int  # per suite
    selection_questions: int  # training-side problems per suite in the warm-start curve (the length is chosen on them)
    samples: int  # k of pass@1
    curve_points: int  # checkpoints of each RL run that are evaluated
    # post-training (`--post`, `experiment/post.py`): SFT on worked examples, then RLVR at the RL runs' G, L,
    # temperature and batch, with its own steps and learning rate; per suite, problems apart from every pretraining
    # corpus
    post_sft_examples: int = 0
    post_sft_steps: int = 0
    post_sft_batch: int = 16
    post_sft_lr: float = 1e-3
    post_rl_questions: int = 0
    post_rl_steps: int = 0
    post_rl_lr: float = 1e-5
    # what training costs the language model (`experiment/prose.py`): next-token loss on this many windows of held-out
    # prose, of this many tokens each; 0 windows: not measured
    prose_windows: int = 0
    prose_tokens: int = 256
    # the mixed-text arm (`experiment/mixed.py`): RLP's thoughts at this many random positions of each document
    mixed_positions: int = 1


BUDGETS = {
    "test": Budget(warm_from=None, warm_documents=300, warm_steps=20, warm_batch=16, warm_lr=3e-3, think_fraction=0.25, slip=0.6,
                   corpus_documents=100, rl_steps=2, batch_documents=2, group_size=2, thought_tokens=24, lr=1e-5, temperature=0.7,
                   cpt_batch=16, eval_questions=6, selection_questions=4, samples=2, curve_points=2,
                   post_sft_examples=16, post_sft_steps=2, post_sft_batch=4, post_rl_questions=8, post_rl_steps=1,
                   prose_windows=4, prose_tokens=32),
    "small": Budget(warm_from="builtin:tiny", warm_documents=20_000, warm_steps=2000, warm_batch=64, warm_lr=3e-3,
                    think_fraction=0.8, slip=0.6, corpus_documents=10_000, rl_steps=30, batch_documents=24,
                    group_size=8, thought_tokens=32, lr=1e-4, temperature=1.0, cpt_batch=64, eval_questions=200,
                    selection_questions=100, samples=4, curve_points=5,
                    post_sft_examples=128, post_sft_steps=16, post_sft_batch=16, post_sft_lr=3e-5,
                    post_rl_questions=512, post_rl_steps=30, post_rl_lr=1e-5, prose_windows=64),
    # a real pretrained model on `--suite wordsum` (docs/smollm2.md): SmolLM2-135M warm-started on worked word sums,
    # then RLP at the paper's temperature and 10 x its learning rate on 8 plain documents a step; chosen on 100
    # training-side problems
    "smollm2": Budget(warm_from="builtin:smollm2-135m", warm_documents=4000, warm_steps=240, warm_batch=16, warm_lr=1e-4,
                      think_fraction=0.8, slip=0.6, corpus_documents=2000, rl_steps=40, batch_documents=8,
                      group_size=8, thought_tokens=16, lr=1e-5, temperature=0.7, cpt_batch=16, eval_questions=200,
                      selection_questions=100, samples=4, curve_points=2, prose_windows=64, mixed_positions=2),
}
