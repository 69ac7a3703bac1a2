"""The recurrent engine's PyTorch Mamba-2 paths (`rollout/mamba2_torch.py`): the lean one-token step against
transformers' own, the engine taking it and the short scan chunks, and both put back after."""

from contextlib import nullcontext

import pytest
import torch
import transformers.models.nemotron_h.modeling_nemotron_h as nemotron_h
from conftest import run_engine

from rlpt.data import Document, make_contexts
from rlpt.models import load_model_and_tokenizer
from rlpt.rollout import RolloutSpec, mamba2_torch
from rlpt.rollout.mamba2_torch import NAME, lean_state_update, lean_steps
from rlpt.rollout.recurrent import RecurrentEngine
from rlpt.rollout.recurrent_states import inputs, is_recurrent, new_cache

ROWS, HEADS, HEAD_DIM, STATE = 3, 4, 5, 6


def refused(*args, **kwargs):
    raise AssertionError("the lean step fell back to the original")


def mixer_arguments(groups: int, seed: int = 0, dtype=torch.float32):
    """The arguments a mixer's one-token step passes, shaped and expanded as the mixers do."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    state, x = randn(ROWS, HEADS, HEAD_DIM, STATE), randn(ROWS, HEADS, HEAD_DIM)
    dt = randn(ROWS, HEADS, 1).expand(-1, -1, HEAD_DIM)
    A = (-torch.rand(HEADS, generator=g))[:, None, None].expand(-1, HEAD_DIM, STATE)  # float32, as the mixers pass it
    B, C = randn(ROWS, groups, STATE), randn(ROWS, groups, STATE)
    D, dt_bias = randn(HEADS)[:, None].expand(-1, HEAD_DIM), randn(HEADS)[:, None].expand(-1, HEAD_DIM)
    z = randn(ROWS, HEADS, HEAD_DIM)
    return state, x, dt, A, B, C, D, dt_bias, z


@pytest.mark.parametrize("groups, with_d, softplus, with_z", [(1, True, True, False), (2, True, True, True),
                                                              (4, False, False, False), (2, False, True, True)])
def test_the_lean_step_equals_transformers_own(groups, with_d, softplus, with_z):
    """The same new state (written in place) and output as transformers' PyTorch step, heads sharing B and C in
    groups, with and without the skip D, the softplus and bias of the time step, and the gate z."""
    state, x, dt, A, B, C, D, dt_bias, z = mixer_arguments(groups)
    keywords = dict(D=D if with_d else None, dt_bias=dt_bias if softplus else None, dt_softplus=softplus,
                    z=z if with_z else None)
    expected_state, got_state = state.clone(), state.clone()
    expected = nemotron_h.mamba2_selective_state_update(expected_state, x, dt, A, B, C, **keywords)
    got = lean_state_update(refused)(got_state, x, dt, A, B, C, **keywords)  # the lean path itself, not a fallback
    torch.testing.assert_close(got_state, expected_state, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert not torch.equal(got_state, state)  # the state moved


@pytest.mark.parametrize("state_dtype", [torch.bfloat16, torch.float32])
def test_the_lean_step_in_bfloat16(state_dtype):
    """bfloat16 inputs, with a bfloat16 state or the float32 one a bfloat16 model's scan leaves in its cache: the state
    is updated in float32 and rounded once, as transformers' step does; the two agree to bfloat16's precision."""
    state, x, dt, A, B, C, D, dt_bias, _ = mixer_arguments(2, dtype=torch.bfloat16)
    state = state.to(state_dtype)
    expected_state, got_state = state.clone(), state.clone()
    expected = nemotron_h.mamba2_selective_state_update(expected_state, x, dt, A, B, C, D=D, dt_bias=dt_bias,
                                                        dt_softplus=True)
    got = lean_state_update(refused)(got_state, x, dt, A, B, C, D=D, dt_bias=dt_bias, dt_softplus=True)
    assert got.dtype == expected.dtype and got_state.dtype == state_dtype
    torch.testing.assert_close(got_state.float(), expected_state.float(), atol=3e-2, rtol=2e-2)
    torch.testing.assert_close(got.float(), expected.float(), atol=3e-2, rtol=2e-2)


@pytest.mark.parametrize("which", ["dt", "A", "D", "dt_bias", "packed"])
def test_arguments_not_in_the_mixers_layout_go_to_the_original(which):
    """A time step, A, D or dt_bias that differs along head_dim (not the mixers' expanded layout), or packed sequences:
    the original step takes them."""
    state, x, dt, A, B, C, D, dt_bias, _ = mixer_arguments(1)
    keywords = dict(D=D, dt_bias=dt_bias, dt_softplus=True)
    varying = torch.linspace(0, 1, HEAD_DIM)
    if which == "dt":
        dt = dt + varying
    elif which == "A":
        A = A - varying[:, None]
    elif which in ("D", "dt_bias"):
        keywords[which] = keywords[which] + varying
    calls = []

    def original(*args, **kwargs):
        calls.append(kwargs.pop("seq_idx", None))
        return nemotron_h.mamba2_selective_state_update(*args, **kwargs)

    if which == "packed":
        keywords["seq_idx"] = torch.zeros(ROWS, 1, dtype=torch.int32)
    expected_state, got_state = state.clone(), state.clone()
    expected = nemotron_h.mamba2_selective_state_update(expected_state, x, dt, A, B, C,
                                                        **{k: v for k, v in keywords.items() if k != "seq_idx"})
    got = lean_state_update(original)(got_state, x, dt, A, B, C, **keywords)
    assert len(calls) == 1
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_state, expected_state)


def test_lean_steps_swaps_the_step_in_and_back(hybrid_dir):
    """Inside the block the mixers' module calls the lean step (once, even in a nested block); after it, its own."""
    model, _, _ = load_model_and_tokenizer(hybrid_dir)
    modules = mamba2_torch.mixer_modules(model)
    if model.config.model_type == "qwen3_next":  # gated DeltaNet: no Mamba-2 mixer
        assert modules == []
        return
    assert len(modules) == 1
    module = modules[0]
    own = getattr(module, NAME)
    with lean_steps(model):
        lean = getattr(module, NAME)
        assert lean.lean_original is own
        with lean_steps(model):
            assert getattr(module, NAME) is lean
        assert getattr(module, NAME) is lean
    assert getattr(module, NAME) is own


@torch.no_grad()
def test_a_models_one_token_step_is_its_own_with_the_lean_step(hybrid_dir):
    """A one-token step of the whole model after a five-token prefix: every Mamba-2 mixer's output and new state are
    the ones its own step gives (compared at the mixers: in these tiny models the residual stream hides most of a
    mixer's share)."""
    model, _, _ = load_model_and_tokenizer(hybrid_dir)
    mixers = [m for m in model.modules() if hasattr(m, "A_log") and hasattr(m, "chunk_size")]
    if model.config.model_type == "qwen3_next":  # gated DeltaNet: no Mamba-2 mixer, nothing swapped
        assert not mixers and not mamba2_torch.mixer_modules(model)
        return
    outputs = []
    for m in mixers:
        m.register_forward_hook(lambda module, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    ids = torch.randint(model.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(0))
    steps = []
    for block in (nullcontext, lean_steps):
        cache = new_cache(model)
        model(input_ids=ids[:, :5], use_cache=True, **inputs(model, cache, torch.arange(5)[None].expand(2, -1)))
        outputs.clear()
        with block(model):
            logits = model(input_ids=ids[:, 5:], use_cache=True, **inputs(model, cache, torch.full((2, 1), 5))).logits
        states = [layer.recurrent_states[0] for layer in cache.layers if is_recurrent(layer)]
        steps.append((list(outputs) + states, logits))
    (own, own_logits), (lean, lean_logits) = steps
    assert len(own) == len(lean) == 2 * len(mixers)
    for a, b in zip(own, lean):  # relative to each one's size (FalconH1's outputs are about 1e-5)
        assert a.abs().max() > 0
        torch.testing.assert_close(b, a, atol=1e-5 * a.abs().max().item(), rtol=1e-4)
    torch.testing.assert_close(lean_logits, own_logits, atol=1e-6, rtol=1e-5)


def test_the_blocks_put_everything_back_after_an_error(hybrid_dir):
    model, _, _ = load_model_and_tokenizer(hybrid_dir)
    modules, mixers = mamba2_torch.mixer_modules(model), mamba2_torch.mamba_mixers(model)
    steps, chunks = [getattr(m, NAME) for m in modules], [m.chunk_size for m in mixers]
    with pytest.raises(RuntimeError):
        with lean_steps(model), mamba2_torch.short_chunks(model):
            raise RuntimeError("mid-decode")
    assert [getattr(m, NAME) for m in modules] == steps and [m.chunk_size for m in mixers] == chunks


def test_the_engine_decodes_with_the_lean_step_and_scans_in_short_chunks(hybrid_dir, monkeypatch):
    """A rollout and update of the recurrent engine: every one-token step of a Mamba-2 mixer takes the lean path (a
    fallback would raise), and the engine's own multi-token forwards scan in SHORT_CHUNK (3 here; the teacher's
    forward over the documents keeps the model's 4)."""
    model, tok, think = load_model_and_tokenizer(hybrid_dir)
    mixers = mamba2_torch.mamba_mixers(model)
    if not mixers:  # Qwen3Next: gated DeltaNet
        return
    lean, steps, chunks = mamba2_torch.lean_state_update, [], []

    def counted_lean(original):
        step = lean(refused)

        def counted(*args, **kwargs):
            steps.append(1)
            return step(*args, **kwargs)

        counted.lean_original = original
        return counted

    monkeypatch.setattr(mamba2_torch, "lean_state_update", counted_lean)
    monkeypatch.setattr(mamba2_torch, "SHORT_CHUNK", 3)
    for m in mixers:
        m.register_forward_pre_hook(lambda module, args, kwargs: chunks.append(module.chunk_size)
                                    if (args[0] if args else kwargs["hidden_states"]).shape[1] > 1 else None,
                                    with_kwargs=True)
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(["123+456=579. and a tail", "98+7=105. x"])]
    spec = RolloutSpec(group_size=2, max_thought_tokens=4, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    run_engine(RecurrentEngine(), model, make_contexts(docs, "random:3", seed=0, step=0), spec, seed=1)
    assert len(steps) >= 4 * len(mixers)  # at least a <think> and a thought token, </think>, x_t for every mixer
    assert 3 in chunks and set(chunks) <= {3, 4}
