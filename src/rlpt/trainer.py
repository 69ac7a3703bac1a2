"""The RLP loop (Algorithm 1 of arXiv 2510.01265): sample -> score -> advantages -> update -> EMA -> log/checkpoint.

Per step: take `train.batch_documents` documents, choose positions t by `rlp.positions`, sample G thoughts per
(document, t) from the current policy theta_old, score them against the EMA teacher, and take `rlp.updates_per_batch`
(mu) AdamW steps on the clipped surrogate, each accumulated over micro-batches of thoughts, each followed by
phi <- tau phi + (1 - tau) theta. With mu = 1 (the paper) the ratio is 1 and its gradient is the policy gradient;
later updates hold the ratio against the log-probs of theta_old, kept from the first.

Everything random is derived from (train.seed, step) and, for a thought, from its document's slot in the global batch,
its position and its index g: a resumed run continues exactly like an uninterrupted one, and N ranks with batch b
sample, score and update exactly like one process with batch N*b (`rlpt.distributed`).
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

from rlpt import checkpoint, config as config_lib, distributed, loggers, lora, objective
from rlpt.baselines.rpt import rpt_rewards
from rlpt.data import Document, make_contexts
from rlpt.distributed import World, gathered
from rlpt.ema import EmaTeacher
from rlpt.generation import hash_key, right_pad, temperature_sampler
from rlpt.logprobs import CHUNK_ELEMENTS, output_head
from rlpt.memory import micro_batches
from rlpt.plan import chunks_for_run
from rlpt.pretrain import next_token_loss
from rlpt.rollout import Context, Rollouts, RolloutSpec
from rlpt.batch import SIGNAL_TOLERANCE, Batch, group_has_signal, sample_batch
from rlpt.rollout.base import chunked_rollout


@dataclass
class StepOutcome:
    metrics: dict
    documents: list[Document]  # the step's documents; Context.doc indexes them
    rollouts: Rollouts
    rewards: torch.Tensor  # (B, G)
    advantages: torch.Tensor  # (B, G)
    idle: bool = False  # this rank had no context; the rollouts are a stand-in


@lru_cache(maxsize=2)
def epoch_order(num_docs: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(num_docs))
    random.Random(seed * 7919 + epoch).shuffle(order)
    return tuple(order)


def batch_indices(num_docs: int, batch: int, seed: int, step: int) -> list[int]:
    """Documents of `step`: consecutive slices of a per-epoch seeded permutation of the corpus."""
    return [epoch_order(num_docs, seed, k // num_docs)[k % num_docs] for k in range(step * batch, (step + 1) * batch)]


DUMP_CONTEXT_TOKENS = 48  # of x_<t in each row of rollouts.jsonl (the end of the prefix the thought follows)

def rows_to_update(advantages: torch.Tensor, kl_coef: float) -> list[int]:
    """The thoughts the update must run forward and backward: with no KL term, one of advantage exactly 0 (every thought
    of a group of equal rewards) has a surrogate of 0 * ratio at every token, so no gradient, and is left out; the loss
    still divides by every thought, so the step is the one that running it would give."""
    if kl_coef > 0:
        return list(range(advantages.numel()))
    return advantages.flatten().ne(0).nonzero().flatten().tolist()


def distinct_thoughts(thoughts: list[list[int]], group_size: int) -> list[int]:
    """How many different thoughts each group of `group_size` consecutive thoughts holds."""
    return [len({tuple(t) for t in thoughts[i : i + group_size]}) for i in range(0, len(thoughts), group_size)]


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

    def __init__(self, cfg, policy, tokenizer, think, documents: list[Document], engine, run_dir: Path, device,
                 world: World = World(), next_token_documents: list[Document] = ()):
        """`policy` comes already wrapped for `world` (`distributed.parallelize`); `next_token_documents` are those of
        `train.next_token_data`."""
        self.cfg, self.policy, self.tokenizer, self.engine = cfg, policy, tokenizer, engine
        self.documents, self.run_dir, self.device, self.world = documents, run_dir, device, world
        self.next_token_documents = next_token_documents
        self.spec = RolloutSpec(
            group_size=cfg.rlp.group_size, max_thought_tokens=cfg.rlp.max_thought_tokens,
            temperature=cfg.rlp.temperature, think=think, pad_id=tokenizer.pad_token_id,
            baseline_excludes_think=cfg.rlp.baseline_excludes_think, reward_discount=cfg.rlp.reward_discount,
            checkpoint_layers=cfg.train.gradient_checkpointing,
        )
        if lora.is_lora(policy):  # frozen base + EMA of the adapters
            self.ema = lora.AdapterEmaTeacher(cfg.rlp.ema_decay)
        else:
            self.ema = EmaTeacher(cfg.rlp.ema_decay, shard=(lambda m: distributed.shard(m, world)) if world.sharded else None)
        self.optimizer = torch.optim.AdamW(  # fused: one kernel for all parameters (4x faster on CPU than the loop)
            [p for p in policy.parameters() if p.requires_grad], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
            fused=device.type in ("cpu", "cuda"),
        )
        self.state = {"step": 0, "nonfinite_skipped": 0}
        longest_next_token = max((len(d.ids) for d in self.next_token_documents), default=0)
        self.chunks = chunks_for_run(cfg, policy, device, longest_next_token, self.world.main)

    # ------------------------------------------------------------------------------------------------ one step
    def step_documents(self, step: int) -> tuple[list[Document], int]:
        """This rank's documents of `step` and the slot of its first in the step's global batch."""
        per_rank = self.cfg.train.batch_documents
        order = batch_indices(len(self.documents), per_rank * self.world.size, self.cfg.train.seed, step)
        first = self.world.rank * per_rank
        return [self.documents[i] for i in order[first : first + per_rank]], first

    def rlp_step(self, step: int) -> StepOutcome:
        cfg, G = self.cfg, self.spec.group_size
        docs, first = self.step_documents(step)
        if not self.ema.initialized:
            self.ema.init_from(self.policy)  # lazy: phi <- theta at the first batch
        batch = self.draw_batch(step, docs, first)
        rollouts, rewards, idle = batch.rollouts, batch.rewards, batch.idle
        advantages = (objective.rank_advantages(rewards, SIGNAL_TOLERANCE) if cfg.rlp.rank_advantages
                      else objective.group_advantages(rewards, normalize_std=cfg.rlp.normalize_advantages))
        logp_old = []  # theta_old's log-probs per micro-batch, kept from the first update for the later ones
        attempts, applied = [], 0  # [loss, kl, clipped tokens, tokens, grad norm] of each update tried
        next_token = []  # the next-token term's (loss, tokens) of each update, when there is one
        for update in range(cfg.rlp.updates_per_batch):
            with self.autocast(), gathered(self.policy):
                if self.next_token_documents:
                    next_token.append(self.next_token_gradients(step, update))
                sums = self.accumulate_gradients(rollouts, advantages.flatten(), idle, logp_old)
            grad_norm = self.clip_gradients()
            loss, kl, clipped, tokens, rows, updated = distributed.all_sum(sums, self.device)
            attempts.append([loss / max(rows, 1), kl / max(rows, 1), clipped, tokens, grad_norm])
            finite = math.isfinite(loss) and math.isfinite(grad_norm)  # the same on every rank: both are global
            if finite and rows:  # (no thought anywhere in the batch: nothing to learn from, no step)
                self.optimizer.step()
                self.ema.update(self.policy)  # after every optimizer step
                applied += 1
            elif not finite:
                self.state["nonfinite_skipped"] += 1  # the step never reaches the weights
            self.optimizer.zero_grad(set_to_none=True)
            if not (finite and rows):
                break
        loss, kl, clipped, tokens, grad_norm = (sum(column) for column in zip(*attempts))
        loss, kl, grad_norm = loss / len(attempts), kl / len(attempts), grad_norm / len(attempts)

        mine = dict(  # per-thought values of every rank: metrics over the global batch
            s_pred=rollouts.s_pred.flatten().tolist(), s_ema=rollouts.s_ema.tolist(),
            advantages=advantages.flatten().tolist(), lengths=[len(t) for t in rollouts.thoughts],
            truncated=rollouts.truncated(self.spec.think.close_id).tolist(), contexts=[len(rollouts.contexts)],
            distinct=distinct_thoughts(rollouts.thoughts, G))
        if idle:
            mine = {key: [] for key in mine}
        # the rewards and the signal of every group drawn (with dynamic sampling, the dropped ones too): what the
        # model's thoughts earn, not what the selection kept
        drawn = batch.drawn_rewards
        ranks = distributed.all_gather({**mine, "rewards": drawn.flatten().tolist(),
                                        "signal": group_has_signal(drawn).tolist(),
                                        "document_tokens": [sum(len(d.ids) for d in docs)],
                                        "drawn_contexts": [batch.drawn_contexts]})
        every = {key: torch.tensor([v for r in ranks for v in r[key]], dtype=torch.float64) for key in ranks[0]}
        metrics = dict(
            step=step + 1, loss=loss, reward_mean=every["rewards"].mean().item(), reward_std=every["rewards"].std().item(),
            s_pred_mean=every["s_pred"].mean().item(), s_ema_mean=every["s_ema"].mean().item(),
            advantage_abs_mean=every["advantages"].abs().mean().item(), thought_len_mean=every["lengths"].mean().item(),
            thought_tokens=int(every["lengths"].sum()), thought_truncated_frac=every["truncated"].mean().item(),
            clip_frac=clipped / max(tokens, 1), kl=kl, grad_norm=grad_norm, contexts=int(every["contexts"].sum()),
            document_tokens=int(every["document_tokens"].sum()), skipped=not applied, updates=applied,
            nonfinite_skipped=self.state["nonfinite_skipped"], groups_with_signal=every["signal"].mean().item(),
            distinct_thoughts_mean=every["distinct"].mean().item(), rollout_rows=self.chunks.rollout_rows,
            micro_batch_thoughts=self.chunks.micro_batch_thoughts, updated_thoughts=int(updated),
            drawn_contexts=int(every["drawn_contexts"].sum()), draw_rounds=batch.rounds,
        )
        if next_token:
            losses, tokens = zip(*next_token)
            metrics["next_token_loss"] = distributed.all_sum([sum(losses) / len(losses)], self.device)[0] / self.world.size
            # the tokens the term trained on, every rank and update: what a FLOP-matched baseline must also get
            metrics["next_token_tokens"] = int(distributed.all_sum([float(sum(tokens))], self.device)[0])
        return StepOutcome(metrics, docs, rollouts, rewards, advantages, idle)

    def draw(self, step: int, docs: list[Document], first: int, draw: int,
             exclude: frozenset = frozenset()) -> tuple[Rollouts, torch.Tensor, bool]:
        """Round `draw` of positions of this rank's documents, less the (slot, position) keys in `exclude`, G thoughts
        each rolled out in chunks of `train.rollout_rows` groups, and their rewards (B, G); and whether this rank is
        idle (no position left: the rollouts are a stand-in's, which runs the step's forwards and collectives weighted
        0)."""
        cfg, G = self.cfg, self.spec.group_size
        contexts = [c for c in make_contexts(docs, cfg.rlp.positions, cfg.train.seed, step, first_slot=first,
                                             reward_tokens=cfg.rlp.reward_tokens, draw=draw)
                    if (first + c.doc, c.position) not in exclude]
        idle = not contexts
        if idle:
            contexts = [self.stand_in_context(docs)]
        # a thought's draws are keyed by (document slot, t, g, and the round after the first): the same on any number
        # of ranks, in any chunks
        row_keys = [hash_key(first + c.doc, c.position, g, *([draw] if draw else [])) for c in contexts for g in range(G)]

        def sampler_for(begin: int, end: int):
            return temperature_sampler(cfg.rlp.temperature, hash_key(cfg.train.seed, step), row_keys[begin * G : end * G])

        with self.autocast(), gathered(self.policy):
            rollouts = chunked_rollout(self.engine, self.policy, self.ema.model, contexts, self.spec, sampler_for,
                                       max(1, self.chunks.rollout_rows // G))
        return rollouts, self.rewards(rollouts, docs), idle

    def draw_batch(self, step: int, docs: list[Document], first: int) -> Batch:
        """The step's groups: one round of draws, or with `rlp.dynamic_sampling` the rounds that fill it with signal."""
        draw = lambda round_, exclude=frozenset(): self.draw(step, docs, first, round_, exclude)  # noqa: E731
        return sample_batch(draw, self.cfg.rlp.dynamic_sampling, self.cfg.train.seed, step, first)

    def stand_in_context(self, docs: list[Document]) -> Context:
        """`</think>` after the first token of a document, sampled and backpropagated with zero weight, so that a
        rank without contexts runs the same forwards and collectives as the others."""
        return Context(doc=0, position=1, prefix=(docs[0].ids[0],), target=docs[0].ids[1])

    def autocast(self):
        return distributed.autocast(self.world, self.device)

    def clip_gradients(self) -> float:
        """Clip to `train.grad_clip` by the global norm (over all shards under FSDP); the norm before clipping."""
        clip = self.cfg.train.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), clip if clip > 0 else float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    def rewards(self, rollouts: Rollouts, docs: list[Document]) -> torch.Tensor:
        """RLP's information gain; or, for the RPT baseline, its sparse prefix-match reward; or RLVR's verifier reward
        (all else the same)."""
        if self.cfg.rlp.reward == "rpt":
            return rpt_rewards(rollouts, docs, self.tokenizer, self.spec.think.close_id)
        if self.cfg.rlp.reward == "verifier":
            truncated = rollouts.truncated(self.spec.think.close_id).view_as(rollouts.answer_right)
            return objective.verifier_reward(rollouts.answer_right, truncated.to(rollouts.answer_right.device))
        return objective.information_gain(rollouts.s_pred, rollouts.s_ema)

    def accumulate_gradients(self, rollouts: Rollouts, advantages: torch.Tensor, idle: bool = False,
                             logp_old: list | None = None) -> list[float]:
        """Backward this rank's share of the global loss mean_i L_i (the mean over the thoughts of all ranks), in
        micro-batches of thoughts. Returns this rank's sums [loss, kl, clipped tokens, tokens, thoughts, thoughts run] for
        `distributed.all_sum` (loss and kl summed over thoughts). `idle`: the rollouts are a stand-in, weighted 0.
        `logp_old`: theta_old's log-probs per micro-batch; an empty list is filled (this is the first update, whose
        weights are theta_old's), a filled one is read (a later update)."""
        logp_old = [] if logp_old is None else logp_old
        first_update = not logp_old
        rlp, size = self.cfg.rlp, self.chunks.micro_batch_thoughts
        thoughts = 0 if idle else len(rollouts.thoughts)
        rows = [] if idle else rows_to_update(advantages, rlp.kl_coef)
        chunks = micro_batches(rows, size, lambda row: rollouts.contexts[row // self.spec.group_size].doc)
        counts = distributed.all_gather([thoughts, len(chunks)])
        # every rank runs as many micro-batches, the missing ones as zero-weighted repeats, so that all ranks
        # reduce gradients in the same backward with the same collectives; at least one, so that a batch of no signal
        # leaves zero gradients for the optimizer's step, as running its thoughts would
        padding = chunks[-1] if chunks else [0]
        batches = chunks + [padding] * (max(1, *(n for _, n in counts)) - len(chunks))
        # ranks average gradients: make the average the mean over every thought of every rank, skipped ones included
        scale = self.world.size / max(sum(n for n, _ in counts), 1)
        advantages = advantages.to(self.device)
        # a skipped thought's surrogate is 0 and its clipped tokens none: only its tokens count
        loss_sum = kl_sum = clipped = 0.0
        tokens = float(sum(len(rollouts.thoughts[r]) for r in set(range(thoughts)) - set(rows)))
        for k, chunk in enumerate(batches):
            real = k < len(chunks)
            self.sync_gradients(k == len(batches) - 1)  # reduce once, in the last micro-batch's backward
            logp, mask = self.engine.thought_logprobs(self.policy, rollouts, chunk, self.spec)
            if first_update:  # theta_old = theta: the batch was sampled by the current weights
                logp_old.append(logp.detach())
            old = logp_old[k]
            loss = objective.clipped_surrogate_loss(logp, old, advantages[chunk], mask, rlp.eps_low, rlp.eps_high)
            if rlp.kl_coef > 0:
                with torch.no_grad():
                    logp_ref, _ = self.engine.thought_logprobs(self.ema.model, rollouts, chunk, self.spec)
                kl = objective.kl_penalty(logp, logp_ref, mask)
                loss = loss + rlp.kl_coef * kl
                kl_sum += kl.item() * len(chunk) if real else 0.0
            (loss * (rlp.loss_coef * len(chunk) * scale if real else 0.0)).backward()
            if real:
                loss_sum += loss.item() * len(chunk)
                n_tokens = mask.sum().item()
                clipped += objective.clip_fraction(logp, old, advantages[chunk], mask, rlp.eps_low, rlp.eps_high).item() * n_tokens
                tokens += n_tokens
        return [loss_sum, kl_sum, clipped, tokens, thoughts, len(rows)]

    def next_token_gradients(self, step: int, update: int) -> float:
        """Backward `train.next_token_coef` x the mean next-token loss of `train.next_token_documents` documents of
        `train.next_token_data`, drawn by (seed, step, update, rank); the gradients are reduced over ranks with the
        RLP micro-batches' last backward. Returns the loss. The log-probs come a chunk of tokens at a time
        (`next_token_loss`); a wrapped (DDP, FSDP) model, which takes its full logits, runs the documents in
        micro-batches of at most CHUNK_ELEMENTS logits (one document at least). Returns the loss and the documents'
        tokens."""
        cfg = self.cfg.train
        rng = random.Random(f"{cfg.seed}/next-token/{step}/{update}/{self.world.rank}")
        batch = [self.next_token_documents[rng.randrange(len(self.next_token_documents))].ids
                 for _ in range(cfg.next_token_documents)]
        predicted = sum(len(ids) - 1 for ids in batch)  # the tokens the loss is a mean over
        size = len(batch)
        if output_head(self.policy) is None:
            vocab = self.policy.config.get_text_config().vocab_size
            size = max(1, CHUNK_ELEMENTS // (max(len(ids) for ids in batch) * vocab))
        loss = 0.0
        for start in range(0, len(batch), size):
            ids, mask = right_pad(batch[start : start + size], self.tokenizer.pad_token_id)
            self.sync_gradients(False)
            part = next_token_loss(self.policy, ids.to(self.device), mask.to(self.device), tokens=predicted)
            (cfg.next_token_coef * part).backward()
            loss += part.item()
        return loss, sum(len(ids) for ids in batch)

    def sync_gradients(self, sync: bool) -> None:
        if distributed.is_wrapped(self.policy):
            self.policy.set_requires_gradient_sync(sync)

    # ---------------------------------------------------------------------------------------------- the run
    def restore(self, folder: Path) -> None:
        self.state = checkpoint.restore(folder, self.ema, self.policy, self.optimizer)

    def save_checkpoint(self, step: int) -> Path:
        return checkpoint.save(self.run_dir, step, self.policy, self.tokenizer, self.ema, self.optimizer, self.state, self.world)

    def rollout_rows(self, outcome: StepOutcome) -> list[dict]:
        G = self.spec.group_size
        rows = []
        for row, thought in enumerate(outcome.rollouts.thoughts):
            context = outcome.rollouts.contexts[row // G]
            b, g = divmod(row, G)
            if g == 0:  # the text around t, once per context: what a reader of the dump needs to judge the thought
                text = self.tokenizer.decode(context.prefix[-DUMP_CONTEXT_TOKENS:]), self.tokenizer.decode(context.scored)
            rows.append(dict(
                step=outcome.metrics["step"], doc=outcome.documents[context.doc].source, position=context.position,
                context=text[0], scored=text[1], thought_ids=thought, thought_text=self.tokenizer.decode(thought),
                s_pred=outcome.rollouts.s_pred[b, g].item(), s_ema=outcome.rollouts.s_ema[b].item(),
                reward=outcome.rewards[b, g].item(), advantage=outcome.advantages[b, g].item(),
            ))
        return rows

    def run(self) -> list[dict]:
        """Train to `train.max_steps`, appending to metrics.jsonl (and rollouts.jsonl); returns this run's metrics.
        Every rank trains; rank 0 alone writes the files and shows the progress bar."""
        cfg, main = self.cfg.train, self.world.main
        start = self.state["step"]
        history = []
        metrics_file = (self.run_dir / "metrics.jsonl").open("a") if main else None
        reporters = loggers.open_all(cfg.report_to, self.run_dir, config_lib.to_dict(self.cfg)) if main else []
        rollouts_file = (self.run_dir / "rollouts.jsonl").open("a") if main and cfg.dump_rollouts else None
        bar = tqdm(range(start, cfg.max_steps), desc="rlp", initial=start, total=cfg.max_steps, dynamic_ncols=True,
                   disable=not main)
        try:
            for step in bar:
                began = time.perf_counter()
                outcome = self.rlp_step(step)
                outcome.metrics["step_seconds"] = time.perf_counter() - began
                self.state["step"] = step + 1
                if cfg.dump_rollouts:  # decoding every thought's text costs: only when it is kept
                    rollouts = distributed.all_gather([] if outcome.idle else self.rollout_rows(outcome))
                if main:
                    metrics_file.write(json.dumps(outcome.metrics) + "\n")
                    metrics_file.flush()
                    for reporter in reporters:
                        reporter.log(outcome.metrics, step + 1)
                    if rollouts_file:
                        rollouts_file.writelines(json.dumps(row) + "\n" for rank in rollouts for row in rank)
                        rollouts_file.flush()
                history.append(outcome.metrics)
                bar.set_postfix(reward=f"{outcome.metrics['reward_mean']:+.3f}", len=f"{outcome.metrics['thought_len_mean']:.1f}")
                last = step + 1 == cfg.max_steps
                if last or (cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0):
                    self.save_checkpoint(step + 1)
        finally:
            for handle in (metrics_file, rollouts_file, *reporters):
                if handle:
                    handle.close()
        return history
