"""`builtin:tiny`: a 4-layer Llama-architecture model with a character-level tokenizer, both built in code, warm-started
by next-token training on the built-in arithmetic documents, then cached under `$RLPT_CACHE_DIR` (default
`~/.cache/rlpt`) in a folder keyed by a hash of the recipe. Nothing is downloaded.

Most warm-start documents show a worked thought, and in them the writer forgets 60% of the carries (answering what
the wrong sums spell). So the model learns to add column by column and to copy its thought's answer, but writes a
carry only 40% of the time: its greedy thought forgets every carry, its sampled thoughts are right often enough for
a group of them to disagree. Only the real answers of plain text can tell it which thoughts are right: that is what
RLP's reward measures, and what the built-in default run shows it learning."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from rlpt import THINK_CLOSE, THINK_OPEN, arith
from rlpt.cache import build_folder, cache_dir
from rlpt.errors import UserError

CHARS = "0123456789+-*/=,.:;!?()[]'\" \nabcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
SPECIAL = ["<pad>", "<bos>", "<eos>", "<unk>", THINK_OPEN, THINK_CLOSE]

RECIPES = {
    "tiny": dict(
        # 3: the held-out split is by unordered operand pair (no commuted twin in the warm start), and 900 steps: with
        # that corpus, 600 steps left two of three seeds still misreading digits (forgetting every carry, as meant, in
        # 32% and 39% of 256 training-side questions, seed 2 in 95%); 900 steps give 100% for seeds 0, 1 and 2
        version=3,
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=512,
        warm_start_documents=40_000, think_fraction=0.8, carry_forgotten=0.6,
        steps=900, batch_size=64, lr=3e-3, seed=0,
    ),
}


def char_tokenizer():
    """A character-level tokenizer: one id per character of CHARS, `<bos>` prepended, think tags as special tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + list(CHARS))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"(?m)."), behavior="isolated")  # every character alone
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
        extra_special_tokens=[THINK_OPEN, THINK_CLOSE],
    )


def build_model(recipe: dict, tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(recipe["seed"])
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=recipe["hidden_size"], intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_hidden_layers"], num_attention_heads=recipe["num_attention_heads"],
        num_key_value_heads=recipe["num_attention_heads"], max_position_embeddings=recipe["max_position_embeddings"],
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def warm_start_texts(recipe: dict = RECIPES["tiny"]) -> list[str]:
    """The documents `recipe` warm-starts on (`builtin:arith-warm` for `builtin:tiny`)."""
    return arith.warm_start_documents(
        recipe["warm_start_documents"], recipe["seed"], recipe["think_fraction"], recipe["carry_forgotten"]
    )


def build(folder: str | Path, recipe: dict) -> None:
    """Build, warm-start and save the model and tokenizer of `recipe` into `folder`."""
    from rlpt.pretrain import tokenize_documents, train_next_token

    tokenizer = char_tokenizer()
    model = build_model(recipe, tokenizer)
    ids = tokenize_documents(tokenizer, warm_start_texts(recipe))
    if recipe["steps"]:
        losses = train_next_token(
            model, ids, steps=recipe["steps"], batch_size=recipe["batch_size"], lr=recipe["lr"],
            pad_id=tokenizer.pad_token_id, seed=recipe["seed"], desc="warm start builtin:tiny",
        )
    else:
        losses = []
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (Path(folder) / "recipe.json").write_text(json.dumps({**recipe, "final_loss": losses[-1] if losses else None}))


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def builtin_model_path(name: str) -> Path:
    """The cached folder of `builtin:NAME`, built (atomically: temp folder, then rename) when missing."""
    if name not in RECIPES:
        raise UserError(f"model.name_or_path: unknown built-in model 'builtin:{name}' (known: {sorted(RECIPES)})")
    recipe = RECIPES[name]
    folder = cache_dir() / f"builtin-{name}-{recipe_hash(recipe)}"
    if (folder / "config.json").is_file():
        return folder
    print(f"rlpt: building builtin:{name} (warm start, once; cached in {folder})", flush=True)
    start = time.perf_counter()
    build_folder(folder, lambda tmp: build(tmp, recipe))
    print(f"rlpt: builtin:{name} ready in {time.perf_counter() - start:.0f}s", flush=True)
    return folder
