"""rlpt against the peer a user would pick today: RLP on TRL's GRPOTrainer (../shared/anchors/trl_rlp_baseline.py),
same model folder, same shape (8 contexts of 128 tokens, G=4, L=32), measured in one run.

    python bench/vs_trl.py [--anchors ../shared/anchors] [--anchor-python /tmp/anchor/venv/bin/python]

The anchor needs its own venv (TRL); RESULTS.md beside it says how to build the venv and the model folder.
Two rlpt settings: the same 8 contexts taken from 8 documents (one position each, as the anchor draws them), and the
dense RLP setting, 8 positions of one document (contexts of 128-135 tokens); each with the packed engine as it is by
default and with `rlp.compile_decoding` (its compilation falls in the untimed warm-up step).

The last column is the ratio that arithmetic alone predicts: token-passes per step (a forward over one token is 1, a
forward+backward 3) of TRL divided by those of rlpt, for the thought lengths measured, as if a token-pass cost the
same in both. It does not: a decoding step over 32 rows costs rlpt less than it costs Hugging Face's `generate` (and
still far more per token than a full forward), so the measured ratio can land on either side of it.
"""

import argparse
import json
import os
import subprocess
from pathlib import Path

import torch

from rlpt.bench import compare

here = Path(__file__).resolve().parent
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--anchors", default=str(here.parent.parent / "shared" / "anchors"))
parser.add_argument("--anchor-python", default="/tmp/anchor/venv/bin/python")
parser.add_argument("--model-dir", default="/tmp/anchor/tiny-llama")
parser.add_argument("--steps", type=int, default=5)
args = parser.parse_args()

env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
if not (Path(args.model_dir) / "config.json").is_file():
    subprocess.run([args.anchor_python, "rlp_anchor_common.py", "--model-dir", args.model_dir], cwd=args.anchors, env=env, check=True)
out = subprocess.run(
    [args.anchor_python, "trl_rlp_baseline.py", "--B", "8", "--G", "4", "--L", "32", "--steps", str(args.steps),
     "--model-dir", args.model_dir], cwd=args.anchors, env=env, check=True, capture_output=True, text=True,
).stdout
trl = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT_JSON ")).split(" ", 1)[1])



def trl_token_passes(contexts: int, context_tokens: int, G: int, thought: float) -> float:
    """TRL: generation (each context prefilled G times, then the thought), the S_pred scoring forward over
    context + thought + </think>, the S_ema forward once per context, the training forward+backward."""
    rows, sequence = contexts * G, context_tokens + 1 + thought
    return rows * sequence + rows * sequence + contexts * context_tokens + 3 * rows * sequence


def rlpt_token_passes(document_tokens: int, rows: int, thought: float) -> float:
    """rlpt: the teacher and the policy forward over each document once, the decoding of <think> c </think>, the
    update's forward+backward over the documents and the rows `<think> c[:-1]`."""
    return 2 * document_tokens + rows * (thought + 1) + 3 * (document_tokens + rows * thought)


device = torch.device("cpu")
engines = ("packed", "compiled")  # compiled: rlp.compile_decoding
separate = compare(args.model_dir, 8, 1, 4, 32, 129, args.steps, device, engines=engines, min_context=128)
dense = compare(args.model_dir, 1, 8, 4, 32, 136, args.steps, device, engines=engines, min_context=128)
print("| implementation | contexts | s/step | thought tok/s | x TRL | x TRL in token-passes |")
print("|---|---|---|---|---|---|")
base = trl["thought_tok_per_s_end_to_end"]
print(f"| TRL GRPOTrainer anchor | 8 documents x 1 position | {trl['sec_per_step_median']:.3f} | {base:.0f} | 1.00 | |")
for name, r in (("8 documents x 1 position", separate), ("1 document x 8 positions", dense)):
    for engine, label in (("packed", "rlpt packed"), ("compiled", "rlpt packed, compiled decoding")):
        rate, rows = r[f"{engine}_thought_tokens_per_s"], r["documents"] * r["positions"] * 4
        thought = r[f"{engine}_thought_tokens"] / rows
        bound = trl_token_passes(8, 128, 4, thought) / rlpt_token_passes(r["documents"] * (r["doc_tokens"] - 1), rows, thought)
        print(f"| {label} | {name} | {r[f'{engine}_step_s']:.3f} | {rate:.0f} | {rate / base:.2f} | {bound:.2f} |")
