"""`rlpt bench --json` reports the pinned keys, measured on a tiny model folder."""

import json

import pytest

from rlpt.bench import spread_positions, token_pass_bound
from rlpt.cli import main
from rlpt.data import Document


def test_bench_json_keys(llama_dir, capsys):
    assert main(["bench", "--model", llama_dir, "--docs", "2", "--positions", "2", "--group-size", "2",
                 "--thought-tokens", "3", "--doc-tokens", "12", "--steps", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("reference_step_s", "packed_step_s", "speedup", "ntp_tokens_per_s", "packed_thought_tokens_per_s",
                "efficiency", "packed_peak_mem_mb"):
        assert key in result and result[key] > 0, key
    assert abs(result["speedup"] - result["reference_step_s"] / result["packed_step_s"]) < 1e-9
    # both engines sampled the same thoughts: the same number of thought tokens
    assert result["reference_thought_tokens"] == result["packed_thought_tokens"]


def test_the_benchmarks_workload_is_the_papers_not_the_demos(monkeypatch):
    """The timed step runs the paper's reward (one token) at temperature 0.7 whatever the built-in demo's settings
    are: when the demo took a 5-token reward, the benchmark silently ran 4 more decoding steps a batch and read as
    the packed engine 8-12% slower."""
    from rlpt import bench, config

    class Seen(Exception):
        pass

    def trainer(cfg, *args):
        raise Seen(cfg)

    monkeypatch.setattr(bench, "RlpTrainer", trainer)
    monkeypatch.setitem(config.BUILTIN_DEFAULT, "rlp", {**config.BUILTIN_DEFAULT["rlp"], "reward_tokens": 7})
    with pytest.raises(Seen) as seen:
        bench.time_rlp(None, None, None, None, [Document([5, 6, 7], "d0")], "list:1", 2, 3, 1, None)
    cfg = seen.value.args[0]
    assert (cfg.rlp.reward_tokens, cfg.rlp.temperature, cfg.train.next_token_data) == (1, 0.7, "")
    assert cfg.data.max_length == 3  # the documents' length, that the chunks are sized for
    assert "rlp.reward_tokens=1" in bench.WORKLOAD


def test_token_pass_bound_hand_worked():
    # 2 documents of 256 tokens, 64 rows of 32 thought tokens: decoding 2,048 + 2 x 64, the documents' two forwards
    # 2 x 512, the update 3 x (2,048 + 512); next-token training 3 passes a token
    assert token_pass_bound(2048, 64, 512) == pytest.approx(3 * 2048 / (2048 + 128 + 1024 + 3 * 2560))
    assert token_pass_bound(1000, 1, 0) == pytest.approx(3000 / 4002)  # no documents: toward 0.75


def test_spread_positions():
    assert spread_positions(128, 4) == "list:1,43,85,127"
    assert spread_positions(136, 8, first=128) == "list:128,129,130,131,132,133,134,135"
    assert spread_positions(129, 1, first=128) == "list:128"


def test_trl_baseline_runs_rlp_steps_and_scores_like_rlpt(llama_dir):
    # bench/trl_rlp.py, the baseline of bench/vs_trl.py: its reward's log-probs are rlpt's, and it trains
    import subprocess
    import sys
    from pathlib import Path

    import torch

    from rlpt.models import load_model_and_tokenizer
    from rlpt.rollout.reference import last_token_logprobs

    script = Path(__file__).resolve().parent.parent / "bench" / "trl_rlp.py"
    sys.path.insert(0, str(script.parent))
    from trl_rlp import logprob_after

    model, tok, _ = load_model_and_tokenizer(llama_dir)
    sequences, targets = [[1, 7, 8, 9, 4, 10, 5], [1, 12, 13]], [11, 14]
    with torch.no_grad():
        expected = last_token_logprobs(model, sequences, tok.pad_token_id).gather(1, torch.tensor(targets)[:, None])[:, 0]
        torch.testing.assert_close(logprob_after(model, sequences, targets, tok.pad_token_id), expected, atol=1e-5, rtol=0)

    out = subprocess.run([sys.executable, str(script), "--model-dir", llama_dir, "--contexts", "2", "--group-size", "2",
                          "--thought-tokens", "3", "--context-tokens", "8", "--steps", "2"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT_JSON ")).split(" ", 1)[1])
    assert result["steps"] == 2 and 4 <= result["thought_tokens_per_step"] <= 12 and result["s_per_step"] > 0


def test_bench_phases_split_the_fast_engines_step(llama_dir, capsys):
    assert main(["bench", "--model", llama_dir, "--docs", "2", "--positions", "2", "--group-size", "2",
                 "--thought-tokens", "3", "--doc-tokens", "12", "--steps", "1", "--engines", "packed", "--phases"]) == 0
    out = capsys.readouterr().out
    for phase in ("teacher forward (S_ema)", "decoding the thoughts", "update forward + backward", "whole step"):
        assert f"| {phase} |" in out, phase
    assert "efficiency (bound)" in out
