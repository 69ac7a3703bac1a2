"""RLVR's verifier reward: 1 for a right answer after a closed thought, 0 for a wrong one, 0 for a thought cut at the
limit; the engines' check of the answer (the greedy continuation after the thought is the scored text) against the
model's own greedy decoding."""

import json

import pytest
import torch
from conftest import early_ending_sampler, save_hybrid, save_tiny

from rlpt import config as config_lib
from rlpt import objective
from rlpt.data import Document, make_contexts
from rlpt.errors import UserError
from rlpt.models import load_model_and_tokenizer
from rlpt.rollout import RolloutSpec
from rlpt.rollout.packed import PackedEngine
from rlpt.rollout.recurrent import RecurrentEngine
from rlpt.rollout.reference import ReferenceEngine


def test_verifier_reward_by_hand():
    right = torch.tensor([[True, True, False, False]])
    cut = torch.tensor([[False, True, False, True]])
    assert objective.verifier_reward(right, cut).tolist() == [[1.0, 0.0, 0.0, 0.0]]


def greedy_answer_documents(model, tok, think, prefixes: list[str], thoughts: list[list[int]], tokens: int) -> list[Document]:
    """Each prefix followed by the model's own greedy answer after `<think> thought </think>` (the thoughts in turn)."""
    docs = []
    with torch.no_grad():
        for i, text in enumerate(prefixes):
            ids, answer = tok(text)["input_ids"], []
            thought = thoughts[i % len(thoughts)]
            for _ in range(tokens):
                logits = model(input_ids=torch.tensor([ids + [think.open_id] + thought + [think.close_id] + answer]))
                answer.append(int(logits.logits[0, -1].argmax()))
            docs.append(Document(ids + answer, f"d{i}"))
    return docs


def scripted_sampler(z: int, close_id: int, seed: int):
    """Rows 0 mod 4 think `z </think>`; rows 2 mod 4 think `z z z` and are cut at the limit of 3; the others sample."""
    base = early_ending_sampler(seed, close_id, boost=1.0)

    def choose(logits, step):
        drawn = base(logits, step)
        row = torch.arange(len(drawn))
        drawn = torch.where(row % 4 == 0, torch.full_like(drawn, z if step == 0 else close_id), drawn)
        return torch.where(row % 4 == 2, torch.full_like(drawn, z), drawn)

    return choose


def greedy_is_right(model, prefix, thought, answer, close_id) -> bool:
    """The model's greedy answer after `prefix <think> thought </think>` (a forced </think> after a cut thought),
    decoded token by token, is `answer`."""
    ids = list(prefix) + thought + ([] if thought and thought[-1] == close_id else [close_id])
    with torch.no_grad():
        for token in answer:
            if int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()) != token:
                return False
            ids.append(token)
    return True


@pytest.fixture(scope="module")
def hybrid(tmp_path_factory):
    return save_hybrid(tmp_path_factory.mktemp("nemotron_h"), "nemotron_h")


@pytest.fixture(scope="module")
def untied_llama(tmp_path_factory):  # tied, a random tiny model answers `</think>` after `</think>` whatever it thought
    return save_tiny(tmp_path_factory.mktemp("untied"), "llama", tie=False)


@pytest.mark.parametrize("engine", [ReferenceEngine, PackedEngine, RecurrentEngine])
def test_each_engine_checks_the_answer_as_greedy_decoding_does(engine, untied_llama, hybrid):
    """Documents answered as the model answers after `z` (so rows 0 mod 4 are right), or after `z z z` (rows 2 mod 4
    right, but cut: 0); every row's check equals greedy decoding after its thought, and the reward is 1 only for a
    right answer after a closed thought."""
    model, tok, think = load_model_and_tokenizer(hybrid if engine is RecurrentEngine else untied_llama)
    z = tok("6")["input_ids"][-1]
    prefixes = ["12+30=", "17+80=", "10+21=", "33+33=", "45+45=", "19+90="]  # 7 tokens each, with BOS
    for tokens in (1, 2):
        docs = greedy_answer_documents(model, tok, think, prefixes, [[z], [z, z, z]], tokens)
        contexts = make_contexts(docs, "list:7", seed=0, step=0, reward_tokens=tokens)  # the answer after "="
        assert [len(c.scored) for c in contexts] == [tokens] * len(prefixes)
        spec = RolloutSpec(group_size=4, max_thought_tokens=3, temperature=1.0, think=think, pad_id=tok.pad_token_id)
        rollouts = engine().rollout(model, model, contexts, spec, scripted_sampler(z, think.close_id, seed=tokens))
        expected = [greedy_is_right(model, contexts[r // 4].prefix + (think.open_id,), t, contexts[r // 4].scored,
                                    think.close_id) for r, t in enumerate(rollouts.thoughts)]
        assert rollouts.answer_right.flatten().tolist() == expected
        cut = rollouts.truncated(think.close_id)
        rewards = objective.verifier_reward(rollouts.answer_right, cut.view_as(rollouts.answer_right)).flatten()
        assert rewards.tolist() == [float(e and not c) for e, c in zip(expected, cut.tolist())]
        assert all(expected[r] and rewards[r] == 1 for r in range(0, len(expected), 8))  # right and closed: 1
        assert all(expected[r] and rewards[r] == 0 for r in range(6, len(expected), 8))  # right but cut: 0
        assert not all(expected)  # wrong answers are there too, and get 0


def test_the_trainer_takes_the_verifier_reward(llama_dir, tmp_path):
    from rlpt.trainer import RlpTrainer

    cfg = config_lib.paper_defaults(["rlp.reward=verifier", "rlp.group_size=4", "rlp.max_thought_tokens=3",
                                     "rlp.positions=list:7", "rlp.reward_tokens=2", "train.batch_documents=2",
                                     "eval.tasks="])
    model, tok, think = load_model_and_tokenizer(llama_dir)
    docs = greedy_answer_documents(model, tok, think, ["12+30=", "17+80="], [[tok("6")["input_ids"][-1]]], 2)
    trainer = RlpTrainer(cfg, model, tok, think, docs, PackedEngine(), tmp_path, torch.device("cpu"))
    outcome = trainer.rlp_step(0)
    cut = outcome.rollouts.truncated(think.close_id).view_as(outcome.rewards).to(outcome.rewards.device)
    torch.testing.assert_close(outcome.rewards, (outcome.rollouts.answer_right & ~cut).float())
    assert set(outcome.rewards.flatten().tolist()) <= {0.0, 1.0}


def test_question_answer_records_put_their_positions_at_the_answer(llama_dir, tmp_path, monkeypatch):
    """A JSONL of {"question", "answer"} records is a corpus of question-then-answer documents whose positions start
    at the answer: `rlp.positions=answer` puts one thought there, scoring the answer's tokens (cut at its end)."""
    from rlpt.config import DataConfig
    from rlpt.data import load_documents, make_contexts

    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    pairs = [("12+30=", "42."), ("What is 7 times 6? ", "42"), ("1=1, so 2+2=", "4.")]
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))
    tok = load_model_and_tokenizer(llama_dir)[1]
    docs = load_documents(DataConfig(path=str(path)), tok)
    assert [d.ids for d in docs] == [tok(q + a)["input_ids"] for q, a in pairs]
    contexts = make_contexts(list(docs), "answer", seed=0, step=0, reward_tokens=8)
    assert len(contexts) == len(pairs)  # one a record, even where the question holds an `=` before its end
    for c, (q, a) in zip(contexts, pairs):
        assert tok.decode(c.prefix, skip_special_tokens=True) == q
        assert tok.decode(c.scored) == a


def test_the_answer_rule_refuses_records_without_an_answer(tmp_path):
    from rlpt.config import DataConfig
    from rlpt.data import check_corpus

    path = tmp_path / "mixed.jsonl"
    path.write_text(json.dumps({"question": "1+1=", "answer": "2."}) + "\n" + json.dumps({"text": "plain"}) + "\n")
    with pytest.raises(UserError, match=f"{path}:2: rlp.positions=answer takes question/answer records"):
        check_corpus(DataConfig(path=str(path)), answers=True)
    check_corpus(DataConfig(path=str(path)))  # a corpus of both kinds is fine under other rules
    with pytest.raises(UserError, match="rlp.positions=answer: data.path builtin:arith is not a JSONL file"):
        check_corpus(DataConfig(path="builtin:arith"), answers=True)
    (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "1+1="}) + "\n")
    with pytest.raises(UserError, match="bad.jsonl:1: no string field 'text'.*nor string fields 'question' and 'answer'"):
        check_corpus(DataConfig(path=str(tmp_path / "bad.jsonl")))


def bpe_like(text, return_offsets_mapping=False):
    """A stand-in for a BPE tokenizer: a word takes the space before it (` 42`), as GPT-2's does."""
    import re

    spans = [m.span() for m in re.finditer(r" ?\w+| ?[^\w ]", text)]
    return {"input_ids": list(range(len(spans))), "offset_mapping": spans}


def test_a_token_across_question_and_answer_is_refused():
    """`What is 7 times 6? ` + `42`: the tokenizer reads ` 42`, so the answer's first token holds the question's
    last character and a thought would go after it; the record is refused, naming itself. Split where the tokenizer
    splits, it works."""
    from rlpt.documents import windows

    with pytest.raises(UserError, match=r"qa.jsonl:3: the token ' 42' holds the end of the question"):
        windows("What is 7 times 6? 42", "qa.jsonl:3", bpe_like, 64, None, answer_at=len("What is 7 times 6? "))
    (doc,) = windows("What is 7 times 6? 42", "qa.jsonl:3", bpe_like, 64, None, answer_at=len("What is 7 times 6?"))
    assert doc.first_position == 6  # What, is, 7, times, 6, ? | 42


def test_rlvr_on_its_own_trains_on_question_answer_records(llama_dir, tmp_path, monkeypatch):
    """`rlpt train` on a question/answer JSONL with the verifier reward: one thought before each answer, every reward
    0 or 1; an empty answer is refused, naming its line."""
    from rlpt.cli import main

    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"question": f"{a}+{b}=", "answer": f"{a + b}."}) + "\n"
                            for a, b in [(12, 30), (7, 80), (45, 5), (3, 3)]))
    run = tmp_path / "run"
    args = ["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}", "--set", f"data.path={path}",
            "--set", "rlp.positions=answer", "--set", "rlp.reward=verifier", "--set", "rlp.reward_tokens=4",
            "--set", "rlp.group_size=4", "--set", "rlp.max_thought_tokens=3", "--set", "train.batch_documents=2",
            "--set", "train.max_steps=2", "--set", "train.dump_rollouts=true", "--set", "eval.tasks="]
    assert main(args) == 0
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").open()]
    assert len(rollouts) == 2 * 2 * 4 and all(r["reward"] in (0.0, 1.0) for r in rollouts)  # steps x records x G
    assert all(r["context"].endswith("=") for r in rollouts)  # the thought goes right before the answer
    assert {r["scored"] for r in rollouts} <= {"42.", "87.", "50.", "6."}  # which it scores, whole
    path.write_text(json.dumps({"question": "1+1=", "answer": "2."}) + "\n" + json.dumps({"question": "2+2=", "answer": " "}) + "\n")
    assert main(args[:2] + [str(tmp_path / "run2")] + args[3:]) == 2
