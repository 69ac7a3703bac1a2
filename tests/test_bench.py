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
