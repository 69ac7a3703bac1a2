"""The hand-off after training: `rlpt export` writes a folder that lm-evaluation-harness (`lm_eval --model hf`)
evaluates offline, here on a local task read from a JSONL file."""

import json
import os
import subprocess
import sys

import pytest

from rlpt.cli import main

pytest.importorskip("lm_eval")

TASK = """task: rlpt_sums
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
"""


def test_lm_eval_runs_offline_on_an_exported_run(tmp_path, llama_dir):
    run, exported = tmp_path / "run", tmp_path / "exported"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={llama_dir}", "--set", "train.max_steps=2",
                 "--set", "rlp.group_size=2", "--set", "rlp.max_thought_tokens=3", "--set", "train.batch_documents=2",
                 "--set", "eval.tasks="]) == 0
    assert main(["export", str(run), "--out", str(exported)]) == 0
    data = tmp_path / "sums.jsonl"
    data.write_text("".join(json.dumps({"question": f"{a}+{a}=", "answer": str(2 * a)}) + "\n" for a in range(10, 18)))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "rlpt_sums.yaml").write_text(TASK.format(data=data))
    out = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={exported},dtype=float32",
         "--tasks", "rlpt_sums", "--include_path", str(tasks), "--device", "cpu", "--batch_size", "4",
         "--output_path", str(tmp_path / "results")],
        capture_output=True, text=True, timeout=600,
        env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false"))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    results = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    scores = results["results"]["rlpt_sums"]
    assert 0.0 <= scores["exact_match,none"] <= 1.0
    assert results["n-samples"]["rlpt_sums"]["effective"] == 8  # every question was answered
