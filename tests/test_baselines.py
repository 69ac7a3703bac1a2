"""The baselines of the comparison: RPT's prefix-match reward and the CPT budgets, on hand-worked cases."""

import math

import pytest
import torch

from rlpt.baselines.cpt import budgets_from_run, continued_pretraining, flop_matched_tokens
from rlpt.baselines.rpt import prefix_match_reward, rpt_rewards
from rlpt.data import Context, Document
from rlpt.rollout.base import Rollouts
from rlpt.tiny import char_tokenizer


@pytest.mark.parametrize("predicted, truth, reward", [
    ("5", ["5", "3", "2"], 1.0),  # the next token
    ("53", ["5", "3", "2"], 1.0),  # two tokens, ends on a boundary
    ("532", ["5", "3", "2"], 1.0),
    ("ab", ["a", "bc"], 0.0),  # a prefix of the text, but it ends inside the token "bc"
    ("abc", ["a", "bc"], 1.0),
    ("x", ["5", "3"], 0.0),  # wrong
    ("5329", ["5", "3", "2"], 0.0),  # longer than the continuation
    ("", ["5"], 0.0),  # no answer
])
def test_prefix_match_reward(predicted, truth, reward):
    assert prefix_match_reward(predicted, truth) == reward


def test_rpt_rewards_score_the_token_after_the_thought_and_zero_a_missing_answer():
    tok = char_tokenizer()
    close = tok.convert_tokens_to_ids("</think>")
    doc = Document(tok("12+30=42.")["input_ids"], "doc")
    t = doc.ids.index(tok.convert_tokens_to_ids("4"))
    context = Context(0, t, tuple(doc.ids[:t]), doc.ids[t])
    four, seven, x = (tok.convert_tokens_to_ids(c) for c in "47x")
    thoughts = [[x, close], [x, close], [x, x], [x, close]]  # the third was cut at the limit: no answer
    rollouts = Rollouts([context], thoughts, torch.zeros(1, 4), torch.zeros(1), torch.tensor([[four, seven, four, four]]))
    assert rpt_rewards(rollouts, [doc], tok, close).tolist() == [[1.0, 0.0, 0.0, 1.0]]


def test_flop_matched_budget_is_the_papers_formula():
    # n=16 rollouts of l_seq=2048 tokens, bs=512, 200 steps, T_inp=170M: 16*2048*512*200 + 170e6 ~ 3.5B tokens
    assert flop_matched_tokens(16, 2048, 512, 200, 170_000_000) == 3_525_443_200


def test_budgets_from_an_rlp_runs_counters():
    history = [dict(contexts=6, document_tokens=40, thought_tokens=50), dict(contexts=10, document_tokens=60, thought_tokens=70)]
    budget = budgets_from_run(history, group_size=4, max_thought_tokens=8)
    assert budget["token_matched"] == 100  # the document tokens RLP read
    assert budget["flop_matched"] == 4 * 8 * 8 * 2 + 100  # G * L * (16 contexts / 2 steps) * 2 steps + T_inp
    assert budget["thought_tokens"] == 120
    # RLP with the next-token term: the term's tokens are input too, in both budgets
    with_term = budgets_from_run([{**row, "next_token_tokens": 30} for row in history], group_size=4, max_thought_tokens=8)
    assert with_term["token_matched"] == 160 and with_term["flop_matched"] == 4 * 8 * 8 * 2 + 160


def test_continued_pretraining_trains_for_the_budget(llama_dir):
    from rlpt.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(llama_dir)
    docs = [tok(f"{a}+{a}={2 * a}.")["input_ids"] for a in range(100, 140)]  # 13 tokens each (12 characters and <bos>)
    before = [p.detach().clone() for p in model.parameters()]
    info = continued_pretraining(model, docs, 500, batch_size=8, lr=1e-3, pad_id=tok.pad_token_id, seed=0, desc="cpt")
    assert info["steps"] == math.ceil(500 / (13 * 8)) == len(info["losses"])
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_a_corpus_smaller_than_a_batch_still_trains():
    import random

    from rlpt.pretrain import shuffled_batches

    batches = shuffled_batches([[1, 2, 3]] * 3, 16, random.Random(0))
    assert sorted(next(batches)) == [0, 1, 2]  # not an endless search for a full batch


def test_continued_pretraining_runs_without_dropout_as_rlp_does(tmp_path):
    """GPT-2 applies dropout 0.1 in training mode; RLP's policy runs without it, so CPT must too: every dropout module
    it runs is in eval mode."""
    from conftest import save_tiny
    from rlpt.models import load_model_and_tokenizer

    model, tok, _ = load_model_and_tokenizer(save_tiny(tmp_path / "gpt2", "gpt2"))
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_pre_hook(lambda m, args: seen.append(m.training))
    docs = [tok(f"{a}+{a}={2 * a}.")["input_ids"] for a in range(100, 110)]
    continued_pretraining(model, docs, 100, batch_size=4, lr=1e-3, pad_id=tok.pad_token_id, seed=0, desc="cpt")
    assert seen and not any(seen)
