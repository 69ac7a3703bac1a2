"""One `rlpt train` step at the paper's lengths on narrow models, its peak memory against `rlpt plan`'s count.

Documents of 2,048 tokens (a character vocabulary), G = 16, thoughts of up to 2,048 tokens, `random:8` positions a
document, the default settings otherwise, rlpt sizing its rollout and update chunks to `train.memory_gb` (16 GiB here).
Two models of hidden 64: a 2-layer Qwen3 (the packed engine) and a NemotronH `M*` with Nemotron-Nano-12B-v2's Mamba-2
state (128 heads x 80 x state 128, 8 groups; the recurrent engine). A random model of a ~100-character vocabulary
closes a thought after about 100 tokens, so the run's sampler never draws `</think>` here (`--may-close` lets it):
every row runs to 2,048 tokens, the worst case, and the one the chunks are sized for. Each run is a fresh process; its peak is the largest resident memory of its
process tree, sampled every 0.2 s. CPU, minutes to an hour a run:

    python bench/paper_shape.py [--models qwen3,nemotron_h] [--documents 2,8] [--positions random:8] [--memory-gb 16]
                                [--thought-tokens 2048] [--temperature 0.7] [--may-close]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DOC_CHARACTERS = 2100  # a little over 2,048 tokens of the character vocabulary: one window of data.max_length each


def save_model(folder: Path, arch: str) -> str:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True, hidden_size=64,
                  num_attention_heads=2, num_key_value_heads=2, head_dim=32, max_position_embeddings=8192)
    if arch == "qwen3":
        config = AutoConfig.for_model("qwen3", num_hidden_layers=2, intermediate_size=128, **common)
    else:  # Nemotron-Nano-12B-v2's Mamba-2 mixer at hidden 64: 128 heads of 80, state 128, 8 groups, chunk 128
        config = AutoConfig.for_model("nemotron_h", hybrid_override_pattern="M*", mamba_num_heads=128, mamba_head_dim=80,
                                      ssm_state_size=128, n_groups=8, conv_kernel=4, chunk_size=128, expand=160,
                                      intermediate_size=128, use_mamba_kernels=False, **common)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def write_corpus(path: Path, documents: int) -> None:
    """`documents` blocks of pseudo-words, one document each (data.split_paragraphs)."""
    rng = random.Random(0)
    blocks = []
    for _ in range(documents):
        words = []
        while sum(len(w) + 1 for w in words) < DOC_CHARACTERS:
            words.append("".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 8))))
        blocks.append(" ".join(words))
    path.write_text("\n\n".join(blocks) + "\n")


def tree_resident(pid: int) -> int:
    """Resident bytes of a process and its descendants."""
    total, pending = 0, [pid]
    while pending:
        p = pending.pop()
        try:
            total += int(next(l for l in open(f"/proc/{p}/status") if l.startswith("VmRSS:")).split()[1]) * 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, StopIteration):
            pass
    return total


def settings(model: str, corpus: Path, documents: int, args) -> list[str]:
    pairs = {"model.name_or_path": model, "data.path": str(corpus), "data.split_paragraphs": "true",
             "data.max_length": "2048", "rlp.group_size": "16", "rlp.max_thought_tokens": str(args.thought_tokens),
             "rlp.positions": args.positions, "train.batch_documents": str(documents), "train.max_steps": "1",
             "rlp.temperature": str(args.temperature),
             "train.memory_gb": str(args.memory_gb), "eval.tasks": "", "train.device": "cpu"}
    return [item for key, value in pairs.items() for item in ("--set", f"{key}={value}")]


def close_never() -> None:
    """From now on in this process, every thought runs to the length limit: the sampler never draws `</think>`."""
    from rlpt.rollout import decoding, packed, recurrent

    def never_closing(next_logits, row_answer, row_answer_length, spec, choose):
        def choose_open(logits, step):
            logits[:, spec.think.close_id] = float("-inf")
            return choose(logits, step)

        return decoding.decode_thoughts(next_logits, row_answer, row_answer_length, spec, choose_open)

    packed.decode_thoughts = recurrent.decode_thoughts = never_closing


def train_never_closing(argv: list[str]) -> int:
    """`rlpt train` with every thought run to the length limit."""
    from rlpt.cli import main as cli

    close_never()
    return cli(argv)


def measured_run(model: str, corpus: Path, documents: int, out: Path, args) -> dict:
    train = ["-m", "rlpt"] if args.may_close else [__file__, "--train"]
    command = [sys.executable, *train, "train", "--output", str(out), *settings(model, corpus, documents, args)]
    began, peak = time.perf_counter(), 0
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while process.poll() is None:
        peak = max(peak, tree_resident(process.pid))
        time.sleep(0.2)
    output = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"rlpt train failed:\n{output[-3000:]}")
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return dict(peak=peak, seconds=time.perf_counter() - began, metrics=metrics)


def planned(model: str, documents: int, args) -> dict:
    out = subprocess.run([sys.executable, "-m", "rlpt", "plan", "--model", model, "--json", "--doc-tokens", "2048",
                          "--documents", str(documents), "--positions", args.positions, "--group-size", "16",
                          "--thought-tokens", str(args.thought_tokens), "--memory", str(args.memory_gb)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    if sys.argv[1:2] == ["--train"]:  # internal: the measured run, in its own process
        raise SystemExit(train_never_closing(sys.argv[2:]))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="qwen3,nemotron_h")
    parser.add_argument("--documents", default="2,8")
    parser.add_argument("--memory-gb", type=float, default=16)
    parser.add_argument("--thought-tokens", type=int, default=2048)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--may-close", action="store_true", help="let the sampler draw </think>")
    parser.add_argument("--positions", default="random:8", help="rlp.positions (random:8: 128 rows a document)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        corpus = tmp / "corpus.txt"
        documents = [int(d) for d in args.documents.split(",")]
        write_corpus(corpus, max(documents))
        for arch in args.models.split(","):
            model = save_model(tmp / arch, arch)
            for n in documents:
                run = measured_run(model, corpus, n, tmp / f"run-{arch}-{n}", args)
                plan = planned(model, n, args)
                predicted = sum(plan["memory_bytes"].values())
                m = run["metrics"]
                rows.append((arch, n, m["contexts"] * 16, run["peak"], predicted, run["seconds"], m["rollout_rows"],
                             m["micro_batch_thoughts"], plan["chunks"], m["thought_len_mean"]))
                print(json.dumps(dict(model=arch, documents=n, peak=run["peak"], predicted=predicted,
                                      seconds=run["seconds"], metrics=m, plan=plan)), flush=True)
    print(f"\none rlpt train step, documents of 2,048 tokens, G = 16, L = {args.thought_tokens}, {args.positions}, "
          f"train.memory_gb={args.memory_gb:g}")
    print("| model | documents | rows | chunks (rollout rows, update thoughts) | peak resident | rlpt plan | plan / peak "
          "| mean thought | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch, n, total, peak, predicted, seconds, rollout, micro, chunks, length in rows:
        print(f"| {arch} | {n} | {total} | {rollout}, {micro} (plan: {chunks['rollout_rows']}, "
              f"{chunks['micro_batch_thoughts']}) | {peak / 2**30:.2f} GiB | {predicted / 2**30:.2f} GiB | "
              f"{predicted / peak:.2f} | {length:.0f} | {seconds:.0f} |")


if __name__ == "__main__":
    main()
