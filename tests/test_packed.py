"""The packed engine against the reference engine: same thoughts, scores, losses and gradients; no leakage."""

import warnings

import pytest
import torch

from rlpt.data import Document, make_contexts
from rlpt.errors import UserError
from rlpt.models import load_model_and_tokenizer
from rlpt.rollout import RolloutSpec, make_engine
from rlpt.generation import right_pad
from rlpt.rollout.packed import PackedEngine, document_prefix, rows_over_documents, supports_shared_prefix
from rlpt.rollout.shared_prefix import SharedPrefix
from rlpt.rollout.reference import ReferenceEngine

from conftest import early_ending_sampler, run_engine, save_tiny, tensors_in_cycles

TEXTS = ["123+456=579.", "98+7=105. and a longer tail", "5+5=10.", "777+1=778."]


@pytest.fixture(scope="module", params=["llama", "llama-gqa", "qwen2", "qwen3", "gpt2", "gpt_neox", "mistral", "qwen2-sliding", "gemma3"])
def arch_dir(request, tmp_path_factory):
    return save_tiny(tmp_path_factory.mktemp(request.param), request.param, seed=1)


@pytest.mark.parametrize("excludes_think, reward_tokens, discount", [(False, 1, 1.0), (True, 1, 1.0), (True, 3, 0.8)])
def test_packed_equals_reference(arch_dir, excludes_think, reward_tokens, discount):
    model, tok, think = load_model_and_tokenizer(arch_dir)
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
    # several documents and positions; with K = 3 some are cut at the document's end
    contexts = make_contexts(docs, "random:3", seed=0, step=0, reward_tokens=reward_tokens)
    assert reward_tokens == 1 or {len(c.scored) for c in contexts} >= {1, 3}
    spec = RolloutSpec(group_size=4, max_thought_tokens=6, temperature=0.7, think=think, pad_id=tok.pad_token_id,
                       baseline_excludes_think=excludes_think, reward_discount=discount)
    ref = run_engine(ReferenceEngine(), model, contexts, spec, seed=3)
    packed = run_engine(PackedEngine(), model, contexts, spec, seed=3)

    assert packed[0].thoughts == ref[0].thoughts
    lengths = {len(t) for t in ref[0].thoughts}
    ended = sum(t[-1] == think.close_id for t in ref[0].thoughts)
    assert len(lengths) >= 3 and 0 < ended < len(ref[0].thoughts)  # ragged, some closed early, some cut
    torch.testing.assert_close(packed[0].s_pred, ref[0].s_pred, atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[0].s_ema, ref[0].s_ema, atol=1e-5, rtol=0)
    assert torch.equal(packed[0].predicted, ref[0].predicted)  # the token RPT checks
    torch.testing.assert_close(packed[1], ref[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(packed[2] * packed[3], ref[2] * ref[3], atol=1e-5, rtol=0)
    assert torch.equal(packed[3], ref[3])
    assert abs(packed[4] - ref[4]) < 1e-5
    assert packed[5].keys() == ref[5].keys()
    for name in ref[5]:
        torch.testing.assert_close(packed[5][name], ref[5][name], atol=1e-4, rtol=0)


@pytest.mark.parametrize("engine", [PackedEngine(), ReferenceEngine()], ids=["packed", "reference"])
def test_a_rollout_and_an_update_leave_no_tensors_in_reference_cycles(arch_dir, engine):
    """Tensors in cycles wait for a garbage collection, which counts objects, not bytes (see the recurrent engine's
    test)."""
    model, tok, think = load_model_and_tokenizer(arch_dir)
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
    contexts = make_contexts(docs, "random:3", seed=0, step=0)
    spec = RolloutSpec(group_size=3, max_thought_tokens=5, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    assert tensors_in_cycles(lambda: run_engine(engine, model, contexts, spec, seed=3)) == []


def test_packed_update_in_chunks_equals_whole(llama_dir):
    model, tok, think = load_model_and_tokenizer(llama_dir)
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
    contexts = make_contexts(docs, "random:2", seed=1, step=0)
    spec = RolloutSpec(group_size=3, max_thought_tokens=4, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    engine = PackedEngine()
    rollouts = engine.rollout(model, model, contexts, spec, early_ending_sampler(0, think.close_id))
    rows = list(range(len(rollouts.thoughts)))
    whole, mask = engine.thought_logprobs(model, rollouts, rows, spec)
    for chunk in (rows[:5], rows[5:11], rows[11:]):
        part, part_mask = engine.thought_logprobs(model, rollouts, chunk, spec)
        width = part.size(1)
        torch.testing.assert_close(part * part_mask, (whole * mask)[chunk, :width], atol=1e-5, rtol=0)


def test_packed_engine_has_no_leakage(llama_dir):
    # two documents equal in tokens 0..6, different from token 7 on; in one batch with a third document
    model, tok, think = load_model_and_tokenizer(llama_dir)
    a, b = tok("12+34=46. yes")["input_ids"], tok("12+34=99 no no no")["input_ids"]
    assert a[:7] == b[:7] and a[7] != b[7]
    other = Document(tok("7+8=15.")["input_ids"], "o")
    spec = RolloutSpec(group_size=3, max_thought_tokens=5, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    results = []
    for doc in (a, b):
        docs = [Document(doc, "x"), other]
        contexts = make_contexts(docs, "list:3,6", seed=0, step=0)  # x_<t and x_t are the same in both
        engine = PackedEngine()
        rollouts = engine.rollout(model, model, contexts, spec, early_ending_sampler(5, think.close_id))
        logp, mask = engine.thought_logprobs(model, rollouts, list(range(len(rollouts.thoughts))), spec)
        results.append((rollouts.thoughts, rollouts.s_pred, rollouts.s_ema, logp.detach()))
    assert results[0][0] == results[1][0]
    for x, y in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0)


def test_shared_prefix_grid_hand_worked():
    # rows of documents [0, 1, 0]: 2 rows for document 0, 1 for document 1 -> R = 2, slots 0 and 1 for document 0
    # (rows 0 and 2, in order), slot 2 for document 1; slot 3 stays empty
    keys = torch.zeros(2, 1, 5, 4)
    layer = type("Layer", (), {"keys": keys, "values": keys})()
    prefix = SharedPrefix(type("Cache", (), {"layers": [layer]})(), torch.tensor([0, 1, 0]), torch.tensor([1, 4, 2]))
    assert prefix.rows_per_doc == 2 and prefix.slot.tolist() == [0, 2, 1] and not prefix.identity
    rows = torch.arange(3.0).view(3, 1, 1, 1)
    grid = prefix.to_grid(rows)  # (documents, heads, R * q, 1)
    assert grid.flatten().tolist() == [0.0, 2.0, 1.0, 0.0]
    assert prefix.from_grid(grid, 1).flatten().tolist() == [0.0, 1.0, 2.0]
    # document keys before t only, per grid slot: document 0's slots hold row 0 (t=1: key 0) and row 2 (t=2: keys
    # 0-1), document 1's row 1 (t=4: keys 0-3) and the empty slot (every key: computed, then dropped)
    assert (prefix.doc_mask[:, 0, :, 0] == 0).int().tolist() == [[[1, 0, 0, 0, 0], [1, 1, 0, 0, 0]],
                                                                  [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]]


@pytest.mark.parametrize("row_doc, row_t", [([0, 0, 1, 1], [2, 5, 1, 3]), ([1, 0, 1], [4, 2, 2])])
def test_rows_over_documents_equal_the_rows_alone(llama_dir, row_doc, row_t):
    model, tok, _ = load_model_and_tokenizer(llama_dir)
    docs = [tok("12+34=46.")["input_ids"], tok("7+8=15")["input_ids"]]
    ids, mask = right_pad(docs, tok.pad_token_id)
    inputs = torch.tensor([[4, 20, 21], [4, 22, 23], [4, 24, 25], [4, 26, 27]])[: len(row_doc)]
    prefix = document_prefix(model, ids, mask, torch.tensor(row_doc), torch.tensor(row_t))
    with torch.no_grad():
        shared = rows_over_documents(model, inputs, torch.tensor(row_t), prefix).logits
        for i, (d, t) in enumerate(zip(row_doc, row_t)):
            alone = model(input_ids=torch.tensor([docs[d][:t] + inputs[i].tolist()])).logits[0, t:]
            torch.testing.assert_close(shared[i], alone, atol=1e-5, rtol=0)


class MaskIgnoringLM(torch.nn.Module):
    """A model whose attention ignores custom masks (like a flash-attention kernel): the probe must refuse it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        return self.inner(input_ids=input_ids)


def test_models_that_ignore_custom_masks_fall_back_with_a_warning(llama_dir):
    model, _, _ = load_model_and_tokenizer(llama_dir)
    assert supports_shared_prefix(model)
    assert isinstance(make_engine("packed", model), PackedEngine)
    wrapped = MaskIgnoringLM(model)
    assert not supports_shared_prefix(wrapped)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine = make_engine("packed", wrapped)
    assert isinstance(engine, ReferenceEngine) and "using the reference engine" in str(caught[0].message)


def test_compiled_decoding_samples_the_same_thoughts(llama_dir):
    # rlp.compile_decoding: a fixed-width own-token cache under torch.compile; two batches of different shapes (the
    # second compiles a graph with dynamic shapes)
    model, tok, think = load_model_and_tokenizer(llama_dir)
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
    spec = RolloutSpec(group_size=3, max_thought_tokens=5, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    compiled = PackedEngine(compile_decoding=True)
    for step, rule in ((0, "random:3"), (1, "random:2")):
        contexts = make_contexts(docs[step:], rule, seed=0, step=step, reward_tokens=1 + step)  # K = 2 the second time
        eager = PackedEngine().rollout(model, model, contexts, spec, early_ending_sampler(step, think.close_id))
        fused = compiled.rollout(model, model, contexts, spec, early_ending_sampler(step, think.close_id))
        assert fused.thoughts == eager.thoughts and len({len(t) for t in eager.thoughts}) >= 2
        torch.testing.assert_close(fused.s_pred, eager.s_pred, atol=1e-5, rtol=0)
        assert torch.equal(fused.predicted, eager.predicted)


def test_compiled_decoding_without_a_compiler_is_a_clear_error(llama_dir, monkeypatch):
    model, _, _ = load_model_and_tokenizer(llama_dir)
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(UserError, match="rlp.compile_decoding: .*install g\\+\\+"):
        make_engine("packed", model, compile_decoding=True)
    assert isinstance(make_engine("packed", model), PackedEngine)  # uncompiled, no compiler needed


def test_attention_the_packed_path_does_not_reproduce_falls_back(tmp_path):
    """Gemma2 soft-caps its attention logits (and gpt-oss adds attention sinks): the shared-prefix attention refuses
    them, so the start-up probe sends such a model to the reference engine, with its one-line warning."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                          num_key_value_heads=2, head_dim=16, sliding_window=6, attn_logit_softcapping=5.0)
    model = Gemma2ForCausalLM(config).eval()
    assert not supports_shared_prefix(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert isinstance(make_engine("packed", model), ReferenceEngine)
    assert "using the reference engine" in str(caught[0].message)


def test_the_probe_catches_a_window_the_packed_path_gets_wrong(tmp_path, monkeypatch):
    """The start-up probe's document is longer than the model's window: with the window left out of the shared-prefix
    attention (as before windows were applied) it fails, where a 3-token probe passed."""
    from rlpt.rollout.shared_prefix import SharedPrefix

    model, _, _ = load_model_and_tokenizer(save_tiny(tmp_path / "mistral", "mistral"))
    assert supports_shared_prefix(model)

    def no_window(self, query_positions, window, width):
        return 0.0, 0.0

    monkeypatch.setattr(SharedPrefix, "window_masks", no_window)
    assert not supports_shared_prefix(model)



def test_static_decoding_serves_later_batches_of_the_same_shape(llama_dir, monkeypatch):
    """Compiled decoding keeps one set of fixed-address inputs for the last shape (a CUDA graph is captured once per
    shape, not once per batch): a second batch of the same shapes copies its documents' keys and values, masks and
    positions in and draws what the eager engine draws; a batch of another shape replaces it. (The step is run
    uncompiled here: what is tested is the copying.)"""
    from rlpt.rollout import packed

    monkeypatch.setattr(PackedEngine, "compiled_step", lambda self, device: packed.fixed_width_step)
    model, tok, think = load_model_and_tokenizer(llama_dir)
    spec = RolloutSpec(group_size=3, max_thought_tokens=5, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    engine = PackedEngine(compile_decoding=True)
    batches = [["123+456=579.", "5+5=10.wxyz"], ["987+654=1641", "3+9=12.abcd"], ["12+34=46."]]  # equal lengths, then not
    kept = []
    for step, texts in enumerate(batches):
        docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(texts)]
        contexts = make_contexts(docs, "list:4,7", seed=0, step=step, reward_tokens=2)
        eager = PackedEngine().rollout(model, model, contexts, spec, early_ending_sampler(step, think.close_id))
        static = engine.rollout(model, model, contexts, spec, early_ending_sampler(step, think.close_id))
        assert static.thoughts == eager.thoughts and len({len(t) for t in eager.thoughts}) >= 2
        torch.testing.assert_close(static.s_pred, eager.s_pred, atol=1e-5, rtol=0)
        kept.append(next(iter(engine.static_steps.values())))
        assert len(engine.static_steps) == 1  # the last shape only
    assert kept[0] is kept[1] and kept[2] is not kept[1]


def test_a_failed_capture_restores_the_stream(monkeypatch):
    """torch raises from capture_end() before it restores the stream: the fallback must not go on running on the
    capture stream. (CUDA's stream calls are stood in for, so this runs without a GPU.)"""
    from contextlib import contextmanager

    from rlpt.rollout import packed

    class Stream:
        def __init__(self, name="side"):
            self.name = name

        def wait_stream(self, other):
            pass

    main = Stream("main")
    current = [main]

    @contextmanager
    def on(stream):
        before, current[0] = current[0], stream
        yield
        current[0] = before

    @contextmanager
    def graph(g):
        current[0] = Stream("capture")
        yield
        raise RuntimeError("operation not permitted when stream is capturing")  # capture_end, stream not restored

    monkeypatch.setattr(torch.cuda, "current_stream", lambda: current[0])
    monkeypatch.setattr(torch.cuda, "set_stream", lambda stream: current.__setitem__(0, stream))
    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "stream", on)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", object)
    with pytest.warns(UserWarning, match="could not be captured"):
        assert packed.captured_graph(lambda: torch.zeros(1)) is None
    assert current[0] is main
