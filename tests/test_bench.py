"""`rlpt bench --json` reports the pinned keys, measured on a tiny model folder."""

import json

from rlpt.bench import spread_positions
from rlpt.cli import main


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
