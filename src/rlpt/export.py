"""`rlpt export RUN_DIR --out DIR`: a clean Hugging Face folder from a run (its latest checkpoint), a checkpoint or a
model folder: the weights as safetensors, the tokenizer with its think tags, and a generation config. It holds no
optimizer, EMA or trainer state, and loads with `AutoModelForCausalLM.from_pretrained`. It is ready for TRL's trainers
or `lm_eval --model hf`. `--ema` exports the EMA teacher instead of the policy."""

from __future__ import annotations

from pathlib import Path

from rlpt.cache import build_folder
from rlpt.errors import UserError


def export(path: str, out: Path, ema: bool = False) -> Path:
    from transformers import GenerationConfig

    from rlpt import checkpoint
    from rlpt.models import load_model_and_tokenizer, load_teacher, resolve_model_path

    if out.exists() and any(out.iterdir()):
        raise UserError(f"rlpt export: --out {out} exists and is not empty")
    source = checkpoint.source(path)  # a run folder -> its latest checkpoint
    if not source.startswith("builtin:") and not source.endswith(".gguf") and not (Path(source) / "config.json").is_file():
        raise UserError(f"rlpt export: {path} is neither a run folder with a checkpoint nor a model folder (no config.json)")
    source = Path(resolve_model_path(source))  # a built-in model or .gguf -> its cached folder
    model, tokenizer, _ = load_model_and_tokenizer(str(source))
    if ema:
        model = load_teacher(source, model)
        if model is None:
            raise UserError(f"rlpt export --ema: {source} holds no EMA teacher (not a training checkpoint)")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)

    def write(tmp):
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return build_folder(out, write)
