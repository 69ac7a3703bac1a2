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


# grouped-query attention (several query heads read one key head), as SmolLM2, Llama 3 and Qwen3 have
VARIANTS = {"llama-gqa": ("llama", dict(num_attention_heads=4, num_key_value_heads=2))}


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
        model_type, extra = {**SLIDING, **VARIANTS}.get(arch, (arch, {}))
        extra = {"num_attention_heads": 2, "num_key_value_heads": 2, **extra}
        config = AutoConfig.for_model(model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      max_position_embeddings=256, **extra, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def early_ending_sampler(seed, close_id, boost=2.5):
    """The tempered sampler with </think> made likelier, so thoughts end early and have ragged lengths."""
    from rlpt.generation import temperature_sampler

    base = temperature_sampler(0.7, seed)

    def choose(logits, step):
        logits = logits.clone()
        logits[:, close_id] += boost
        return base(logits, step)

    return choose


def run_engine(engine, model, contexts, spec, seed):
    """One rollout and update by `engine`: (rollouts, rewards, log-probs, mask, loss, gradients by parameter name)."""
    from rlpt import objective

    rollouts = engine.rollout(model, model, contexts, spec, early_ending_sampler(seed, spec.think.close_id))
    rewards = objective.information_gain(rollouts.s_pred, rollouts.s_ema)
    advantages = objective.group_advantages(rewards).flatten()
    logp, mask = engine.thought_logprobs(model, rollouts, list(range(len(rollouts.thoughts))), spec)
    loss = objective.clipped_surrogate_loss(logp, logp.detach(), advantages, mask)
    model.zero_grad(set_to_none=True)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return rollouts, rewards, logp.detach(), mask, loss.item(), grads


# hybrid and state-space families, tiny: a Mamba-2 chunk of 4 tokens so that documents span several chunks
HYBRID = {
    "nemotron_h": dict(hybrid_override_pattern="M*M-", num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                       intermediate_size=64, ssm_state_size=8, mamba_num_heads=4, mamba_head_dim=8, n_groups=1,
                       conv_kernel=4, expand=1, chunk_size=4, use_mamba_kernels=False),
    "falcon_h1": dict(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                      intermediate_size=64, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1,
                      mamba_d_state=8, mamba_d_conv=4, mamba_chunk_size=4, max_position_embeddings=256),
    "qwen3_next": dict(num_hidden_layers=2, layer_types=["linear_attention", "full_attention"], num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, intermediate_size=64, linear_num_key_heads=2,
                       linear_num_value_heads=2, linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4,
                       num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32,
                       decoder_sparse_step=1, max_position_embeddings=256),
    "mamba2": dict(num_hidden_layers=2, num_heads=4, head_dim=8, state_size=8, n_groups=1, conv_kernel=4, expand=1,
                   chunk_size=4, use_mambapy=False),
}


def save_hybrid(folder, arch: str, seed: int = 0):
    """A tiny model of a hybrid (or state-space) family with the built-in character tokenizer, saved."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlpt.tiny import char_tokenizer

    tokenizer = char_tokenizer()
    config = AutoConfig.for_model(arch, vocab_size=len(tokenizer), hidden_size=32, pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                  tie_word_embeddings=True, **HYBRID[arch])
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session", params=list(HYBRID))
def hybrid_dir(request, tmp_path_factory):
    return save_hybrid(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("llama"), "llama")


@pytest.fixture(scope="session")
def qwen2_dir(tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp("qwen2"), "qwen2")


def tensors_in_cycles(run) -> list:
    """The tensors that `run()` leaves in reference cycles: freed only by a garbage collection, which counts objects,
    not bytes, so at the paper's lengths they pile up by gigabytes first."""
    import gc

    gc.collect()
    gc.disable()
    try:
        run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return [o for o in gc.garbage if isinstance(o, torch.Tensor)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
