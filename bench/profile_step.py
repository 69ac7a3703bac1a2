"""Where one RLP step's time goes, for a run's own config: the step split into its phases (`rlpt.phases`), timed
over a few steps of the run's first batch (the same documents, positions and draws each time), after one untimed
warm-up step. `rlpt bench --phases` gives the same table at the benchmark's shapes.

    python bench/profile_step.py --config examples/smollm2_wordsum.yaml [--set key=value ...] [--steps 3]
                                 [--no-warmup] [--never-close]

--never-close runs every thought to rlp.max_thought_tokens (a random model closes its thoughts early); --no-warmup
times the first step too (at the paper's lengths a step takes minutes, and its first-call costs are lost in them).
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from rlpt.phases import phase_table, phase_times


def profile(cfg, steps: int, warmup: bool = True) -> dict[str, list[float]]:
    from rlpt.data import after_marker, load_documents
    from rlpt.models import load_model_and_tokenizer
    from rlpt.rollout import make_engine
    from rlpt.trainer import RlpTrainer

    policy, tokenizer, think = load_model_and_tokenizer(cfg.model.name_or_path, "float32")
    documents = load_documents(cfg.data, tokenizer, after_marker(cfg.rlp.positions))
    extra = []
    if cfg.train.next_token_data:
        import dataclasses

        extra = load_documents(dataclasses.replace(cfg.data, path=cfg.train.next_token_data), tokenizer)
    engine = make_engine(cfg.rlp.engine, policy, cfg.rlp.compile_decoding)
    trainer = RlpTrainer(cfg, policy, tokenizer, think, documents, engine, Path("."), torch.device("cpu"),
                         next_token_documents=extra)
    return phase_times(trainer, steps, warmup=warmup)


def main() -> None:
    from rlpt import config as config_lib

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--no-warmup", action="store_true", help="time the first step too")
    parser.add_argument("--never-close", action="store_true", help="every thought runs to rlp.max_thought_tokens")
    args = parser.parse_args()
    cfg = config_lib.load(args.config, args.set)
    if args.never_close:
        from paper_shape import close_never  # beside this script

        close_never()
    rows = profile(cfg, args.steps, warmup=not args.no_warmup)
    total = statistics.median(rows["total"])
    tokens = statistics.median(rows["thought tokens"])
    print(f"one RLP step of {cfg.model.name_or_path}: {cfg.train.batch_documents} documents, G = {cfg.rlp.group_size}, "
          f"L <= {cfg.rlp.max_thought_tokens}, {tokens:.0f} thought tokens; median of {args.steps} steps: {total:.2f} s "
          f"({tokens / total:.0f} thought tokens/s)")
    print(phase_table(rows))


if __name__ == "__main__":
    main()
