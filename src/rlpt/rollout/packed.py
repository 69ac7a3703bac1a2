"""The packed thought engine (DESIGN.md section 4): dense RLP at the cost of the thought tokens.

Causal attention makes the keys and values of x_<t computed over the whole document identical to those of the prefix
alone. So, per batch:
- one teacher forward over each document gives S_ema at every chosen position (and, for a reward of K tokens, the
  K terms after it);
- one policy forward over each document gives the keys and values of every context. The G thoughts at all P
  positions of a document then decode together: row (t, g) starts from `<think>` at position t and attends to the
  document's keys before t and to its own earlier thought tokens (`shared_prefix.py`: the document's keys are kept
  once, not copied into every row);
- S_pred is read from the logits right after `</think>` while decoding (a sampled `</think>` is fed back as usual;
  a thought cut at the limit is fed a forced one), untempered; for K > 1 the row is then fed x_t .. x_{t+K-2}, one a
  step, and each step's logits give the next term;
- the update runs one forward over the documents (with grad) and one over all thought rows `<think> c[:-1]` on top
  of it, so the gradient reaches each document once through its keys and values. (Packing `[document; thought_1;
  ...]` into one sequence with a block mask computes the same thing, but its attention is dense over the whole
  packed length, most of it masked: it measured 2-3x slower on the benchmark's first shape.)
The sampler sees the same rows (in context order) at the same steps as in the reference engine, so both engines
sample the same thoughts; tests hold them to the same rewards, losses and gradients.

With `rlp.compile_decoding`, a decoding step runs under `torch.compile`, over an own-token cache of fixed width
(`fixed_width_step`), so that its shapes do not change from step to step.

A model that cannot run this (another attention kernel, a model that drops the extra arguments) fails a probe at
start-up; the trainer then uses the reference engine and says so.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers.cache_utils import DynamicCache

from rlpt.generation import Chooser, cache_kwarg, right_pad
from rlpt.logprobs import chosen_logprobs
from rlpt.rollout.base import Rollouts, RolloutSpec, layers_checkpointed
from rlpt.rollout.decoding import additive_mask, decode_thoughts, decoding_steps, documents_and_baseline, documents_of
from rlpt.rollout.shared_prefix import SharedPrefix, own_tokens_cache, shared_prefix_attention


# compiled decoding keeps the inputs (and CUDA graph) of the last shape for the next batch: one batch's decoding cache
# stays allocated between batches (at the paper's shape on a GPU, gigabytes); more shapes would hold more
STATIC_SHAPES = 1
PROBE_LENGTH = 24  # document tokens beyond the model's sliding window (if any) in the start-up probe
PROBE_MAX_WINDOW = 4096  # a wider window is probed at this length: the probe stays one short forward


@torch.no_grad()
def supports_shared_prefix(model) -> bool:
    """Probe on the model itself: thought rows over a shared document prefix must give the logits of the plain
    sequences `x_<t <think> c`. The document is longer than the model's sliding window (if it has one), and the rows
    sit early, midway and at the end of it with several tokens of their own, so that a window, a mask or a position
    that the packed path gets wrong shows. False if the model errors or disagrees."""
    device = next(model.parameters()).device
    config = getattr(model.config, "text_config", None) or model.config
    vocab = model.config.vocab_size
    window = min(getattr(config, "sliding_window", None) or 0, PROBE_MAX_WINDOW)
    length = PROBE_LENGTH + window
    generator = torch.Generator().manual_seed(0)
    doc = torch.randint(vocab, (1, length), generator=generator).to(device)
    rows = torch.randint(vocab, (3, 4), generator=generator).to(device)
    row_t = torch.tensor([2, length // 2, length - 1], device=device)
    try:
        alone = torch.stack([model(input_ids=torch.cat([doc[0, :t], row])[None]).logits[0, t:]
                             for t, row in zip(row_t.tolist(), rows)])
        prefix = document_prefix(model, doc, torch.ones_like(doc), torch.zeros_like(row_t), row_t)
        shared = rows_over_documents(model, rows, row_t, prefix).logits
    except Exception:  # any model that cannot run this falls back, whatever the reason
        return False
    return bool(torch.allclose(shared.float(), alone.float(), atol=1e-3, rtol=1e-3))


def rows_over_documents(model, inputs, row_t, prefix: SharedPrefix, cache=None, use_cache=False, run=None):
    """Forward thought rows `inputs` (N, W) over their documents' shared prefix: row i sees its document's keys before
    row_t[i] and its own tokens causally (those in `cache` too); its positions continue from row_t[i] + len(cache).
    `run` is what runs them: the model (logits), or its body (hidden states)."""
    n, width = inputs.shape
    past = cache.get_seq_length() if cache is not None else 0
    own = torch.ones(width, past + width, dtype=torch.bool, device=inputs.device).tril(past)
    positions = row_t[:, None] + past + torch.arange(width, device=inputs.device)[None, :]
    kwargs = {cache_kwarg(model): cache} if cache is not None else {}
    with shared_prefix_attention(model):
        return (run or model)(input_ids=inputs, position_ids=positions, use_cache=use_cache, shared_prefix=prefix,
                              attention_mask=additive_mask(own, next(model.parameters()).dtype, n),
                              **kwargs)


def fixed_width_step(model, feed, positions, own_mask, cache, prefix: SharedPrefix, cache_name: str) -> torch.Tensor:
    """One decoding step of every row, over an own-token cache of fixed width (`own_mask` hides its unwritten slots):
    the logits (N, V) after `feed` (N,) at `positions` (N,). Its shapes are the same at every step of a batch, so
    `torch.compile` builds it once (`rlp.compile_decoding`)."""
    with shared_prefix_attention(model):
        out = model(input_ids=feed[:, None], position_ids=positions[:, None], use_cache=True, shared_prefix=prefix,
                    attention_mask=own_mask, **{cache_name: cache})
    return out.logits[:, -1]


def document_prefix(model, doc_ids, doc_mask, row_doc, row_t) -> SharedPrefix:
    """One forward over the documents (right-padded) gives the keys and values every row shares."""
    # a plain cache: the one a model makes itself keeps only the last `sliding_window` keys of a windowed layer, and
    # a row at t needs the keys its own window reaches back to
    name = cache_kwarg(model)
    out = model(input_ids=doc_ids, attention_mask=doc_mask, use_cache=True, logits_to_keep=1, **{name: DynamicCache()})
    return SharedPrefix(out.get(name), row_doc, row_t)


def captured_graph(step):
    """(graph, logits): `step()` captured as one CUDA graph, after two warm-up runs on a side stream (which also
    compile it); None, with a warning, when it cannot be captured. A decoding step of a small model is hundreds of
    kernel launches, which the GPU otherwise waits on one by one."""
    import warnings

    stream = torch.cuda.current_stream()
    try:
        side = torch.cuda.Stream()
        side.wait_stream(stream)
        with torch.cuda.stream(side):
            for _ in range(2):
                step()
        stream.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = step()
    except RuntimeError as exc:
        torch.cuda.set_stream(stream)  # an invalidated capture raises in capture_end, before the stream is restored
        warnings.warn(f"rlp.compile_decoding: the decoding step could not be captured as a CUDA graph ({exc}); "
                      "it runs compiled, without a graph", stacklevel=3)
        return None
    return graph, logits


def shape_key(policy, prefix: SharedPrefix, rows: int, capacity: int) -> tuple:
    """What a decoding step's shapes (and the Python values it is traced with) depend on, and the model it runs (kept
    alive by the entry, so its id names it)."""
    return (id(policy), rows, capacity, prefix.rows_per_doc, prefix.identity, prefix.first_keys.dtype, prefix.first_keys.device,
            tuple(k.shape for k in prefix.keys), tuple(v.shape for v in prefix.values), tuple(prefix.doc_mask.shape))


class StaticDecoding:
    """A compiled decoding step whose every input lives at a fixed address: the documents' keys and values, the
    rows' masks and positions, the own-token cache, the fed token and the slot written. A later batch of the same
    shapes copies its inputs in (`load`) and runs the same step; on a GPU the step is captured as a CUDA graph once
    per shape, not once per batch (a capture synchronises the device and empties its cache)."""

    def __init__(self, step_fn, policy, prefix: SharedPrefix, capacity: int, capture: bool):
        rows, device = prefix.row_t.numel(), prefix.row_t.device
        self.prefix = prefix  # the first batch's tensors become the fixed ones
        self.write_at = torch.zeros(1, dtype=torch.long, device=device)
        self.feed = torch.zeros(rows, dtype=torch.long, device=device)
        cache, cache_name = own_tokens_cache(prefix, rows, capacity, self.write_at), cache_kwarg(policy)
        slots = torch.arange(capacity, device=device)
        dtype = next(policy.parameters()).dtype

        def step():
            own_mask = additive_mask((slots <= self.write_at)[None, :], dtype, rows)
            return step_fn(policy, self.feed, prefix.row_t + self.write_at, own_mask, cache, prefix, cache_name)

        self.step, self.graph = step, captured_graph(step) if capture else None

    def load(self, prefix: SharedPrefix) -> None:
        """Copy another batch's inputs (of the same shapes) into the fixed ones."""
        fixed = self.prefix
        for mine, theirs in zip(fixed.keys + fixed.values, prefix.keys + prefix.values):
            mine.copy_(theirs)
        for name in ("row_t", "slot", "doc_mask"):
            getattr(fixed, name).copy_(getattr(prefix, name))

    def next_logits(self, feed: torch.Tensor, step: int) -> torch.Tensor:
        self.write_at.fill_(step)
        self.feed.copy_(feed)
        if self.graph is None:
            return self.step()
        graph, logits = self.graph
        graph.replay()
        return logits.clone()  # the next replay writes over `logits`


class PackedEngine:
    name = "packed"

    def __init__(self, compile_decoding: bool = False):
        # compiled, a decoding step is one fused graph instead of hundreds of small eager operators (~1.25x faster
        # steps in bench/vs_trl.py's dense setting), after 10-60 s of compiling at the first batch and at the first
        # batch of another shape (that one compiles with dynamic shapes, so there is no third). On CPU the graph's
        # wrapper is C++ (`cpp_wrapper`): the Python one adds a fixed cost to every step. On a GPU the compiled step
        # is also captured as a CUDA graph once per shape (`StaticDecoding`), so a step is one launch.
        self.compile_decoding = compile_decoding
        self.compiled_steps = {}  # device type -> the compiled `fixed_width_step`
        self.static_steps = OrderedDict()  # shape_key -> StaticDecoding, the most recently used last

    def compiled_step(self, device: torch.device):
        if device.type not in self.compiled_steps:
            options = {"cpp_wrapper": True} if device.type == "cpu" else None
            self.compiled_steps[device.type] = torch.compile(fixed_width_step, options=options)
        return self.compiled_steps[device.type]

    @torch.no_grad()
    def rollout(self, policy, teacher, contexts, spec: RolloutSpec, choose: Chooser) -> Rollouts:
        device = next(policy.parameters()).device
        G = spec.group_size
        docs, doc_of_context, ids, pad_mask, answers, answer_lengths, s_ema = documents_and_baseline(teacher, contexts, spec)
        positions = torch.tensor([c.position for c in contexts], device=device)
        context_doc = torch.tensor(doc_of_context, device=device)
        row_context = torch.arange(len(contexts), device=device).repeat_interleave(G)  # (N,) rows in context order
        row_t = positions[row_context]
        prefix = document_prefix(policy, ids, pad_mask, context_doc[row_context], row_t)
        thoughts, s_pred, predicted, right = self.decode_thoughts(
            policy, prefix, row_t, answers[row_context], answer_lengths[row_context], spec, choose)
        shape = (len(contexts), G)
        return Rollouts(contexts, thoughts, s_pred.view(shape), s_ema, predicted.view(shape), right.view(shape))

    def decode_thoughts(self, policy, prefix, row_t, row_answer, row_answer_length, spec, choose):
        """`decoding.decode_thoughts` over the documents' shared prefix."""
        next_logits = self.decoder(policy, prefix, row_t, decoding_steps(spec, row_answer.size(1)))
        return decode_thoughts(next_logits, row_answer, row_answer_length, spec, choose)

    def decoder(self, policy, prefix: SharedPrefix, row_t, capacity: int):
        """`next_logits(feed, step)`: the logits (N, V) after feeding token `feed` (N,) to every row at decoding
        step `step`, each row's own keys and values kept in a cache of up to `capacity` tokens."""
        N = row_t.numel()
        if not self.compile_decoding:
            cache = own_tokens_cache(prefix, N, capacity)
            return lambda feed, step: rows_over_documents(policy, feed[:, None], row_t, prefix, cache, True).logits[:, -1]
        key = shape_key(policy, prefix, N, capacity)
        static = self.static_steps.get(key)
        if static is None:
            static = StaticDecoding(self.compiled_step(row_t.device), policy, prefix, capacity,
                                    capture=row_t.device.type == "cuda")
            self.static_steps[key] = static
            while len(self.static_steps) > STATIC_SHAPES:  # each holds its buffers (and a graph's memory pool)
                self.static_steps.popitem(last=False)
        else:
            static.load(prefix)
            self.static_steps.move_to_end(key)
        return static.next_logits

    def thought_logprobs(self, model, rollouts: Rollouts, rows: list[int], spec: RolloutSpec):
        """Tempered log-probs (N, L) of the thought tokens of `rows` (with grad) and their mask (N, L).

        One forward over the documents (with grad) gives their KV; every thought row `<think> c[:-1]` then attends to
        its document's keys before t and to its own earlier tokens, all rows in one forward. The gradient reaches the
        document through its KV, as in the reference engine."""
        device = next(model.parameters()).device
        G = spec.group_size
        contexts = [rollouts.contexts[r // G] for r in rows]
        thoughts = [rollouts.thoughts[r] for r in rows]
        docs, doc_of_row = documents_of(contexts)
        ids, pad_mask = (x.to(device) for x in right_pad(docs, spec.pad_id))
        row_t = torch.tensor([c.position for c in contexts], device=device)
        prefix = document_prefix(model, ids, pad_mask, torch.tensor(doc_of_row, device=device), row_t)
        inputs, lengths = right_pad([[spec.think.open_id] + t[:-1] for t in thoughts], spec.pad_id)
        inputs, lengths = inputs.to(device), lengths.sum(1).to(device)
        width = inputs.size(1)
        targets = right_pad(thoughts, spec.pad_id)[0].to(device)
        def forward(run):
            with layers_checkpointed(model, spec.checkpoint_layers, shared_prefix_attention):
                return rows_over_documents(model, inputs, row_t, prefix, run=run)

        # document_prefix ran the whole model with gradients (what DDP needs to average them)
        logp = chosen_logprobs(model, forward, targets, spec.temperature, spec.think.close_id, root_forward_runs=True)
        mask = (torch.arange(width, device=device)[None, :] < lengths[:, None]).float()
        return logp, mask
