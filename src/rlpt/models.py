"""Load a causal LM and its tokenizer (a local Hugging Face folder or a `builtin:` model) and make sure both know
the think tags.

- Nothing is downloaded: `HF_HUB_OFFLINE=1` and `local_files_only=True`.
- A tokenizer saved as a plain `tokenizer.json` (tokenizer_class `TokenizersBackend`/`PreTrainedTokenizerFast`) is
  loaded as saved. `AutoTokenizer` would pick the class of the model type instead (transformers 5 loads a `qwen2`
  folder as `Qwen2Tokenizer`, which swaps the pre-tokenizer and can add ids past the end of a small vocabulary).
- `<think>`/`</think>` are added as special tokens when the tokenizer lacks them, and the embeddings are resized;
  models that already have them (Qwen3) keep theirs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from rlpt import THINK_CLOSE, THINK_OPEN  # noqa: E402
from rlpt.errors import UserError  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PLAIN_TOKENIZER_CLASSES = {"TokenizersBackend", "PreTrainedTokenizerFast"}


@dataclass(frozen=True)
class ThinkTokens:
    open_id: int
    close_id: int


def resolve_model_path(name_or_path: str) -> str:
    """`builtin:tiny` / `builtin:smollm2-135m` / a `.gguf` file -> its cached folder (made on first use); anything else
    must be a local HF folder."""
    from rlpt import gguf

    if name_or_path == "builtin:smollm2-135m":
        return str(gguf.cached_folder(gguf.smollm2_file()))
    if name_or_path.startswith("builtin:"):
        from rlpt import tiny

        return str(tiny.builtin_model_path(name_or_path.removeprefix("builtin:")))
    if name_or_path.endswith(".gguf"):
        return str(gguf.cached_folder(Path(name_or_path).expanduser()))
    folder = Path(name_or_path).expanduser()
    if not (folder / "config.json").is_file():
        raise UserError(f"model.name_or_path: {name_or_path!r} is not a local Hugging Face model folder (no config.json)")
    return str(folder)


def check_model_source(name_or_path: str, key: str = "model.name_or_path") -> None:
    """What `resolve_model_path` would refuse, found without building, converting or loading anything; the error
    names `key`, the setting or flag that gave the model."""
    from rlpt import gguf
    from rlpt.tiny import RECIPES

    if name_or_path == "builtin:smollm2-135m":
        gguf.smollm2_file(key)
    elif name_or_path.startswith("builtin:"):
        if name_or_path.removeprefix("builtin:") not in RECIPES:
            raise UserError(f"{key}: unknown built-in model {name_or_path!r} "
                            f"(known: {', '.join('builtin:' + n for n in [*RECIPES, 'smollm2-135m'])})")
    elif name_or_path.endswith(".gguf"):
        if not Path(name_or_path).expanduser().is_file():
            raise UserError(f"{key}: {name_or_path} does not exist")
    elif not (Path(name_or_path).expanduser() / "config.json").is_file():
        raise UserError(f"{key}: {name_or_path!r} is not a local Hugging Face model folder (no config.json)")


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config_file = Path(folder) / "tokenizer_config.json"
    saved_class = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    if saved_class in PLAIN_TOKENIZER_CLASSES and (Path(folder) / "tokenizer.json").is_file():
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    else:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    if tokenizer.pad_token_id is None:  # batching needs a pad id; masks keep it out of every computation
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def single_token_id(tokenizer, text: str) -> int | None:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def ensure_think_tokens(model, tokenizer) -> ThinkTokens:
    """Add the think tags as special tokens where missing and grow the embeddings to cover every tokenizer id."""
    missing = [tag for tag in (THINK_OPEN, THINK_CLOSE) if single_token_id(tokenizer, tag) is None]
    if missing:
        tokenizer.add_tokens(missing, special_tokens=True)
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
    return ThinkTokens(single_token_id(tokenizer, THINK_OPEN), single_token_id(tokenizer, THINK_CLOSE))


def load_model_and_tokenizer(name_or_path: str, dtype: str = "float32", device: str | torch.device = "cpu",
                             adapter: str = "merge"):
    """(model, tokenizer, think_tokens) for a local folder or `builtin:NAME`; the model is in eval mode (no dropout).
    A LoRA checkpoint's adapter is merged into the weights, or with `adapter="train"` kept apart and trainable."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlpt import lora
    from rlpt.checkpoint import SHARDED, load_sharded_weights

    if dtype not in DTYPES:
        raise UserError(f"model.dtype: {dtype!r} is not one of {sorted(DTYPES)}")
    folder = resolve_model_path(name_or_path)
    tokenizer = load_tokenizer(folder)
    try:
        if (Path(folder) / SHARDED).is_dir():  # a checkpoint written under FSDP: weights in shards
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder), dtype=torch.float32)
            load_sharded_weights(model, Path(folder))
            model = model.to(DTYPES[dtype])
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot load a causal LM from {folder}: {exc}") from exc
    think = ensure_think_tokens(model, tokenizer)
    if (Path(folder) / lora.ADAPTER).is_dir():
        model = lora.attach(model, Path(folder), trainable=adapter == "train")
    return model.to(device).eval(), tokenizer, think


def load_teacher(folder: Path, policy):
    """The EMA teacher saved in checkpoint `folder` (either layout) as a frozen model like `policy`; None if the folder
    holds none (a plain model folder)."""
    from rlpt import lora
    from rlpt.checkpoint import SHARDED, load_sharded_weights
    from rlpt.ema import EmaTeacher

    if (folder / lora.ADAPTER).is_dir():  # frozen base + EMA adapters, merged
        adapted, _, _ = load_model_and_tokenizer(str(folder), adapter="train")
        ema = lora.AdapterEmaTeacher(decay=0.0)
        ema.load(folder / "ema.safetensors", adapted)
        with torch.no_grad():
            for name, param in adapted.named_parameters():
                if name in ema.tensors:
                    param.copy_(ema.tensors[name])
        return adapted.merge_and_unload().eval().requires_grad_(False)
    teacher = EmaTeacher(decay=0.0)
    if (folder / SHARDED).is_dir():
        teacher.init_from(policy)
        load_sharded_weights(teacher.model, folder, "ema")
    elif (folder / "ema.safetensors").is_file():
        teacher.load(folder / "ema.safetensors", policy)
    else:
        return None
    return teacher.model
