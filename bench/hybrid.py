"""The recurrent engine on a hybrid model against the reference engine, beside the packed engine on a Llama of about
the same size: one full RLP step each, at the bench's dense shape (4 documents x 16 positions x G = 4 x L = 32), in
one process. The models are random, made here with rlpt's character tokenizer: a NemotronH of Mamba-2, attention and
MLP layers (`M*M-M*M-`) and a Llama of 4 layers, both hidden 128 (about 1M parameters). The NemotronH comes twice:
with the Mamba-2 scan chunk of 128 tokens that NemotronH configs ship, and with 32 (this bench's model before): the
recurrent engine scans in chunks of its own and the reference engine in the model's, so the ratio between them
depends on the model's chunk (docs/performance.md).

    python bench/hybrid.py [--steps 3] [--model-dir /tmp/rlpt-hybrid-bench]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

SHAPE = (4, 16, 4, 32)  # documents, positions per document, G, L


def make_folders(root: Path) -> dict[str, str]:
    """A random NemotronH and Llama with the character tokenizer, saved (once) under `root`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=128, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    nemotron_h = dict(hybrid_override_pattern="M*M-M*M-", num_attention_heads=4, num_key_value_heads=4, head_dim=32,
                      intermediate_size=512, ssm_state_size=16, mamba_num_heads=8, mamba_head_dim=16, n_groups=1,
                      conv_kernel=4, expand=1, max_position_embeddings=512, **common)
    configs = {
        "nemotron_h_chunk128": AutoConfig.for_model("nemotron_h", chunk_size=128, **nemotron_h),  # as configs ship
        "nemotron_h_chunk32": AutoConfig.for_model("nemotron_h", chunk_size=32, **nemotron_h),
        "llama": AutoConfig.for_model("llama", intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                                      num_key_value_heads=4, max_position_embeddings=512, **common),
    }
    folders = {}
    for name, config in configs.items():
        folder = root / name
        if not (folder / "config.json").is_file():
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def main() -> None:
    from rlpt.bench import compare

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--model-dir", default="/tmp/rlpt-hybrid-bench")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folders = make_folders(Path(args.model_dir))
    device = torch.device("cpu")
    hybrid = ("recurrent", "reference")
    rows = [(f"NemotronH, chunk {chunk}", compare(folders[f"nemotron_h_chunk{chunk}"], *SHAPE, 128, args.steps, device,
                                                   engines=hybrid)) for chunk in (128, 32)]
    rows.append(("Llama", compare(folders["llama"], *SHAPE, 128, args.steps, device, engines=("packed", "reference"))))
    if args.json:
        print(json.dumps({name: row for name, row in rows}, indent=1))
        return
    print(f"one RLP step, {' x '.join(map(str, SHAPE))} (documents x positions x G x L), median of {args.steps}")
    print("| model | parameters | engine | s/step | thought tokens/s | x reference | efficiency |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        fast = r["fast_engine"]
        print(f"| {name} | {r['params'] / 1e6:.2f}M | {fast} | {r[f'{fast}_step_s']:.3f} | "
              f"{r[f'{fast}_thought_tokens_per_s']:.0f} | {r['speedup']:.2f} | {r['efficiency']:.2f} |")
        print(f"| {name} | | reference | {r['reference_step_s']:.3f} | {r['reference_thought_tokens_per_s']:.0f} | 1.00 | |")


if __name__ == "__main__":
    main()
