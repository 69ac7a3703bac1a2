"""Tiny Hugging Face model folders built from a config in code: no download, a few seconds each."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# families with sliding-window attention, windows far shorter than a document plus its thought; Qwen2 and Gemma3 mix
# windowed and full layers
SLIDING = {
    "mistral": ("mistral", dict(sliding_window=6)),
    "qwen2-sliding": ("qwen2", dict(use_sliding_window=True, sliding_window=6, max_window_layers=1)),
    "gemma3": ("gemma3_text", dict(sliding_window=6, head_dim=16, layer_types=["sliding_attention", "full_attention"])),
}


def save_tiny(folder, arch: str = "llama", seed: int = 0, tie: bool = True):
    """A 2-layer model of `arch` with the built-in character tokenizer, saved with save_pretrained."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=tie)
    if arch == "gpt2":
        config = AutoConfig.for_model("gpt2", n_embd=32, n_layer=2, n_head=2, n_positions=256, **common)
    else:
        model_type, extra = SLIDING.get(arch, (arch, {}))
        config = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                                      **extra, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("qwen2"), "qwen2")
