"""rlpt against the peer a user would pick today: RLP on TRL's GRPOTrainer (`bench/trl_rlp.py`), the same model
folder, the same shape (8 contexts of 128 tokens, G=4, L=32), measured one after the other in one run.

    pip install -e '.[bench]'
    python bench/vs_trl.py [--model-dir DIR] [--steps 5] [--alternations 3]

The model (made in DIR when it is missing) is a random Llama of 3.2M parameters (4 layers, hidden 256) with rlpt's
character tokenizer. Two rlpt settings: the same 8 contexts taken from 8 documents (one position each, as TRL gets
them), and the dense RLP setting, 8 positions of one document (contexts of 128-135 tokens); each with the packed
engine as it is by default and with `rlp.compile_decoding` (its compilation falls in the untimed warm-up step).

The last column is the ratio that arithmetic alone predicts: token-passes per step (a forward over one token is 1, a
forward+backward 3) of TRL divided by those of rlpt, for the thought lengths measured, as if a token-pass cost the
same in both. It does not: a decoding step over 32 rows costs rlpt less than it costs Hugging Face's `generate` (and
still far more per token than a full forward), so the measured ratio can land on either side of it.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from rlpt.bench import compare

here = Path(__file__).resolve().parent
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model-dir", default="/tmp/rlpt-vs-trl-model")
parser.add_argument("--steps", type=int, default=5)
parser.add_argument("--alternations", type=int, default=3,
                    help="TRL then rlpt, this many times in a row: the machine's drift shows as the spread of the ratios")
args = parser.parse_args()


def make_model_folder(folder: str) -> None:
    """A random 3.2M-parameter Llama with the character tokenizer (think tags included), saved with save_pretrained."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


if not (Path(args.model_dir) / "config.json").is_file():
    make_model_folder(args.model_dir)
env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}


def run_trl() -> dict:
    out = subprocess.run(
        [sys.executable, str(here / "trl_rlp.py"), "--contexts", "8", "--group-size", "4", "--thought-tokens", "32",
         "--context-tokens", "128", "--steps", str(args.steps), "--model-dir", args.model_dir],
        env=env, check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT_JSON ")).split(" ", 1)[1])


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
SETTINGS = {"8 documents x 1 position": (8, 1, 129), "1 document x 8 positions": (1, 8, 136)}  # documents, positions, length
rows = {}  # (label, contexts) -> [(thought tok/s, x TRL)] per alternation
bounds = {}
trl_rates = []
for alternation in range(args.alternations):
    trl = run_trl()
    base = trl["thought_tokens_per_s"]
    trl_rates.append(base)
    print(f"alternation {alternation + 1}: TRL {base:.0f} thought tok/s", flush=True)
    for name, (documents, positions, length) in SETTINGS.items():
        r = compare(args.model_dir, documents, positions, 4, 32, length, args.steps, device, engines=engines, min_context=128)
        for engine, label in (("packed", "rlpt packed"), ("compiled", "rlpt packed, compiled decoding")):
            rate, count = r[f"{engine}_thought_tokens_per_s"], documents * positions * 4
            thought = r[f"{engine}_thought_tokens"] / count
            bounds[label, name] = (trl_token_passes(8, 128, 4, thought)
                                   / rlpt_token_passes(documents * (r["doc_tokens"] - 1), count, thought))
            rows.setdefault((label, name), []).append((rate, rate / base))
            print(f"  {label}, {name}: {rate:.0f} thought tok/s, x TRL {rate / base:.2f}", flush=True)

print()
print(f"| implementation | contexts | thought tok/s ({args.alternations} alternations) | x TRL | x TRL in token-passes |")
print("|---|---|---|---|---|")
print(f"| RLP on TRL GRPOTrainer | 8 documents x 1 position | {', '.join(f'{v:.0f}' for v in trl_rates)} | 1.00 | |")
for (label, name), runs in rows.items():
    print(f"| {label} | {name} | {', '.join(f'{rate:.0f}' for rate, _ in runs)} | "
          f"{', '.join(f'{ratio:.2f}' for _, ratio in runs)} | {bounds[label, name]:.2f} |")
