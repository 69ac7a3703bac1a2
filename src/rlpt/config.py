"""The run configuration: one tree of small dataclasses, read from YAML and `--set section.key=value` overrides.

Field defaults are the paper's (G=16, thoughts up to 2048 tokens, temperature 0.7, constant lr 1e-6, KL weight 0).
`rlpt train` without `--config` uses BUILTIN_DEFAULT on top of them: the tiny model and arithmetic corpus, sized to
finish on a laptop CPU in minutes.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from rlpt.errors import UserError


@dataclass
class ModelConfig:
    name_or_path: str = "builtin:tiny"
    """`builtin:tiny` or a local Hugging Face causal-LM folder."""
    dtype: str = "float32"
    """Compute dtype of training: float32 or bfloat16. Weights, optimizer state and the EMA teacher stay float32
    (master weights); bfloat16 runs the forwards and backwards in bfloat16. (`rlpt eval` loads weights in it.)"""
    lora: dict = field(default_factory=dict)
    """LoRA through PEFT, e.g. `{r: 16, alpha: 32, target_modules: all-linear}` (also `dropout`); empty = train every
    weight. The EMA teacher then holds the adapters alone."""


@dataclass
class DataConfig:
    path: str = "builtin:arith"
    """`builtin:NAME`, a file, a folder or a glob."""
    format: str = "auto"
    """`text` (one document per file, or per blank-line-separated block with `data.split_paragraphs`), `jsonl`, or
    `auto` (by file extension)."""
    text_field: str = "text"
    """The JSONL field holding a document's text."""
    max_length: int = 512
    """Documents are cut into windows of at most this many tokens."""
    split_paragraphs: bool = False
    """For text files: one document per blank-line-separated block instead of one per file."""


@dataclass
class RlpConfig:
    group_size: int = 16
    """G: thoughts sampled per (document, position); >= 2."""
    max_thought_tokens: int = 2048
    """A thought ends at `</think>` or after this many tokens (then `</think>` is forced)."""
    temperature: float = 0.7
    """Sampling temperature of thoughts; the PPO ratio uses the same tempered distribution."""
    eps_low: float = 0.2
    """Lower clip range of the ratio (the paper does not state it; PPO's 0.2)."""
    eps_high: float = 0.2
    """Upper clip range of the ratio."""
    ema_decay: float = 0.999
    """tau of the EMA teacher: phi <- tau phi + (1 - tau) theta after each optimizer step."""
    kl_coef: float = 0.0
    """Weight of a KL penalty (k3 estimator) of the thought tokens to the EMA teacher; 0 = off (the paper)."""
    baseline_excludes_think: bool = False
    """Renormalise the no-think baseline over tokens other than the think tags (see README)."""
    positions: str = "all"
    """Which positions t get thoughts: all, every:K, random:N, list:T1,T2,..., after:TEXT, first:TEXT, answer (the
    answer of each question/answer record of a JSONL corpus)."""
    engine: str = "packed"
    """Thought engine: `packed` (one forward per document; fast; a model with recurrent state gets `recurrent`, its
    equivalent, and one neither can serve `reference`), `recurrent`, or `reference` (one row per thought; the
    oracle)."""
    compile_decoding: bool = False
    """Compile the packed engine's decoding step with `torch.compile`. It pays where decoding is bound by per-step
    overhead (few rows a step: ~1.25x faster steps in `bench/vs_trl.py`), not where it is bound by arithmetic; compiling
    takes 10-60 s at the first batch and at the first batch of another shape."""
    reward: str = "information_gain"
    """`information_gain` (RLP); `rpt`: RPT's sparse reward, 1 when the token predicted after the thought is the
    document's next token(s), else 0 (the baseline of `rlpt experiment`); or `verifier` (RLVR): 1 when the model's
    greedy answer after a closed thought is the scored text (the `rlp.reward_tokens` after each position: put the
    positions before answers, `answer` on question/answer records or `first:MARKER`, and score the whole answer), 0
    otherwise or when the thought was cut."""
    normalize_advantages: bool = False
    """Divide each group's advantages by the group's reward std (off: the paper's advantage)."""
    rank_advantages: bool = False
    """Advantages from each thought's standing in its group instead of its reward's distance from the group mean:
    (wins - losses) / (G - 1), rewards within 0.01 nats tying (off: the paper's advantage)."""
    reward_tokens: int = 1
    """K: the information gain scores x_t .. x_{t+K-1} after the thought (teacher-forced, cut at the document's end)
    against the EMA teacher's no-think log-likelihood of the same tokens; 1 = the paper (the next token alone)."""
    reward_discount: float = 1.0
    """gamma: term k of a K-token reward is weighted gamma^k."""
    updates_per_batch: int = 1
    """mu: optimizer steps on each batch of rollouts, the ratio against the policy that sampled them (theta_old);
    the EMA teacher moves after each. 1 = the paper (the ratio is 1)."""
    dynamic_sampling: int = 0
    """DAPO's dynamic sampling: up to this many more rounds of positions drawn a step (fresh positions, fresh thoughts),
    the batch filled with the groups that carry signal (rewards more than 0.01 nats apart), up to as many groups as
    the first round drew; a later round draws no position already kept. 0: off, one round, every group kept."""
    loss_coef: float = 1.0
    """Weight of the RLP surrogate in the loss. 0 with `train.next_token_data` trains the next-token term alone: the
    control that a mixed objective must be compared with."""


@dataclass
class TrainConfig:
    lr: float = 1e-6
    """AdamW learning rate, constant."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    batch_documents: int = 8
    """Documents per optimizer step per process (every chosen position of each gets G thoughts); N processes take
    N times as many."""
    micro_batch_thoughts: int = 0
    """Thoughts per forward/backward chunk of the update (gradient accumulation); lowers memory, not the result. Of
    one document's rows: over several documents, half as many at most (`memory.micro_batches`). 0: as many as fit
    `train.memory_gb`, by `rlpt plan`'s arithmetic."""
    rollout_rows: int = 0
    """Thought rows decoded at once (rounded down to whole groups of G, one group at least); the step's rollout runs
    in chunks of them, with the same thoughts and rewards as one pass. 0: as many as fit `train.memory_gb`."""
    memory_gb: float = 0.0
    """GiB one process may use, which the two chunks above are sized to when 0. 0: the device's (a GPU's memory; on
    CPU what the system has available when the run starts)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer of the update's thought rows in the backward instead of keeping its activations:
    less memory for long thoughts, the same gradients, about one more forward of time."""
    max_steps: int = 100
    """Optimizer steps of the run."""
    seed: int = 0
    """Seeds documents, positions and thoughts; the same seed gives the same run."""
    grad_clip: float = 1.0
    """Max global gradient norm (0 = no clipping)."""
    checkpoint_every: int = 50
    """Save a checkpoint every N steps (and at the end); 0 = only at the end."""
    dump_rollouts: bool = False
    """Write every thought with its reward to rollouts.jsonl."""
    next_token_data: str = ""
    """A corpus (any `data.path`) for a next-token loss added to RLP's at every optimizer step (as PPO-ptx mixes
    pretraining into RL), e.g. documents that show worked thoughts, to hold the step from thought to answer, which RLP
    does not train; empty = off (the paper)."""
    next_token_coef: float = 1.0
    """Weight of that next-token loss."""
    next_token_documents: int = 16
    """Documents of `train.next_token_data` per optimizer step, per process (drawn with replacement, seeded)."""
    device: str = "auto"
    """`auto` (CUDA when available), `cpu`, `cuda`, `cuda:N`; under torchrun each process takes the GPU of its rank."""
    parallel: str = "ddp"
    """Across processes (torchrun): `ddp` (each holds the model; gradients averaged) or `fsdp` (FSDP2: weights,
    gradients, optimizer state and EMA teacher sharded; checkpoints with torch.distributed.checkpoint)."""
    report_to: list = field(default_factory=lambda: ["jsonl"])
    """Where metrics go: `jsonl` (metrics.jsonl, always written), `tensorboard` (RUN/tensorboard/), `wandb`
    (RUN/wandb/, offline unless WANDB_MODE says otherwise)."""
    dist_timeout_s: float = 600.0
    """Seconds a process waits in a collective (for a rank that died or hangs) before it stops with an error."""


@dataclass
class EvalConfig:
    tasks: str = ""
    """Question/answer JSONL or `builtin:arith`, scored with thinking before and after training; empty = none."""
    max_questions: int = 256
    """Use at most this many questions."""
    max_thought_tokens: int = 64
    """Thought budget at evaluation (greedy)."""


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rlp: RlpConfig = field(default_factory=RlpConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# `rlpt train` with no --config: the tiny model on 3-digit addition, whose warm start forgets most carries (tiny.py).
# Thoughts go at t = 9, the first answer digit (`<bos>` + 8 characters of `347+185=`), where the warm start showed
# worked thoughts; the reward scores the whole answer (up to 4 digits and the period: K = 5), since a forgotten carry
# changes a digit after the first; temperature 1.0 keeps the group's thoughts apart for longer. Next-token training
# continues on the model's own warm-start corpus beside RLP (as PPO-ptx mixes pretraining into RL): it holds the step
# from thought to answer, which RLP does not train, and by itself pulls the carries back to 40%. Measured in
# docs/default-run.md; README: "The built-in default".
BUILTIN_DEFAULT = {
    "model": {"name_or_path": "builtin:tiny"},
    "data": {"path": "builtin:arith"},
    "rlp": {"group_size": 8, "max_thought_tokens": 32, "positions": "list:9", "reward_tokens": 5, "temperature": 1.0},
    "train": {"lr": 1e-4, "batch_documents": 16, "max_steps": 30, "checkpoint_every": 10, "dump_rollouts": True,
              "next_token_data": "builtin:arith-warm"},
    "eval": {"tasks": "builtin:arith", "max_questions": 256, "max_thought_tokens": 32},
}

POSITION_RULE = re.compile(r"^(all|answer|every:[1-9]\d*|random:[1-9]\d*|list:\d+(,\d+)*|after:.+|first:.+)$", re.S)


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def _coerce(key: str, raw, current):
    """Turn a YAML/--set value into the type of the field's default, or raise naming the key."""
    kind = type(current)
    if kind is str:
        return "" if raw is None else str(raw)
    if kind is list:  # a YAML list, or names separated by commas (`train.report_to=jsonl,tensorboard`)
        value = raw
        if isinstance(raw, str):
            value = yaml.safe_load(raw) if raw.strip().startswith("[") else [p.strip() for p in raw.split(",") if p.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
    if kind is dict:  # a YAML mapping, or one written inline with --set (`model.lora={r: 8}`)
        value = yaml.safe_load(raw) if isinstance(raw, str) else raw
        if value is None or isinstance(value, dict):
            return dict(value or {})
    if isinstance(raw, str):  # from --set, or a YAML string: parse by the field's type
        text = raw.strip().lower()
        try:
            if kind is bool and text in ("true", "false", "yes", "no", "1", "0"):
                return text in ("true", "yes", "1")
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
        except ValueError:
            pass
    elif kind is bool and isinstance(raw, bool):
        return raw
    elif kind is int and isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    elif kind is float and isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return float(raw)
    raise UserError(f"config key {key}: expected {kind.__name__}, got {raw!r}")


def apply(cfg: Config, values: dict, source: str) -> None:
    """Set every `section.key` of a nested dict on `cfg`; unknown sections or keys are errors naming `source`."""
    if not isinstance(values, dict):
        raise UserError(f"{source}: expected a mapping of sections (model, data, rlp, train, eval)")
    for section_name, section_values in values.items():
        section = getattr(cfg, str(section_name), None)
        if not dataclasses.is_dataclass(section):
            raise UserError(f"{source}: unknown config section {section_name!r} (known: {[f.name for f in dataclasses.fields(cfg)]})")
        if not isinstance(section_values, dict):
            raise UserError(f"{source}: section {section_name!r} must be a mapping of keys")
        known = {f.name for f in dataclasses.fields(section)}
        for key, raw in section_values.items():
            if key not in known:
                raise UserError(f"{source}: unknown config key {section_name}.{key} (known: {sorted(known)})")
            setattr(section, key, _coerce(f"{section_name}.{key}", raw, getattr(section, key)))


def parse_override(text: str) -> dict:
    """`rlp.group_size=4` -> {"rlp": {"group_size": "4"}} (typed later against the field)."""
    if "=" not in text or "." not in text.split("=", 1)[0]:
        raise UserError(f"--set {text!r}: expected section.key=value, e.g. rlp.group_size=4")
    dotted, value = text.split("=", 1)
    section, key = dotted.split(".", 1)
    return {section: {key: value}}


def is_builtin_demo(path: str | None, overrides: list[str] = ()) -> bool:
    """The built-in default's settings are for the built-in demo only: no --config file and no corpus of one's own
    (`--set data.path=...`); any other run starts from the paper's defaults."""
    return path is None and not any(text.split("=", 1)[0].strip() == "data.path" for text in overrides)


def paper_defaults(overrides: list[str] = ()) -> Config:
    """The paper's defaults with `overrides` (`key=value`), never the built-in demo's settings: for programs that set
    up a run of their own (the benchmarks), whose workload must not change when the demo's does."""
    return with_overrides(Config(), overrides)


def with_overrides(cfg: Config, overrides: list[str]) -> Config:
    """`cfg` with each `key=value` of `overrides` applied, then validated."""
    for text in overrides:
        apply(cfg, parse_override(text), f"--set {text}")
    validate(cfg)
    return cfg


def load(path: str | None = None, overrides: list[str] = ()) -> Config:
    """The config of a run: paper defaults, then the built-in default (the built-in demo) or the YAML file, then
    --set."""
    cfg = Config()
    if is_builtin_demo(path, overrides):
        apply(cfg, BUILTIN_DEFAULT, "built-in default")
    elif path is not None:
        file = Path(path)
        try:
            values = yaml.safe_load(file.read_text())
        except OSError as exc:
            raise UserError(f"--config {path}: cannot read ({exc.strerror})") from exc
        except yaml.YAMLError as exc:  # one line: file, line and column, and what is wrong there
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            raise UserError(f"--config {path}{where}: not valid YAML ({problem})") from exc
        apply(cfg, values or {}, str(path))
    return with_overrides(cfg, overrides)


def validate(cfg: Config) -> None:
    checks = [
        (cfg.rlp.group_size >= 2, "rlp.group_size must be >= 2 (advantages compare thoughts within a group)"),
        (cfg.rlp.max_thought_tokens >= 1, "rlp.max_thought_tokens must be >= 1"),
        (cfg.rlp.temperature > 0, "rlp.temperature must be > 0"),
        (cfg.rlp.eps_low >= 0 and cfg.rlp.eps_high >= 0, "rlp.eps_low and rlp.eps_high must be >= 0"),
        (0 <= cfg.rlp.ema_decay < 1, "rlp.ema_decay must be in [0, 1)"),
        (cfg.rlp.kl_coef >= 0, "rlp.kl_coef must be >= 0"),
        (cfg.rlp.reward_tokens >= 1, "rlp.reward_tokens must be >= 1"),
        (not (cfg.rlp.rank_advantages and cfg.rlp.normalize_advantages),
         "rlp.rank_advantages and rlp.normalize_advantages are two ways to scale advantages: choose one"),
        (0 < cfg.rlp.reward_discount <= 1, "rlp.reward_discount must be in (0, 1]"),
        (cfg.rlp.updates_per_batch >= 1, "rlp.updates_per_batch must be >= 1"),
        (cfg.rlp.dynamic_sampling >= 0, "rlp.dynamic_sampling must be >= 0 (0: off)"),
        (cfg.rlp.loss_coef >= 0, "rlp.loss_coef must be >= 0"),
        (cfg.train.next_token_coef >= 0, "train.next_token_coef must be >= 0"),
        (cfg.train.next_token_documents >= 1, "train.next_token_documents must be >= 1"),
        (bool(POSITION_RULE.match(cfg.rlp.positions)),
         f"rlp.positions: {cfg.rlp.positions!r} is not all, answer, every:K, random:N, list:T1,T2,..., after:TEXT or first:TEXT"),
        (cfg.rlp.engine in ("reference", "packed", "recurrent"),
         f"rlp.engine: {cfg.rlp.engine!r} is not packed, recurrent or reference"),
        (cfg.rlp.reward in ("information_gain", "rpt", "verifier"),
         f"rlp.reward: {cfg.rlp.reward!r} is not information_gain, rpt or verifier"),
        (cfg.data.format in ("auto", "text", "jsonl"), f"data.format: {cfg.data.format!r} is not auto, text or jsonl"),
        (cfg.data.max_length >= 2, "data.max_length must be >= 2"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (cfg.train.batch_documents >= 1, "train.batch_documents must be >= 1"),
        (cfg.train.micro_batch_thoughts >= 0, "train.micro_batch_thoughts must be >= 0 (0: sized to train.memory_gb)"),
        (cfg.train.rollout_rows >= 0, "train.rollout_rows must be >= 0 (0: sized to train.memory_gb)"),
        (cfg.train.memory_gb >= 0, "train.memory_gb must be >= 0 (0: the device's)"),
        (cfg.train.max_steps >= 0, "train.max_steps must be >= 0"),
        (cfg.train.grad_clip >= 0, "train.grad_clip must be >= 0"),
        (cfg.train.checkpoint_every >= 0, "train.checkpoint_every must be >= 0"),
        (cfg.train.parallel in ("ddp", "fsdp"), f"train.parallel: {cfg.train.parallel!r} is not ddp or fsdp"),
        (cfg.train.dist_timeout_s > 0, "train.dist_timeout_s must be > 0"),
        (set(cfg.train.report_to) <= {"jsonl", "tensorboard", "wandb"},
         f"train.report_to: {cfg.train.report_to!r} may hold only jsonl, tensorboard and wandb"),
        (not (cfg.model.lora and cfg.train.parallel == "fsdp"),
         "model.lora with train.parallel=fsdp is not supported: use ddp (the adapters are small; only they are synced)"),
        (cfg.model.dtype in ("float32", "bfloat16"),
         f"model.dtype: {cfg.model.dtype!r} is not float32 or bfloat16 (float16 would need loss scaling)"),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)
    from rlpt import lora

    lora.check(cfg.model.lora)


def dumps(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def save(cfg: Config, path: Path) -> None:
    path.write_text(dumps(cfg))
