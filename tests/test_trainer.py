"""The loop's invariants, driven through RlpTrainer directly: micro-batching changes nothing, a non-finite step never
reaches the weights, and an update makes the higher-reward thoughts likelier."""

import copy
import random

import pytest

import torch

from rlpt import config as config_lib
from rlpt import objective
from rlpt.data import Document
from rlpt.errors import UserError
from rlpt.models import load_model_and_tokenizer
from rlpt.rollout.reference import ReferenceEngine
from rlpt.trainer import SIGNAL_TOLERANCE, RlpTrainer, least_squares_trend


def make_trainer(folder, tmp_path, *overrides, texts=("123+456=579.", "98+76=174.", "5+5=10.")):
    cfg = config_lib.load(None, ["rlp.group_size=4", "rlp.max_thought_tokens=5", "rlp.positions=random:2",
                                 "train.batch_documents=3", "train.lr=1e-3", "eval.tasks=", *overrides])
    model, tok, think = load_model_and_tokenizer(folder)
    docs = [Document(tok(t)["input_ids"], f"doc{i}") for i, t in enumerate(texts)]
    return RlpTrainer(cfg, model, tok, think, docs, ReferenceEngine(), tmp_path, torch.device("cpu"))


def params(model):
    return [p.detach().clone() for p in model.parameters()]


def test_micro_batches_give_the_same_step_as_one_batch(llama_dir, tmp_path):
    whole = make_trainer(llama_dir, tmp_path, "train.micro_batch_thoughts=256")
    split = make_trainer(llama_dir, tmp_path, "train.micro_batch_thoughts=3")  # 24 thoughts in 8 chunks
    a, b = whole.rlp_step(0), split.rlp_step(0)
    assert abs(a.metrics["loss"] - b.metrics["loss"]) < 1e-6
    for p, q in zip(whole.policy.parameters(), split.policy.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    for p, q in zip(whole.ema.model.parameters(), split.ema.model.parameters()):  # one EMA update per step
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("updates", [1, 2])
@pytest.mark.parametrize("equal_groups", ["every other", "all"])
def test_thoughts_of_advantage_zero_leave_the_update_and_the_step_is_the_same(llama_dir, tmp_path, monkeypatch,
                                                                            updates, equal_groups):
    """Groups of equal rewards (advantages exactly 0) skip the update's forward and backward; the gradient, its norm,
    the loss, the clipped share and the weights after mu = 1 or 2 steps are those of running every thought. Fails
    when the loss divides by the thoughts run instead of all of them, or when a thought with signal is skipped. With
    weight decay, lr 1e-2 and eps 0.01, so that a zero-gradient step and a second update are not no-ops."""
    from rlpt import trainer as trainer_module

    runs = []
    for skip in (True, False):
        trainer = make_trainer(llama_dir, tmp_path, f"rlp.updates_per_batch={updates}", "train.micro_batch_thoughts=5",
                               "train.lr=1e-2", "train.weight_decay=0.1", "rlp.eps_low=0.01", "rlp.eps_high=0.01")
        real = trainer.rewards

        def rewards(rollouts, docs, real=real):
            r = real(rollouts, docs).clone()
            r[:: 2 if equal_groups == "every other" else 1] = 0.1  # 0.1: its float mean is not 0.1
            return r

        monkeypatch.setattr(trainer, "rewards", rewards)
        if not skip:
            monkeypatch.setattr(trainer_module, "rows_to_update", lambda advantages, kl: list(range(advantages.numel())))
        ran, thought_logprobs = [], trainer.engine.thought_logprobs
        monkeypatch.setattr(trainer.engine, "thought_logprobs", lambda model, rollouts, rows, spec:
                            (ran.extend(rows), thought_logprobs(model, rollouts, rows, spec))[1])
        outcome = trainer.rlp_step(0)
        runs.append((outcome, ran, params(trainer.policy)))
        monkeypatch.undo()
    (skipped, ran, weights), (every, ran_every, weights_every) = runs
    thoughts = len(every.rollouts.thoughts)
    signal = [r for r in range(thoughts) if every.advantages.flatten()[r] != 0]
    assert len(ran_every) == updates * thoughts and skipped.metrics["updated_thoughts"] == len(signal)
    # with no signal at all, one thought runs weighted 0: the optimizer steps on zero gradients, as it did
    assert sorted(set(ran)) == (signal or [0]) and every.metrics["updated_thoughts"] == thoughts
    assert 0 < len(signal) < thoughts if equal_groups == "every other" else signal == []
    assert skipped.metrics["updates"] == updates
    for key in ("loss", "grad_norm", "clip_frac", "thought_tokens", "groups_with_signal", "advantage_abs_mean"):
        assert abs(skipped.metrics[key] - every.metrics[key]) <= 1e-6 * max(1.0, abs(every.metrics[key])), key
    assert equal_groups == "all" or skipped.metrics["grad_norm"] > 0
    assert updates == 1 or skipped.metrics["clip_frac"] > 0 or equal_groups == "all"
    for p, q in zip(weights, weights_every):  # Adam turns the float noise of another summing order into up to ~5e-5
        torch.testing.assert_close(p, q, atol=5e-5, rtol=0)  # on a weight of gradient near 0 (the steps move ~1e-2)


def rewards_with_signal_at(trainer, monkeypatch, has_signal):
    """The trainer's rewards, made equal (0.5) in every group whose context fails `has_signal`, 0..3 in the others."""
    real = trainer.rewards

    def rewards(rollouts, docs):
        r = real(rollouts, docs).clone()
        for b, c in enumerate(rollouts.contexts):
            r[b] = torch.arange(4.0) if has_signal(c) else 0.5
        return r

    monkeypatch.setattr(trainer, "rewards", rewards)


def test_dynamic_sampling_fills_the_batch_with_groups_with_signal(llama_dir, tmp_path, monkeypatch):
    """Rewards made to carry signal only at positions from 6 on: the batch takes the groups with signal of round 0,
    then of the rounds after (fresh positions, none already kept), each round's in an order hashed from (seed, step,
    round, slot, position), until as many as round 0 drew (6 here), or the rounds run out; every context drawn is
    counted, and the signal metric is over all of them. Each kept group is the one its round drew (same thoughts)."""
    from rlpt.data import make_contexts
    from rlpt.generation import hash_key

    for rounds in (0, 1, 5):
        trainer = make_trainer(llama_dir, tmp_path, f"rlp.dynamic_sampling={rounds}")
        rewards_with_signal_at(trainer, monkeypatch, lambda c: c.position >= 6)
        expected, used, drawn, signal = [], 0, 0, 0
        for d in range(1 + rounds):
            contexts = [c for c in make_contexts(trainer.step_documents(0)[0], "random:2", 0, 0, draw=d)
                        if (c.doc, c.position) not in expected]
            used, drawn = used + 1, drawn + len(contexts)
            with_signal = [(c.doc, c.position) for c in contexts if c.position >= 6]
            signal += len(with_signal)
            if rounds:
                expected += sorted(with_signal, key=lambda key: hash_key(0, 0, d, *key))[: 6 - len(expected)]
            else:
                expected = [(c.doc, c.position) for c in contexts]
            if len(expected) >= 6:
                break
        outcome = trainer.rlp_step(0)
        assert sorted((c.doc, c.position) for c in outcome.rollouts.contexts) == sorted(expected)
        assert outcome.metrics["drawn_contexts"] == drawn and outcome.metrics["draw_rounds"] == used
        assert outcome.metrics["contexts"] == len(expected)
        assert outcome.metrics["groups_with_signal"] == pytest.approx(signal / drawn)
        if rounds:  # round 1 had more than was wanted: some dropped
            assert used == 2 and signal > len(expected) == 6
    # a kept group's thoughts are those its round sampled: round 0 kept alone gives round 0's thoughts
    plain = make_trainer(llama_dir, tmp_path).rlp_step(0).rollouts
    trainer = make_trainer(llama_dir, tmp_path, "rlp.dynamic_sampling=1")
    rewards_with_signal_at(trainer, monkeypatch, lambda c: c.position >= 6)
    kept = trainer.rlp_step(0).rollouts
    for b, c in enumerate(plain.contexts):
        if c.position >= 6:
            k = kept.contexts.index(c)
            assert kept.thoughts[4 * k : 4 * k + 4] == plain.thoughts[4 * b : 4 * b + 4]


def test_dynamic_sampling_at_fixed_positions_draws_fresh_thoughts_where_none_was_kept(llama_dir, tmp_path, monkeypatch):
    """With a rule that draws the same positions every round (`list:`), a later round rolls out only the positions not
    kept (fresh thoughts there), so no group is in the batch twice."""
    trainer = make_trainer(llama_dir, tmp_path, "rlp.positions=list:1,2,3", "rlp.dynamic_sampling=2")
    rolled = []
    rewards_with_signal_at(trainer, monkeypatch, lambda c: (rolled.append((c.doc, c.position)), c.position != 2)[1])
    outcome = trainer.rlp_step(0)
    keys = [(c.doc, c.position) for c in outcome.rollouts.contexts]
    assert sorted(keys) == [(d, t) for d in range(3) for t in (1, 3)]  # each once
    assert rolled[9:] == [(d, 2) for d in range(3)] * 2  # rounds 1 and 2: only the positions without signal
    assert outcome.metrics["drawn_contexts"] == 15 and outcome.metrics["draw_rounds"] == 3


def test_dynamic_sampling_with_no_signal_anywhere_trains_on_the_first_round(llama_dir, tmp_path, monkeypatch):
    """No group with signal in any round: the step is the one without dynamic sampling (its first round's batch,
    the optimizer's step on zero gradients), with finite metrics."""
    outcomes, weights = [], []
    for rounds in (0, 2):
        trainer = make_trainer(llama_dir, tmp_path, f"rlp.dynamic_sampling={rounds}", "train.weight_decay=0.1")
        rewards_with_signal_at(trainer, monkeypatch, lambda c: False)
        outcomes.append(trainer.rlp_step(0))
        weights.append(params(trainer.policy))
    plain, dynamic = outcomes
    assert dynamic.metrics["draw_rounds"] == 3 and dynamic.metrics["drawn_contexts"] == 18
    assert dynamic.rollouts.contexts == plain.rollouts.contexts and dynamic.metrics["updates"] == 1
    assert dynamic.metrics["groups_with_signal"] == 0 and dynamic.metrics["reward_mean"] == 0.5
    for p, q in zip(*weights):
        assert torch.equal(p, q)


def test_dynamic_sampling_keeps_a_group_of_non_finite_reward_so_the_step_is_skipped(llama_dir, tmp_path, monkeypatch):
    trainer = make_trainer(llama_dir, tmp_path, "rlp.dynamic_sampling=2")
    real = trainer.rewards

    def rewards(rollouts, docs):
        r = torch.arange(4.0).expand_as(real(rollouts, docs)).clone()  # signal everywhere, and one NaN group that
        r[0] = float("nan")  # a later round's groups with signal would replace if it were dropped
        return r

    monkeypatch.setattr(trainer, "rewards", rewards)
    outcome = trainer.rlp_step(0)
    assert outcome.metrics["skipped"] and outcome.metrics["nonfinite_skipped"] == 1


def test_ema_is_set_lazily_then_updated_once_per_step(llama_dir, tmp_path):
    trainer = make_trainer(llama_dir, tmp_path, "rlp.ema_decay=0.5", "train.micro_batch_thoughts=4")
    theta0 = params(trainer.policy)
    assert not trainer.ema.initialized
    trainer.rlp_step(0)
    theta1 = params(trainer.policy)
    for phi, t0, t1 in zip(trainer.ema.model.parameters(), theta0, theta1):
        torch.testing.assert_close(phi, 0.5 * t0 + 0.5 * t1, atol=1e-6, rtol=1e-6)  # phi_1 = tau theta_0 + (1-tau) theta_1


def test_non_finite_loss_skips_the_step(llama_dir, tmp_path, monkeypatch):
    trainer = make_trainer(llama_dir, tmp_path)
    trainer.rlp_step(0)  # a normal step sets the EMA and the optimizer state
    before, ema_before = params(trainer.policy), params(trainer.ema.model)
    real = objective.clipped_surrogate_loss
    monkeypatch.setattr(objective, "clipped_surrogate_loss", lambda *a, **k: real(*a, **k) * float("nan"))
    outcome = trainer.rlp_step(1)
    assert outcome.metrics["skipped"] and outcome.metrics["nonfinite_skipped"] == 1
    for p, q in zip(trainer.policy.parameters(), before):
        assert torch.equal(p, q)
    for p, q in zip(trainer.ema.model.parameters(), ema_before):
        assert torch.equal(p, q)
    assert all(p.grad is None for p in trainer.policy.parameters())
    monkeypatch.setattr(objective, "clipped_surrogate_loss", real)
    assert not trainer.rlp_step(2).metrics["skipped"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_step_makes_higher_reward_thoughts_likelier(llama_dir, tmp_path, seed):
    # one document, one position: after the update, log p(thought) must have risen more for the thoughts with the
    # larger advantage. (The mean reward of a random tiny model is no test: the update moves the answer's
    # probability too, by as much as the thoughts' effect, in either direction, depending on the seed.)
    trainer = make_trainer(llama_dir, tmp_path, "rlp.group_size=8", "rlp.positions=list:4", "train.batch_documents=1",
                           "rlp.max_thought_tokens=4", "train.lr=1e-3", "rlp.temperature=1.0", f"train.seed={seed}",
                           texts=("12+34=46.",))
    before = copy.deepcopy(trainer.policy)
    outcome = trainer.rlp_step(0)
    rows = list(range(8))

    def thought_logp(model):
        with torch.no_grad():
            logp, mask = trainer.engine.thought_logprobs(model, outcome.rollouts, rows, trainer.spec)
        return (logp * mask).sum(1)

    change = thought_logp(trainer.policy) - thought_logp(before)
    advantages = outcome.advantages.flatten()
    correlation = torch.corrcoef(torch.stack([change, advantages]))[0, 1].item()
    assert correlation > 0.8, (correlation, change, advantages)


def test_least_squares_trend_hand_worked():
    # y = 2x + 1 exactly: slope 2, residual 0 -> t undefined, reported 0
    assert least_squares_trend([1.0, 3.0, 5.0, 7.0]) == (2.0, 0.0)
    # y = [0, 1, 0, 1]: x_mean 1.5, Sxx 5, Sxy = (-1.5)(-0.5)+(-0.5)(0.5)+(0.5)(-0.5)+(1.5)(0.5) = 1 -> slope 0.2
    # fitted [0.2, 0.4, 0.6, 0.8], residuals [-0.2, 0.6, -0.6, 0.2]: SSR 0.8, se = sqrt(0.8 / 2 / 5) = 0.282843,
    # t = 0.2 / 0.282843 = 0.707107
    slope, t = least_squares_trend([0.0, 1.0, 0.0, 1.0])
    assert abs(slope - 0.2) < 1e-9 and abs(t - 0.707107) < 1e-6


def test_summary_gives_no_trend_from_two_steps(tmp_path):
    from rlpt.run import format_summary, summarize

    def history(n):
        return [dict(reward_mean=0.1 * k, loss=0.0, thought_len_mean=3.0, thought_truncated_frac=0.0, s_ema_mean=-2.0,
                     nonfinite_skipped=0, step_seconds=1.0, thought_tokens=12) for k in range(n)]

    assert "no trend from fewer than 3 steps" in format_summary(summarize(history(2), None, None), tmp_path)
    assert "trend +0.1000/step" in format_summary(summarize(history(4), None, None), tmp_path)


def test_signal_metrics_hand_worked():
    from rlpt.trainer import distinct_thoughts, group_has_signal

    rewards = torch.tensor([[0.5, 0.5, 0.5], [0.5, 0.5, 0.7], [-1.0, -1.0 + 1e-7, -1.0], [2.0, 2.003, 2.0]])
    # 1e-7 is float noise; 0.003 nats is a thought that barely changes the scored tokens: neither is signal
    assert group_has_signal(rewards).tolist() == [False, True, False, False]
    thoughts = [[1, 2], [1, 2], [1, 2], [1, 2], [3], [1, 2, 0]]
    assert distinct_thoughts(thoughts, 3) == [1, 3]


def test_signal_metrics_are_logged(llama_dir, tmp_path):
    outcome = make_trainer(llama_dir, tmp_path).rlp_step(0)
    metrics, G = outcome.metrics, 4
    groups = [outcome.rollouts.thoughts[i : i + G] for i in range(0, len(outcome.rollouts.thoughts), G)]
    signal = [float(r.max() - r.min() > SIGNAL_TOLERANCE) for r in outcome.rewards]
    assert metrics["groups_with_signal"] == sum(signal) / len(signal)
    assert metrics["distinct_thoughts_mean"] == sum(len({tuple(t) for t in g}) for g in groups) / len(groups)
    assert metrics["updates"] == 1 and metrics["clip_frac"] == 0  # mu = 1: the ratio is 1, nothing is clipped


def test_rank_advantages_option_reaches_the_step(llama_dir, tmp_path):
    outcome = make_trainer(llama_dir, tmp_path, "rlp.rank_advantages=true").rlp_step(0)
    torch.testing.assert_close(outcome.advantages, objective.rank_advantages(outcome.rewards, SIGNAL_TOLERANCE))
    assert not torch.allclose(outcome.advantages, objective.group_advantages(outcome.rewards))
    with pytest.raises(UserError, match="choose one"):
        make_trainer(llama_dir, tmp_path, "rlp.rank_advantages=true", "rlp.normalize_advantages=true")


def test_several_updates_per_batch_hold_the_ratio_to_theta_old(llama_dir, tmp_path, monkeypatch):
    # mu = 2: two optimizer steps and two EMA updates on one batch; the second update's logp_old is the first's
    # (theta_old, the sampler), not a recomputation, so its ratio differs from 1 and at lr 1e-2 with eps 0.01 clips
    trainer = make_trainer(llama_dir, tmp_path, "rlp.updates_per_batch=2", "train.lr=1e-2", "rlp.eps_low=0.01",
                           "rlp.eps_high=0.01", "rlp.ema_decay=0.5", "train.micro_batch_thoughts=8")
    calls, real = [], objective.clipped_surrogate_loss

    def spy(logp, logp_old, *args, **kwargs):
        calls.append((logp.detach().clone(), logp_old.clone()))
        return real(logp, logp_old, *args, **kwargs)

    monkeypatch.setattr(objective, "clipped_surrogate_loss", spy)
    thetas = [params(trainer.policy)]
    steps = []
    step = trainer.optimizer.step
    monkeypatch.setattr(trainer.optimizer, "step", lambda: (step(), thetas.append(params(trainer.policy)), steps.append(1)))
    metrics = trainer.rlp_step(0).metrics
    assert metrics["updates"] == 2 and len(steps) == 2 and metrics["clip_frac"] > 0
    chunks = len(calls) // 2  # micro-batches per update
    for k in range(chunks):
        first, second = calls[k], calls[chunks + k]
        assert torch.equal(first[0], first[1])  # the first update: theta = theta_old
        assert torch.equal(second[1], first[1])  # the second: the same theta_old
        assert not torch.allclose(second[0], second[1])  # ...while theta has moved
    # the EMA moved after each optimizer step: phi = 0.5 (0.5 theta_0 + 0.5 theta_1) + 0.5 theta_2
    for phi, t0, t1, t2 in zip(trainer.ema.model.parameters(), *thetas):
        torch.testing.assert_close(phi, 0.25 * t0 + 0.25 * t1 + 0.5 * t2, atol=1e-6, rtol=1e-6)


def test_summary_warns_when_most_groups_carry_no_signal(tmp_path):
    from rlpt.report import NO_SIGNAL
    from rlpt.run import format_summary, summarize

    def history(signal):
        return [dict(reward_mean=0.1, loss=0.0, thought_len_mean=3.0, thought_truncated_frac=0.0, s_ema_mean=-2.0,
                     nonfinite_skipped=0, step_seconds=1.0, thought_tokens=12, groups_with_signal=signal,
                     distinct_thoughts_mean=1.5) for _ in range(4)]

    quiet = format_summary(summarize(history(0.04), None, None), tmp_path)
    assert "4% of groups had rewards that differ" in quiet and NO_SIGNAL in quiet
    assert NO_SIGNAL not in format_summary(summarize(history(0.6), None, None), tmp_path)


def test_paired_interval_hand_worked():
    from rlpt.run import paired_interval

    # changes [+1, 0, 0, -1, +1, 0, 0, 0]: mean 0.125, sample variance (0.875^2 * 2 + 0.125^2 * 5 + 1.125^2) / 7
    # = (1.53125 + 0.078125 + 1.265625) / 7 = 2.875 / 7; half-width 1.96 * sqrt(2.875 / 56) = 1.96 * 0.226582 = 0.444100
    before = [0, 1, 1, 1, 0, 0, 1, 0]
    after = [1, 1, 1, 0, 1, 0, 1, 0]
    assert abs(paired_interval(before, after) - 0.444100) < 1e-6


def test_next_token_term_adds_its_weighted_gradient_to_rlps(llama_dir, tmp_path):
    # gradient(RLP + 0.5 x next-token) = gradient(RLP alone) + gradient(next-token alone, rlp.loss_coef = 0), the
    # next-token batch drawn the same way each time; and the term alone is 0.5 x the gradient of next_token_loss
    from rlpt.generation import right_pad
    from rlpt.pretrain import next_token_loss

    _, tok, _ = load_model_and_tokenizer(llama_dir)
    extra = [Document(tok(t)["input_ids"], f"worked{i}") for i, t in enumerate(("1+2=<think>1+2=3</think>3.", "4+4=8."))]

    def first_step_gradients(*overrides, next_token=True):
        trainer = make_trainer(llama_dir, tmp_path, "train.grad_clip=0", "train.next_token_coef=0.5",
                               "train.next_token_documents=3", *overrides)
        trainer.next_token_documents = extra if next_token else []
        grads = []
        trainer.optimizer.step = lambda: grads.append([p.grad.clone() for p in trainer.policy.parameters()])
        trainer.rlp_step(0)
        return grads[0]

    mixed, rlp_alone = first_step_gradients(), first_step_gradients(next_token=False)
    term_alone = first_step_gradients("rlp.loss_coef=0")
    for m, r, t in zip(mixed, rlp_alone, term_alone):
        torch.testing.assert_close(m, r + t, atol=1e-6, rtol=1e-5)
    model, _, _ = load_model_and_tokenizer(llama_dir)
    rng = random.Random("0/next-token/0/0/0")
    ids, mask = right_pad([extra[rng.randrange(2)].ids for _ in range(3)], tok.pad_token_id)
    (0.5 * next_token_loss(model, ids, mask)).backward()
    for t, p in zip(term_alone, model.parameters()):
        torch.testing.assert_close(t, p.grad, atol=1e-6, rtol=1e-5)
    assert any(r.abs().max() > 0 for r in rlp_alone) and any(t.abs().max() > 0 for t in term_alone)


def test_next_token_loss_is_the_cross_entropy_of_the_full_logits(llama_dir):
    """The chunked next-token loss (from the hidden states) equals cross-entropy over the model's full logits, pads
    excluded, with its gradients; a micro-batch divided by the whole batch's token count is its share of the mean."""
    from rlpt.generation import right_pad
    from rlpt.pretrain import next_token_loss

    model, tok, _ = load_model_and_tokenizer(llama_dir)
    docs = [tok(t)["input_ids"] for t in ("1+2=<think>1+2=3</think>3.", "4+4=8.", "12+30=42.")]
    ids, mask = right_pad(docs, tok.pad_token_id)
    chunked = next_token_loss(model, ids, mask)
    chunked.backward()
    chunked_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    full = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-100)
    full.backward()
    torch.testing.assert_close(chunked, full, atol=1e-6, rtol=1e-6)
    for c, f in zip(chunked_grads, model.parameters()):
        torch.testing.assert_close(c, f.grad, atol=1e-6, rtol=1e-5)
    total = sum(len(d) - 1 for d in docs)
    parts = [next_token_loss(model, *right_pad([d], tok.pad_token_id), tokens=total) for d in docs]
    torch.testing.assert_close(sum(parts), full, atol=1e-6, rtol=1e-6)


def test_next_token_term_of_a_model_without_a_split_runs_in_micro_batches(llama_dir, tmp_path, monkeypatch):
    """A wrapped model (no body/head split: DDP, FSDP) takes its full logits, one document a micro-batch when the
    logit budget is small: the same gradient as one batch."""
    from rlpt import trainer as trainer_module

    def term_gradients(patch):
        trainer = make_trainer(llama_dir, tmp_path, "train.next_token_documents=3")
        _, tok, _ = load_model_and_tokenizer(llama_dir)
        trainer.next_token_documents = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(("1+2=3.", "40+4=44."))]
        if patch:
            monkeypatch.setattr(trainer_module, "output_head", lambda model: None)
            monkeypatch.setattr(trainer_module, "CHUNK_ELEMENTS", 1)
        calls = []
        original = trainer_module.next_token_loss
        monkeypatch.setattr(trainer_module, "next_token_loss", lambda *a, **k: calls.append(1) or original(*a, **k))
        loss, tokens = trainer.next_token_gradients(0, 0)
        lengths = [len(d.ids) for d in trainer.next_token_documents]
        assert 3 * min(lengths) <= tokens <= 3 * max(lengths) and min(lengths) < max(lengths)  # 3 drawn documents
        monkeypatch.undo()
        return loss, [p.grad.clone() for p in trainer.policy.parameters()], len(calls)

    (whole, whole_grads, one), (split, split_grads, three) = term_gradients(False), term_gradients(True)
    assert (one, three) == (1, 3)
    assert abs(whole - split) < 1e-6
    for w, s in zip(whole_grads, split_grads):
        torch.testing.assert_close(w, s, atol=1e-6, rtol=1e-5)


def test_a_rollout_in_chunks_equals_one_pass_packed(llama_dir, tmp_path):
    rollout_in_chunks_equals_one_pass(llama_dir, tmp_path, "packed")


def test_a_rollout_in_chunks_equals_one_pass_recurrent(hybrid_dir, tmp_path):
    rollout_in_chunks_equals_one_pass(hybrid_dir, tmp_path, "recurrent")


def rollout_in_chunks_equals_one_pass(folder, tmp_path, engine):
    """The step's rows decoded a group at a time (train.rollout_rows = G) against all at once: the same thoughts,
    rewards, log-probs and weights after the step, on the packed engine (Llama) and the recurrent one (each hybrid)."""
    from rlpt.rollout import make_engine

    texts = ("123+456=579. and more", "98+76=174.", "5+5=10. the end of it")
    outcomes = []
    for rows in (4, 1000):  # 4: one group a chunk
        trainer = make_trainer(folder, tmp_path, f"train.rollout_rows={rows}", "rlp.positions=random:3", texts=texts)
        trainer.engine = make_engine(engine, trainer.policy)
        assert trainer.engine.name == engine
        trainer.optimizer = torch.optim.SGD(trainer.policy.parameters(), lr=1e-2)  # moves with the gradients
        outcome = trainer.rlp_step(0)
        outcomes.append((outcome, params(trainer.policy)))
    (chunked, chunked_params), (whole, whole_params) = outcomes
    assert len(whole.rollouts.contexts) == 9 and chunked.metrics["rollout_rows"] == 4
    assert chunked.rollouts.thoughts == whole.rollouts.thoughts
    assert chunked.rollouts.contexts == whole.rollouts.contexts
    torch.testing.assert_close(chunked.rewards, whole.rewards, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.rollouts.s_ema, whole.rollouts.s_ema, atol=1e-5, rtol=0)
    assert abs(chunked.metrics["loss"] - whole.metrics["loss"]) < 1e-6
    for p, q in zip(chunked_params, whole_params):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_chunks_are_sized_to_the_memory_budget(llama_dir, tmp_path):
    """train.memory_gb sizes both chunks by rlpt.memory's count: a large budget takes the whole step at once; one
    just short of two groups' rollout gives one group a chunk, and the largest micro-batch whose update fits (counted
    one by one here); given sizes are kept."""
    from rlpt.memory import ALLOCATOR_SHARE, fixed_parts, rollout_parts, update_parts

    trainer = make_trainer(llama_dir, tmp_path, "train.memory_gb=64")
    # 3 documents x 2 x G = 4 rows; the micro-batch 2 x 24: all of them over several documents (GRID_COPY)
    assert (trainer.chunks.rollout_rows, trainer.chunks.micro_batch_thoughts) == (24, 48)
    shape, settings = trainer_shape(trainer)
    fixed = sum(fixed_parts(shape).values())
    budget = fixed + sum(rollout_parts(shape, settings, 8).values()) - 1  # of the setting, what the chunks may fill
    tight = make_trainer(llama_dir, tmp_path, f"train.memory_gb={budget / (1 - ALLOCATOR_SHARE) / 2**30}")
    fitting = [m for m in range(1, 49) if fixed + sum(update_parts(shape, settings, m).values()) <= budget]
    assert tight.chunks.rollout_rows == 4 and tight.chunks.micro_batch_thoughts == max(fitting, default=1)
    given = make_trainer(llama_dir, tmp_path, "train.memory_gb=64", "train.rollout_rows=8", "train.micro_batch_thoughts=3")
    assert (given.chunks.rollout_rows, given.chunks.micro_batch_thoughts) == (8, 3)


def trainer_shape(trainer):
    from rlpt.memory import StepSettings
    from rlpt.plan import config_shape

    shape = config_shape(trainer.policy.config.to_dict())
    shape.counted_params = sum(p.numel() for p in trainer.policy.parameters())
    return shape, StepSettings(group_size=4, thought_tokens=5, doc_tokens=512, documents=3, positions=2)


def test_the_probe_baseline_is_each_contexts_own_forward(llama_dir):
    """The teacher's S_ema on the drift probe, from one forward a document, equals each context's prefix run alone."""
    from rlpt.data import make_contexts
    from rlpt.rollout.reference import last_token_logprobs
    from rlpt.run import probe_baseline

    from rlpt.rollout import RolloutSpec

    model, tok, think = load_model_and_tokenizer(llama_dir)
    docs = [Document(tok(t)["input_ids"], f"doc{i}") for i, t in enumerate(("123+456=579.", "98+76=174. and so on"))]
    probe = make_contexts(docs, "random:3", seed=0, step=-1)
    spec = RolloutSpec(group_size=2, max_thought_tokens=1, temperature=1.0, think=think, pad_id=tok.pad_token_id)
    assert len({c.doc for c in probe}) == 2 and len(probe) == 6
    alone = last_token_logprobs(model, [list(c.prefix) for c in probe], tok.pad_token_id)
    expected = [alone[i, c.target].item() for i, c in enumerate(probe)]
    assert probe_baseline(model, probe, spec) == pytest.approx(expected, abs=1e-5)


def test_micro_batches_never_cost_more_than_their_size_of_one_document():
    """The update's attention scores a grid of a micro-batch's documents x the rows of its largest, in a copy over
    several documents (a slot there costs GRID_COPY): micro-batches cut by hand."""
    from rlpt.memory import GRID_COPY, micro_batches

    assert GRID_COPY == 2  # the cases below are computed with it
    document = {r: r // 10 for r in range(40)}.get  # documents of 10 rows
    assert micro_batches(list(range(30)), 10, document) == [list(range(10)), list(range(10, 20)), list(range(20, 30))]
    # 8 rows of document 0, then document 1: 2 x 8 x 2 slots would pass 10, so the cut is at the document
    assert micro_batches(list(range(2, 14)), 10, document) == [list(range(2, 10)), list(range(10, 14))]
    assert micro_batches([8, 9, 10, 11, 12], 8, document) == [[8, 9, 10, 11], [12]]  # 2 x 2 x 2 = 8; 2 x 3 x 2 > 8
    assert micro_batches([1, 15, 25, 35], 6, document) == [[1, 15, 25], [35]]  # a row of each of 4 documents: 3 x 1 x 2
    assert micro_batches([], 4, document) == []
    for rows in ([0, 1, 10, 11], [0, 10, 11, 12, 13, 20], list(range(0, 40, 3))):
        for size in (1, 2, 3, 5, 8):
            batches = micro_batches(rows, size, document)
            assert [r for b in batches for r in b] == rows
            for b in batches:
                per = [sum(document(r) == d for r in b) for d in {document(r) for r in b}]
                assert len(per) * max(per) * (GRID_COPY if len(per) > 1 else 1) <= size or len(b) == 1
