"""Decoding and the reference engine against row-by-row computations written out here."""

import pytest
import torch

from rlpt.generation import decode, greedy, temperature_sampler
from rlpt.models import load_model_and_tokenizer
from rlpt.rollout import Context, RolloutSpec
from rlpt.rollout.reference import ReferenceEngine


def setup(folder, G=3, L=6, T=0.7):
    model, tok, think = load_model_and_tokenizer(folder)
    spec = RolloutSpec(group_size=G, max_thought_tokens=L, temperature=T, think=think, pad_id=tok.pad_token_id)
    return model, tok, think, spec


def contexts_of(tok, texts_and_t):
    out = []
    for doc, (text, t) in enumerate(texts_and_t):
        ids = tok(text)["input_ids"]
        out.append(Context(doc=doc, position=t, prefix=tuple(ids[:t]), target=ids[t]))
    return out


def test_batched_left_padded_decoding_equals_one_row_at_a_time(llama_dir):
    model, tok, think, _ = setup(llama_dir)
    prompts = [tok("1+2=")["input_ids"], tok("345+678=9")["input_ids"], tok("7")["input_ids"]]
    batched = decode(model, prompts, max_new_tokens=8, stop_ids=[think.close_id], choose=greedy, pad_id=tok.pad_token_id)
    single = [decode(model, [p], max_new_tokens=8, stop_ids=[think.close_id], choose=greedy, pad_id=tok.pad_token_id)[0]
              for p in prompts]
    assert batched == single
    # and KV-cached greedy equals argmax of full forwards
    ids = list(prompts[1])
    for _ in range(len(single[1])):
        ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
    assert ids[len(prompts[1]):] == single[1]


def test_temperature_sampler_draws_from_the_tempered_softmax():
    logits = torch.tensor([[2.0, 1.0, float("-inf"), 0.0, -1.0]]).expand(40_000, -1)
    draws = temperature_sampler(0.7, 0)(logits, 0)
    freq = torch.bincount(draws, minlength=5).float() / len(draws)
    torch.testing.assert_close(freq, torch.softmax(logits[0] / 0.7, -1), atol=0.01, rtol=0)
    assert freq[2] == 0  # a banned token is never drawn


def test_a_row_draws_the_same_whatever_rows_share_its_batch():
    # what lets N ranks sample exactly like one process: a row's draw depends on its key, not on its neighbours
    torch.manual_seed(0)
    logits = torch.randn(6, 50)
    keys = [11, 12, 13, 14, 15, 16]
    together = torch.stack([temperature_sampler(1.0, 7, keys)(logits, step) for step in range(20)])
    halves = [torch.stack([temperature_sampler(1.0, 7, keys[i:i + 3])(logits[i:i + 3], step) for step in range(20)])
              for i in (0, 3)]
    assert torch.equal(together, torch.cat(halves, 1))
    other_seed = torch.stack([temperature_sampler(1.0, 8, keys)(logits, step) for step in range(20)])
    assert not torch.equal(together, other_seed)


def test_reference_engine_scores_match_row_by_row_forwards(llama_dir):
    model, tok, think, spec = setup(llama_dir, G=3, L=5)
    contexts = contexts_of(tok, [("123+456=579.", 9), ("98+7=105.", 3)])
    teacher = model
    rollouts = ReferenceEngine().rollout(model, teacher, contexts, spec, temperature_sampler(0.7, 1))
    assert len(rollouts.thoughts) == 6 and rollouts.s_pred.shape == (2, 3) and rollouts.s_ema.shape == (2,)
    for row, thought in enumerate(rollouts.thoughts):
        assert 1 <= len(thought) <= 5 and think.close_id not in thought[:-1]
        assert thought[0] != think.close_id  # at least one token before the end tag
        c = contexts[row // 3]
        closed = list(c.prefix) + [think.open_id] + thought + ([] if thought[-1] == think.close_id else [think.close_id])
        with torch.no_grad():
            expected = torch.log_softmax(model(input_ids=torch.tensor([closed])).logits[0, -1], -1)[c.target]
        assert abs(rollouts.s_pred[row // 3, row % 3].item() - expected.item()) < 1e-5
    for b, c in enumerate(contexts):
        with torch.no_grad():
            expected = torch.log_softmax(teacher(input_ids=torch.tensor([list(c.prefix)])).logits[0, -1], -1)[c.target]
        assert abs(rollouts.s_ema[b].item() - expected.item()) < 1e-5


def test_forced_end_tag_and_truncation_flag(llama_dir):
    model, tok, think, spec = setup(llama_dir, G=4, L=2)
    contexts = contexts_of(tok, [("12+34=46.", 6)])
    # ban the end tag: every thought must run to the limit and be flagged truncated
    choose = temperature_sampler(1.0, 0)

    def no_close(logits, step):
        logits = logits.clone()
        logits[:, think.close_id] = float("-inf")
        return choose(logits, step)

    rollouts = ReferenceEngine().rollout(model, model, contexts, spec, no_close)
    assert all(len(t) == 2 for t in rollouts.thoughts)
    assert rollouts.truncated(think.close_id).all()

    def close_second(logits, step):  # one token, then the end tag: a sampled </think> is part of the thought
        return torch.full((logits.size(0),), think.close_id if step == 1 else 10)

    rollouts = ReferenceEngine().rollout(model, model, contexts, spec, close_second)
    assert rollouts.thoughts == [[10, think.close_id]] * 4
    assert not rollouts.truncated(think.close_id).any()


@pytest.mark.parametrize("engine", ["reference", "packed"])
def test_update_logprobs_are_tempered_masked_and_of_the_policy_that_sampled(llama_dir, engine):
    """The sampler renormalises the first thought token without `</think>`; the update must score it so too."""
    from rlpt.rollout.packed import PackedEngine

    model, tok, think, spec = setup(llama_dir, G=2, L=4, T=0.5)
    with torch.no_grad():  # make `</think>` likely enough as a first token that leaving the ban out shows
        model.get_output_embeddings().weight[think.close_id] += 0.3 * model.get_input_embeddings().weight[think.open_id]
    contexts = contexts_of(tok, [("5+5=10.", 4), ("9+9=18.", 5)])
    rollouts = ReferenceEngine().rollout(model, model, contexts, spec, temperature_sampler(0.5, 3))
    rows = [0, 1, 2, 3]
    logp, mask = (ReferenceEngine() if engine == "reference" else PackedEngine()).thought_logprobs(model, rollouts, rows, spec)
    for row in rows:
        c, thought = contexts[row // 2], rollouts.thoughts[row]
        seq = list(c.prefix) + [think.open_id] + thought
        logits = model(input_ids=torch.tensor([seq])).logits[0] / 0.5
        start = len(c.prefix) + 1
        logits = logits[start - 1 : start - 1 + len(thought)].clone()
        unbanned = torch.log_softmax(logits[0], -1)[thought[0]]
        logits[0, think.close_id] = float("-inf")  # as the sampler drew it
        expected = torch.log_softmax(logits, -1).gather(1, torch.tensor(thought)[:, None])[:, 0]
        torch.testing.assert_close(logp[row, : len(thought)], expected, atol=1e-5, rtol=0)
        assert expected[0] - unbanned > 1e-3  # the ban matters here
        assert mask[row].tolist() == [1.0] * len(thought) + [0.0] * (mask.size(1) - len(thought))
    assert logp.requires_grad


def test_discounted_scores_hand_worked():
    from rlpt.rollout.reference import discounted_scores

    # row 0 scores tokens (1, 2) with gamma = 0.5: log 0.5 + 0.5 * log 0.25 = -0.693147 - 0.693147 = -1.386294
    # row 1 scores (3,) only (cut at its document's end): its second slot is ignored: log 0.125 = -2.079442
    probs = torch.tensor([[[0.1, 0.5, 0.2, 0.2], [0.25, 0.25, 0.25, 0.25]],
                          [[0.5, 0.25, 0.125, 0.125], [0.9, 0.05, 0.03, 0.02]]])
    scores = discounted_scores(probs.log(), [(1, 2), (2,)], discount=0.5)
    torch.testing.assert_close(scores, torch.tensor([-1.386294, -2.079442]), atol=1e-6, rtol=0)
    # without token 0 in the normaliser: row 1's term is log(0.125 / 0.5) = -1.386294
    renormalised = discounted_scores(probs.log(), [(1, 2), (2,)], discount=0.5, excluded=[0])
    assert abs(renormalised[1].item() + 1.386294) < 1e-6


@pytest.mark.parametrize("K, gamma", [(3, 1.0), (4, 0.5)])
def test_multi_token_reward_is_the_discounted_sum_of_teacher_forced_logprobs(llama_dir, K, gamma):
    from dataclasses import replace

    from rlpt.data import Document, make_contexts

    model, tok, think, spec = setup(llama_dir, G=2, L=4)
    spec = replace(spec, reward_discount=gamma)
    ids = tok("123+456=579.")["input_ids"]
    contexts = make_contexts([Document(ids, "d")], f"list:8,{len(ids) - 2}", seed=0, step=0, reward_tokens=K)
    assert [len(c.scored) for c in contexts] == [K, 2]  # the second is cut at the document's end
    rollouts = ReferenceEngine().rollout(model, model, contexts, spec, temperature_sampler(0.7, 5))

    def discounted(sequence, scored):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([sequence + list(scored)])).logits[0], -1)
        start = len(sequence) - 1
        return sum(gamma**k * logp[start + k, token].item() for k, token in enumerate(scored))

    for row, thought in enumerate(rollouts.thoughts):
        c = contexts[row // 2]
        closed = list(c.prefix) + [think.open_id] + thought + ([] if thought[-1] == think.close_id else [think.close_id])
        assert abs(rollouts.s_pred[row // 2, row % 2].item() - discounted(closed, c.scored)) < 1e-5
    for b, c in enumerate(contexts):
        assert abs(rollouts.s_ema[b].item() - discounted(list(c.prefix), c.scored)) < 1e-5
