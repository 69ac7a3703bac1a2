"""The recurrent engine (hybrid Mamba-attention and state-space models) against the reference engine: the same
thoughts, rewards, log-probs, losses and gradients, on tiny NemotronH (Mamba, attention and MLP layers), FalconH1,
Qwen3Next (gated DeltaNet beside attention) and Mamba2 (state-space only)."""

import pytest
import torch
from conftest import run_engine, tensors_in_cycles

from rlpt.data import Document, make_contexts
from rlpt.generation import right_pad
from rlpt.models import load_model_and_tokenizer
from rlpt.rollout import RolloutSpec, make_engine
from rlpt.rollout import mamba2_torch, recurrent, recurrent_states
from rlpt.rollout.recurrent import RecurrentEngine, supports_recurrent_rows, update_starts, width_groups
from rlpt.rollout.reference import ReferenceEngine

TEXTS = ["123+456=579. and a tail", "98+7=105. and a longer tail here", "5+5=10. ok"]


def test_update_starts_by_hand():
    """A position at least min_segment tokens past the last segment's end becomes an end; a closer one starts its
    row there."""
    assert update_starts([1, 2, 3, 7, 8], 2) == {1: 0, 2: 2, 3: 2, 7: 7, 8: 7}
    assert update_starts([5], 2) == {5: 5}
    assert update_starts(list(range(1, 6)), 2) == {1: 0, 2: 2, 3: 2, 4: 4, 5: 4}
    assert update_starts([3, 9, 20, 30, 40], 16) == {3: 0, 9: 0, 20: 20, 30: 20, 40: 40}


def test_width_groups_by_hand():
    """Rows sorted by width, cut where the padding saved outweighs one more forward (`group_cost` row tokens)."""
    assert width_groups([3, 9, 4, 10], 4) == [[0, 2], [1, 3]]  # 4 + 2 x 4 + 4 + 2 x 10 = 36 < 44 in one group
    assert width_groups([3, 9, 4, 10], 100) == [[0, 2, 1, 3]]
    assert width_groups([3, 9, 4, 10], 0) == [[0], [2], [1], [3]]
    assert width_groups([5, 5, 5], 0) == [[0, 1, 2]]  # equal widths: one group, whatever the cost
    assert width_groups([7], 256) == [[0]]


def test_the_probe_serves_hybrid_and_state_space_models(hybrid_dir):
    model, _, _ = load_model_and_tokenizer(hybrid_dir)
    assert supports_recurrent_rows(model) is None
    assert isinstance(make_engine("packed", model), RecurrentEngine)


def test_short_chunks_shortens_the_mamba_scans_and_restores_them(hybrid_dir, monkeypatch):
    """Inside the block every Mamba-2 mixer scans in chunks of SHORT_CHUNK tokens; after it, in its own again."""
    model, _, _ = load_model_and_tokenizer(hybrid_dir)
    monkeypatch.setattr(mamba2_torch, "SHORT_CHUNK", 2)
    mixers = mamba2_torch.mamba_mixers(model)
    assert bool(mixers) == (model.config.model_type != "qwen3_next")  # gated DeltaNet has no Mamba-2 mixer
    with mamba2_torch.short_chunks(model):
        assert [m.chunk_size for m in mixers] == [2] * len(mixers)
    assert [m.chunk_size for m in mixers] == [4] * len(mixers)


@pytest.mark.parametrize("short_chunk", [16, 2])
def test_one_forward_leaves_the_states_of_a_pass_in_segments(hybrid_dir, short_chunk, monkeypatch):
    """A model whose recurrent layers are all Mamba-2 mixers: one forward over the documents, the segments' ends
    recorded, leaves at every end the conv and SSM states and the attention keys that a pass in segments ending there
    leaves, and the same gradients through them (Qwen3Next's gated DeltaNet keeps the segments). Segments of 2 to 11
    tokens (one token would take the mixers' in-place one-token step in the pass in segments, which autograd cannot
    differentiate), the first shorter than its padded width; the segments' own scans in one chunk and (chunks of 2)
    in several."""
    monkeypatch.setattr(mamba2_torch, "SHORT_CHUNK", short_chunk)
    model, tok, _ = load_model_and_tokenizer(hybrid_dir)
    serves = recurrent.mamba2_pass(model)
    assert (serves is None) == (model.config.model_type == "qwen3_next")
    if serves is None:
        return
    layers = serves[1]
    ends = [3, 5, 9, 17, 19, 30]
    ids = right_pad([tok(t)["input_ids"][:30] for t in TEXTS], tok.pad_token_id)[0]
    ids = torch.nn.functional.pad(ids, (0, 30 - ids.size(1)), value=tok.pad_token_id)
    results = []
    for run in (recurrent.segments_pass, recurrent.one_pass):
        model.zero_grad()
        weights = torch.Generator().manual_seed(0)  # the same random weighting of the states in both
        states, cache = run(model, ids, [ends] * len(TEXTS))
        # conv, SSM of every document at each end
        flat = [x for end in ends for d in range(len(TEXTS)) for i in sorted(layers) for x in states[d, end].layers[i][0]]
        keys = [layer.keys for layer in cache.layers if recurrent_states.attends(layer)]
        loss = sum((torch.randn(x.shape, generator=weights) * x).sum() for x in flat + keys)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append(([x.detach() for x in flat + keys], grads))
    (expected, expected_grads), (got, got_grads) = results
    for a, b in zip(expected, got):  # relative to each one's size: the SSM states are about 1e-3
        torch.testing.assert_close(b, a, atol=1e-6 * a.abs().max().item(), rtol=1e-4)
    assert got_grads.keys() == expected_grads.keys()
    for name, a in expected_grads.items():
        torch.testing.assert_close(got_grads[name], a, atol=1e-5 * a.abs().max().item(), rtol=1e-3, msg=name)


def test_the_probe_refuses_attention_only_models(llama_dir):
    model, _, _ = load_model_and_tokenizer(llama_dir)
    assert supports_recurrent_rows(model) == "no recurrent layer in its cache"


@pytest.mark.parametrize("positions, reward_tokens, min_segment, group_cost, short_chunk, one_forward",
                         [("random:3", 1, 16, 256, 16, True), ("all", 3, 16, 256, 16, True),
                          ("all", 3, 16, 256, 16, False), ("all", 3, 2, 256, 16, False), ("all", 1, 16, 0, 16, True),
                          ("all", 3, 16, 256, 2, True)])
def test_recurrent_equals_reference(hybrid_dir, positions, reward_tokens, min_segment, group_cost, short_chunk,
                                    one_forward, monkeypatch):
    """Dense positions too (`all`: every position). The pass over the documents in one forward (Mamba-2 models, every
    position an end) and in segments (Qwen3Next always; the others with `one_forward` off), where most of the
    update's rows start before their position and carry the tokens between (up to 15 of them; with segments of 2
    tokens, one); with no cost to a forward, the update runs a forward for every row width, its rows out of order;
    with the engine's Mamba-2 scans in chunks of 2 tokens where the model's are 4 (`short_chunks`). The recurrent
    mixers' outputs are scaled up first, so that a row started from wrong (zero) states shows."""
    if not one_forward:
        monkeypatch.setattr(recurrent, "mamba2_pass", lambda model: None)
    monkeypatch.setattr(recurrent, "MIN_SEGMENT", min_segment)
    monkeypatch.setattr(recurrent, "GROUP_COST", group_cost)
    monkeypatch.setattr(mamba2_torch, "SHORT_CHUNK", short_chunk)
    model, tok, think = load_model_and_tokenizer(hybrid_dir)
    scale_mixers(model)
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
    contexts = make_contexts(docs, positions, seed=0, step=0, reward_tokens=reward_tokens)[:12]
    spec = RolloutSpec(group_size=3, max_thought_tokens=5, temperature=0.7, think=think, pad_id=tok.pad_token_id,
                       reward_discount=0.8)
    ref = run_engine(ReferenceEngine(), model, contexts, spec, seed=3)
    got = run_engine(RecurrentEngine(), model, contexts, spec, seed=3)
    assert got[0].thoughts == ref[0].thoughts
    assert len({len(t) for t in ref[0].thoughts}) >= 2
    torch.testing.assert_close(got[0].s_pred, ref[0].s_pred, atol=1e-4, rtol=0)
    torch.testing.assert_close(got[0].s_ema, ref[0].s_ema, atol=1e-4, rtol=0)
    assert torch.equal(got[0].predicted, ref[0].predicted)
    torch.testing.assert_close(got[2] * got[3], ref[2] * ref[3], atol=1e-4, rtol=0)
    assert abs(got[4] - ref[4]) < 1e-4
    assert got[5].keys() == ref[5].keys()
    for name in ref[5]:
        torch.testing.assert_close(got[5][name], ref[5][name], atol=2e-4, rtol=1e-3)


def test_a_rollout_and_an_update_leave_no_states_in_reference_cycles(hybrid_dir):
    """A cache layer given its own methods as bound methods held itself in a cycle, with its states and their graph:
    at the paper's lengths a NemotronH's update grew by gigabytes a micro-batch until the garbage collector ran."""
    model, tok, think = load_model_and_tokenizer(hybrid_dir)
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
    contexts = make_contexts(docs, "random:3", seed=0, step=0)
    spec = RolloutSpec(group_size=3, max_thought_tokens=5, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    assert tensors_in_cycles(lambda: run_engine(RecurrentEngine(), model, contexts, spec, seed=3)) == []


def scale_mixers(model, factor: float = 100.0) -> None:
    """At these tiny models' random initialisation a recurrent mixer adds about 1e-5 to the residual stream: too little
    for a wrong state to show. Scaled up, it shows."""
    with torch.no_grad():
        for mixer in [m for m in model.modules() if hasattr(m, "A_log")]:
            mixer.out_proj.weight *= factor


def test_a_state_one_token_early_is_caught(hybrid_dir, monkeypatch):
    """Hand each thought the states one token early (segments ending at t - 1): the rewards and log-probs no longer
    match the reference engine's. The recurrent mixers' outputs are scaled up first: at these tiny models' random
    initialisation a mixer adds about 1e-5 to the residual stream, too little for a wrong state to show."""
    model, tok, think = load_model_and_tokenizer(hybrid_dir)
    with torch.no_grad():
        for mixer in [m for m in model.modules() if hasattr(m, "A_log")]:
            mixer.out_proj.weight *= 100
    docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
    contexts = make_contexts(docs, "list:5,9", seed=0, step=0)
    spec = RolloutSpec(group_size=2, max_thought_tokens=4, temperature=0.7, think=think, pad_id=tok.pad_token_id)
    ref = run_engine(ReferenceEngine(), model, contexts, spec, seed=1)
    for name in ("segments_pass", "one_pass"):  # the pass in segments, and the one forward of Mamba-2 models
        def early(*args, original=getattr(recurrent, name)):
            *first, ends_of = args
            states, cache = original(*first, [[e - 1 for e in ends] for ends in ends_of])
            return {(d, e): states[d, e - 1] for d, ends in enumerate(ends_of) for e in ends}, cache

        monkeypatch.setattr(recurrent, name, early)
    assert supports_recurrent_rows(model) is not None
    got = run_engine(RecurrentEngine(), model, contexts, spec, seed=1)
    assert not torch.allclose(got[0].s_pred, ref[0].s_pred, atol=1e-3) or not torch.allclose(got[2] * got[3], ref[2] * ref[3], atol=1e-3)


def test_a_training_step_with_two_updates_and_the_whole_answer(hybrid_dir, tmp_path):
    """The trainer's step on the recurrent engine equals the reference engine's: the multi-token reward and
    rlp.updates_per_batch = 2 (the second update's ratio against the first's log-probs)."""
    from rlpt import config as config_lib
    from rlpt.trainer import RlpTrainer

    cfg = config_lib.paper_defaults(["rlp.group_size=3", "rlp.max_thought_tokens=4", "rlp.positions=random:2",
                                     "rlp.reward_tokens=3", "rlp.updates_per_batch=2", "train.batch_documents=3",
                                     "train.lr=1e-3", "eval.tasks="])
    outcomes = []
    for engine in (ReferenceEngine(), RecurrentEngine()):
        model, tok, think = load_model_and_tokenizer(hybrid_dir)
        docs = [Document(tok(t)["input_ids"], f"d{i}") for i, t in enumerate(TEXTS)]
        trainer = RlpTrainer(cfg, model, tok, think, docs, engine, tmp_path, torch.device("cpu"))
        # plain SGD: the weights move with the gradients (Adam's first steps move each by about lr, whatever its size,
        # so a weight whose gradient is float noise would move differently)
        trainer.optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
        outcome = trainer.rlp_step(0)
        outcomes.append((outcome, [p.detach().clone() for p in model.parameters()]))
    (ref, ref_params), (got, got_params) = outcomes
    assert got.rollouts.thoughts == ref.rollouts.thoughts and got.metrics["updates"] == ref.metrics["updates"] == 2
    for key in ("loss", "reward_mean", "clip_frac"):
        assert abs(got.metrics[key] - ref.metrics[key]) < 1e-4, key
    for a, b in zip(got_params, ref_params):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_train_on_a_hybrid_model_records_its_engine(hybrid_dir, tmp_path, capsys):
    """No engine named: the run takes the recurrent engine, says so, and summary.json records it; every dumped
    S_pred equals the model's own forward over the context, the thought and </think>."""
    import json

    from rlpt.cli import main

    corpus = tmp_path / "prose.txt"
    corpus.write_text("The cat sat on the mat. The dog sat on the log.\n\nA bird sang in the tree at dawn.\n")
    run = tmp_path / "run"
    assert main(["train", "--output", str(run), "--set", f"model.name_or_path={hybrid_dir}", "--set",
                 f"data.path={corpus}", "--set", "data.split_paragraphs=true", "--set", "rlp.group_size=2", "--set",
                 "rlp.max_thought_tokens=3", "--set", "rlp.positions=every:7", "--set", "train.max_steps=1", "--set",
                 "train.batch_documents=2", "--set", "train.dump_rollouts=true", "--set", "eval.tasks="]) == 0
    assert "rlpt: engine: recurrent" in capsys.readouterr().out
    assert json.loads((run / "summary.json").read_text())["engine"] == "recurrent"
    model, tok, think = load_model_and_tokenizer(hybrid_dir)
    rows = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    documents = {f"{corpus}:{i + 1}": tok(text)["input_ids"] for i, text in enumerate(corpus.read_text().split("\n\n"))}
    with torch.no_grad():
        for row in rows:
            ids = documents[row["doc"]][: row["position"]] + [think.open_id] + row["thought_ids"]
            if not row["thought_ids"] or row["thought_ids"][-1] != think.close_id:
                ids = ids + [think.close_id]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
            expected = torch.log_softmax(logits, -1)[documents[row["doc"]][row["position"]]].item()
            assert abs(expected - row["s_pred"]) < 1e-3


def test_plan_counts_the_recurrent_states_of_a_row(hybrid_dir, capsys):
    """`rlpt plan --model DIR` counts a row's conv and SSM states as the model's own cache holds them, the KV cache of
    its attention layers only, and gives the micro-batch that fits."""
    from rlpt.cli import main
    from rlpt.memory import state_bytes
    from rlpt.plan import shape_of

    model, _, _ = load_model_and_tokenizer(hybrid_dir)
    states = recurrent.fresh_states(model)
    conv = sum(pair[0].numel() for layer in states.layers.values() for pair in layer.values() if pair[0] is not None)
    ssm = sum(pair[1].numel() for layer in states.layers.values() for pair in layer.values() if pair[1] is not None)
    shape = shape_of(hybrid_dir)
    assert (shape.conv_state, shape.ssm_state) == (conv, ssm)
    assert shape.params == sum(p.numel() for p in model.parameters())
    assert shape.kv_layers == sum(recurrent_states.attends(layer) for layer in recurrent_states.cache_layers(model))
    assert state_bytes(shape, 4) == conv * 4 + ssm * 4
    assert main(["plan", "--model", hybrid_dir, "--memory", "1", "--positions", "random:8"]) == 0
    out = capsys.readouterr().out
    assert "recurrent states of the rows and their positions" in out and "chunks for 1.0 GiB: train.rollout_rows" in out


def test_gradient_checkpointing_is_refused_on_the_recurrent_engine(tmp_path, capsys):
    """train.gradient_checkpointing with the recurrent engine: a clear error at start, not a setting silently ignored."""
    from conftest import save_hybrid

    from rlpt.cli import main

    folder = save_hybrid(tmp_path / "model", "nemotron_h")
    assert main(["train", "--output", str(tmp_path / "run"), "--set", f"model.name_or_path={folder}",
                 "--set", "data.path=builtin:arith", "--set", "train.gradient_checkpointing=true", "--set", "eval.tasks=",
                 "--set", "rlp.group_size=2", "--set", "rlp.max_thought_tokens=2", "--set", "train.max_steps=1"]) == 2
    assert "recurrent engine does not recompute layers" in capsys.readouterr().err


def test_the_recurrent_engine_runs_only_on_the_transformers_it_was_tested_on(hybrid_dir, monkeypatch):
    """Outside the tested versions, the engine's swaps of transformers internals are not trusted: the reference engine,
    with a warning that names the version (the start-up probe could miss a changed internal)."""
    import transformers

    from rlpt import rollout

    assert rollout.untested_transformers("5.25.0") is None and rollout.untested_transformers("5.24.1") is None
    assert "transformers 5.30.0" in rollout.untested_transformers("5.30.0")
    assert rollout.untested_transformers("5.23.0") is not None and rollout.untested_transformers("6.0.0") is not None
    model, _, _ = load_model_and_tokenizer(hybrid_dir)
    assert rollout.make_engine("packed", model).name == "recurrent"
    monkeypatch.setattr(transformers, "__version__", "5.99.0")
    with pytest.warns(UserWarning, match="transformers 5.99.0"):
        assert rollout.make_engine("packed", model).name == "reference"


def test_fresh_states_follow_the_models_dtype(hybrid_dir):
    """The empty prefix's states are made again for a model moved to another dtype (the conv states are in the
    model's dtype; some families keep their SSM states in float32 whatever it is)."""
    model, _, _ = load_model_and_tokenizer(hybrid_dir)

    def conv_dtypes(states):
        return {pair[0].dtype for layer in states.layers.values() for pair in layer.values() if pair[0] is not None}

    assert conv_dtypes(recurrent_states.fresh_states(model)) == {torch.float32}
    model.to(torch.bfloat16)
    assert conv_dtypes(recurrent_states.fresh_states(model)) == {torch.bfloat16}
