"""Side-by-side benchmark of one full RLP step (sample, score, update, optimizer, EMA) in one process, on the same
model and the same batch: the reference engine, the packed engine (and, with `--engines packed,compiled`, the packed
engine with `rlp.compile_decoding`; with `recurrent`, the engine of models with recurrent state), and plain next-token
training (forward, backward, AdamW) over as many tokens as the RLP step holds (documents + thoughts).

efficiency = the first fast engine's thought tokens/s / next-token tokens/s. A thought token costs one forward to sample and one
forward+backward to learn from, so ~0.75 is the ceiling where the documents cost nothing; `bound` is the ceiling of the
shape measured, its documents' passes counted (`token_pass_bound`).
Times are medians over `--steps` steps after one warm-up step. Compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import threading
import time
from pathlib import Path

import torch

from rlpt import config as config_lib
from rlpt.data import Document
from rlpt.errors import UserError
from rlpt.models import load_model_and_tokenizer
from rlpt.pretrain import next_token_loss
from rlpt.rollout.packed import PackedEngine
from rlpt.rollout.reference import ReferenceEngine
from rlpt.trainer import RlpTrainer

SHAPES = [(4, 16, 4, 32), (2, 64, 8, 16)]  # (documents, positions per document, G, L)
MODELS = ["builtin:tiny", "builtin:llama-10m"]
ENGINES = ("reference", "packed", "compiled", "recurrent")


def engine_named(name: str, model):
    """The engine called `name` for `model`; a UserError where the model fails that engine's probe (the trainer would
    fall back to another: a benchmark of it would time the wrong thing)."""
    from rlpt.rollout.packed import supports_shared_prefix

    if name in ("packed", "compiled") and not supports_shared_prefix(model):
        raise UserError(f"--engines {name}: {type(model).__name__} fails the packed engine's shared-prefix probe (a model "
                        "with recurrent state takes --engines recurrent,reference)")
    if name == "recurrent":
        from rlpt.rollout.recurrent import RecurrentEngine, supports_recurrent_rows

        if (why_not := supports_recurrent_rows(model)) is not None:
            raise UserError(f"--engines recurrent: {type(model).__name__} fails the recurrent engine's probe ({why_not})")
        return RecurrentEngine()
    return {"reference": ReferenceEngine, "packed": PackedEngine,
            "compiled": lambda: PackedEngine(compile_decoding=True)}[name]()


MICRO_BATCH = 256  # thoughts per forward/backward chunk, both engines (the reference engine needs it to fit in memory)


def load_bench_model(name: str, device):
    """`builtin:llama-10m` is a randomly initialised ~10M-parameter Llama with the character tokenizer."""
    if name != "builtin:llama-10m":
        return load_model_and_tokenizer(name, device=device)
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlpt.models import ensure_think_tokens
    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
        num_key_value_heads=6, max_position_embeddings=2048, tie_word_embeddings=True,
    ))
    think = ensure_think_tokens(model, tokenizer)
    return model.to(device).eval(), tokenizer, think


def synthetic_documents(tokenizer, count: int, length: int, seed: int) -> list[Document]:
    """Documents of `length` random ordinary tokens (BOS first where the tokenizer uses one)."""
    gen = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    start = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return [
        Document(start + ordinary[torch.randint(len(ordinary), (length - len(start),), generator=gen)].tolist(), f"synthetic#{i}")
        for i in range(count)
    ]


def spread_positions(length: int, count: int, first: int = 1) -> str:
    """`count` positions spread evenly over [first, length - 1], the last at length - 1 (the longest context)."""
    span = length - 1 - first
    return "list:" + ",".join(str(length - 1 - round(span * (count - 1 - i) / max(count - 1, 1))) for i in range(count))


class PeakMemory:
    """Peak memory during a block: CUDA allocator peak on GPU, else resident set size polled every 5 ms."""

    def __init__(self, device):
        self.device, self.peak_mb, self._stop = device, 0.0, threading.Event()

    def _poll(self):
        while not self._stop.is_set():
            pages = int(Path("/proc/self/statm").read_text().split()[1])
            self.peak_mb = max(self.peak_mb, pages * 4096 / 2**20)
            time.sleep(0.005)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        elif Path("/proc/self/statm").exists():
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif hasattr(self, "_thread"):
            self._stop.set()
            self._thread.join()


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# the paper's reward and temperature, named here so that the workload of a measured row never moves with a default:
# from commit 75bb1af to this one the benchmark took the built-in demo's settings (a 5-token reward, 4 more decoding
# steps a batch, and temperature 1.0), which read as the packed engine being 8-12% slower
WORKLOAD = ["rlp.reward_tokens=1", "rlp.temperature=0.7", "rlp.updates_per_batch=1", "rlp.kl_coef=0"]


def bench_trainer(engine, model, tokenizer, think, docs, rule, G, L, device) -> RlpTrainer:
    cfg = config_lib.paper_defaults([
        *WORKLOAD, f"rlp.group_size={G}", f"rlp.max_thought_tokens={L}", f"rlp.positions={rule}",
        f"train.batch_documents={len(docs)}", "train.lr=1e-6", f"train.micro_batch_thoughts={MICRO_BATCH}", "eval.tasks=",
        f"data.max_length={max(len(d.ids) for d in docs)}",  # what the rollout's chunk is sized for
    ])
    return RlpTrainer(cfg, copy.deepcopy(model), tokenizer, think, docs, engine, Path("."), device)


def time_rlp(engine, model, tokenizer, think, docs, rule, G, L, steps, device) -> dict:
    trainer = bench_trainer(engine, model, tokenizer, think, docs, rule, G, L, device)
    times, tokens = [], []
    trainer.rlp_step(0)  # warm-up
    for step in range(steps):
        synchronize(device)
        began = time.perf_counter()
        outcome = trainer.rlp_step(0)  # the same batch every time: the same documents, positions and noise
        synchronize(device)
        times.append(time.perf_counter() - began)
        tokens.append(outcome.metrics["thought_tokens"])
    with PeakMemory(device) as memory:  # one more step, untimed: the polling thread would perturb the timing
        trainer.rlp_step(0)
    seconds = statistics.median(times)
    return dict(step_s=seconds, thought_tokens=tokens[0], thought_tokens_per_s=tokens[0] / seconds, peak_mem_mb=memory.peak_mb)


def time_next_token(model, tokenizer, total_tokens: int, row_tokens: int, steps: int, device) -> dict:
    model = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    rows = max(1, round(total_tokens / row_tokens))
    ids = torch.randint(len(tokenizer), (rows, row_tokens), generator=gen).to(device)
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=device.type in ("cpu", "cuda"))  # as the trainer's
    times = []
    for step in range(steps + 1):
        synchronize(device)
        began = time.perf_counter()
        next_token_loss(model, ids, mask).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step:  # the first is a warm-up
            times.append(time.perf_counter() - began)
    seconds = statistics.median(times)
    return dict(step_s=seconds, tokens=ids.numel(), tokens_per_s=ids.numel() / seconds)


def token_pass_bound(thought_tokens: int, rows: int, document_tokens: int) -> float:
    """The efficiency an RLP step would have if every token-pass cost what one of next-token training does (3 a
    token: forward, backward): decoding is a forward per thought token and two a row (`<think>`, and `</think>` whose
    logits score x_t), the teacher and the policy each read the documents once, and the update is a forward and backward
    over the thought rows and the documents under them."""
    passes = thought_tokens + 2 * rows + 2 * document_tokens + 3 * (thought_tokens + document_tokens)
    return 3 * thought_tokens / passes


def compare(model_name: str, docs_n: int, positions: int, G: int, L: int, doc_tokens: int, steps: int, device,
            loaded=None, engines=("packed", "reference"), min_context: int = 1, phases: bool = False) -> dict:
    model, tokenizer, think = loaded or load_bench_model(model_name, device)
    length = max(doc_tokens, positions + min_context)
    docs = synthetic_documents(tokenizer, docs_n, length, seed=0)
    rule = spread_positions(length, positions, first=min(min_context, length - positions))
    result = dict(model=model_name, documents=docs_n, positions=positions, group_size=G, thought_tokens_max=L,
                  doc_tokens=length, positions_rule=rule, params=sum(p.numel() for p in model.parameters()), device=str(device),
                  workload=WORKLOAD)
    for name in engines:  # packed first: on CPU the resident-set peak of a later engine includes the earlier one's
        engine = engine_named(name, model)
        timing = time_rlp(engine, model, tokenizer, think, docs, rule, G, L, steps, device)
        result.update({f"{name}_{k}": v for k, v in timing.items()})
    thoughts = docs_n * positions * G
    fast = next((e for e in engines if e != "reference"), "reference")  # the engine the efficiency is of
    result["fast_engine"] = fast
    rlp_tokens = docs_n * length + thoughts + result[f"{fast}_thought_tokens"]  # documents, <think> tags, thoughts
    ntp = time_next_token(model, tokenizer, rlp_tokens, length, steps, device)
    result.update(ntp_step_s=ntp["step_s"], ntp_tokens=ntp["tokens"], ntp_tokens_per_s=ntp["tokens_per_s"])
    result["efficiency"] = result[f"{fast}_thought_tokens_per_s"] / result["ntp_tokens_per_s"]
    result["bound"] = token_pass_bound(result[f"{fast}_thought_tokens"], thoughts, docs_n * length)
    if phases:  # on a trainer of its own, after the timing: its wrappers cost a little
        from rlpt.phases import phase_times

        trainer = bench_trainer(engine_named(fast, model), model, tokenizer, think, docs, rule, G, L, device)
        result["phases"] = {k: statistics.median(v) for k, v in phase_times(trainer, steps).items()}
    if "reference_step_s" in result and fast != "reference":
        result["speedup"] = result["reference_step_s"] / result[f"{fast}_step_s"]
    return result


def table(rows: list[dict]) -> str:
    lines = [
        "| model | docs x positions x G x L | engine | s/step | thought tok/s | x reference | efficiency (bound) | peak MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        shape = f"{r['documents']} x {r['positions']} x {r['group_size']} x {r['thought_tokens_max']}"
        for engine in ENGINES:
            if f"{engine}_step_s" not in r:
                continue
            ratio = f"{r['reference_step_s'] / r[f'{engine}_step_s']:.2f}" if "reference_step_s" in r else "(not run)"
            efficiency = r[f"{engine}_thought_tokens_per_s"] / r["ntp_tokens_per_s"]
            lines.append(
                f"| {r['model']} | {shape} | {engine} | {r[f'{engine}_step_s']:.3f} | {r[f'{engine}_thought_tokens_per_s']:.0f} "
                f"| {ratio} | {efficiency:.2f} ({r['bound']:.2f}) | {r[f'{engine}_peak_mem_mb']:.0f} |"
            )
        lines.append(f"| {r['model']} | {shape} | next-token ({r['ntp_tokens']} tokens) | {r['ntp_step_s']:.3f} "
                     f"| {r['ntp_tokens_per_s']:.0f} (all tokens) | | 1 | |")
    return "\n".join(lines)


def scaling_table(model_name, G, total_thought_tokens, doc_tokens, steps, device, loaded, fast="packed") -> str:
    """Positions per document doubling at fixed thought tokens (L halves): the context cost should stay flat."""
    lines = [f"| positions x L (1 document, G = {G}) | reference s/step | {fast} s/step |", "|---|---|---|"]
    for positions in (4, 8, 16, 32):
        L = max(1, total_thought_tokens // (positions * G))
        r = compare(model_name, 1, positions, G, L, doc_tokens, steps, device, loaded, engines=(fast, "reference"))
        lines.append(f"| {positions} x {L} ({r[f'{fast}_thought_tokens']} thought tokens) | {r['reference_step_s']:.3f} | "
                     f"{r[f'{fast}_step_s']:.3f} |")
    return "\n".join(lines)


def build_parser(parser=None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="bench/engine.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF folder or builtin:tiny / builtin:llama-10m (default: both)")
    parser.add_argument("--docs", type=int)
    parser.add_argument("--positions", type=int, help="positions per document")
    parser.add_argument("--group-size", type=int)
    parser.add_argument("--thought-tokens", type=int, help="L, the thought length limit")
    parser.add_argument("--doc-tokens", type=int, default=128, help="document length (the longest context)")
    parser.add_argument("--min-context", type=int, default=1, help="positions are spread over [this, doc-tokens - 1]")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per engine (after one warm-up)")
    parser.add_argument("--no-scaling", action="store_true", help="skip the positions-doubling table")
    parser.add_argument("--engines", default="packed,reference",
                        help="engines to time, of " + ", ".join(ENGINES) + " (the reference one can take minutes; "
                        "compiled = packed with rlp.compile_decoding)")
    parser.add_argument("--json", action="store_true", help="one JSON object for one configuration")
    parser.add_argument("--phases", action="store_true",
                        help="also time the phases of the first fast engine's step (one configuration)")
    parser.add_argument("--device", default="auto")
    return parser


def run(args) -> int:
    from rlpt.distributed import resolve_device

    device = resolve_device(args.device)
    engines = tuple(e.strip() for e in args.engines.split(",") if e.strip())
    if not engines or set(engines) - set(ENGINES):
        raise UserError(f"--engines {args.engines!r}: name engines of " + ", ".join(ENGINES))
    if args.model and args.model != "builtin:llama-10m":
        from rlpt.models import check_model_source

        check_model_source(args.model, "--model")
    torch.manual_seed(0)
    chosen = [args.docs, args.positions, args.group_size, args.thought_tokens]
    if args.json or args.phases or any(v is not None for v in chosen):
        shape = [v if v is not None else d for v, d in zip(chosen, SHAPES[0])]
        result = compare(args.model or MODELS[0], *shape, args.doc_tokens, args.steps, device, engines=engines,
                         min_context=args.min_context, phases=args.phases)
        print(json.dumps(result, indent=1) if args.json else table([result]))
        if args.phases and not args.json:
            from rlpt.phases import phase_table

            print(f"\nphases of the {result['fast_engine']} engine's step:")
            print(phase_table({k: [v] for k, v in result["phases"].items()}))
        return 0
    rows = []
    for name in [args.model] if args.model else MODELS:
        loaded = load_bench_model(name, device)
        for shape in SHAPES:
            rows.append(compare(name, *shape, args.doc_tokens, args.steps, device, loaded, engines=engines))
            print(table(rows[-1:]), flush=True)
        fast = next((e for e in engines if e != "reference"), None)
        if name == ([args.model] if args.model else MODELS)[0] and not args.no_scaling and fast is not None:
            print(scaling_table(name, 4, 1024, args.doc_tokens, args.steps, device, loaded, fast), flush=True)
    print()
    print(table(rows))
    return 0


def main(argv=None) -> int:
    return run(build_parser().parse_args(argv))
