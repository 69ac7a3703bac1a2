"""The two Mamba-2 costs the recurrent engine changes, on one mixer of the NemotronH that `bench/hybrid.py` writes
(8 heads x 16 x state 16, hidden 128), transformers' PyTorch implementation (no `mamba-ssm` on CPU):

1. the chunked scan, forward and backward, at the engine's shapes (thought rows and document segments) and chunk
   sizes: PyTorch's scan pads every sequence to a whole chunk, so a short one in a long chunk is mostly padding
   (`rollout/mamba2_torch.py`, `short_chunks`);
2. the one-token step of decoding, 256 rows: transformers' `mamba2_selective_state_update` against the engine's
   (`lean_state_update`), with the largest difference between their outputs.

    python bench/mamba2_torch.py [--model-dir /tmp/rlpt-hybrid-bench]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

CHUNKS = (8, 16, 32, 64, 128)
SHAPES = [(256, 12), (256, 33), (256, 48), (4, 16), (4, 128)]  # (rows, tokens): thought rows, document segments


def milliseconds(f, repeats: int) -> float:
    f()  # warm-up
    began = time.perf_counter()
    for _ in range(repeats):
        f()
    return (time.perf_counter() - began) / repeats * 1e3


def scan_table(mixer, repeats: int) -> str:
    own = mixer.chunk_size
    lines = ["| rows x tokens | " + " | ".join(f"chunk {c}" for c in CHUNKS) + " |", "|---" * (len(CHUNKS) + 1) + "|"]
    for rows, tokens in SHAPES:
        x = torch.randn(rows, tokens, mixer.hidden_size, requires_grad=True)
        cells = []
        for chunk in CHUNKS:
            mixer.chunk_size = chunk
            cells.append(f"{milliseconds(lambda: mixer(x).sum().backward(), repeats):.1f}")
        lines.append(f"| {rows} x {tokens} | " + " | ".join(cells) + " |")
    mixer.chunk_size = own
    return "\n".join(lines)


def step_table(mixer, repeats: int) -> str:
    from rlpt.rollout.mamba2_torch import NAME, lean_state_update

    own = getattr(sys.modules[type(mixer).__module__], NAME)
    rows, heads, head_dim, state_size = 256, mixer.num_heads, mixer.head_dim, mixer.ssm_state_size
    g = torch.Generator().manual_seed(0)
    state = torch.randn(rows, heads, head_dim, state_size, generator=g)
    x = torch.randn(rows, heads, head_dim, generator=g)
    dt = torch.randn(rows, heads, 1, generator=g).expand(-1, -1, head_dim)
    A = (-torch.exp(mixer.A_log.detach().float()))[:, None, None].expand(-1, head_dim, state_size)
    B, C = torch.randn(rows, 1, state_size, generator=g), torch.randn(rows, 1, state_size, generator=g)
    keywords = dict(D=mixer.D.detach()[:, None].expand(-1, head_dim), dt_bias=mixer.dt_bias.detach()[:, None].expand(-1, head_dim),
                    dt_softplus=True)
    outputs, lines = {}, ["| one-token step, 256 rows | ms |", "|---|---|"]
    for name, step in (("transformers' PyTorch step", own), ("rlpt's lean step", lean_state_update(own))):
        def run(step=step, name=name):
            outputs[name] = step(state.clone(), x, dt, A, B, C, **keywords)
        lines.append(f"| {name} | {milliseconds(run, repeats * 10):.2f} |")
    a, b = outputs.values()
    return "\n".join(lines) + f"\n\nlargest difference between the two outputs: {(a - b).abs().max().item():.1e}"


def main() -> None:
    sys.path.insert(0, str(Path(__file__).parent))
    from hybrid import make_folders
    from transformers import AutoModelForCausalLM

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", default="/tmp/rlpt-hybrid-bench")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    model = AutoModelForCausalLM.from_pretrained(make_folders(Path(args.model_dir))["nemotron_h_chunk128"])
    mixer = next(m for m in model.modules() if hasattr(m, "A_log"))
    print("one Mamba-2 mixer, forward + backward, ms (the engine scans in chunks of 16)")
    print(scan_table(mixer, args.repeats))
    print()
    with torch.no_grad():
        print(step_table(mixer, args.repeats))


if __name__ == "__main__":
    main()
