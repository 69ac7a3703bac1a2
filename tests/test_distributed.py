"""Scale-out on CPU with gloo: 2 processes with batch b train exactly like 1 process with batch 2b, under `ddp` and
`fsdp`; a checkpoint of either world size resumes in the other; a killed rank stops the others with a clear error."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from rlpt import checkpoint
from rlpt.cli import main
from rlpt.models import load_model_and_tokenizer

# documents of different lengths: with thoughts at t = 12, 16, ... only, the two ranks get different numbers of thoughts
# and of micro-batches, and in the last step one rank's two documents are both too short to have any (checked below)
TEXTS = ["12+34=46.", "98+7=105. and some more text here", "5+5=10.", "777+1=778. the end", "1+1=2.",
         "300+300=600. six hundred", "4+4=8.", "61+9=70. seventy"]
METRICS = ("loss", "reward_mean", "reward_std", "s_pred_mean", "s_ema_mean", "advantage_abs_mean", "grad_norm",
           "clip_frac", "thought_tokens", "contexts", "document_tokens")


def settings(data, model, parallel, per_rank_batch, max_steps=4):
    return ["--set", f"model.name_or_path={model}", "--set", f"data.path={data}", "--set", "data.split_paragraphs=true",
            "--set", "rlp.group_size=3", "--set", "rlp.max_thought_tokens=4", "--set", "rlp.positions=list:12,16,20,24,28",
            "--set", "train.lr=1e-3", "--set", "train.micro_batch_thoughts=7", "--set", f"train.max_steps={max_steps}",
            "--set", "train.checkpoint_every=2", "--set", f"train.batch_documents={per_rank_batch}",
            "--set", f"train.parallel={parallel}", "--set", "eval.tasks=", "--set", "train.device=cpu"]


def train_one(run, *args):
    assert main(["train", "--output", str(run), *args]) == 0


def train_two(run, *args):
    out = subprocess.run([sys.executable, "-m", "rlpt", "train", "--nproc", "2", "--output", str(run), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b):
        for key in METRICS:
            assert abs(x[key] - y[key]) <= 1e-5 * max(1.0, abs(x[key])), (x["step"], key, x[key], y[key])


def final_weights(run):
    """The policy and EMA weights of the run's latest checkpoint, whichever layout it was written in."""
    folder = checkpoint.latest(run)
    policy, _, _ = load_model_and_tokenizer(str(folder))
    ema, _, _ = load_model_and_tokenizer(str(folder))
    if (folder / checkpoint.SHARDED).is_dir():
        checkpoint.load_sharded_weights(ema, folder, "ema")
    else:
        from safetensors.torch import load_model

        load_model(ema, str(folder / "ema.safetensors"))
    return [p.detach() for p in policy.parameters()], [p.detach() for p in ema.parameters()]


def assert_same_weights(run_a, run_b, start):
    (policy_a, ema_a), (policy_b, ema_b) = final_weights(run_a), final_weights(run_b)
    moved = max((p - q).abs().max().item() for p, q in zip(policy_a, start))
    assert moved > 1e-4  # training changed the weights, so equal weights mean something
    # 5e-5: the two runs sum gradients in another order, and Adam divides by sqrt(v), which turns that float noise
    # into up to ~1.5e-5 on a weight whose gradient is near 0 (measured on an AMD EPYC; far below the ~1e-3 the
    # weights move, and the metrics above agree to 1e-5)
    for a, b in zip(policy_a + ema_a, policy_b + ema_b):
        torch.testing.assert_close(a, b, atol=5e-5, rtol=0)


def resume_from_step_2(source, target):
    shutil.copytree(source, target)
    (target / "checkpoints" / "latest").write_text("step-2\n")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(TEXTS) + "\n")
    return str(path)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_train_like_one_with_twice_the_batch_and_resume_across(tmp_path, llama_dir, corpus, parallel):
    one, two = tmp_path / "one", tmp_path / "two"
    train_one(one, *settings(corpus, llama_dir, parallel, per_rank_batch=4))
    train_two(two, *settings(corpus, llama_dir, parallel, per_rank_batch=2))
    assert_same_metrics(metrics(one), metrics(two))
    assert metrics(one)[-1]["contexts"] == 2  # the last step: all of its contexts come from one rank's documents
    start = [p.detach() for p in load_model_and_tokenizer(llama_dir)[0].parameters()]
    assert_same_weights(one, two, start)
    if parallel == "fsdp":  # sharded: one shard file per rank; `rlpt export` makes a plain HF folder of either model
        assert len(list((checkpoint.latest(two) / checkpoint.SHARDED).glob("*.distcp"))) == 2
        policy, ema = final_weights(two)
        for flag, weights in (([], policy), (["--ema"], ema)):
            out = tmp_path / f"export{''.join(flag)}"
            assert main(["export", str(two), "--out", str(out), *flag]) == 0
            exported = AutoModelForCausalLM.from_pretrained(out)
            for a, b in zip(exported.parameters(), weights):
                torch.testing.assert_close(a.detach(), b, atol=0, rtol=0)

    # the 2-process checkpoint of step 2 resumes in 1 process, and the reverse, with the same steps 3-4 and weights
    one_from_two, two_from_one = tmp_path / "one_from_two", tmp_path / "two_from_one"
    resume_from_step_2(two, one_from_two)
    train_one(one_from_two, *settings(corpus, llama_dir, parallel, per_rank_batch=4))
    resume_from_step_2(one, two_from_one)
    train_two(two_from_one, *settings(corpus, llama_dir, parallel, per_rank_batch=2))
    for resumed in (one_from_two, two_from_one):
        assert_same_metrics(metrics(one), metrics(resumed))
        assert_same_weights(one, resumed, start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_killed_rank_stops_the_other_with_a_clear_error(tmp_path, llama_dir, corpus):
    # launched without torchrun (whose agent would stop the others itself): rank 0 must notice on its own
    run, port = tmp_path / "run", free_port()
    args = [sys.executable, "-m", "rlpt", "train", "--output", str(run),
            *settings(corpus, llama_dir, "ddp", per_rank_batch=2, max_steps=100_000),
            "--set", "train.checkpoint_every=0", "--set", "train.dist_timeout_s=30"]
    ranks = [subprocess.Popen(args, env=dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").is_file() or len(metrics(run)) < 2:
            assert time.time() < deadline and ranks[0].poll() is None, "training did not start"
            time.sleep(0.2)
        ranks[1].send_signal(signal.SIGKILL)
        began = time.time()
        output, _ = ranks[0].communicate(timeout=60)
    finally:
        for rank in ranks:
            rank.kill()
    assert time.time() - began < 30  # well within train.dist_timeout_s
    assert ranks[0].returncode == 2
    assert "rlpt: error: rank 0 of 2: a collective operation failed" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_bfloat16_compute_keeps_float32_master_weights_and_teacher(tmp_path, llama_dir, corpus, parallel):
    run = tmp_path / "run"
    train_one(run, *settings(corpus, llama_dir, parallel, per_rank_batch=2, max_steps=2), "--set", "model.dtype=bfloat16")
    rows = metrics(run)
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"], r["reward_mean"]])).all() for r in rows)
    policy, ema = final_weights(run)
    assert all(p.dtype == torch.float32 for p in policy + ema)
    start = [p.detach() for p in load_model_and_tokenizer(llama_dir)[0].parameters()]
    assert max((p - q).abs().max().item() for p, q in zip(policy, start)) > 1e-4  # it trained


@pytest.mark.parametrize("first, then", [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_a_checkpoint_resumes_under_the_other_setting(tmp_path, llama_dir, corpus, first, then):
    straight, switched = tmp_path / "straight", tmp_path / "switched"
    train_one(straight, *settings(corpus, llama_dir, then, per_rank_batch=4))
    train_one(switched, *settings(corpus, llama_dir, first, per_rank_batch=4, max_steps=2))
    train_one(switched, *settings(corpus, llama_dir, then, per_rank_batch=4))  # resumes from step 2
    assert_same_metrics(metrics(straight), metrics(switched))
    start = [p.detach() for p in load_model_and_tokenizer(llama_dir)[0].parameters()]
    assert_same_weights(straight, switched, start)


def test_recurrent_rows_without_a_documents_pass_average_gradients_across_ranks(tmp_path, corpus):
    """The recurrent engine (a tiny Qwen3Next) with thoughts at t = 5 only: no position is MIN_SEGMENT (16) tokens
    into its document, so the update runs no pass over the documents and each row from the empty prefix. Its
    forwards must then run the DDP-wrapped model (not its body), whose forward hook is what averages gradients
    across ranks: 2 processes with batch b train like 1 process with batch 2b (gradients left per rank would make
    the ranks' weights, and so the metrics after step 1, differ)."""
    from conftest import save_hybrid

    model = save_hybrid(tmp_path / "qwen3_next", "qwen3_next")
    one, two = tmp_path / "one", tmp_path / "two"

    def recurrent_settings(per_rank_batch):
        return [*settings(corpus, model, "ddp", per_rank_batch, max_steps=3), "--set", "rlp.positions=list:5",
                "--set", "rlp.group_size=2", "--set", "rlp.max_thought_tokens=3", "--set", "train.checkpoint_every=3"]

    train_one(one, *recurrent_settings(4))
    train_two(two, *recurrent_settings(2))
    for run in (one, two):
        assert json.loads((run / "summary.json").read_text())["engine"] == "recurrent"
    assert_same_metrics(metrics(one), metrics(two))
    assert [r["contexts"] for r in metrics(one)] == [4, 4, 4]  # every document holds t = 5: one thought place each
    start = [p.detach() for p in load_model_and_tokenizer(model)[0].parameters()]
    assert_same_weights(one, two, start)


def test_two_processes_skip_the_thoughts_of_advantage_zero_like_one(tmp_path, llama_dir, corpus):
    """Rank advantages tie rewards within 0.01, so many thoughts have advantage 0 and leave the update. 2 processes
    with batch b still train like 1 with batch 2b, skipping the same thoughts (some but not all in some step,
    checked)."""
    one, two = tmp_path / "one", tmp_path / "two"
    ranked = ["--set", "rlp.rank_advantages=true"]
    train_one(one, *settings(corpus, llama_dir, "ddp", per_rank_batch=4), *ranked)
    train_two(two, *settings(corpus, llama_dir, "ddp", per_rank_batch=2), *ranked)
    assert_same_metrics(metrics(one), metrics(two))
    assert [r["updated_thoughts"] for r in metrics(one)] == [r["updated_thoughts"] for r in metrics(two)]
    assert any(0 < r["updated_thoughts"] < 3 * r["contexts"] for r in metrics(one))
    start = [p.detach() for p in load_model_and_tokenizer(llama_dir)[0].parameters()]
    assert_same_weights(one, two, start)


def test_two_processes_sample_dynamically_like_one(tmp_path, llama_dir, corpus):
    """Dynamic sampling: rounds of draws until the groups with signal fill the batch, chosen over all ranks in an
    order hashed from (round, slot, position). 2 processes with batch b draw, keep and train like 1 with batch 2b
    (some step needs a second round, checked)."""
    one, two = tmp_path / "one", tmp_path / "two"
    dynamic = ["--set", "rlp.dynamic_sampling=3", "--set", "rlp.temperature=0.3"]
    train_one(one, *settings(corpus, llama_dir, "ddp", per_rank_batch=4), *dynamic)
    train_two(two, *settings(corpus, llama_dir, "ddp", per_rank_batch=2), *dynamic)
    assert_same_metrics(metrics(one), metrics(two))
    for key in ("drawn_contexts", "draw_rounds", "contexts"):
        assert [r[key] for r in metrics(one)] == [r[key] for r in metrics(two)], key
    assert any(r["draw_rounds"] > 1 for r in metrics(one))
    start = [p.detach() for p in load_model_and_tokenizer(llama_dir)[0].parameters()]
    assert_same_weights(one, two, start)
