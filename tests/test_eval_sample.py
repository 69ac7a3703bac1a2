"""`rlpt eval` and `rlpt sample` on a tiny model folder."""

import json

import pytest

from rlpt.cli import main
from rlpt.evaluate import normalise_answer


def test_answer_normalisation():
    assert normalise_answer(" 532.\nnext line") == "532"
    assert normalise_answer("1,220") == "1,220"


def test_eval_question_answer_jsonl_and_builtin(llama_dir, tmp_path, capsys):
    tasks = tmp_path / "qa.jsonl"
    tasks.write_text('{"question": "1+1=", "answer": "2"}\n{"question": "2+2=", "answer": 4}\n')
    out = tmp_path / "r.json"
    assert main(["eval", "--model", llama_dir, "--tasks", str(tasks), "--output", str(out), "--max-thought-tokens", "4"]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 2 and 0.0 <= result["accuracy"] <= 1.0 and result["think"] is True
    capsys.readouterr()
    assert main(["eval", "--model", llama_dir, "--tasks", "builtin:arith", "--max-questions", "8", "--no-think",
                 "--max-thought-tokens", "4", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 8 and result["think"] is False
    for key in ("logp_think", "logp_nothink", "next_token_acc"):
        assert key in result and result[key] == result[key]
    assert result["logp_nothink"] <= 0 and result["logp_think"] <= 0


def test_eval_documents_give_the_intrinsic_metric(llama_dir, tmp_path, capsys):
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "12+34=46."}\n{"text": "5+5=10."}\n')
    assert main(["eval", "--model", llama_dir, "--tasks", str(docs), "--max-thought-tokens", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["positions"] == 9 + 7  # every 1 <= t < len: 10 and 8 ids with <bos>
    assert result["accuracy"] == result["next_token_acc_think"] and result["n"] == result["positions"]


def test_eval_says_what_it_measured_in_plain_lines(llama_dir, capsys):
    assert main(["eval", "--model", llama_dir, "--tasks", "builtin:arith", "--max-questions", "4", "--max-positions", "6",
                 "--max-thought-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "exact-match accuracy with a greedy thought:" in out and "% of 4 questions" in out
    assert "greedy thought exactly the worked one" in out and "nats after a greedy thought" in out
    assert not out.lstrip().startswith("{")  # the JSON only with --json


def test_eval_bad_tasks_file(llama_dir, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "1+1=", "answer": "2"}\n{"q": 1}\n')
    assert main(["eval", "--model", llama_dir, "--tasks", str(bad)]) == 2
    assert "bad.jsonl:2" in capsys.readouterr().err


def test_sample_reports_thoughts_with_their_reward(llama_dir, capsys):
    assert main(["sample", "--model", llama_dir, "--prefix", "12+34=", "--next", "46.", "--num-thoughts", "3",
                 "--max-thought-tokens", "5", "--seed", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["next_token"] == "4" and len(result["thoughts"]) == 3
    rewards = [row["reward"] for row in result["thoughts"]]
    for row in result["thoughts"]:
        assert row["reward"] == pytest.approx(row["s_pred"] - row["s_ema"], abs=1e-6)
        assert row["advantage"] == pytest.approx(3 / 2 * (row["reward"] - sum(rewards) / 3), abs=1e-5)  # G/(G-1)
        assert 1 <= len(row["thought_ids"]) <= 5
    again = main(["sample", "--model", llama_dir, "--prefix", "12+34=", "--next", "46.", "--num-thoughts", "3",
                  "--max-thought-tokens", "5", "--seed", "1", "--json"])
    assert again == 0 and json.loads(capsys.readouterr().out) == result  # same seed, same thoughts


def test_sample_says_when_every_thought_of_the_group_is_the_same(llama_dir, capsys):
    # one-token thoughts at a temperature so low that all draw the likeliest token
    assert main(["sample", "--model", llama_dir, "--prefix", "12+34=", "--next", "46.", "--num-thoughts", "3",
                 "--max-thought-tokens", "1", "--temperature", "0.001"]) == 0
    out = capsys.readouterr().out
    assert "advantage" in out and "all 3 thoughts are the same" in out


def test_sample_uses_the_checkpoint_ema_as_teacher(llama_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}", "--set", "rlp.group_size=2",
                 "--set", "rlp.max_thought_tokens=3", "--set", "train.max_steps=1", "--set", "eval.tasks=",
                 "--set", "rlp.positions=random:1", "--set", "train.batch_documents=1"]) == 0
    capsys.readouterr()
    assert main(["sample", "--model", str(run), "--prefix", "1+1=", "--next", "2", "--num-thoughts", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["teacher"] == "the checkpoint's EMA teacher"


def test_eval_scores_documents_where_and_what_the_run_trained_on(llama_dir, tmp_path, capsys):
    """A run trained at the first answer token scoring 3 tokens: eval of its folder scores the builtin set's
    documents there, 3 tokens each, and says so; --positions/--reward-tokens override. The log-likelihood of 3 tokens
    is the sum of their terms (below the first token's alone)."""
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}", "--set", "rlp.group_size=2",
                 "--set", "rlp.max_thought_tokens=3", "--set", "train.max_steps=1", "--set", "eval.tasks=",
                 "--set", "rlp.positions=first:=", "--set", "rlp.reward_tokens=3", "--set", "train.batch_documents=1",
                 "--set", "data.path=builtin:arith"]) == 0
    capsys.readouterr()
    common = ["eval", "--model", str(run), "--tasks", "builtin:arith", "--max-questions", "6", "--max-thought-tokens", "3"]
    assert main([*common, "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert (trained["position_rule"], trained["reward_tokens"], trained["positions"]) == ("first:=", 3, 6)
    assert trained["scored_tokens"] == 3 and trained["gain_ci95"] > 0
    assert main([*common, "--json", "--positions", "first:=", "--reward-tokens", "1"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["scoring_from"] == "--positions; --reward-tokens" and one["logp_nothink"] > trained["logp_nothink"]
    assert main(common) == 0
    out = capsys.readouterr().out
    assert "the next 3 tokens" in out and "the first token after '='" in out and "the run's rlp.positions" in out
    assert main([*common, "--reward-tokens", "0"]) == 2


def test_sample_scores_what_the_run_scored(llama_dir, tmp_path, capsys):
    """A run of rlp.reward_tokens 3: sample of its folder scores the first 3 tokens of --next (S_pred and S_ema sum
    3 terms, so they lie below those of the first token alone); --reward-tokens overrides."""
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}", "--set", "rlp.group_size=2",
                 "--set", "rlp.max_thought_tokens=3", "--set", "train.max_steps=1", "--set", "eval.tasks=",
                 "--set", "rlp.positions=random:1", "--set", "rlp.reward_tokens=3", "--set", "train.batch_documents=1"]) == 0
    capsys.readouterr()
    common = ["sample", "--model", str(run), "--prefix", "12+34=", "--next", "46.", "--num-thoughts", "3", "--json"]
    assert main(common) == 0
    three = json.loads(capsys.readouterr().out)
    assert three["reward_tokens"] == 3 and three["scored"] == "46."
    assert main([*common, "--reward-tokens", "1"]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["reward_tokens"] == 1 and one["scored"] == "4"
    assert three["thoughts"][0]["s_ema"] < one["thoughts"][0]["s_ema"]
    assert main(common[:-1]) == 0
    assert "3 tokens (the run's rlp.reward_tokens)" in capsys.readouterr().out
    assert main([*common, "--reward-tokens", "0"]) == 2


def test_signed_never_prints_negative_zero():
    from rlpt.model_commands import signed

    assert signed(-0.00001) == "+0.000" and signed(-0.5) == "-0.500" and signed(0.25) == "+0.250"


def test_eval_answer_contexts_are_the_training_ones(tmp_path):
    """`rlp.positions=answer`: eval's contexts of a question/answer file are those the trainer makes of it (a thought
    before each answer, the same prefix and scored tokens), not the second token of each record."""
    from rlpt.config import DataConfig
    from rlpt.data import load_documents, make_contexts
    from rlpt.evaluate import answer_contexts, answer_records, load_eval_set
    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "12+34=", "answer": "46."}\n{"question": "Q: 5+5?", "answer": " 10."}\n')
    trained = make_contexts(list(load_documents(DataConfig(path=str(qa)), tokenizer)), "answer", 0, 0, reward_tokens=3)
    questions, _ = load_eval_set(str(qa))
    scored = answer_contexts(tokenizer, str(qa), answer_records(str(qa), questions), 10, reward_tokens=3)
    assert [(c.prefix, c.scored) for c in scored] == [(c.prefix, c.scored) for c in trained]
    assert [tokenizer.decode(c.scored) for c in scored] == ["46.", " 10"] and scored[0].position == 7  # <bos>12+34=


def test_eval_of_an_answer_run_scores_each_answer_or_says_why_not(llama_dir, tmp_path, capsys):
    """A run of rlp.positions=answer (question/answer records, one thought before each answer): eval of its folder
    scores a question/answer file and a built-in set at each answer's first token, where the run trained (the same
    contexts, so the same numbers, as `first:=` on the same problems), and refuses {"text": ...} documents, which have
    no answer to score, saying why and naming --positions."""
    qa = tmp_path / "qa.jsonl"
    qa.write_text('{"question": "12+34=", "answer": "46."}\n{"question": "5+5=", "answer": "10."}\n')
    docs = tmp_path / "docs.jsonl"
    docs.write_text('{"text": "12+34=46."}\n{"text": "5+5=10."}\n')
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}", "--set", "rlp.group_size=2",
                 "--set", "rlp.max_thought_tokens=3", "--set", "train.max_steps=1", "--set", "eval.tasks=",
                 "--set", "rlp.positions=answer", "--set", "rlp.reward_tokens=3", "--set", "train.batch_documents=1",
                 "--set", f"data.path={qa}"]) == 0
    capsys.readouterr()
    common = ["eval", "--model", str(run), "--max-thought-tokens", "3", "--json"]

    def scores(*extra):
        assert main([*common, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    answers = scores("--tasks", str(qa))
    assert (answers["position_rule"], answers["positions"], answers["scored_tokens"], answers["n"]) == ("answer", 2, 3, 2)
    assert answers["scoring_from"] == "the run's rlp.positions; the run's rlp.reward_tokens"
    marked = scores("--tasks", str(docs), "--positions", "first:=")
    builtin = scores("--tasks", "builtin:arith", "--max-questions", "4")
    builtin_marked = scores("--tasks", "builtin:arith", "--max-questions", "4", "--positions", "first:=")
    assert (builtin["position_rule"], builtin["positions"]) == ("answer", 4)
    for key in ("logp_nothink", "logp_think"):
        assert answers[key] == pytest.approx(marked[key], abs=1e-5)
        assert builtin[key] == pytest.approx(builtin_marked[key], abs=1e-5)
    assert main([*common, "--tasks", str(docs)]) == 2
    err = capsys.readouterr().err
    assert "rlp.positions=answer" in err and "no answer to score" in err and "--positions" in err
    assert scores("--tasks", str(docs), "--positions", "all")["positions"] == 9 + 7  # elsewhere, by request
    assert main(["eval", "--model", str(run), "--tasks", "builtin:arith", "--max-questions", "2",
                 "--max-thought-tokens", "3"]) == 0
    assert "the first token of each question's answer" in capsys.readouterr().out
