"""Peak memory of the RLP update against the vocabulary: log-probs from the full logits vs a chunk at a time.

The update (the packed engine's `thought_logprobs`, then the backward of the policy-gradient loss) runs at a fixed
number of thought tokens on a tiny Llama (hidden 64, 2 layers) whose vocabulary is 8k, 32k or 151,669 (Qwen3's), in
a fresh process per run; the peak is the process's maximum resident memory during the update minus its resident
memory just before it (model, optimizer-free), so it is what the update itself adds.

A second table runs one whole RLP step (`RlpTrainer.rlp_step`: sampling, scoring, the update, AdamW, the EMA) of 2
documents x G = 4 x L = 16 on the same model at a 151,936-token vocabulary (Qwen2's), without and with the
next-token term beside it (16 documents of `builtin:arith-worked` a step), and gives the process's peak resident
memory of each: what the term adds. CPU only, a few minutes:

    python bench/memory.py [--group-size 16] [--thought-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VOCABULARIES = [8_192, 32_768, 151_669]


def resident_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (Linux only)")


def one_run(vocab: int, chunked: bool, group_size: int, thought_tokens: int) -> dict:
    """The update's peak memory, in this process: call it in a fresh one."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpt.data import Context
    from rlpt.models import ThinkTokens
    from rlpt.rollout import RolloutSpec
    from rlpt.rollout.base import Rollouts
    from rlpt.rollout.packed import PackedEngine

    torch.manual_seed(0)
    torch.set_num_threads(2)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    if not chunked:  # the full logits, as before chunking
        import rlpt.logprobs

        rlpt.logprobs.output_head = lambda *args, **kwargs: None
    document = torch.randint(6, vocab, (64,)).tolist()
    context = Context(doc=0, position=63, prefix=tuple(document[:63]), target=document[63])
    thoughts = [torch.randint(6, vocab, (thought_tokens,)).tolist() for _ in range(group_size)]
    rollouts = Rollouts([context], thoughts, torch.zeros(1, group_size), torch.zeros(1), torch.zeros(1, group_size))
    spec = RolloutSpec(group_size=group_size, max_thought_tokens=thought_tokens, temperature=0.7,
                       think=ThinkTokens(4, 5), pad_id=0)
    before = resident_mb()
    logp, mask = PackedEngine().thought_logprobs(model, rollouts, list(range(group_size)), spec)
    ((logp * mask).sum(1) * torch.linspace(-1, 1, group_size)).sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(vocab=vocab, chunked=chunked, update_peak_mb=peak - before)


STEP_VOCABULARY = 151_936


def one_step(vocab: int, next_token: bool, full_logits: bool) -> dict:
    """The peak resident memory of a process that runs one RLP step, with or without the next-token term (and, with
    `full_logits`, the log-probs of both from the full logits, as before they were chunked): call it in a fresh one."""
    import dataclasses
    from pathlib import Path

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpt import config as config_lib
    from rlpt.data import load_documents
    from rlpt.models import ensure_think_tokens
    from rlpt.rollout.packed import PackedEngine
    from rlpt.tiny import char_tokenizer
    from rlpt.trainer import RlpTrainer

    torch.manual_seed(0)
    torch.set_num_threads(2)
    if full_logits:
        import rlpt.logprobs
        import rlpt.pretrain
        import rlpt.trainer

        for module in (rlpt.logprobs, rlpt.pretrain, rlpt.trainer):
            module.output_head = lambda *args, **kwargs: None
        rlpt.trainer.CHUNK_ELEMENTS = 2**62  # and the next-token documents in one piece
    tokenizer = char_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    think = ensure_think_tokens(model, tokenizer)
    cfg = config_lib.paper_defaults(["rlp.group_size=4", "rlp.max_thought_tokens=16", "rlp.positions=first:=",
                                 "train.batch_documents=2", "eval.tasks=", "train.next_token_documents=16",
                                 "data.path=builtin:arith"])
    documents = load_documents(cfg.data, tokenizer, "=")
    extra = load_documents(dataclasses.replace(cfg.data, path="builtin:arith-worked"), tokenizer) if next_token else []
    trainer = RlpTrainer(cfg, model.eval(), tokenizer, think, documents, PackedEngine(), Path("."), torch.device("cpu"),
                         next_token_documents=extra)
    before = resident_mb()
    metrics = trainer.rlp_step(0).metrics
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return dict(vocab=vocab, next_token=next_token, full_logits=full_logits, before_mb=before, peak_mb=peak,
                next_token_loss=metrics.get("next_token_loss"))


def child(*arguments: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--group-size", type=int, default=16)
    parser.add_argument("--thought-tokens", type=int, default=256)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: VOCAB,CHUNKED for the child process
    parser.add_argument("--step", help=argparse.SUPPRESS)  # internal: VOCAB,NEXT_TOKEN,FULL_LOGITS likewise
    args = parser.parse_args()
    if args.one:
        vocab, chunked = args.one.split(",")
        print(json.dumps(one_run(int(vocab), chunked == "1", args.group_size, args.thought_tokens)))
        return
    if args.step:
        vocab, next_token, full = args.step.split(",")
        print(json.dumps(one_step(int(vocab), next_token == "1", full == "1")))
        return
    rows = [child("--one", f"{vocab},{int(chunked)}", "--group-size", str(args.group_size), "--thought-tokens",
                  str(args.thought_tokens)) for vocab in VOCABULARIES for chunked in (False, True)]
    tokens = args.group_size * args.thought_tokens
    print(f"peak memory of the update, {tokens} thought tokens (G = {args.group_size}, L = {args.thought_tokens}), MB")
    print("| vocabulary | full logits | chunked | chunked / chunked at 8k | rlpt plan's prediction (chunked) |")
    print("|---|---|---|---|---|")
    base = next(r["update_peak_mb"] for r in rows if r["chunked"] and r["vocab"] == VOCABULARIES[0])
    for vocab in VOCABULARIES:
        full = next(r["update_peak_mb"] for r in rows if not r["chunked"] and r["vocab"] == vocab)
        chunk = next(r["update_peak_mb"] for r in rows if r["chunked"] and r["vocab"] == vocab)
        predicted = predicted_update_mb(vocab, args.group_size, args.thought_tokens)
        print(f"| {vocab:,} | {full:,.0f} | {chunk:,.0f} | {chunk / base:.2f}x | {predicted:,.0f} "
              f"({predicted / chunk - 1:+.0%}) |")
    print()
    print(f"peak resident memory of one RLP step (2 documents x G = 4 x L = 16) at vocabulary {STEP_VOCABULARY:,}, "
          "without and with the next-token term (16 documents of builtin:arith-worked), MB")
    print("| log-probs | without the term | with it | the term adds |")
    print("|---|---|---|---|")
    for full in (True, False):
        without, with_term = (child("--step", f"{STEP_VOCABULARY},{int(term)},{int(full)}") for term in (False, True))
        print(f"| {'full logits (before)' if full else 'chunked'} | {without['peak_mb']:,.0f} | "
              f"{with_term['peak_mb']:,.0f} | {with_term['peak_mb'] - without['peak_mb']:,.0f} |")


def predicted_update_mb(vocab: int, group_size: int, thought_tokens: int) -> float:
    """What `rlpt plan` says the update adds (gradients, activations, a log-prob chunk) for the model above."""
    from rlpt.memory import StepSettings, update_parts
    from rlpt.plan import Shape

    shape = Shape(layers=2, hidden=64, vocab=vocab, heads=2, kv_heads=2, head_dim=32, intermediate=128)
    settings = StepSettings(group_size=group_size, thought_tokens=thought_tokens, doc_tokens=64, documents=1,
                            positions=1)
    parts = update_parts(shape, settings, group_size)
    update = ("update: the thought rows' activations", "update: the documents' activations", "update: log-prob chunk",
              "update: the output head's gradient of one chunk")
    return (4 * shape.params + sum(parts[k] for k in update)) / 2**20  # with the gradients


if __name__ == "__main__":
    main()
