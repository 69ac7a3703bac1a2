"""The RLP loop (Algorithm 1 of arXiv 2510.01265): sample -> score -> advantages -> update -> EMA -> log/checkpoint.

Per optimizer step: take `train.batch_documents` documents, choose positions t by `rlp.positions`, sample G thoughts
per (document, t) from the current policy (theta_old = theta: one update per batch, so the PPO ratio is 1 and its
gradient is the policy gradient), score them against the EMA teacher, and take one AdamW step on the clipped
surrogate, accumulated over micro-batches of thoughts. Then phi <- tau phi + (1 - tau) theta.

Everything random is derived from (train.seed, step): a resumed run continues exactly like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rlpt import checkpoint, objective
from rlpt.baselines.rpt import rpt_rewards
from rlpt.data import Document, make_contexts
from rlpt.ema import EmaTeacher
from rlpt.generation import gumbel_sampler
from rlpt.rollout import Rollouts, RolloutSpec


@dataclass
class StepOutcome:
    metrics: dict
    documents: list[Document]  # the step's documents; Context.doc indexes them
    rollouts: Rollouts
    rewards: torch.Tensor  # (B, G)
    advantages: torch.Tensor  # (B, G)


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


@lru_cache(maxsize=2)
def epoch_order(num_docs: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(num_docs))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return tuple(order)


def batch_indices(num_docs: int, batch: int, seed: int, step: int) -> list[int]:
    """Documents of `step`: consecutive slices of a per-epoch seeded permutation of the corpus."""
    return [epoch_order(num_docs, seed, k // num_docs)[k % num_docs] for k in range(step * batch, (step + 1) * batch)]


def least_squares_trend(values: list[float]) -> tuple[float, float]:
    """Slope of values against their index, and its t-statistic (0 when undefined)."""
    n = len(values)
    if n < 3:
        return 0.0, 0.0
    xs = range(n)
    x_mean, y_mean = (n - 1) / 2, sum(values) / n
    sxx = sum((x - x_mean) ** 2 for x in xs)
    slope = sum((x - x_mean) * (y - y_mean) for x, y in zip(xs, values)) / sxx
    residual = sum((y - y_mean - slope * (x - x_mean)) ** 2 for x, y in zip(xs, values))
    stderr = math.sqrt(residual / (n - 2) / sxx)
    return slope, (slope / stderr if stderr > 0 else 0.0)


class RlpTrainer:
    """Receives its parts; `run()` trains from `start_step` to `train.max_steps`."""

    def __init__(self, cfg, policy, tokenizer, think, documents: list[Document], engine, run_dir: Path, device):
        self.cfg, self.policy, self.tokenizer, self.engine = cfg, policy, tokenizer, engine
        self.documents, self.run_dir, self.device = documents, run_dir, device
        self.spec = RolloutSpec(
            group_size=cfg.rlp.group_size, max_thought_tokens=cfg.rlp.max_thought_tokens,
            temperature=cfg.rlp.temperature, think=think, pad_id=tokenizer.pad_token_id,
            baseline_excludes_think=cfg.rlp.baseline_excludes_think,
        )
        self.ema = EmaTeacher(cfg.rlp.ema_decay)
        self.optimizer = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay
        )
        self.state = {"step": 0, "nonfinite_skipped": 0}

    # ------------------------------------------------------------------------------------------------ one step
    def rlp_step(self, step: int) -> StepOutcome:
        cfg = self.cfg
        docs = [self.documents[i] for i in batch_indices(len(self.documents), cfg.train.batch_documents, cfg.train.seed, step)]
        contexts = make_contexts(docs, cfg.rlp.positions, cfg.train.seed, step)
        if not self.ema.initialized:
            self.ema.init_from(self.policy)  # lazy: phi <- theta at the first batch
        sampler = gumbel_sampler(cfg.rlp.temperature, step_generator(cfg.train.seed, step))
        rollouts = self.engine.rollout(self.policy, self.ema.model, contexts, self.spec, sampler)
        rewards = self.rewards(rollouts, docs)  # (B, G)
        advantages = objective.group_advantages(rewards, normalize_std=cfg.rlp.normalize_advantages)
        loss, kl, clip_frac = self.accumulate_gradients(rollouts, advantages.flatten())

        grad_norm = torch.nn.utils.clip_grad_norm_(
            self.policy.parameters(), cfg.train.grad_clip if cfg.train.grad_clip > 0 else float("inf")
        )
        finite = math.isfinite(loss) and bool(torch.isfinite(grad_norm))
        if finite:
            self.optimizer.step()
            self.ema.update(self.policy)  # after every optimizer step
        else:
            self.state["nonfinite_skipped"] += 1  # the step never reaches the weights
        self.optimizer.zero_grad(set_to_none=True)

        lengths = torch.tensor([len(t) for t in rollouts.thoughts], dtype=torch.float32)
        metrics = dict(
            step=step + 1, loss=loss, reward_mean=rewards.mean().item(), reward_std=rewards.std().item(),
            s_pred_mean=rollouts.s_pred.mean().item(), s_ema_mean=rollouts.s_ema.mean().item(),
            advantage_abs_mean=advantages.abs().mean().item(), thought_len_mean=lengths.mean().item(),
            thought_tokens=int(lengths.sum()), thought_truncated_frac=rollouts.truncated(self.spec.think.close_id).float().mean().item(),
            clip_frac=clip_frac, kl=kl, grad_norm=grad_norm.item(), contexts=len(contexts),
            document_tokens=sum(len(d.ids) for d in docs), skipped=not finite,
            nonfinite_skipped=self.state["nonfinite_skipped"],
        )
        return StepOutcome(metrics, docs, rollouts, rewards, advantages)

    def rewards(self, rollouts: Rollouts, docs: list[Document]) -> torch.Tensor:
        """RLP's information gain; or, for the RPT baseline, its sparse prefix-match reward (all else the same)."""
        if self.cfg.rlp.reward == "rpt":
            return rpt_rewards(rollouts, docs, self.tokenizer, self.spec.think.close_id)
        return objective.information_gain(rollouts.s_pred, rollouts.s_ema)

    def accumulate_gradients(self, rollouts: Rollouts, advantages: torch.Tensor) -> tuple[float, float, float]:
        """Backward the batch loss mean_i L_i in micro-batches of thoughts; returns (loss, kl, clip fraction)."""
        rlp = self.cfg.rlp
        rows = list(range(len(rollouts.thoughts)))
        size = self.cfg.train.micro_batch_thoughts
        advantages = advantages.to(self.device)
        total_loss = total_kl = clipped = tokens = 0.0
        for start in range(0, len(rows), size):
            chunk = rows[start : start + size]
            weight = len(chunk) / len(rows)  # mean over chunks of means -> mean over all thoughts
            logp, mask = self.engine.thought_logprobs(self.policy, rollouts, chunk, self.spec)
            logp_old = logp.detach()  # theta_old = theta: the batch was sampled by the current weights
            loss = objective.clipped_surrogate_loss(logp, logp_old, advantages[chunk], mask, rlp.eps_low, rlp.eps_high)
            if rlp.kl_coef > 0:
                with torch.no_grad():
                    logp_ref, _ = self.engine.thought_logprobs(self.ema.model, rollouts, chunk, self.spec)
                kl = objective.kl_penalty(logp, logp_ref, mask)
                loss = loss + rlp.kl_coef * kl
                total_kl += kl.item() * weight
            (loss * weight).backward()
            total_loss += loss.item() * weight
            n_tokens = mask.sum().item()
            clipped += objective.clip_fraction(logp, logp_old, advantages[chunk], mask, rlp.eps_low, rlp.eps_high).item() * n_tokens
            tokens += n_tokens
        return total_loss, total_kl, clipped / max(tokens, 1)

    # ---------------------------------------------------------------------------------------------- the run
    def restore(self, folder: Path) -> None:
        self.state = checkpoint.restore(folder, self.ema, self.policy, self.optimizer)

    def save_checkpoint(self, step: int) -> Path:
        return checkpoint.save(self.run_dir, step, self.policy, self.tokenizer, self.ema, self.optimizer, self.state)

    def dump_rollouts(self, handle, outcome: StepOutcome) -> None:
        G = self.spec.group_size
        for row, thought in enumerate(outcome.rollouts.thoughts):
            context = outcome.rollouts.contexts[row // G]
            b, g = divmod(row, G)
            handle.write(json.dumps(dict(
                step=outcome.metrics["step"], doc=outcome.documents[context.doc].source, position=context.position,
                thought_ids=thought, thought_text=self.tokenizer.decode(thought),
                s_pred=outcome.rollouts.s_pred[b, g].item(), s_ema=outcome.rollouts.s_ema[b].item(),
                reward=outcome.rewards[b, g].item(), advantage=outcome.advantages[b, g].item(),
            )) + "\n")

    def run(self) -> list[dict]:
        """Train to `train.max_steps`, appending to metrics.jsonl (and rollouts.jsonl); returns this run's metrics."""
        cfg = self.cfg.train
        start = self.state["step"]
        history = []
        metrics_file = (self.run_dir / "metrics.jsonl").open("a")
        rollouts_file = (self.run_dir / "rollouts.jsonl").open("a") if cfg.dump_rollouts else None
        bar = tqdm(range(start, cfg.max_steps), desc="rlp", initial=start, total=cfg.max_steps, dynamic_ncols=True)
        try:
            for step in bar:
                began = time.perf_counter()
                outcome = self.rlp_step(step)
                outcome.metrics["step_seconds"] = time.perf_counter() - began
                self.state["step"] = step + 1
                metrics_file.write(json.dumps(outcome.metrics) + "\n")
                metrics_file.flush()
                if rollouts_file:
                    self.dump_rollouts(rollouts_file, outcome)
                    rollouts_file.flush()
                history.append(outcome.metrics)
                bar.set_postfix(reward=f"{outcome.metrics['reward_mean']:+.3f}", len=f"{outcome.metrics['thought_len_mean']:.1f}")
                last = step + 1 == cfg.max_steps
                if last or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
                    self.save_checkpoint(step + 1)
        finally:
            metrics_file.close()
            if rollouts_file:
                rollouts_file.close()
        return history
