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
    parser.add_argument("--params", type=float, required=True, help="model parameters N, e.g. 1.7e9")
    parser.add_argument("--tokens", type=float, required=True, help="input tokens T_inp the run reads, e.g. 170e6")
    parser.add_argument("--group-size", type=int, default=16, help="G, thoughts per context")
    parser.add_argument("--thought-tokens", type=int, default=2048, help="L, the thought length")
    parser.add_argument("--batch", type=int, default=512, help="contexts per step")
    parser.add_argument("--steps", type=int, required=True, help="optimizer steps")
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation (default 0.4)")
    parser.add_argument("--gpu-flops", type=float, default=H100_BF16_FLOPS, help="peak FLOP/s of one GPU (H100 bf16)")
    parser.add_argument("--count-prompt", action="store_true", help="count the mean context in l_seq of T_flop")
    parser.add_argument("--json", action="store_true")


def run(args) -> str:
    from rlpt.errors import UserError

    for name in ("params", "tokens", "group_size", "thought_tokens", "batch", "steps", "gpus", "mfu", "gpu_flops"):
        if getattr(args, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be > 0")
    p = plan(args.params, args.tokens, args.group_size, args.thought_tokens, args.batch, args.steps, args.gpus,
             args.mfu, args.count_prompt, args.gpu_flops)
    if args.json:
        import json

        return json.dumps(asdict(p), indent=1)
    return format_plan(p, args)
