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
from rlpt.memory import Shape

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
        heads, head_dim = config["linear_num_value_heads"], setting(config, "linear_value_head_dim")
        kernel = setting(config, "linear_conv_kernel_dim")
        conv = (2 * key_heads * key_dim + heads * head_dim) * kernel
        ssm = heads * key_dim * head_dim
    else:  # a Mamba-2 mixer, under each family's names
        heads = setting(config, "mamba_num_heads", "mamba_n_heads", "num_heads")
        state = setting(config, "ssm_state_size", "mamba_d_state", "state_size")
        groups = setting(config, "n_groups", "mamba_n_groups")
        kernel = setting(config, "conv_kernel", "mamba_d_conv")
        head_dim = mamba_head_dim(config, heads)
        conv = (heads * head_dim + 2 * groups * state) * kernel
        ssm = heads * head_dim * state
    pattern = config.get("hybrid_override_pattern")
    mlp = sum(c in "-E" for c in pattern) if pattern else (0 if config.get("model_type") in ("mamba2", "mamba") else None)
    return dict(attention_layers=attention, conv_state=recurrent * conv, ssm_state=recurrent * ssm,
                recurrent_layers=recurrent, conv_kernel=kernel, scan_heads=heads, mixer_width=heads * head_dim,
                scan_chunk=config.get("chunk_size") or config.get("mamba_chunk_size") or 256, mlp_layers=mlp)


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


def step_settings(args) -> "StepSettings":
    from rlpt.memory import StepSettings, positions_per_document

    return StepSettings(group_size=args.group_size, thought_tokens=args.thought_tokens, doc_tokens=args.doc_tokens,
                        documents=args.documents, positions=positions_per_document(args.positions, args.doc_tokens),
                        reward_tokens=args.reward_tokens, compute_bytes=2 if args.bf16 else 4,
                        checkpointing=args.gradient_checkpointing, next_token_documents=args.next_token_documents)


def memory_report(shape: Shape, args) -> dict:
    """The chunks `rlpt train` would take (given, or sized to the budget: --memory, else this machine's available
    memory, as training finds it), the parts of the step's peak with them, and each phase's total."""
    from rlpt.memory import available_memory, chunks_that_fit, rollout_parts, step_parts, update_parts

    import torch

    settings = step_settings(args)
    budget = args.memory * 2**30 if args.memory else available_memory(torch.device("cpu"))
    chunks = chunks_that_fit(shape, settings, budget, args.rollout_rows, args.micro_batch_thoughts)
    return dict(settings=settings, budget=budget, chunks=chunks,
                parts=step_parts(shape, settings, chunks.rollout_rows, chunks.micro_batch_thoughts),
                phases={"rollout": sum(rollout_parts(shape, settings, chunks.rollout_rows).values()),
                        "update": sum(update_parts(shape, settings, chunks.micro_batch_thoughts).values())})


def format_memory(shape: Shape, args) -> str:
    report = memory_report(shape, args)
    s, chunks, parts = report["settings"], report["chunks"], report["parts"]
    width = max(len(k) for k in parts)
    lines = [f"memory of one process, {shape.params / 1e6:,.1f}M parameters, G = {s.group_size}, L = "
             f"{s.thought_tokens}, {s.documents} documents of {s.doc_tokens} tokens x {s.positions} positions "
             f"({s.rows:,} rows a step)",
             f"  chunks for {report['budget'] / 2**30:.1f} GiB{'' if args.memory else ' (this machine available)'}: "
             f"train.rollout_rows {chunks.rollout_rows}, train.micro_batch_thoughts {chunks.micro_batch_thoughts}"
             + ("" if chunks.fits else "  (even these do not fit: shard with train.parallel=fsdp, or LoRA)")]
    lines += [f"  {name:<{width}}  {value / 2**30:8.2f} GiB" for name, value in parts.items()]
    lines.append(f"  {'total (the peak)':<{width}}  {sum(parts.values()) / 2**30:8.2f} GiB")
    lines.append(f"  phases beside the fixed parts: rollout {report['phases']['rollout'] / 2**30:.2f} GiB, update "
                 f"{report['phases']['update'] / 2**30:.2f} GiB")
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
    shape.add_argument("--doc-tokens", type=int, default=512, help="tokens of a document (data.max_length)")
    shape.add_argument("--documents", type=int, default=8, help="documents a step a process (train.batch_documents)")
    shape.add_argument("--positions", default="all", help="rlp.positions (all, every:K, random:N, list:...)")
    shape.add_argument("--reward-tokens", type=int, default=1, help="rlp.reward_tokens")
    shape.add_argument("--rollout-rows", type=int, default=0, help="train.rollout_rows (default 0: sized to --memory)")
    shape.add_argument("--micro-batch-thoughts", type=int, default=0, help="train.micro_batch_thoughts (default 0: "
                       "sized to --memory)")
    shape.add_argument("--bf16", action="store_true", help="model.dtype bfloat16 (activations and KV cache)")
    shape.add_argument("--gradient-checkpointing", action="store_true", help="train.gradient_checkpointing")
    shape.add_argument("--next-token-documents", type=int, default=0, help="train.next_token_documents of a "
                       "next-token term beside RLP (train.next_token_data; default 0: none), each of --doc-tokens")
    shape.add_argument("--memory", "--gpu-memory", type=float, help="GiB one process may use (train.memory_gb; "
                       "default: this machine's available memory, as rlpt train finds it)")


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

        memory = {}
        if shape:
            report = memory_report(shape, args)
            memory = {"memory_bytes": report["parts"], "phase_bytes": report["phases"],
                      "chunks": asdict(report["chunks"]), "memory_budget_bytes": report["budget"]}
        return json.dumps({**(asdict(p) if p else {}), **memory}, indent=1)
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


def chunks_for_run(cfg, policy, device, next_token_longest: int, main: bool) -> "Chunks":
    """A training run's rows decoded at once and thoughts of an update micro-batch: `train.rollout_rows` and
    `train.micro_batch_thoughts`, each sized to `train.memory_gb` (or the device's memory) where 0, by `rlpt plan`'s
    arithmetic; the smallest over the ranks, which must run as many micro-batches. `next_token_longest`: the tokens
    of the next-token term's longest document (0: no term), which it runs whole. `main` warns when even the chunks
    chosen exceed the budget."""
    import warnings

    from rlpt import distributed
    from rlpt.memory import Chunks, StepSettings, available_memory, chunks_that_fit, positions_per_document

    given = (cfg.train.rollout_rows, cfg.train.micro_batch_thoughts)
    if all(given):
        return Chunks(*given, fits=True)
    model = policy.get_base_model() if hasattr(policy, "get_base_model") else policy
    model = getattr(model, "module", model)  # DDP's wrapped model
    try:
        shape = config_shape(model.config.get_text_config().to_dict())
    except UserError as exc:
        warnings.warn(f"train.memory_gb: rlpt cannot read this model's layout ({exc}); the chunks left at 0 "
                      f"are 256 thoughts (set train.rollout_rows and train.micro_batch_thoughts)", stacklevel=3)
        return Chunks(given[0] or 256, given[1] or 256, fits=True)
    shape.counted_params = sum(p.numel() for p in model.parameters())
    settings = StepSettings(
        group_size=cfg.rlp.group_size, thought_tokens=cfg.rlp.max_thought_tokens, doc_tokens=cfg.data.max_length,
        documents=cfg.train.batch_documents, positions=positions_per_document(cfg.rlp.positions, cfg.data.max_length),
        reward_tokens=cfg.rlp.reward_tokens, compute_bytes=2 if cfg.model.dtype == "bfloat16" else 4,
        checkpointing=cfg.train.gradient_checkpointing,
        next_token_documents=cfg.train.next_token_documents if next_token_longest else 0,
        next_token_doc_tokens=next_token_longest)
    budget = cfg.train.memory_gb * 2**30 if cfg.train.memory_gb else available_memory(device)
    chunks = chunks_that_fit(shape, settings, budget, *given)
    sizes = distributed.all_gather([chunks.rollout_rows, chunks.micro_batch_thoughts])
    chunks = Chunks(min(s[0] for s in sizes), min(s[1] for s in sizes), chunks.fits)
    if not chunks.fits and main:
        warnings.warn(f"train.memory_gb: {chunks.rollout_rows} rows decoded at once and {chunks.micro_batch_thoughts} "
                      f"thoughts a micro-batch exceed {budget / 2**30:.1f} GiB by rlpt plan's count; the run may run "
                      "out of memory", stacklevel=3)
    return chunks
