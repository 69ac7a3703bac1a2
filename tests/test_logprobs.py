"""Log-probs of chosen tokens a chunk at a time (logprobs.py) equal those of the full logits, with their gradients."""

import pytest
import torch

from conftest import save_tiny
from rlpt import logprobs
from rlpt.data import Document, make_contexts
from rlpt.generation import temperature_sampler
from rlpt.models import load_model_and_tokenizer
from rlpt.rollout import RolloutSpec
from rlpt.rollout.packed import PackedEngine
from rlpt.rollout.reference import ReferenceEngine

TEXTS = ["123+456=579.", "98+7=105. and a longer tail", "5+5=10."]


def sampled(tmp_path, arch: str, seed: int):
    """A tiny model of `arch`, and G = 3 thoughts it sampled at two positions of each of TEXTS."""
    model, tok, think = load_model_and_tokenizer(save_tiny(tmp_path / arch, arch, seed=seed))
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
    contexts = make_contexts(docs, "random:2", seed=0, step=0)
    spec = RolloutSpec(group_size=3, max_thought_tokens=6, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    rollouts = ReferenceEngine().rollout(model, model, contexts, spec, temperature_sampler(0.7, seed))
    return model, spec, rollouts, list(range(len(rollouts.thoughts)))


def test_chunk_logprobs_hand_worked():
    head = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # logits [1, 0, 1] and [0, 2, 2]
    got = logprobs.token_logprobs(hidden, head, torch.tensor([[0, 1]]), temperature=1.0, banned_first=2)
    # position 0 bans token 2: log(e / (e + 1)); position 1 keeps every token: log(e^2 / (1 + 2 e^2))
    e = torch.e
    torch.testing.assert_close(got, torch.tensor([[1 - torch.log(torch.tensor(e + 1.0)),
                                                   2 - torch.log(torch.tensor(1 + 2 * e**2))]]))


def test_logsumexp_in_place_hand_worked():
    inf = float("inf")
    logits = torch.tensor([[0.0, 0.0], [1.0, -inf], [-inf, -inf], [1000.0, 1000.0]])
    expected = torch.tensor([torch.log(torch.tensor(2.0)), 1.0, -inf, 1000 + torch.log(torch.tensor(2.0))])
    torch.testing.assert_close(logprobs.logsumexp_(logits.clone()), expected)  # no overflow at 1000, no NaN at -inf
    torch.testing.assert_close(logprobs.logsumexp_(logits.clone()), torch.logsumexp(logits, -1))


def full_logprobs(hidden, head, targets, temperature, banned_first):
    logits = head(hidden).float() / temperature
    logits[:, 0, banned_first] = float("-inf")
    return torch.log_softmax(logits, -1).gather(2, targets[:, :, None]).squeeze(2)


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_chunked_gradients_of_hidden_states_weight_and_bias(autocast, monkeypatch):
    """The backward's own gradients (hidden states, weight, bias; in chunks of 4 tokens, the last ragged) equal
    autograd's through the full logits, tempered, with the first token banned; under autocast too, in the forward's
    dtype although the backward runs outside autocast (float16 is not CPU autocast's default)."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11)
    hidden = torch.randn(3, 5, 8, requires_grad=True)
    targets = torch.randint(0, 10, (3, 5))
    weights = torch.randn(3, 5)
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", 4 * 11)

    def grads(compute):
        head.zero_grad()
        hidden.grad = None
        with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            logp = compute(hidden, head, targets, 0.7, 10)
        (logp * weights).sum().backward()
        return logp.detach(), hidden.grad.clone(), head.weight.grad.clone(), head.bias.grad.clone()

    chunked, full = grads(logprobs.token_logprobs), grads(full_logprobs)
    tolerance = dict(atol=3e-2, rtol=3e-2) if autocast else dict(atol=1e-5, rtol=1e-5)
    if autocast == torch.float16:
        tolerance = dict(atol=3e-3, rtol=3e-3)  # float16's finer mantissa: a bfloat16 backward would miss this
    for got, expected in zip(chunked, full):
        torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize("arch", ["llama", "qwen3", "gpt2"])
@pytest.mark.parametrize("engine", [ReferenceEngine, PackedEngine])
def test_chunked_equals_full_logits_with_gradients(arch, engine, tmp_path, monkeypatch):
    model, spec, rollouts, rows = sampled(tmp_path, arch, seed=2)
    advantages = torch.randn(len(rows))

    def update(head_split: bool):
        with monkeypatch.context() as patch:
            if head_split:  # chunks of 3 tokens: many chunks, some ragged
                patch.setattr(logprobs, "CHUNK_ELEMENTS", 3 * model.config.vocab_size)
            else:
                patch.setattr(logprobs, "output_head", lambda *a, **k: None)
            logp, mask = engine().thought_logprobs(model, rollouts, rows, spec)
        model.zero_grad(set_to_none=True)
        ((logp * mask).sum(1) * advantages).sum().backward()
        return logp.detach() * mask, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    chunked, chunked_grads = update(True)
    full, full_grads = update(False)
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=0)
    assert chunked_grads.keys() == full_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(chunked_grads[name], full_grads[name], atol=1e-5, rtol=1e-5)


def test_models_whose_logits_are_more_than_a_linear_head_take_the_full_logits(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    capped = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                            num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                            final_logit_softcapping=30.0))
    assert logprobs.output_head(capped) is None
    model, _, _ = load_model_and_tokenizer(save_tiny(tmp_path / "llama", "llama"))
    body, head = logprobs.output_head(model)
    assert head is model.get_output_embeddings() and body is model.model


@pytest.mark.parametrize("arch", ["llama", "gpt2", "qwen3"])
@pytest.mark.parametrize("engine", [ReferenceEngine, PackedEngine])
def test_gradient_checkpointing_recomputes_layers_and_gives_the_same_gradients(arch, engine, tmp_path):
    import dataclasses

    from transformers.modeling_layers import GradientCheckpointingLayer

    model, spec, rollouts, rows = sampled(tmp_path, arch, seed=3)
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    logprobs.output_head(model)  # its one-time check runs the model: before the counting
    calls = []
    for layer in layers:  # a checkpointed layer replays its forward, not its hooks: count a sublayer's calls
        next(layer.children()).register_forward_pre_hook(lambda module, args: calls.append(1))

    def update(checkpointed: bool):
        calls.clear()
        logp, mask = engine().thought_logprobs(model, rollouts, rows,
                                                dataclasses.replace(spec, checkpoint_layers=checkpointed))
        model.zero_grad(set_to_none=True)
        (logp * mask).sum().backward()
        return len(calls), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain_calls, plain = update(False)
    checkpointed_calls, checkpointed = update(True)
    # the thought rows' layers run again in the backward (the packed engine's document forward, which writes the KV
    # cache the rows read, is not checkpointed)
    assert checkpointed_calls - plain_calls == len(layers) and layers
    assert all(not m.training for m in model.modules())  # eval mode again afterwards
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-6)


def test_a_head_whose_logits_differ_from_the_models_is_not_used(tmp_path, monkeypatch):
    """The split is checked against the model's own logits: a model that scales them (as Falcon-H1 multiplies its
    head's output) takes the full logits; so does a DDP-wrapped model whose whole forward does not run."""
    model, _, _ = load_model_and_tokenizer(save_tiny(tmp_path / "llama", "llama"))
    scaled, _, _ = load_model_and_tokenizer(save_tiny(tmp_path / "scaled", "llama"))
    forward = type(scaled).forward

    def scaled_forward(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        out.logits = out.logits * 1.5
        return out

    monkeypatch.setattr(scaled, "forward", scaled_forward.__get__(scaled))
    assert logprobs.output_head(model) is not None and logprobs.output_head(scaled) is None
    monkeypatch.setattr(model, "set_requires_gradient_sync", lambda *a: None, raising=False)  # as DDP marks it
    assert logprobs.output_head(model) is None and logprobs.output_head(model, root_forward_runs=True) is not None



def test_checkpointing_is_refused_for_layers_that_apply_dropout_themselves(tmp_path, llama_dir, monkeypatch):
    """OPT's and Falcon's layers call F.dropout(..., training=self.training): marking them training for checkpointing
    would turn that on. The start-up check finds it on the model itself."""
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer

    from rlpt.cli import main
    from rlpt.rollout.base import checkpointing_keeps_dropout_off

    model, _, _ = load_model_and_tokenizer(llama_dir)
    assert checkpointing_keeps_dropout_off(model)
    forward = LlamaDecoderLayer.forward

    def dropping(self, hidden_states, *args, **kwargs):
        return forward(self, torch.nn.functional.dropout(hidden_states, 0.5, training=self.training), *args, **kwargs)

    monkeypatch.setattr(LlamaDecoderLayer, "forward", dropping)
    assert not checkpointing_keeps_dropout_off(model)
    assert main(["train", "--output", str(tmp_path / "run"), "--set", f"model.name_or_path={llama_dir}",
                 "--set", "data.path=builtin:arith", "--set", "train.gradient_checkpointing=true",
                 "--set", "rlp.group_size=2", "--set", "rlp.max_thought_tokens=2", "--set", "train.max_steps=1"]) == 2


def test_bfloat16_weights_sum_the_heads_gradient_in_float32(monkeypatch):
    """bfloat16 weights without autocast (as FSDP's unsharded parameters under its mixed precision): the head's
    gradient over 300 chunks is summed in float32, close to the float64 product (a bfloat16 buffer was off by ~1e-2
    relative; autograd's single bfloat16 product by ~3e-3)."""
    torch.manual_seed(0)
    vocab, width, tokens = 64, 32, 300
    weight = torch.randn(vocab, width, dtype=torch.float64) / width**0.5
    hidden = torch.randn(1, tokens, width, dtype=torch.float64)
    targets = torch.randint(0, vocab, (1, tokens))
    monkeypatch.setattr(logprobs, "CHUNK_ELEMENTS", vocab)  # one token a chunk

    head = torch.nn.Linear(width, vocab, bias=False, dtype=torch.bfloat16)
    with torch.no_grad():
        head.weight.copy_(weight)
    logprobs.token_logprobs(hidden.bfloat16(), head, targets).sum().backward()
    exact = torch.nn.Linear(width, vocab, bias=False, dtype=torch.float64)
    with torch.no_grad():
        exact.weight.copy_(head.weight.double())
    logits = exact(hidden.bfloat16().double())
    torch.log_softmax(logits, -1).gather(2, targets[:, :, None]).sum().backward()
    error = (head.weight.grad.double() - exact.weight.grad).norm() / exact.weight.grad.norm()
    assert head.weight.grad.dtype == torch.bfloat16 and error < 6e-3
