"""`rlpt experiment`: the paper's comparison (Table 1) at laptop scale, in one command.

Per seed: a tiny model is warm-started on the suites' warm-start corpora -> Base. From Base, on the same training
corpus (plain documents, no thoughts): CPT token-matched and FLOP-matched (`rlpt.baselines.cpt`), RPT (the RL loop
with RPT's sparse reward) and RLP. All five are evaluated on each suite's held-out questions: pass@1 with thinking
(averaged over k sampled thoughts), greedy accuracy with thinking, accuracy without thinking, how often the greedy
thought is the correct worked thought, and the intrinsic metric (mean log-likelihood of held-out next tokens with
and without thinking). The RL runs are also evaluated at their checkpoints, for the accuracy curves.

The same comparison runs on your own parts: `--model DIR` is Base (no warm start), `--data PATH` the training
corpus (any `data.path`), `--tasks FILE.jsonl` a held-out question/answer set (the format of `rlpt eval`).

Everything lands in the output folder: `table.md`, `results.json`, `plots/*.png`, `models/[seed-S/]METHOD/` (HF
folders for `rlpt eval --model`) and `runs/` (the RL runs). Each stage is skipped when its output exists, so an
interrupted experiment continues where it stopped.
"""

from rlpt.experiment.driver import run
from rlpt.experiment.methods import chosen_methods

__all__ = ["run", "chosen_methods"]
