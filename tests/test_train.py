"""End to end through the CLI on tiny models: the run folder, exact resume, no leakage, bad input, robustness."""

import json
import subprocess
import sys

import pytest
import torch

from rlpt.cli import main

FAST = ["rlp.group_size=2", "rlp.max_thought_tokens=4", "rlp.positions=random:2", "train.batch_documents=2",
        "train.lr=1e-3", "eval.tasks=", "train.checkpoint_every=2"]


def train(model, output, *extra, data="builtin:arith"):
    args = ["train", "--output", str(output), "--set", f"model.name_or_path={model}", "--set", f"data.path={data}"]
    for item in FAST + list(extra):
        args += ["--set", item]
    return main(args)


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_run_folder_contents(llama_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(llama_dir, run, "train.max_steps=3", "train.dump_rollouts=true") == 0
    rows = metrics(run)
    assert [r["step"] for r in rows] == [1, 2, 3]
    for key in ["loss", "reward_mean", "reward_std", "s_pred_mean", "s_ema_mean", "thought_len_mean", "clip_frac",
                "thought_tokens", "thought_truncated_frac", "step_seconds"]:
        assert all(key in r and r[key] == r[key] for r in rows), key  # present and not NaN
    dumped = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(dumped) == 3 * 2 * 2 * 2  # steps x documents x positions x G
    first = dumped[0]
    assert set(first) >= {"step", "doc", "position", "thought_ids", "thought_text", "s_pred", "s_ema", "reward", "advantage"}
    assert abs(first["reward"] - (first["s_pred"] - first["s_ema"])) < 1e-5
    assert (run / "checkpoints" / "latest").read_text().strip() == "step-3"
    ckpt = run / "checkpoints" / "step-3"
    for name in ["config.json", "model.safetensors", "tokenizer.json", "ema.safetensors", "optimizer.pt", "rng.pt",
                 "trainer_state.json"]:
        assert (ckpt / name).is_file(), name
    assert (run / "checkpoints" / "step-2").is_dir() and (run / "config.yaml").is_file()
    summary = json.loads((run / "summary.json").read_text())
    assert {"reward_slope", "reward_slope_t", "s_ema_drift"} <= set(summary)
    out = capsys.readouterr().out
    assert "finished 3 steps" in out and "first 1 step " in out and "last 1 step " in out  # of 3, not "first 10"
    assert f"next: rlpt report {run}" in out
    assert train(llama_dir, run, "train.max_steps=3", "train.dump_rollouts=true") == 0  # again: nothing to do
    out = capsys.readouterr().out
    assert "is already at train.max_steps = 3: nothing to train" in out and "finished" not in out
    assert [r["step"] for r in metrics(run)] == [1, 2, 3]


def test_resume_continues_exactly(llama_dir, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(llama_dir, straight, "train.max_steps=4") == 0
    assert train(llama_dir, resumed, "train.max_steps=2") == 0
    assert train(llama_dir, resumed, "train.max_steps=4") == 0  # same --output: resumes from step 2
    drop = lambda rows: [{k: v for k, v in r.items() if k != "step_seconds"} for r in rows]  # noqa: E731
    assert drop(metrics(straight)) == drop(metrics(resumed))
    from safetensors.torch import load_file

    for name in ["model.safetensors", "ema.safetensors"]:
        a = load_file(straight / "checkpoints" / "step-4" / name)
        b = load_file(resumed / "checkpoints" / "step-4" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_fresh_starts_over(llama_dir, tmp_path):
    run = tmp_path / "run"
    assert train(llama_dir, run, "train.max_steps=2") == 0
    assert main(["train", "--fresh", "--output", str(run), "--set", f"model.name_or_path={llama_dir}",
                 *sum((["--set", s] for s in FAST + ["train.max_steps=1"]), [])]) == 0
    assert [r["step"] for r in metrics(run)] == [1]


def test_no_leakage_tokens_after_t_change_nothing_at_t(llama_dir, tmp_path):
    # two one-document corpora equal up to token T = 7 (<bos> + 6 characters), different after it
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("123+45=168.")
    b.write_text("123+45=999 and more")
    outs = []
    for corpus in (a, b):
        run = tmp_path / corpus.stem
        assert train(llama_dir, run, "train.max_steps=1", "train.batch_documents=1", "rlp.positions=list:7",
                     "rlp.group_size=4", "train.dump_rollouts=true", data=str(corpus)) == 0
        rows = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
        outs.append(([{k: r[k] for k in ("position", "thought_ids", "s_pred", "s_ema", "reward", "advantage")} for r in rows],
                     metrics(run)[0]["loss"]))
    assert outs[0] == outs[1]
    assert outs[0][0][0]["position"] == 7


@pytest.mark.parametrize("fixture", ["llama_dir", "qwen2_dir"])
def test_local_hf_folders_train_two_steps_with_ids_inside_the_vocabulary(fixture, request, tmp_path):
    folder = request.getfixturevalue(fixture)
    run = tmp_path / "run"
    assert train(folder, run, "train.max_steps=2", "train.dump_rollouts=true", "data.max_length=64") == 0
    vocab = json.loads((run / "checkpoints" / "step-2" / "config.json").read_text())["vocab_size"]
    ids = [i for line in (run / "rollouts.jsonl").read_text().splitlines() for i in json.loads(line)["thought_ids"]]
    from rlpt.models import load_tokenizer

    tokenizer = load_tokenizer(folder)
    assert max(ids) < vocab and max(tokenizer("347+185=532. a b")["input_ids"]) < vocab
    assert len(metrics(run)) == 2


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda d: ["data.path=" + str(d / "missing.txt")], "not a file, a folder or a glob"),
        (lambda d: (d.joinpath("e.txt").write_text(""), ["data.path=" + str(d / "e.txt")])[1], "the file is empty"),
        (lambda d: (d.joinpath("m.jsonl").write_text('{"text": "ok ok"}\n{oops\n'), ["data.path=" + str(d / "m.jsonl")])[1],
         "m.jsonl:2: malformed JSON"),
        (lambda d: ["rlp.gruop_size=4"], "unknown config key rlp.gruop_size"),
        (lambda d: ["rlp.group_size=1"], "rlp.group_size must be >= 2"),
        (lambda d: ["rlp.temperature=-1"], "rlp.temperature must be > 0"),
        (lambda d: (d.joinpath("n.txt").write_text("no marker"), ["data.path=" + str(d / "n.txt"), "rlp.positions=after:="])[1],
         "no usable position"),
    ],
)
def test_bad_input_exits_nonzero_with_a_one_line_error(llama_dir, tmp_path, capsys, setup, message):
    extra = setup(tmp_path)
    args = ["train", "--output", str(tmp_path / "run"), "--set", f"model.name_or_path={llama_dir}"]
    for item in extra:
        args += ["--set", item]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("rlpt: error:") and message in err and "Traceback" not in err


def test_bad_input_in_a_real_process_has_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "rlpt", "train", "--output", str(tmp_path / "r"), "--set", "rlp.group_size=1"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "rlp.group_size must be >= 2" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("setting, message", [
    ("data.path=missing.txt", "data.path: missing.txt is not a file, a folder or a glob"),
    ("train.next_token_data=gone.jsonl", "train.next_token_data: gone.jsonl is not a file, a folder or a glob"),
    ("eval.tasks=absent.jsonl", "eval.tasks: absent.jsonl is not a file"),
    ("model.name_or_path=no/such/folder", "model.name_or_path: 'no/such/folder' is not a local Hugging Face model"),
    ("data.path=builtin:arithm", "data.path: unknown built-in corpus 'builtin:arithm'"),
])
def test_bad_inputs_fail_before_any_model_is_built(tmp_path, monkeypatch, capsys, setting, message):
    """On a fresh machine `rlpt train --set data.path=missing.txt` spent minutes warming up builtin:tiny first."""
    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["train", "--output", str(tmp_path / "run"), "--set", setting]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # nothing built, nothing written


@pytest.mark.parametrize("file, content, settings, message", [
    ("empty.txt", "", [], "empty.txt: the file is empty"),
    ("bad.jsonl", '{"text": "1+1=2."}\n{oops\n', [], "bad.jsonl:2: malformed JSON line"),
    ("blank.jsonl", '{"text": "  "}\n', [], "blank.jsonl:1: the document is empty"),
    ("field.jsonl", '{"body": "1+1=2."}\n', [], "field.jsonl:1: no string field 'text'"),
    ("nomark.jsonl", '{"text": "no marker here"}\n', ["rlp.positions=first:="], "has no usable position after '='"),
])
def test_bad_corpus_content_fails_before_any_model_is_built(tmp_path, monkeypatch, capsys, file, content, settings,
                                                            message):
    """An empty file, a malformed JSONL line, an empty document, a missing text field or a marker no document holds:
    each was found only once the built-in model had been warmed up (minutes on a fresh machine)."""
    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / file).write_text(content)
    for key in ("data.path", "train.next_token_data"):
        if key == "train.next_token_data" and settings:
            continue  # a next-token corpus has no positions
        args = ["train", "--output", str(tmp_path / "run"), "--set", f"{key}={tmp_path / file}"]
        for setting in settings:
            args += ["--set", setting]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_a_malformed_evaluation_file_fails_before_any_model_is_built(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RLPT_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "qa.jsonl").write_text('{"question": "1+1=", "answer": "2"}\n{"q": 1}\n')
    assert main(["train", "--output", str(tmp_path / "run"), "--set", f"eval.tasks={tmp_path / 'qa.jsonl'}"]) == 2
    assert main(["eval", "--model", "builtin:tiny", "--tasks", str(tmp_path / "qa.jsonl")]) == 2
    assert capsys.readouterr().err.count("qa.jsonl:2: expected") == 2
    assert not (tmp_path / "cache").exists()


def test_pretrain_warm_starts_a_model_on_documents(tmp_path, llama_dir, capsys):
    corpus = tmp_path / "worked.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"{a}+{a}=<think>{a}+{a}={2 * a}</think>{2 * a}."}) + "\n"
                              for a in range(40)))
    out = tmp_path / "warm"
    assert main(["pretrain", "--model", llama_dir, "--data", str(corpus), "--output", str(out), "--steps", "3",
                 "--batch-size", "4", "--lr", "1e-3"]) == 0
    assert "rlpt train --set model.name_or_path=" in capsys.readouterr().out
    from rlpt.models import load_model_and_tokenizer

    before, _, _ = load_model_and_tokenizer(llama_dir)
    after, _, _ = load_model_and_tokenizer(str(out))
    assert not torch.equal(before.lm_head.weight, after.lm_head.weight)  # trained
    assert main(["pretrain", "--model", llama_dir, "--data", str(corpus), "--output", str(out)]) == 2  # kept
    assert main(["pretrain", "--model", llama_dir, "--data", "nothing.jsonl", "--output", str(tmp_path / "x")]) == 2
    assert "--data: nothing.jsonl is not a file" in capsys.readouterr().err


def test_a_run_that_fails_before_its_first_step_leaves_no_folder(llama_dir, tmp_path, monkeypatch, capsys):
    from rlpt import run as run_module
    from rlpt.errors import UserError

    def broken(*args, **kwargs):
        raise UserError("corpus.txt:3: document shorter than 2 tokens")

    monkeypatch.setattr(run_module, "load_documents", broken)
    assert main(["train", "--output", str(tmp_path / "run"), "--set", f"model.name_or_path={llama_dir}"]) == 2
    assert "shorter than 2 tokens" in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_a_corpus_smaller_than_a_step_is_said_and_one_step_is_singular(llama_dir, tmp_path, capsys):
    corpus = tmp_path / "one.txt"
    corpus.write_text("12+34=46.")
    assert main(["train", "--output", str(tmp_path / "run"), "--set", f"model.name_or_path={llama_dir}",
                 "--set", f"data.path={corpus}", "--set", "train.batch_documents=2", "--set", "train.max_steps=1",
                 "--set", "rlp.group_size=2", "--set", "rlp.max_thought_tokens=2", "--set", "rlp.positions=random:1",
                 "--set", "eval.tasks="]) == 0
    out = capsys.readouterr().out
    assert "holds 1 document window and a step takes 2" in out and "finished 1 step ->" in out


def test_model_flag_errors_name_the_flag(tmp_path, capsys):
    for command in (["eval", "--tasks", "builtin:arith"], ["sample", "--prefix", "1+1=", "--next", "2"]):
        assert main([*command, "--model", str(tmp_path / "nothing")]) == 2
        assert capsys.readouterr().err.startswith("rlpt: error: --model:")


def test_a_failed_run_with_a_step_done_is_kept(tmp_path):
    """Only a run that failed before its first step is cleared away; one with a metrics row (or a checkpoint) stays
    as it is, resumable."""
    from rlpt.run import discard_if_unstarted

    started = tmp_path / "started"
    started.mkdir()
    (started / "config.yaml").write_text("train: {}\n")
    (started / "metrics.jsonl").write_text('{"step": 1}\n')
    discard_if_unstarted(started, created=True)
    assert (started / "config.yaml").is_file() and (started / "metrics.jsonl").is_file()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text("train: {}\n")
    (fresh / "metrics.jsonl").write_text("")
    discard_if_unstarted(fresh, created=True)
    assert not fresh.exists()
