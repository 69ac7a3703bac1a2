"""Thought decoding on a GPU at the paper's shape: the packed engine, eager against compiled and captured as CUDA
graphs (`rlp.compile_decoding`), on a Qwen3-0.6B-shaped model (random weights, bfloat16, vocabulary 151,936), G = 16
thoughts of L = 256, 1,024 and 2,048 tokens at one position of a 128-token document. Every thought runs to L (the
`</think>` token is never drawn). First a check in float32 at L = 64: both paths draw the same thoughts. Prints a
table: seconds per batch, thought tokens a second, the speed-up, and peak GPU memory. Part of bench/gpu_check.sh.

    python bench/decode_gpu.py [--lengths 256,1024,2048]
"""

from __future__ import annotations

import argparse
import time

import torch


def qwen3_shaped(dtype):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=151_936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                         tie_word_embeddings=True)
    return Qwen3ForCausalLM(config).to("cuda", dtype).eval()


def decode(engine, model, length: int, group: int = 16):
    from rlpt.data import Context
    from rlpt.generation import temperature_sampler
    from rlpt.models import ThinkTokens
    from rlpt.rollout import RolloutSpec

    think = ThinkTokens(151_667, 151_668)
    document = torch.randint(0, 151_000, (129,), generator=torch.Generator().manual_seed(1)).tolist()
    context = Context(doc=0, position=128, prefix=tuple(document[:128]), target=document[128])
    spec = RolloutSpec(group_size=group, max_thought_tokens=length, temperature=0.7, think=think, pad_id=0)
    base = temperature_sampler(0.7, 0)

    def never_close(logits, step):
        logits = logits.clone()
        logits[:, think.close_id] = float("-inf")
        return base(logits, step)

    torch.cuda.synchronize()
    began = time.perf_counter()
    rollouts = engine.rollout(model, model, [context], spec, never_close)
    torch.cuda.synchronize()
    return rollouts, time.perf_counter() - began


def main() -> None:
    from rlpt.rollout.packed import PackedEngine

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="256,1024,2048")
    args = parser.parse_args()
    print("torch", torch.__version__, torch.cuda.get_device_name())

    model = qwen3_shaped(torch.float32)
    eager, _ = decode(PackedEngine(), model, 64, group=4)
    graphs, _ = decode(PackedEngine(compile_decoding=True), model, 64, group=4)
    print("float32, L = 64: the same thoughts eager and as CUDA graphs:", eager.thoughts == graphs.thoughts)
    del model
    torch.cuda.empty_cache()

    model = qwen3_shaped(torch.bfloat16)
    print("| L | eager s | eager tok/s | graphs s | graphs tok/s | speed-up | peak GiB (graphs) |")
    print("|---|---|---|---|---|---|---|")
    compiled = PackedEngine(compile_decoding=True)
    for length in [int(x) for x in args.lengths.split(",")]:
        decode(compiled, model, length)  # compiles and captures for this shape
        _, eager_s = decode(PackedEngine(), model, length)
        torch.cuda.reset_peak_memory_stats()
        _, graph_s = decode(compiled, model, length)
        peak = torch.cuda.max_memory_allocated() / 2**30
        tokens = 16 * length
        print(f"| {length} | {eager_s:.1f} | {tokens / eager_s:,.0f} | {graph_s:.1f} | {tokens / graph_s:,.0f} | "
              f"{eager_s / graph_s:.2f}x | {peak:.1f} |")


if __name__ == "__main__":
    main()
