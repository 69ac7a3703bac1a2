"""`rlpt experiment` end to end on the `test` budget (seconds): every output of the issue, models that `rlpt eval`
loads, a rerun that redoes nothing, and the same comparison on a user's own model, data and held-out set."""

import json

import pytest

from rlpt import experiment
from rlpt.cli import main
from rlpt.experiment.report import DEFAULT_METHODS as METHODS
from rlpt.suites import ANSWER_TOKENS


def test_experiment_writes_table_results_plots_and_models(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["experiment", "--budget", "test", "--seeds", "2", "--ablate", "--output", str(out)]) == 0
    table = (out / "table.md").read_text()
    for row in ("| Math Avg |", "| Science Avg |", "| Overall |", "Base", "CPT (token-matched)", "CPT (FLOP-matched)", "RPT", "RLP"):
        assert row in table
    assert "±" in table  # mean +- std over the two seeds
    results = json.loads((out / "results.json").read_text())
    assert [s["seed"] for s in results["seeds"]] == [0, 1]
    scores = results["seeds"][0]["scores"]
    assert set(scores) == set(METHODS)
    for key in ("pass_at_1", "accuracy_think", "accuracy_nothink", "thought_correct"):
        for name in ("Math", "Science"):
            assert 0 <= scores["rlp"][name][key] <= 1
    assert all(scores["rlp"][name]["logp_think"] <= 0 and scores["rlp"][name]["logp_nothink"] <= 0 for name in ("Math", "Science"))
    curve = results["seeds"][0]["curves"]["rlp"]
    assert [p["step"] for p in curve] == [0, 1, 2]  # Base, then every checkpoint (test budget: 2 steps, one each)
    assert curve[0]["Math"] == scores["base"]["Math"]["accuracy_think"]
    assert curve[-1]["Math"] == scores["rlp"]["Math"]["accuracy_think"]
    budget = results["seeds"][0]["cpt_budget"]
    assert budget["flop_matched"] > budget["token_matched"] > 0
    # RLP twice from the same Base: the paper's next-token reward and one over the whole answer; CPT-FLOP matches the
    # larger of their budgets
    import yaml

    from rlpt.baselines.cpt import budgets_from_run

    rewards = {m: yaml.safe_load((out / "runs" / "seed-0" / m / "config.yaml").read_text())["rlp"]["reward_tokens"]
               for m in ("rlp", "rlp-answer")}
    assert rewards == {"rlp": 1, "rlp-answer": ANSWER_TOKENS} and "RLP (K = answer)" in table
    runs = [budgets_from_run([json.loads(line) for line in (out / "runs" / "seed-0" / m / "metrics.jsonl").open()],
                             2, 24)["flop_matched"] for m in ("rlp", "rlp-answer")]
    assert budget["flop_matched"] == max(runs)
    assert {(r["G"], r["L"]) for r in results["ablation"]} >= {(16, 24), (2, 64)}
    # each method's paired difference to CPT-FLOP, per question and seed: the mean is the difference of the means
    paired = results["paired"]["cpt-flop"]["pass_at_1"]["rlp"]["Math Avg"]
    means = [s["scores"][m]["Math"]["pass_at_1"] for s in results["seeds"] for m in ("rlp", "cpt-flop")]
    assert abs(paired["mean"] - ((means[0] - means[1]) + (means[2] - means[3])) / 2) < 1e-9
    assert paired["low"] <= paired["mean"] <= paired["high"]
    shares = paired["variance_shares"]  # how much of the width is seeds, how much questions
    assert round(shares["seeds"] + shares["questions"], 9) in (0, 1) and "the spread between seeds makes" in table
    assert set(results["paired"]["cpt-flop"]["accuracy_think"]) == set(METHODS) - {"cpt-flop"}
    # the best answer: each model's mode chosen on training-side questions, its held-out accuracy in that mode
    for seed in results["seeds"]:
        for method in METHODS:
            mode = seed["answer_modes"][method]
            assert mode["mode"] == ("think" if mode["think"] >= mode["direct"] else "direct")
            for name in ("Math", "Science"):
                chosen = seed["scores"][method][name]["accuracy_think" if mode["mode"] == "think" else "accuracy_nothink"]
                assert seed["scores"][method][name]["accuracy_best"] == chosen
    assert set(results["paired"]["cpt-flop"]["accuracy_best"]) == set(METHODS) - {"cpt-flop"}
    assert "**The best answer**" in table and "Mode chosen on training-side questions" in table
    # what training cost the language model: next-token loss on held-out prose, per seed, with paired intervals
    prose = results["prose"]
    assert (prose["windows"], prose["tokens"]) == (4, 32) and set(prose["loss"]) == set(METHODS)
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in prose["loss"].values())
    assert set(prose["paired"]["base"]) == set(METHODS) - {"base"}
    cell = prose["paired"]["cpt-flop"]["rlp"]
    per_window = [r - c for s in results["seeds"] for r, c in zip(s["prose"]["rlp"], s["prose"]["cpt-flop"])]
    assert abs(cell["mean"] - sum(per_window) / len(per_window)) < 1e-9 and cell["low"] <= cell["mean"] <= cell["high"]
    assert "next-token loss on held-out prose" in table
    assert "Paired difference to CPT (FLOP-matched) (method - CPT (FLOP-matched)) in the best answer" in table
    assert set(results["paired"]["base"]["pass_at_1"]) == set(METHODS) - {"base"}
    assert "Paired difference to CPT (FLOP-matched)" in table and "Paired difference to Base" in table
    # Base's warm-start curve: loss and held-out accuracy at every curve point
    warm = results["seeds"][1]["warm_start"]
    assert [p["step"] for p in warm] == [10, 20] and all(p["loss"] > 0 and 0 <= p["Science"] <= 1 for p in warm)
    assert all(0 <= p["Math (training side)"] <= 1 for p in warm)  # what the warm start's length is chosen on
    assert "Base's warm start" in table
    for name in ("reward.png", "accuracy.png", "ablation.png", "warm_start.png"):
        assert (out / "plots" / name).read_bytes()[:4] == b"\x89PNG"
    for seed in (0, 1):
        for method in METHODS:
            assert (out / "models" / f"seed-{seed}" / method / "config.json").is_file()
    capsys.readouterr()
    assert main(["eval", "--model", str(out / "models" / "seed-1" / "rlp"), "--tasks", "builtin:science",
                 "--max-questions", "2", "--max-positions", "4", "--max-thought-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2

    # a rerun finds every stage done: nothing is trained again
    stamp = (out / "models" / "seed-0" / "cpt-flop" / "model.safetensors").stat().st_mtime_ns
    metrics = (out / "runs" / "seed-0" / "rlp" / "metrics.jsonl").read_text()
    experiment.run(["math", "science"], 2, "test", out)
    assert (out / "models" / "seed-0" / "cpt-flop" / "model.safetensors").stat().st_mtime_ns == stamp
    assert (out / "runs" / "seed-0" / "rlp" / "metrics.jsonl").read_text() == metrics


def test_experiment_on_your_own_model_data_and_questions(llama_dir, tmp_path):
    data = tmp_path / "corpus.txt"
    data.write_text("the cat sat on the mat.\n\nthe dog sat on the log.\n")
    tasks = tmp_path / "qa.jsonl"
    tasks.write_text('{"question": "the cat sat on the ", "answer": "mat"}\n{"question": "2+2=", "answer": "4"}\n')
    out = tmp_path / "own"
    results = experiment.run([], 1, "test", out, model=llama_dir, data=str(data), tasks=str(tasks))
    assert results["eval_sets"] == ["qa"]
    assert "| qa Avg |" in (out / "table.md").read_text()
    assert results["seeds"][0]["scores"]["rlp"]["qa"]["thought_correct"] is None  # no worked thoughts to check
    assert not (out / "models" / "base").exists()  # the given model is Base


def test_experiment_runs_the_methods_asked_for(llama_dir, tmp_path):
    """--methods base,cpt-flop,rlp-answer on one's own model and a suite (the recipe of a real model): one RL run,
    CPT matched to it, three columns, the paired differences to CPT (FLOP) and to Base, the information gain's too."""
    out = tmp_path / "some"
    results = experiment.run(["wordsum"], 1, "test", out, model=llama_dir, methods=["rlp-answer", "cpt-flop"])
    assert results["methods"] == ["base", "cpt-flop", "rlp-answer"]
    assert set(results["seeds"][0]["scores"]) == {"base", "cpt-flop", "rlp-answer"}
    assert [p.name for p in (out / "runs" / "seed-0").iterdir()] == ["rlp-answer"]
    paired = results["paired"]["cpt-flop"]
    assert set(paired["pass_at_1"]) == {"base", "rlp-answer"} and "Wordsum Avg" in paired["information_gain"]["rlp-answer"]
    table = (out / "table.md").read_text()
    assert "RPT" not in table and "RLP (K = 1, the paper)" not in table and "information gain of thinking" in table
    import yaml

    assert yaml.safe_load((out / "runs" / "seed-0" / "rlp-answer" / "config.yaml").read_text())["rlp"]["positions"] == \
        "first:The answer is "  # the suite's marker


def test_rlp_with_the_next_token_term_counts_its_tokens_in_cpts_budget(llama_dir, tmp_path):
    """--methods rlp-ntp: RLP (K = answer) with next-token training on the same plain corpus beside it; the tokens the
    term trained on count in CPT's budgets, so CPT (FLOP) is matched to all of the run's compute."""
    import yaml

    from rlpt.baselines.cpt import budgets_from_run

    out = tmp_path / "ntp"
    results = experiment.run(["wordsum"], 1, "test", out, model=llama_dir, methods=["rlp-ntp", "cpt-flop"])
    assert results["methods"] == ["base", "cpt-flop", "rlp-ntp"]
    run = out / "runs" / "seed-0" / "rlp-ntp"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["train"]["next_token_data"] == cfg["data"]["path"] and cfg["rlp"]["reward_tokens"] == ANSWER_TOKENS
    history = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    term = sum(row["next_token_tokens"] for row in history)
    assert term > 0
    budget = results["seeds"][0]["cpt_budget"]
    assert budget == budgets_from_run(history, 2, 24)
    assert budget["token_matched"] == sum(row["document_tokens"] for row in history) + term
    assert "RLP (K = answer) + next-token term" in (out / "table.md").read_text()


def test_a_suite_of_longer_thoughts_and_cpt_at_four_times_its_budget(llama_dir, tmp_path, monkeypatch):
    """A suite whose worked thoughts need more tokens than the budget's gets them in every RL run (wordsum3 asks for
    24; made 30 here, past the test budget's 24); CPT (4x FLOP) trains on 4 times CPT (FLOP)'s tokens, from the
    same Base; every model's training-side mode records what the right thought, given, scores."""
    import dataclasses

    import yaml

    from rlpt import suites

    monkeypatch.setitem(suites.SUITES, "wordsum3", dataclasses.replace(suites.SUITES["wordsum3"], thought_tokens=30))
    out = tmp_path / "three"
    results = experiment.run(["wordsum3"], 1, "test", out, model=llama_dir,
                             methods=["rlp-answer", "cpt-flop", "cpt-flop4"])
    cfg = yaml.safe_load((out / "runs" / "seed-0" / "rlp-answer" / "config.yaml").read_text())
    assert cfg["rlp"]["max_thought_tokens"] == 30
    seed = results["seeds"][0]
    matched, flop4 = seed["cpt_budget"]["flop_matched"], seed["cpt"]["cpt-flop4"]
    per_step = flop4["tokens"] / flop4["steps"]  # the same documents, so the same tokens a step as CPT (FLOP)'s
    assert per_step == pytest.approx(seed["cpt"]["cpt-flop"]["tokens"] / seed["cpt"]["cpt-flop"]["steps"], rel=0.01)
    assert (flop4["steps"] - 1) * per_step < 4 * matched <= flop4["steps"] * per_step + 1  # the fewest steps to 4x
    assert all(0 <= seed["answer_modes"][m]["given"] <= 1 for m in results["methods"])
    assert "CPT (4x FLOP)" in (out / "table.md").read_text()


def test_the_right_thought_is_given_before_the_answer(monkeypatch, tmp_path):
    """`given` asks for the answer (no thought of the model's) after the question and its worked thought."""
    from rlpt.experiment import scoring
    from rlpt.experiment.budgets import BUDGETS
    from rlpt.suites import get_suite

    asked = []

    def fake_accuracy(model, tokenizer, think, tasks, *, use_thought, max_thought_tokens):
        asked.append((use_thought, [t["question"] for t in tasks]))
        return dict(accuracy=0.5 if use_thought else 0.25)

    monkeypatch.setattr(scoring, "load_model_and_tokenizer", lambda folder: (None, None, None))
    monkeypatch.setattr(scoring, "exact_match_accuracy", fake_accuracy)
    suite = get_suite("wordsum3")
    mode = scoring.answer_mode(tmp_path, [suite], BUDGETS["test"])
    problems = scoring.suite_training_set(suite, BUDGETS["test"].selection_questions).problems
    assert asked[-1] == (False, [f"{p.question}<think>{p.thought}</think>" for p in problems])
    assert mode == dict(mode="think", think=0.5, direct=0.25, given=0.25)


def test_methods_are_checked():
    import pytest

    from rlpt.errors import UserError

    assert experiment.chosen_methods(["rlp"], False) == ["base", "rlp"]
    with pytest.raises(UserError, match="unknown rlp-k5"):
        experiment.chosen_methods(["rlp-k5"], False)
    with pytest.raises(UserError, match="CPT is matched to an RLP run"):
        experiment.chosen_methods(["cpt-flop", "rpt"], False)
    with pytest.raises(UserError, match="different markers"):
        experiment.run(["math", "wordsum"], 1, "test", __import__("pathlib").Path("unused"))


def test_post_training_after_every_method(tmp_path, capsys):
    """--post: the same SFT then RLVR after each method, on problems apart from every pretraining corpus; a
    models/METHOD-post/ beside each models/METHOD/ that `rlpt eval` loads, and the +Post rows."""
    import yaml

    from rlpt.experiment.budgets import BUDGETS
    from rlpt.suites import get_suite

    out = tmp_path / "post"
    assert main(["experiment", "--budget", "test", "--post", "--methods", "rlp,cpt-flop", "--output", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["post_methods"] == ["base-post", "cpt-flop-post", "rlp-post"]
    assert set(results["seeds"][0]["scores"]) == {"base", "cpt-flop", "rlp", "base-post", "cpt-flop-post", "rlp-post"}
    assert set(results["summary"]) >= {"rlp-post", "base-post"}
    assert set(results["paired_post"]) == {"cpt-flop-post", "base-post"}
    assert set(results["paired_post"]["base-post"]["pass_at_1"]) == {"cpt-flop-post", "rlp-post"}
    assert set(results["lead_change"]["cpt-flop"]) == {"base", "rlp"}
    table = (out / "table.md").read_text()
    for text in ("## After post-training (+Post)", "RLP (K = 1, the paper) +Post", "Paired difference to Base +Post",
                 "Paired difference to CPT (FLOP-matched) +Post", "| before | +Post | change |",
                 "| method | change of the lead | |"):
        assert text in table
    assert (out / "plots" / "post.png").read_bytes()[:4] == b"\x89PNG"
    for method in ("base", "cpt-flop", "rlp"):
        assert (out / "models" / f"{method}-post" / "config.json").is_file()
        run = yaml.safe_load((out / "runs" / "seed-0" / f"{method}-post" / "config.yaml").read_text())
        assert run["rlp"]["reward"] == "verifier" and run["rlp"]["positions"] == "answer"
        assert run["model"]["name_or_path"].endswith(f"{method}-post/sft")  # RLVR continues the SFT model
    # the post-training problems: none in the RL/CPT corpus the experiment wrote nor in seed 0's warm start, nor held out
    budget = BUDGETS["test"]
    records = [json.loads(line) for line in (out / "runs" / "seed-0" / "post-data" / "rlvr.jsonl").open()]
    assert len(records) == 2 * budget.post_rl_questions
    corpus = {question_of(json.loads(line)["text"]) for line in (out / "data" / "train.jsonl").open()}
    n = budget.post_rl_questions
    for suite, questions in ((get_suite("math"), records[:n]), (get_suite("science"), records[n:])):
        warm = {question_of(d) for d in suite.warm_start_documents(budget.warm_documents, 0, budget.think_fraction)}
        assert not (warm | corpus) & {r["question"] for r in questions}
        assert not any(suite.heldout(r["question"]) for r in questions)
    capsys.readouterr()
    assert main(["eval", "--model", str(out / "models" / "rlp-post"), "--tasks", "builtin:science", "--max-questions",
                 "2", "--max-positions", "4", "--max-thought-tokens", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 2


def question_of(document: str) -> str:
    """A suite document's question: up to its first `=` (math and science)."""
    return document[: document.index("=") + 1]


def test_post_needs_a_suite_and_a_budget_with_post_settings(llama_dir, tmp_path):
    import pytest

    from rlpt.errors import UserError

    with pytest.raises(UserError, match="--post draws its SFT examples"):
        experiment.run([], 1, "test", tmp_path / "x", model=llama_dir, data="builtin:arith", tasks="builtin:arith",
                       post_train=True)
    with pytest.raises(UserError, match="budget 'smollm2' has no post-training settings"):
        experiment.run(["wordsum"], 1, "smollm2", tmp_path / "y", post_train=True)


def test_post_training_problems_are_apart_from_the_pretraining_corpora(tmp_path):
    """At the small budget the science warm start and corpus hold 20,810 of its 21,939 training-side questions: the
    post-training problems are drawn from the other 1,129 (a draw that ignored them would land ~95% inside)."""
    import dataclasses

    from rlpt.experiment import post
    from rlpt.experiment.budgets import BUDGETS
    from rlpt.suites import get_suite

    budget = dataclasses.replace(BUDGETS["small"], post_sft_examples=50, post_rl_questions=50)
    science = get_suite("science")
    sft, path = post.post_training_data([science], budget, 0, tmp_path)
    questions = [question_of(d) for d in sft] + [json.loads(line)["question"] for line in path.open()]
    pretraining = {question_of(d) for d in science.warm_start_documents(budget.warm_documents, 0, budget.think_fraction)
                   + science.training_documents(budget.corpus_documents)}  # as the experiment writes them
    assert len(pretraining) == 20_810
    assert len(set(questions)) == 100 and not set(questions) & pretraining
    assert all(d.endswith(".") and "</think>" in d for d in sft)  # worked, with the right thought


def test_post_training_leaves_out_commuted_twins_and_the_users_held_out_questions(tmp_path):
    """`47+38=` and `38+47=` are one problem: no post-training question is a twin of a pretraining one (a draw that
    compared the text alone let twins in), and a held-out question given with --tasks, or its twin, is never drawn."""
    import dataclasses

    from rlpt.experiment import post
    from rlpt.experiment.budgets import BUDGETS
    from rlpt.suites import get_suite, math_key

    assert math_key("47+38=") == math_key("38+47=") == "38+47=" and math_key("47-38=") == "47-38="
    assert math_key("zone of ab=") == "zone of ab="
    budget = dataclasses.replace(BUDGETS["small"], post_sft_examples=100, post_rl_questions=100)
    math = get_suite("math")
    sft, path = post.post_training_data([math], budget, 0, tmp_path / "a")
    questions = [question_of(d) for d in sft] + [json.loads(line)["question"] for line in path.open()]
    pretraining = post.pretraining_keys(math, budget, 0)
    assert not {math_key(q) for q in questions} & pretraining
    by_text = math.problems(200, post.POST_SEED, heldout=False, exclude={
        p.question for p in math.warm_start_problems(budget.warm_documents, 0) + math.training_problems(budget.corpus_documents)})
    assert {math_key(p.question) for p in by_text} & pretraining  # what the keys prevent
    drawn = json.loads(path.open().readline())["question"]
    a, b = drawn.rstrip("=").split("+") if "+" in drawn else (None, None)
    user = f"{b}+{a}=" if a else drawn  # its twin, as a user's held-out question
    sft, path = post.post_training_data([math], budget, 0, tmp_path / "b", held_out=[user])
    again = [question_of(d) for d in sft] + [json.loads(line)["question"] for line in path.open()]
    assert drawn not in again and user not in again


def test_the_best_answer_takes_the_mode_chosen():
    from rlpt.experiment.scoring import with_best_answer

    scores = {"Math": {"accuracy_think": 0.9, "accuracy_nothink": 0.4,
                       "per_question": {"accuracy_think": [1.0, 0.0], "accuracy_nothink": [0.0, 1.0]}}}
    direct = with_best_answer(scores, "direct")["Math"]
    assert direct["accuracy_best"] == 0.4 and direct["per_question"]["accuracy_best"] == [0.0, 1.0]
    think = with_best_answer(scores, "think")["Math"]
    assert think["accuracy_best"] == 0.9 and think["per_question"]["accuracy_best"] == [1.0, 0.0]


def test_prose_windows_are_spread_over_the_held_out_plays():
    from rlpt.errors import UserError
    from rlpt.experiment.prose import HELDOUT_PLAYS, heldout_texts, prose_windows
    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    texts = [("abcdefghij" * 3, "one"), ("klmnopqrst" * 3, "two")]  # 60 characters: 6 whole windows of 10
    windows = prose_windows(tokenizer, texts, 3, 11)  # BOS and 10 characters each, every other window
    assert [tokenizer.decode(w[1:]) for w in windows] == ["abcdefghij", "abcdefghij", "klmnopqrst"]
    assert all(w[0] == tokenizer.bos_token_id for w in windows)
    with pytest.raises(UserError, match="6 windows of 11 tokens, 7 asked"):
        prose_windows(tokenizer, texts, 7, 11)
    plays = heldout_texts()
    assert len(plays) == HELDOUT_PLAYS and all(source.startswith("builtin:shakespeare/") for _, source in plays)



def test_the_mixed_corpus_dilutes_the_stories_in_three_parts_prose():
    from rlpt.errors import UserError
    from rlpt.experiment.mixed import PROSE_PARTS, mixed_documents, position_kind, prose_passages

    stories = ["Ann has 3 apples. She gets 4 more. The answer is 7.", "Bo has 5 pens. He gets 1 more. The answer is 6."]
    play = "\n\n".join(f"SPEAKER{i:02d}.\nline {i:02d} of the play, long enough to read" for i in range(60))
    texts = [(play, "play"), ("ANN.\nThe answer is no, and that is all I will say of it.\n\nBO.\nWhy?", "other")]
    documents = mixed_documents(stories, texts, "The answer is ")
    prose = [d for d in documents if d not in stories]
    assert sorted(d for d in documents if d in stories) == sorted(stories)  # every story, once
    story_chars = sum(map(len, stories))
    assert PROSE_PARTS * story_chars <= sum(map(len, prose)) < PROSE_PARTS * story_chars + 100  # 3:1, to a passage
    assert all(len(p) >= 49 and "The answer is " not in p for p in prose)  # a story's length, never a story's marker
    assert mixed_documents(stories, texts, "The answer is ") == documents  # seeded
    # at 48 characters a passage is a speech of the play (lines of 10 and 40); ANN's holds the marker, BO's is short
    speeches = [f"SPEAKER{i:02d}.\nline {i:02d} of the play, long enough to read" for i in range(60)]
    every = prose_passages(texts, 48, sum(map(len, speeches)), "The answer is ", 0)
    assert sorted(every) == speeches
    with pytest.raises(UserError, match="1000000 asked for the mixed corpus"):
        prose_passages(texts, 10, 10**6, "The answer is ", 0)
    assert position_kind("THE KING. Speak", False, "The answer is ") == "prose"
    assert position_kind("Ann has 3 apples. She", True, "The answer is ") == "story"
    assert position_kind("Ann has 3 apples. She gets 4 more. The answer is ", True, "The answer is ") == "answer"


def test_signal_is_sorted_by_where_the_thought_was_placed(tmp_path):
    """signal_by_kind on a hand-written rollouts.jsonl: a prose group without signal, a story group and an answer
    group with it; the counts, shares, means and the prose example are those computed by hand."""
    from rlpt import config as config_lib
    from rlpt.data import load_documents
    from rlpt.experiment.mixed import signal_by_kind
    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    folder = tmp_path / "tok"
    tokenizer.save_pretrained(folder)
    corpus = tmp_path / "mixed.jsonl"
    corpus.write_text(json.dumps({"text": "KING. Speak, man."}) + "\n" + json.dumps({"text": "Ann has 3. = 7."}) + "\n")
    cfg = config_lib.paper_defaults([f"model.name_or_path={folder}", f"data.path={corpus}"])
    documents = load_documents(cfg.data, tokenizer)
    prose, story = (d.source for d in documents)
    ids = documents[1].ids
    answer_at = next(t for t in range(len(ids)) if tokenizer.decode(ids[:t]).endswith("= "))  # x_t = "7"

    def rows(step, doc, position, rewards, advantages):
        return [dict(step=step, doc=doc, position=position, context="KING. Spe", scored="a", thought_text=f"t{g}",
                     reward=r, advantage=a) for g, (r, a) in enumerate(zip(rewards, advantages))]

    dump = rows(1, prose, 3, [0.5, 0.5], [0.0, 0.0]) + rows(2, story, 2, [0.0, 1.0], [-1.0, 1.0]) \
        + rows(2, story, answer_at, [1.0, 3.0], [-2.0, 2.0]) + rows(2, prose, 4, [0.2, 0.6], [-0.4, 0.4])
    (tmp_path / "rollouts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dump))
    out = signal_by_kind(tmp_path, cfg, "= ")
    kinds = out["kinds"]
    assert kinds["prose"] == dict(contexts=2, with_signal=1, advantage_abs=pytest.approx(0.2), reward=pytest.approx(0.45))
    assert kinds["story"] == dict(contexts=1, with_signal=1, advantage_abs=1.0, reward=0.5)
    assert kinds["answer"] == dict(contexts=1, with_signal=1, advantage_abs=2.0, reward=2.0)
    assert out["last_step"] == 2
    assert out["examples"] == [dict(context="KING. Spe", scored="a", thought="t1", advantage=0.4, reward=0.6)]


def test_rlp_on_mixed_text_against_cpt_on_the_same_corpus(llama_dir, tmp_path):
    """--methods rlp-mixed,cpt-mixed: RLP at random positions of the stories diluted in prose, CPT FLOP-matched to it
    on the same corpus, the paired difference between them, and where the thoughts were placed."""
    import yaml

    from rlpt.baselines.cpt import budgets_from_run

    out = tmp_path / "mixed"
    results = experiment.run(["wordsum"], 1, "test", out, model=llama_dir, methods=["rlp-mixed", "cpt-mixed"])
    assert results["methods"] == ["base", "cpt-mixed", "rlp-mixed"]
    run = out / "runs" / "seed-0" / "rlp-mixed"
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["rlp"]["positions"] == "random:1" and cfg["rlp"]["reward_tokens"] == 1
    assert cfg["data"]["path"] == str(out / "data" / "mixed.jsonl")
    mixed = [json.loads(line)["text"] for line in (out / "data" / "mixed.jsonl").open()]
    assert sum("The answer is " in d for d in mixed) == 100 and len(mixed) > 200  # the test budget's 100 stories
    history = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    seed = results["seeds"][0]
    assert seed["mixed"]["flop_matched"] == budgets_from_run(history, 2, 24)["flop_matched"]
    assert set(seed["cpt"]) == {"cpt-mixed"} and seed["cpt_budget"] is None  # no RLP run on the stories alone
    assert sum(k["contexts"] for k in seed["mixed"]["kinds"].values()) == sum(row["contexts"] for row in history)
    assert set(results["paired"]["cpt-mixed"]["pass_at_1"]) == {"rlp-mixed"}
    table = (out / "table.md").read_text()
    assert "## RLP at random positions of mixed text" in table and "| prose |" in table
    assert "| against Base |" in table and "| against CPT (FLOP-matched) |" not in table  # CPT (FLOP) was not run
    from rlpt.errors import UserError

    with pytest.raises(UserError, match="cpt-mixed is matched to the budget of rlp-mixed"):
        experiment.chosen_methods(["cpt-mixed"], False)
    with pytest.raises(UserError, match="dilutes a suite's stories"):
        experiment.run([], 1, "test", tmp_path / "x", model=llama_dir, data=str(out / "data" / "mixed.jsonl"),
                       tasks=None, methods=["rlp-mixed"])
