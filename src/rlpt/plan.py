"""`rlpt plan`: price an RLP run before starting it (the compute model of arXiv 2510.01265, Appendix 11).

With N parameters, a forward costs ~2N FLOPs per token and a forward+backward ~6N. Per run, with R = G * L * bs *
iters thought (rollout) tokens and T_inp input tokens, rlpt's packed engine spends:
- 2N * T_inp: the EMA teacher's forward over the documents (S_ema);
- 2N * T_inp: the policy's forward over the documents (the keys and values every thought attends to);
- 2N * R: sampling the thoughts, one token at a time;
- 6N * (T_inp + R): the update, a forward+backward over the documents and the thoughts.
The FLOP-matched CPT budget is the paper's T_flop = n * l_seq * bs * iters + T_inp. rlpt takes l_seq to be the
thought length L (the rollout, not the prompt): with the paper's setting that gives ~3.5B tokens. The paper reports
"approximately 6B"; `--count-prompt` adds the mean context length T_inp / (bs * iters) to l_seq, which gives 6.2B.
GPU-hours take one utilisation (`--mfu`) for the whole run; token-by-token decoding runs well below a training MFU,
so they are a floor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rlpt.baselines.cpt import flop_matched_tokens
from rlpt.errors import UserError

H100_BF16_FLOPS = 989e12  # dense bf16 peak of one H100 SXM


@dataclass
class Plan:
    rollout_tokens: float
    input_tokens: float
    update_tokens: float
    flops: float
    cpt_flop_matched_tokens: float
    l_seq: float
    gpu_hours: float
    wall_hours: float


def plan(params: float, tokens: float, group_size: int, thought_tokens: int, batch: int, steps: int, gpus: int,
         mfu: float = 0.4, count_prompt: bool = False, gpu_flops: float = H100_BF16_FLOPS) -> Plan:
    rollout = group_size * thought_tokens * batch * steps
    flops = params * (2 * tokens + 2 * tokens + 2 * rollout + 6 * (tokens + rollout))
    l_seq = thought_tokens + (tokens / (batch * steps) if count_prompt else 0)
    gpu_hours = flops / (gpu_flops * mfu) / 3600
    return Plan(
        rollout_tokens=rollout, input_tokens=tokens, update_tokens=tokens + rollout, flops=flops,
        cpt_flop_matched_tokens=flop_matched_tokens(group_size, l_seq, batch, steps, round(tokens)), l_seq=l_seq,
        gpu_hours=gpu_hours, wall_hours=gpu_hours / gpus,
    )


@dataclass
class Shape:
    """What memory depends on in a causal LM: its sizes (from its config.json, or given)."""

    layers: int
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    attention_layers: int | None = None  # layers with a KV cache (a hybrid model's attention layers); None: all
    conv_state: int = 0  # per row: the recurrent layers' convolution states, values (in the compute dtype)
    ssm_state: int = 0  # per row: their SSM / linear-attention states, float32 values
    counted_params: int | None = None  # the model's own count, where known

    @property
    def params(self) -> int:
        """The model's own count when known; else the weights of a Llama-like model with tied embeddings (attention,
        gated MLP, two norms a layer, a final one)."""
        if self.counted_params is not None:
            return self.counted_params
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return self.vocab * self.hidden + self.layers * layer + self.hidden

    @property
    def kv_layers(self) -> int:
        return self.layers if self.attention_layers is None else self.attention_layers


def shape_of(folder: str) -> Shape:
    import json
    from pathlib import Path

    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"--model: {folder} has no readable config.json") from exc
    try:
        shape = config_shape(config.get("text_config", config) if isinstance(config, dict) else {})
    except UserError as exc:  # name the folder: the config's own message does not know it
        raise UserError(f"--model: {folder}/config.json is not a layout rlpt plan understands: {exc}") from exc
    shape.counted_params = parameter_count(folder)
    return shape


def config_shape(config: dict) -> Shape:
    """The sizes a config.json (its text part) gives; a UserError naming what it lacks or what is not understood."""
    heads = config.get("num_attention_heads") or config.get("n_head") or 1
    hidden = setting(config, "hidden_size", "n_embd")
    layers = config.get("num_hidden_layers") or config.get("n_layer") or len(layer_types(config))
    if not layers:
        raise missing("num_hidden_layers", "n_layer", "layer_types")
    return Shape(layers=layers, hidden=hidden, vocab=setting(config, "vocab_size"), heads=heads,
                 kv_heads=config.get("num_key_value_heads") or heads, head_dim=config.get("head_dim") or hidden // heads,
                 intermediate=config.get("intermediate_size") or config.get("n_inner") or 4 * hidden,
                 **recurrent_sizes(config, layers))


def setting(config: dict, *names: str):
    """The first of `names` the config sets (to other than None or "auto"); a UserError naming them all if none."""
    for name in names:
        if config.get(name) not in (None, "auto"):
            return config[name]
    raise missing(*names)


def missing(*names: str) -> UserError:
    return UserError(f"it sets none of {', '.join(names)}")


# what a layer of each kind keeps while decoding: (keys and values, a recurrent state). transformers 5 names the
# layers of attention-only models too (Qwen2, Qwen3, Gemma3: full or sliding, a window's cache counted whole, a bound)
# and renamed "attention" and "mamba"; a Mamba-2 mixer and a gated DeltaNet are both "linear_attention"
LAYER_KINDS = {"full_attention": (1, 0), "sliding_attention": (1, 0), "chunked_attention": (1, 0), "attention": (1, 0),
               "linear_attention": (0, 1), "mamba": (0, 1), "hybrid": (1, 1), "mlp": (0, 0), "moe": (0, 0)}


def layer_types(config: dict) -> list[str]:
    """Each layer's kind, as transformers' configs name them (LAYER_KINDS: `full_attention`, `linear_attention`,
    `hybrid`: both, `mlp`, `moe`, ...); [] for a model of attention layers that does not name them."""
    kinds = config.get("layer_types") or config.get("layers_block_type")
    if kinds:
        if not isinstance(kinds, list):
            raise UserError(f"its layer_types {kinds!r} is not a list of layer kinds")
        return kinds
    pattern = config.get("hybrid_override_pattern")
    if pattern:  # a letter not in the map stays as it is, and is not understood
        return [{"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}.get(c, c) for c in pattern]
    kind = config.get("model_type")
    if kind == "falcon_h1":
        return ["hybrid"] * setting(config, "num_hidden_layers")
    if kind in ("mamba2", "mamba"):
        return ["linear_attention"] * setting(config, "num_hidden_layers")
    return []


def recurrent_sizes(config: dict, layers: int) -> dict:
    """The recurrent layers' states per batch row, summed over layers (Mamba-2 mixers: a convolution over its input,
    B and C, and an SSM state per head; gated DeltaNet: a convolution over q, k, v and a state per value head), and
    how many layers keep keys and values; {} for a model that does not name its layers (all attention)."""
    kinds = layer_types(config)
    unknown = sorted({repr(k) for k in kinds if not isinstance(k, str) or k not in LAYER_KINDS})
    if unknown:
        raise UserError(f"layer kind {', '.join(unknown)} not understood (rlpt knows {', '.join(LAYER_KINDS)})")
    attention = sum(LAYER_KINDS[k][0] for k in kinds)
    recurrent = sum(LAYER_KINDS[k][1] for k in kinds)
    if not recurrent:  # attention only, full or windowed: no state to size
        return dict(attention_layers=attention) if kinds else {}
    if config.get("linear_num_value_heads"):  # gated DeltaNet (Qwen3Next)
        key_heads, key_dim = setting(config, "linear_num_key_heads"), setting(config, "linear_key_head_dim")
        value_heads, value_dim = config["linear_num_value_heads"], setting(config, "linear_value_head_dim")
        conv = (2 * key_heads * key_dim + value_heads * value_dim) * setting(config, "linear_conv_kernel_dim")
        ssm = value_heads * key_dim * value_dim
    else:  # a Mamba-2 mixer, under each family's names
        heads = setting(config, "mamba_num_heads", "mamba_n_heads", "num_heads")
        state = setting(config, "ssm_state_size", "mamba_d_state", "state_size")
        groups = setting(config, "n_groups", "mamba_n_groups")
        kernel = setting(config, "conv_kernel", "mamba_d_conv")
        head_dim = mamba_head_dim(config, heads)
        conv = (heads * head_dim + 2 * groups * state) * kernel
        ssm = heads * head_dim * state
    return dict(attention_layers=attention, conv_state=recurrent * conv, ssm_state=recurrent * ssm)


def mamba_head_dim(config: dict, heads: int) -> int:
    """A Mamba-2 head's width: Mamba2's head_dim, NemotronH's mamba_head_dim, FalconH1's mamba_d_head, or where that
    is "auto", FalconH1's SSM width over the heads (a NemotronH or FalconH1 head_dim is its attention's)."""
    if config.get("model_type") == "mamba2":
        return setting(config, "head_dim")
    if any(config.get(name) not in (None, "auto") for name in ("mamba_head_dim", "mamba_d_head")):
        return setting(config, "mamba_head_dim", "mamba_d_head")
    if config.get("mamba_d_ssm") is None:
        raise missing("mamba_head_dim", "mamba_d_head", "mamba_d_ssm")
    return config["mamba_d_ssm"] // heads


def parameter_count(folder: str) -> int | None:
    """The model's own parameter count, built without memory (on the meta device); None where that fails."""
    try:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
        return sum(p.numel() for p in model.parameters())
    except Exception:  # an unknown architecture: the Llama-like count
        return None


# float32 values the update keeps per thought token and layer for the backward, besides attention: the layer's input,
# normed input, q/k/v, rotated q/k, attention output and its projection, residual, normed residual (about 10 x hidden)
# and the MLP's gate, up, activation and product (4 x intermediate). Attention keeps its scores and their softmax.
ACTIVATIONS_PER_HIDDEN, ACTIVATIONS_PER_INTERMEDIATE, ATTENTION_COPIES = 10, 4, 2
# float32 copies of a log-prob chunk's logits at once: the logits (turned into their gradient in place in the backward),
# the exponentials inside the log-sum-exp, and what the allocator holds between chunks: 3.1 measured on CPU
# (`bench/memory.py`'s run at 8k, chunks of 2^24 against 2^20 logits), rounded up
LOGIT_COPIES = 4


def memory(shape: Shape, group_size: int, thought_tokens: int, doc_tokens: int, micro_batch_thoughts: int,
           compute_bytes: int = 4, checkpointing: bool = False, next_token_documents: int = 0) -> dict[str, float]:
    """Bytes on one GPU of training one context's group (DDP: every GPU holds all of it), by part. The master
    weights, their gradients, Adam's two moments and the EMA teacher are float32; the KV cache of decoding and the
    activations are in the compute dtype (`compute_bytes`). The update runs `micro_batch_thoughts` thoughts at a time,
    and takes its log-probs a chunk of at most CHUNK_ELEMENTS logits at a time (`rlpt.logprobs`). The next-token term
    (`train.next_token_documents` documents of `doc_tokens`, 0: none) runs its forward and backward before the
    update's, so only what its activations need beyond the update's counts; its log-probs are chunked too. (Under
    DDP or FSDP the term takes its full logits, in micro-batches of at most CHUNK_ELEMENTS logits, one document at
    least: 3 float32 copies of those, not counted here.)"""
    from rlpt.logprobs import CHUNK_ELEMENTS

    n = shape.params
    kv = 2 * shape.kv_layers * shape.kv_heads * shape.head_dim * compute_bytes  # bytes of one token's keys and values
    states = shape.conv_state * compute_bytes + shape.ssm_state * 4  # bytes of one row's recurrent states
    tokens = micro_batch_thoughts * thought_tokens
    kept_layers = 1 if checkpointing else shape.layers  # checkpointed: one layer's at a time, plus every layer input
    activations = tokens * (token_activations(shape, doc_tokens + thought_tokens, compute_bytes) * kept_layers
                            + (shape.layers * shape.hidden * compute_bytes if checkpointing else 0))
    next_token = next_token_documents * doc_tokens * token_activations(shape, doc_tokens, compute_bytes) * shape.layers
    logits = LOGIT_COPIES * 4 * min(CHUNK_ELEMENTS, max(tokens, next_token_documents * doc_tokens) * shape.vocab)
    return {
        "weights (float32)": 4 * n, "gradients (float32)": 4 * n, "Adam moments (float32)": 8 * n,
        "EMA teacher (float32)": 4 * n,
        "decoding KV cache (document once, G thought rows)": kv * (doc_tokens + group_size * thought_tokens),
        # the recurrent engine: the states at the context's position, and each of the G rows' own
        "recurrent states (conv and SSM; the position's and G rows')": states * (1 + group_size),
        "update activations (one micro-batch)": activations,
        "next-token term's activations beyond the update's": max(0, next_token - activations), "log-prob chunk": logits,
        # float32: added into the gradient in place; bfloat16: the head's weight cast once, and a chunk's product
        "output head's gradient of one chunk": 0 if compute_bytes == 4 else 2 * compute_bytes * shape.vocab * shape.hidden,
    }


def token_activations(shape: Shape, context: int, compute_bytes: int) -> int:
    """Bytes one token keeps for the backward in one layer, attending to `context` tokens."""
    return (ACTIVATIONS_PER_HIDDEN * shape.hidden + ACTIVATIONS_PER_INTERMEDIATE * shape.intermediate
            + ATTENTION_COPIES * shape.heads * context) * compute_bytes


def largest_micro_batch(shape: Shape, gpu_bytes: float, **kwargs) -> int:
    """The most thoughts per update chunk whose total fits `gpu_bytes` (0: not even one)."""
    best = 0
    for m in range(1, kwargs["group_size"] + 1):
        if sum(memory(shape, micro_batch_thoughts=m, **kwargs).values()) <= gpu_bytes:
            best = m
    return best


def memory_settings(args) -> dict:
    return dict(group_size=args.group_size, thought_tokens=args.thought_tokens, doc_tokens=args.doc_tokens,
                compute_bytes=2 if args.bf16 else 4, checkpointing=args.gradient_checkpointing,
                next_token_documents=args.next_token_documents)


def memory_parts(shape: Shape, args) -> dict[str, float]:
    return memory(shape, micro_batch_thoughts=args.micro_batch_thoughts, **memory_settings(args))


def format_memory(shape: Shape, args) -> str:
    settings = memory_settings(args)
    parts = memory(shape, micro_batch_thoughts=args.micro_batch_thoughts, **settings)
    width = max(len(k) for k in parts)
    lines = [f"memory on one GPU, {shape.params / 1e6:,.1f}M parameters, G = {args.group_size}, L = "
             f"{args.thought_tokens}, {args.micro_batch_thoughts} thoughts a micro-batch:"]
    lines += [f"  {name:<{width}}  {value / 2**30:8.2f} GiB" for name, value in parts.items()]
    lines.append(f"  {'total':<{width}}  {sum(parts.values()) / 2**30:8.2f} GiB")
    if args.gpu_memory:
        fits = largest_micro_batch(shape, args.gpu_memory * 2**30, **settings)
        lines.append(f"  train.micro_batch_thoughts that fits {args.gpu_memory:g} GiB: "
                     + (str(fits) if fits else "none (shard with train.parallel=fsdp, or LoRA)"))
    return "\n".join(lines)


def format_plan(p: Plan, args) -> str:
    rows = [
        ("thought (rollout) tokens  R = G * L * batch * steps", f"{p.rollout_tokens:.3e}"),
        ("input tokens  T_inp", f"{p.input_tokens:.3e}"),
        ("update tokens (documents + thoughts, forward+backward)", f"{p.update_tokens:.3e}"),
        ("FLOPs  N * (10 T_inp + 8 R)", f"{p.flops:.3e}"),
        (f"FLOP-matched CPT tokens  G * l_seq * batch * steps + T_inp (l_seq = {p.l_seq:.0f})", f"{p.cpt_flop_matched_tokens:.3e}"),
        (f"GPU-hours at {args.mfu:.0%} of {args.gpu_flops:.3g} FLOP/s", f"{p.gpu_hours:,.1f}"),
        (f"wall-clock hours on {args.gpus} GPUs", f"{p.wall_hours:,.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def add_arguments(parser) -> None:
    parser.add_argument("--params", type=float, help="model parameters N, e.g. 1.7e9 (default: the model's, when its "
                        "sizes are given)")
    parser.add_argument("--tokens", type=float, help="input tokens T_inp the run reads, e.g. 170e6")
    parser.add_argument("--group-size", type=int, default=16, help="G, thoughts per context")
    parser.add_argument("--thought-tokens", type=int, default=2048, help="L, the thought length")
    parser.add_argument("--batch", type=int, default=512, help="contexts per step")
    parser.add_argument("--steps", type=int, help="optimizer steps")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation (default 0.4)")
    parser.add_argument("--gpu-flops", type=float, default=H100_BF16_FLOPS, help="peak FLOP/s of one GPU (H100 bf16)")
    parser.add_argument("--count-prompt", action="store_true", help="count the mean context in l_seq of T_flop")
    parser.add_argument("--json", action="store_true")
    shape = parser.add_argument_group("memory (with --model or the model's sizes)")
    shape.add_argument("--model", help="a Hugging Face model folder: its config.json gives the sizes")
    for flag in ("layers", "hidden", "vocab", "heads", "kv-heads", "head-dim", "intermediate"):
        shape.add_argument(f"--{flag}", type=int)
    shape.add_argument("--doc-tokens", type=int, default=512, help="tokens of a context's document")
    shape.add_argument("--micro-batch-thoughts", type=int, default=16, help="train.micro_batch_thoughts")
    shape.add_argument("--bf16", action="store_true", help="model.dtype bfloat16 (activations and KV cache)")
    shape.add_argument("--gradient-checkpointing", action="store_true", help="train.gradient_checkpointing")
    shape.add_argument("--next-token-documents", type=int, default=0, help="train.next_token_documents of a "
                       "next-token term beside RLP (train.next_token_data; default 0: none), each of --doc-tokens")
    shape.add_argument("--gpu-memory", type=float, help="GiB of one GPU: the largest micro-batch that fits")


def run(args) -> str:
    """The compute plan (with --tokens and --steps), the memory of one GPU (with a model's sizes), or both."""
    shape = model_shape(args)
    params = args.params if args.params is not None else (shape.params if shape else None)
    computing = args.tokens is not None or args.steps is not None
    if not computing and shape is None:
        raise UserError("plan: give --tokens and --steps (and --params or the model) for the compute plan, or the "
                        "model (--model DIR, or --layers, --hidden, --vocab and --heads) for its memory")
    if computing and None in (params, args.tokens, args.steps):
        raise UserError("plan: the compute plan needs --params (or the model), --tokens and --steps")
    checks = [(name, getattr(args, name)) for name in ("group_size", "thought_tokens", "batch", "gpus", "mfu", "gpu_flops")]
    if computing:
        checks = [("params", params), ("tokens", args.tokens), ("steps", args.steps)] + checks
    for name, value in checks:
        if value <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0")
    p = plan(params, args.tokens, args.group_size, args.thought_tokens, args.batch, args.steps, args.gpus, args.mfu,
             args.count_prompt, args.gpu_flops) if computing else None
    if args.json:
        import json

        return json.dumps({**(asdict(p) if p else {}), **({"memory_bytes": memory_parts(shape, args)} if shape else {})},
                          indent=1)
    return "\n".join(([format_plan(p, args)] if p else []) + ([format_memory(shape, args)] if shape else []))


def model_shape(args) -> Shape | None:
    if args.model:
        return shape_of(args.model)
    if args.layers is None and args.hidden is None and args.vocab is None:
        return None
    if None in (args.layers, args.hidden, args.vocab, args.heads):
        raise UserError("memory: give --model DIR, or --layers, --hidden, --vocab and --heads")
    heads = args.heads
    return Shape(layers=args.layers, hidden=args.hidden, vocab=args.vocab, heads=heads,
                 kv_heads=args.kv_heads or heads, head_dim=args.head_dim or args.hidden // heads,
                 intermediate=args.intermediate or 4 * args.hidden)
