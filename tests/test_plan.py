"""`rlpt plan`: the compute model, on the paper's setting and on a case small enough to count by hand."""

import json

import pytest

from rlpt.cli import main
from rlpt.plan import plan


def test_paper_setting_flop_matched_budget():
    # n=16, l_seq=2048, bs=512, iters=200, T_inp=170M: 16*2048*512*200 + 170e6 = 3,525,443,200 (~3.5B)
    assert plan(1.7e9, 170e6, 16, 2048, 512, 200, 32).cpt_flop_matched_tokens == 3_525_443_200
    # counting the mean context (170e6 / (512*200) = 1660.16 tokens) in l_seq gives the paper's "approximately 6B"
    with_prompt = plan(1.7e9, 170e6, 16, 2048, 512, 200, 32, count_prompt=True)
    assert with_prompt.l_seq == pytest.approx(2048 + 1660.15625)
    assert with_prompt.cpt_flop_matched_tokens == pytest.approx(6.245e9, rel=1e-3)


def test_small_case_by_hand():
    # N=10, T_inp=100, G=2, L=3, batch=4, steps=5: R = 2*3*4*5 = 120
    p = plan(10, 100, 2, 3, 4, 5, gpus=2, mfu=0.5, gpu_flops=1000)
    assert p.rollout_tokens == 120 and p.update_tokens == 220
    assert p.flops == 10 * (2 * 100 + 2 * 100 + 2 * 120 + 6 * 220)  # 19,600
    assert p.gpu_hours == pytest.approx(19_600 / 500 / 3600) and p.wall_hours == pytest.approx(p.gpu_hours / 2)


def test_cli(capsys):
    assert main(["plan", "--params", "1.7e9", "--tokens", "170e6", "--group-size", "16", "--thought-tokens", "2048",
                 "--batch", "512", "--steps", "200", "--gpus", "32", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cpt_flop_matched_tokens"] == 3_525_443_200
    assert main(["plan", "--params", "-1", "--tokens", "1", "--steps", "1"]) == 2
    assert "--params must be > 0" in capsys.readouterr().err


def test_memory_by_hand_and_the_chunks_that_fit():
    from rlpt.memory import (ALLOCATOR_SHARE, StepSettings, chunks_that_fit, fixed_parts, rollout_parts, step_parts,
                             token_activations, update_parts)
    from rlpt.plan import Shape

    shape = Shape(layers=2, hidden=4, vocab=10, heads=2, kv_heads=1, head_dim=2, intermediate=8)
    # tied embedding 40; per layer: attention 4 * 2 * (2 * 2 + 2 * 1) = 48, MLP 3 * 4 * 8 = 96, norms 8 -> 152;
    # the final norm 4
    assert shape.params == 40 + 2 * 152 + 4
    n = 348
    assert fixed_parts(shape) == {"weights (float32)": 4 * n, "gradients (float32)": 4 * n,
                                  "Adam moments (float32)": 8 * n, "EMA teacher (float32)": 4 * n}
    settings = StepSettings(group_size=3, thought_tokens=5, doc_tokens=7, documents=2, positions=2)
    # the rollout of 6 rows (2 contexts, in both documents at most): a token's keys and values are 2 (k, v) x 2 layers
    # x 1 head x 2 wide x 4 bytes = 32; each row holds <think>, 5 thought tokens, </think> and 1 scored token; a
    # decoding step 24 bytes a logit
    rollout = rollout_parts(shape, settings, 6)
    assert rollout["rollout: the documents' keys and values"] == 32 * 7 * 2
    assert rollout["rollout: the rows' own keys and values"] == 32 * 6 * 8
    assert rollout["rollout: a decoding step's logits"] == 24 * 6 * 10
    assert rollout["rollout: recurrent states of the rows and their positions"] == 0
    # the update of 2 thoughts (10 tokens; the trainer's micro-batches cost no more than as many rows of one
    # document): a thought token scores 2 heads x (7 + 5) = 24 keys; it keeps, in each of the 2 layers, 10 x 4 values
    # and 2 copies of its scores, in one layer at a time 1.5 more (the backward), and 4 x 8 of each MLP:
    # (40 + 48) x 2 + 36 + 64 = 276 values, 1,104 bytes
    update = update_parts(shape, settings, 2)
    assert update["update: the thought rows' activations"] == 10 * 1104
    # a document token: 2 heads x 7 keys = 14, (40 + 28) x 2 + 21 + 64 = 221 values, 884 bytes; of one document: 2
    # thoughts over two would cost 2 x 1 x GRID_COPY = 4 rows, so the trainer never puts them together
    assert update["update: the documents' activations"] == 1 * 7 * 884
    assert update_parts(shape, settings, 4)["update: the documents' activations"] == 2 * 7 * 884
    assert update["update: log-prob chunk"] == 4 * 4 * 10 * 10  # fewer logits than a chunk holds: all, 4 copies
    assert update["update: the output head's gradient of one chunk"] == 0  # float32: added in place
    half = StepSettings(group_size=3, thought_tokens=5, doc_tokens=7, documents=2, positions=2, compute_bytes=2)
    assert update_parts(shape, half, 2)["update: the output head's gradient of one chunk"] == 2 * 2 * 10 * 4
    checkpointed = StepSettings(group_size=3, thought_tokens=5, doc_tokens=7, documents=2, positions=2, checkpointing=True)
    # one layer's 552 bytes at a time, and every layer's input (2 x 4 values)
    assert update_parts(shape, checkpointed, 2)["update: the thought rows' activations"] == 10 * (552 + 2 * 4 * 4)
    # the next-token term: 8 documents of 7 tokens of 884 bytes = 49,504, beyond the update's 11,040 + 6,188; its
    # 56 tokens' logits (560) make the chunk
    term = StepSettings(group_size=3, thought_tokens=5, doc_tokens=7, documents=2, positions=2, next_token_documents=8)
    with_term = update_parts(shape, term, 2)
    assert with_term["update: the next-token term's activations beyond the update's"] == 49_504 - 11_040 - 6_188
    assert with_term["update: log-prob chunk"] == 4 * 4 * 56 * 10
    assert update["update: the next-token term's activations beyond the update's"] == 0
    # priced at its longest document when a run knows it: 3 tokens of 708 bytes, 8 x 3 x 708 = 16,992, under the
    # update's 11,040 + 6,188; its 24 tokens' logits make the chunk
    short = StepSettings(group_size=3, thought_tokens=5, doc_tokens=7, documents=2, positions=2, next_token_documents=8,
                         next_token_doc_tokens=3)
    assert token_activations(shape, 3, 4) == 708
    assert update_parts(shape, short, 2)["update: the next-token term's activations beyond the update's"] == 0
    assert update_parts(shape, short, 2)["update: log-prob chunk"] == 4 * 4 * 24 * 10
    # the peak: the fixed parts and the larger phase's
    assert step_parts(shape, settings, 6, 2) == {**fixed_parts(shape), **update}
    fixed = sum(fixed_parts(shape).values())
    usable = fixed + sum(update_parts(shape, settings, 3).values()) - 1  # the chunks leave the allocator its share
    chunks = chunks_that_fit(shape, settings, usable / (1 - ALLOCATOR_SHARE))
    assert chunks.micro_batch_thoughts == 2 and chunks.fits
    assert chunks.rollout_rows == max(r for r in range(3, 13, 3) if fixed + sum(rollout_parts(shape, settings, r).values()) <= usable)
    exactly_two = fixed + sum(update_parts(shape, settings, 2).values())
    assert chunks_that_fit(shape, settings, exactly_two).micro_batch_thoughts == 1  # 2 fit the budget, not its 90%
    assert not chunks_that_fit(shape, settings, 1.0).fits
    given = chunks_that_fit(shape, settings, 1.0, rollout_rows=9, micro_batch_thoughts=5)
    assert (given.rollout_rows, given.micro_batch_thoughts) == (9, 5)
    # a size given above the step's 12 rows is priced as the 12 that run (24 for the micro-batch, which may take
    # the 12 over both documents at GRID_COPY = 2): 256 fits where 12 and 24 do
    budget = fixed + max(sum(rollout_parts(shape, settings, 12).values()), sum(update_parts(shape, settings, 24).values()))
    budget /= 1 - ALLOCATOR_SHARE
    assert chunks_that_fit(shape, settings, budget, rollout_rows=256, micro_batch_thoughts=256).fits


def test_the_shape_of_a_model_folder_gives_its_parameter_count(llama_dir, capsys):
    from rlpt.cli import main
    from rlpt.memory import StepSettings, chunks_that_fit
    from rlpt.models import load_model_and_tokenizer
    from rlpt.plan import shape_of

    model, _, _ = load_model_and_tokenizer(llama_dir)
    assert shape_of(llama_dir).params == sum(p.numel() for p in model.parameters())
    assert main(["plan", "--params", "1e6", "--tokens", "1e5", "--steps", "10", "--model", llama_dir,
                 "--memory", "1"]) == 0
    out = capsys.readouterr().out
    # rlpt train's defaults: G = 16, L = 2,048, 8 documents of 512 tokens, every position
    chunks = chunks_that_fit(shape_of(llama_dir), StepSettings(), 2**30)
    assert f"train.rollout_rows {chunks.rollout_rows}, train.micro_batch_thoughts {chunks.micro_batch_thoughts}" in out
    assert "phases beside the fixed parts: rollout" in out
    assert 0 < chunks.micro_batch_thoughts < 16  # at L = 2048 the activations of 16 thoughts do not fit a GiB, one does


def test_plan_gives_memory_alone_from_a_models_sizes(llama_dir, capsys):
    """No --params/--tokens/--steps: the memory of one GPU only, the parameters counted from the model; asking for
    neither, or for half a compute plan, is a clear error."""
    import json

    from rlpt.cli import main
    from rlpt.plan import shape_of

    assert main(["plan", "--model", llama_dir, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert "flops" not in out and out["memory_bytes"]["weights (float32)"] == 4 * shape_of(llama_dir).params
    assert main(["plan", "--model", llama_dir, "--tokens", "1e5", "--steps", "10"]) == 0  # N from the model
    assert "FLOPs" in capsys.readouterr().out
    assert main(["plan"]) == 2 and "for its memory" in capsys.readouterr().err
    assert main(["plan", "--tokens", "1e5"]) == 2 and "needs --params" in capsys.readouterr().err


# a row's recurrent states in values, by hand from conftest's HYBRID (hidden 32, so a Mamba-2 mixer's heads * head_dim
# = expand * hidden = 32): (attention layers, conv values, SSM values).
# NemotronH "M*M-": 2 Mamba layers, 1 attention; conv (heads 4 * head_dim 8 + 2 * groups 1 * state 8) * kernel 4 = 192,
#   SSM heads 4 * head_dim 8 * state 8 = 256, each a layer.
# FalconH1: 2 hybrid layers (attention and Mamba each), the same mixer sizes under mamba_* names.
# Qwen3Next [linear, full]: 1 gated DeltaNet, conv (2 * key heads 2 * key dim 8 + value heads 2 * value dim 8) *
#   kernel 4 = 192, state value heads 2 * key dim 8 * value dim 8 = 128; 1 attention layer.
# Mamba2: 2 Mamba layers, no attention.
HYBRID_STATES = {"nemotron_h": (1, 2 * 192, 2 * 256), "falcon_h1": (2, 2 * 192, 2 * 256),
                 "qwen3_next": (1, 192, 128), "mamba2": (0, 2 * 192, 2 * 256)}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "gemma3", "gpt2", "gpt_neox", *HYBRID_STATES])
def test_plan_reads_the_model_folder_of_every_family(arch, tmp_path, capsys):
    """`rlpt plan --model DIR` on each family the engines run: attention-only models (whose config.json names every
    layer `full_attention` or `sliding_attention` in transformers 5, or names none) count no recurrent state and a
    KV cache in every layer; hybrids count their recurrent layers' states as the config sizes them."""
    from conftest import save_hybrid, save_tiny

    from rlpt.memory import state_bytes
    from rlpt.plan import shape_of

    folder = save_hybrid(tmp_path, arch) if arch in HYBRID_STATES else save_tiny(tmp_path, arch)
    assert main(["plan", "--model", folder, "--json"]) == 0
    parts = json.loads(capsys.readouterr().out)["memory_bytes"]
    assert sum(parts.values()) > 0 and parts["weights (float32)"] > 0
    shape = shape_of(folder)
    if arch in HYBRID_STATES:
        assert (shape.kv_layers, shape.conv_state, shape.ssm_state) == HYBRID_STATES[arch]
        _, conv, ssm = HYBRID_STATES[arch]
        assert state_bytes(shape, 4) == conv * 4 + ssm * 4  # a row's, float32
    else:
        assert (shape.kv_layers, shape.conv_state, shape.ssm_state) == (2, 0, 0) and state_bytes(shape, 4) == 0


@pytest.mark.parametrize("layout, named", [
    (dict(layer_types=["full_attention", "teleport_attention"]), "'teleport_attention' not understood"),
    (dict(hybrid_override_pattern="M*Q"), "'Q' not understood"),
    # a Mamba layer without its sizes: the names each family gives its heads
    (dict(layer_types=["linear_attention", "full_attention"]), "mamba_num_heads, mamba_n_heads, num_heads"),
    (dict(layer_types=["linear_attention"], mamba_num_heads=4, ssm_state_size=8, n_groups=1, mamba_head_dim=8),
     "conv_kernel, mamba_d_conv"),
    (dict(layer_types="full_attention"), "not a list"),
    (dict(hidden_size=None), "hidden_size, n_embd"),
])
def test_plan_names_what_it_does_not_understand_in_a_model_folder(layout, named, tmp_path, capsys):
    """A config.json of a layout rlpt does not know is a clear error naming the folder and what was not understood
    (exit code 2, one line), not a traceback."""
    config = dict(model_type="mystery", hidden_size=32, vocab_size=10, num_hidden_layers=2, num_attention_heads=2)
    (tmp_path / "config.json").write_text(json.dumps({**config, **layout}))
    assert main(["plan", "--model", str(tmp_path), "--json"]) == 2
    err = capsys.readouterr().err
    assert f"--model: {tmp_path}/config.json" in err and named in err and "Traceback" not in err
