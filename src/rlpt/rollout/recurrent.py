"""The recurrent engine: dense RLP for models that carry recurrent state (Mamba-2 mixers, gated DeltaNet linear
attention, short convolutions), with or without attention layers beside them: NemotronH, FalconH1, Qwen3Next, Mamba2.

A thought at position t continues the model's state after x_<t: the recurrent layers' conv and SSM states there, and
the attention layers' keys and values before t. The packed engine gets every position's keys from one forward over
the document, because causal attention makes them the same as the prefix's own; a recurrent layer keeps only its last
state, so here one pass over each document runs in segments that end at the chosen positions, continuing the model's
own cache (`DynamicCache`), and the state at the end of each segment is that position's. So the context is encoded
once per document, not once per thought:
- sampling: the segments end at every chosen position; G rows per position start from its states (the recurrent
  layers' states copied to the rows, the attention layers' document keys kept once, `shared_prefix.py`) and decode
  together, S_pred read from the logits after `</think>` as in the packed engine;
- the update: the same pass, with gradients, in segments of at least MIN_SEGMENT tokens (a one-token forward takes
  the mixers' in-place single-step path, which autograd cannot differentiate; and each segment is a forward and a
  backward of the whole model, whose fixed cost dominates short ones). A position that falls closer than that to the
  previous segment's end starts its row there and carries the context tokens between in the row itself;
  every thought row then runs in one forward over `x_s .. x_{t-1} <think> c[:-1]` from its states, and the gradient
  flows from the rows into the segments' states and the document's keys.
The cache's recurrent layers are made to assign their new states instead of copying them into fixed buffers
(`assigning`), so that a state taken at a segment's end is not overwritten by the next segment and carries its
gradient. The teacher scores S_ema with one forward over each document, as in the packed engine.

Where every recurrent layer is a Mamba-2 mixer (NemotronH, FalconH1, Mamba2; not gated DeltaNet), the pass is one
forward over the documents instead (`one_pass`): the mixers record their states at every segment's end, the same
states with their gradients, without a forward (and in the update a backward) of the whole model for each segment;
the update then ends a segment at every position, and its rows carry no context tokens.
The mixers scan in short chunks in the engine's forwards and decode with a leaner one-token step
(`mamba2_torch.py`).

A model this engine cannot serve fails a probe at start-up (`supports_recurrent_rows`) and falls back to the reference
engine.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicSlidingWindowLayer

from rlpt.generation import right_pad
from rlpt.logprobs import chosen_logprobs
from rlpt.rollout.base import Rollouts, RolloutSpec
from rlpt.rollout.mamba2_torch import (lean_steps, recorded_segment_ends, recording_modules, short_chunks,
                                       states_at)
from rlpt.rollout.decoding import additive_mask, decode_thoughts, decoding_steps, documents_and_baseline, documents_of
from rlpt.rollout.recurrent_states import (States, cache_layers, fresh_states, has_attention, inputs, is_recurrent,
                                           new_cache, preallocated, rows_cache, taken)
from rlpt.rollout.shared_prefix import SharedPrefix, shared_prefix_attention

MIN_SEGMENT = 16  # tokens at least in a segment of the update's pass in segments (see `update_starts`)


# ------------------------------------------------------------------------------------------------ the documents
@dataclass
class Documents:
    """The documents' states at their segments' ends, and their attention layers' keys and values (from the same
    pass)."""

    states: dict[tuple[int, int], States]  # {(document, t): its states after x_<t, a batch row of one}
    cache: DynamicCache | None  # the pass's cache: its attention layers hold the documents' keys (None: no segment)

    def state(self, doc: int, t: int) -> States:
        """Document `doc`'s states after x_<t (one of its segments' ends)."""
        return self.states[doc, t]


def segments_pass(model, ids: torch.Tensor, ends_of: list[list[int]]) -> tuple[dict, DynamicCache]:
    """One forward over the documents `ids` (B, T), right-padded, in segments that end at every document's ends (the
    union of `ends_of`), all documents together, continuing one cache: each document's states after each of its own
    ends (copied out; the others are not kept), and the cache (its attention layers hold the documents' keys)."""
    device, dtype = ids.device, next(model.parameters()).dtype
    cache = new_cache(model)
    states, start = {}, 0
    for end in sorted(set().union(*ends_of)):
        with short_chunks(model, end - start):
            # causal over the cached tokens and its own: without a mask, attention would align a segment's first token
            # with the first cached key
            seen = torch.ones(end - start, end, dtype=torch.bool, device=device).tril(start)
            model(input_ids=ids[:, start:end], use_cache=True, logits_to_keep=1,
                  **inputs(model, cache, torch.arange(start, end, device=device)[None].expand(ids.size(0), -1),
                           additive_mask(seen, dtype, ids.size(0))))
        docs = [d for d, ends in enumerate(ends_of) if end in ends]
        states.update(zip(((d, end) for d in docs), taken(cache, docs)))
        start = end
    return states, cache


MAMBA2_PASS = weakref.WeakKeyDictionary()  # model -> (its device type, `mamba2_pass`): asked at every pass


def mamba2_pass(model) -> tuple[list, set[int]] | None:
    """What `one_pass` needs where every recurrent layer of the model is a Mamba-2 mixer: the modeling modules whose
    functions it wraps and the recurrent layers' indices; None elsewhere (gated DeltaNet; mamba-ssm's kernels)."""
    device = next(model.parameters()).device.type
    if MAMBA2_PASS.get(model, (None,))[0] != device:  # the kernels' use depends on the device
        layers = {i for i, layer in enumerate(cache_layers(model)) if is_recurrent(layer)}
        modules = recording_modules(model, layers)
        MAMBA2_PASS[model] = device, None if modules is None else (modules, layers)
    return MAMBA2_PASS[model][1]


def one_pass(model, ids: torch.Tensor, ends_of: list[list[int]]) -> tuple[dict, DynamicCache]:
    """`segments_pass` for a model whose recurrent layers are all Mamba-2 mixers (`mamba2_pass`): one forward over the
    documents, the mixers' states at each document's ends recorded (`recorded_segment_ends`), where a pass in segments
    runs the whole model once for each segment (and, in the update, backward once for each). A layer whose states were
    not recorded (a mixer calling other functions than its module's) is an error: the start-up probe runs this too,
    and falls back to the reference engine with the reason."""
    modules, layers = mamba2_pass(model)
    device, dtype = ids.device, next(model.parameters()).dtype
    (rows, length), cache, records = ids.shape, new_cache(model), {}
    seen = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    with short_chunks(model, length), recorded_segment_ends(modules, ends_of, records):
        model(input_ids=ids, use_cache=True, logits_to_keep=1,
              **inputs(model, cache, torch.arange(length, device=device)[None].expand(rows, -1), additive_mask(seen, dtype, rows)))
    missing = sorted(i for i in layers if records.get(i, {}).keys() != {"conv", "ssm"})
    if missing:
        raise RuntimeError(f"the Mamba-2 states of layers {missing} were not recorded in one forward")
    return {(d, end): States({i: {0: states_at(record, d, end)} for i, record in records.items()})
            for d, ends in enumerate(ends_of) for end in ends}, cache


def document_states(model, docs: list[list[int]], ends_of: list[list[int]], pad_id: int = 0) -> Documents:
    """Each document's states at its own ends (`ends_of[d]`, increasing, each > 0): `one_pass` where the model's
    recurrent layers are all Mamba-2 mixers, else `segments_pass`."""
    last = max((ends[-1] for ends in ends_of if ends), default=0)
    if not last:  # every row starts at 0: no segment
        return Documents({}, None)
    device = next(model.parameters()).device
    ids = right_pad([doc[:last] for doc in docs], pad_id)[0].to(device)
    ids = F.pad(ids, (0, last - ids.size(1)), value=pad_id)  # every document as long as the last end
    return Documents(*(segments_pass(model, ids, ends_of) if mamba2_pass(model) is None else one_pass(model, ids, ends_of)))


def ends_by_document(documents: int, doc_of: list[int], starts: list[int]) -> list[list[int]]:
    """Each document's segment ends: the starts (> 0) of the rows that continue from it, increasing."""
    ends = [set() for _ in range(documents)]
    for d, s in zip(doc_of, starts):
        if s:
            ends[d].add(s)
    return [sorted(e) for e in ends]


class Prefix:
    """What a batch of thought rows continues from: a cache holding each row's recurrent states, and the documents'
    keys that the rows' attention reads (a SharedPrefix; None for a model without attention)."""

    def __init__(self, model, documents: Documents, row_doc: torch.Tensor, row_start: torch.Tensor):
        fresh = fresh_states(model)
        starts = row_start.tolist()
        self.cache = rows_cache(model, [documents.state(d, s) if s else fresh for d, s in zip(row_doc.tolist(), starts)])
        self.shared = None
        if documents.cache is not None and has_attention(model):
            self.shared = SharedPrefix(documents.cache, row_doc, row_start)

    def attention(self, model):
        return shared_prefix_attention(model, self.shared)


# ------------------------------------------------------------------------------------------------ the engine
class RecurrentEngine:
    name = "recurrent"

    @torch.no_grad()
    def rollout(self, policy, teacher, contexts, spec: RolloutSpec, choose) -> Rollouts:
        device = next(policy.parameters()).device
        G = spec.group_size
        docs, doc_of_context, _, _, answers, answer_lengths, s_ema = documents_and_baseline(teacher, contexts, spec)
        positions = [c.position for c in contexts]
        documents = document_states(policy, docs, ends_by_document(len(docs), doc_of_context, positions), spec.pad_id)
        row_context = torch.arange(len(contexts), device=device).repeat_interleave(G)
        row_t = torch.tensor(positions, device=device)[row_context]
        prefix = Prefix(policy, documents, torch.tensor(doc_of_context, device=device)[row_context], row_t)
        thoughts, s_pred, predicted, right = self.decode_thoughts(
            policy, prefix, row_t, answers[row_context], answer_lengths[row_context], spec, choose)
        shape = (len(contexts), G)
        return Rollouts(contexts, thoughts, s_pred.view(shape), s_ema, predicted.view(shape), right.view(shape))

    def decode_thoughts(self, policy, prefix: Prefix, row_t, row_answer, row_answer_length, spec, choose):
        """`decoding.decode_thoughts` from the rows' states, the Mamba-2 mixers taking the lean one-token step."""
        next_logits = self.decoder(policy, prefix, row_t, decoding_steps(spec, row_answer.size(1)))
        with lean_steps(policy):
            return decode_thoughts(next_logits, row_answer, row_answer_length, spec, choose)

    def decoder(self, policy, prefix: Prefix, row_t, capacity: int):
        """`next_logits(feed, step)`: one token a row, at position t + step, from the rows' states, each row's own keys
        written in place into room for `capacity` tokens."""
        preallocated(prefix.cache, capacity)

        def next_logits(feed, step):  # one query a row: it sees all of its own keys, the documents' up to t
            with prefix.attention(policy):
                out = policy(input_ids=feed[:, None], use_cache=True, **inputs(policy, prefix.cache, (row_t + step)[:, None]))
            return out.logits[:, -1]

        return next_logits

    def thought_logprobs(self, model, rollouts: Rollouts, rows: list[int], spec: RolloutSpec):
        """Tempered log-probs (N, L) of the thought tokens of `rows` (with grad) and their mask (N, L): one segmented
        pass over the documents (with grad), then the rows `x_s .. x_{t-1} <think> c[:-1]` from the states at s, in
        forwards of rows of similar width (`update_rows`)."""
        device = next(model.parameters()).device
        G = spec.group_size
        contexts = [rollouts.contexts[r // G] for r in rows]
        thoughts = [rollouts.thoughts[r] for r in rows]
        pieces, doc_of_row = documents_of(contexts)
        lengths = [len(t) for t in thoughts]
        longest = max(lengths)
        parts, order = [], []
        groups, passed = update_rows(model, pieces, doc_of_row, [c.position for c in contexts],
                                     [[spec.think.open_id] + t[:-1] for t in thoughts], spec.pad_id)
        for group, forward, gaps in groups:
            counts = [lengths[i] for i in group]
            width = max(counts)
            # thought token u of a row is predicted by the output at gap + u (the <think> token and after)
            index = torch.tensor([[g + min(u, n - 1) for u in range(width)] for g, n in zip(gaps, counts)], device=device)

            def pick(states, index=index):
                return states.gather(1, index[:, :, None].expand(-1, -1, states.size(-1)))

            targets = right_pad([thoughts[i] for i in group], spec.pad_id)[0].to(device)
            # DDP averages gradients only after a forward of the model it wraps: the documents' pass is one, where it
            # ran (every row can start at 0: no segment, then the rows run the whole model)
            logp = chosen_logprobs(model, forward, targets, spec.temperature, spec.think.close_id, pick,
                                   root_forward_runs=passed)
            parts.append(F.pad(logp, (0, longest - width)))
            order += group
        logp = torch.cat(parts)[torch.argsort(torch.tensor(order, device=device))]
        thought_mask = (torch.arange(longest, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]).float()
        return logp, thought_mask


def update_rows(model, docs: list[list[int]], doc_of_row: list[int], positions: list[int], tails: list[list[int]],
                pad_id: int) -> tuple[list[tuple[list[int], object, list[int]]], bool]:
    """The update's forwards: the pass over `docs` (`document_states`: segments of at least MIN_SEGMENT tokens, or one
    token with `one_pass`, ending where `update_starts` says), then the rows `x_s .. x_{t-1} tail` (t = positions[i], of document doc_of_row[i]) from the
    states at s, rows of similar width in one forward (`width_groups`). Returns, for each group, its rows (indices
    into the arguments), `forward(run)`, which runs them with `run` (the model or its body), and each of its rows' gap
    t - s: where the row's tail starts; and whether the pass over the documents ran (no segment ends: it did not)."""
    # ends shared by every document; one forward makes an end cost next to nothing: every position is one
    starts = update_starts(sorted(set(positions)), MIN_SEGMENT if mamba2_pass(model) is None else 1)
    documents = document_states(model, docs, ends_by_document(len(docs), doc_of_row, [starts[t] for t in positions]),
                                pad_id)
    gaps = [docs[d][starts[t]:t] for d, t in zip(doc_of_row, positions)]
    rows = [gap + tail for gap, tail in zip(gaps, tails)]
    return [(group, rows_forward(model, documents, [rows[i] for i in group], [doc_of_row[i] for i in group],
                                 [starts[positions[i]] for i in group], pad_id), [len(gaps[i]) for i in group])
            for group in width_groups([len(row) for row in rows])], documents.cache is not None


def rows_forward(model, documents: Documents, rows: list[list[int]], row_doc: list[int], row_start: list[int],
                 pad_id: int):
    """`forward(run)`: the rows (token lists), right-padded, each continuing from its document's states at its start,
    in one forward of `run`."""
    device = next(model.parameters()).device
    ids = right_pad(rows, pad_id)[0]
    if ids.size(1) < 2:  # one token a row would take the mixers' single-step path
        ids = F.pad(ids, (0, 1), value=pad_id)
    ids, width = ids.to(device), ids.size(1)
    start = torch.tensor(row_start, device=device)
    prefix = Prefix(model, documents, torch.tensor(row_doc, device=device), start)
    own = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    kwargs = inputs(model, prefix.cache, start[:, None] + torch.arange(width, device=device)[None, :],
                    additive_mask(own, next(model.parameters()).dtype, len(rows)))

    def forward(run):
        with prefix.attention(model), short_chunks(model, width):
            return run(input_ids=ids, use_cache=True, **kwargs)

    return forward


GROUP_COST = 256  # one more forward's fixed cost, in row tokens (see `width_groups`; docs/performance.md)


def width_groups(widths: list[int], group_cost: int | None = None) -> list[list[int]]:
    """The rows (indices into `widths`) in groups, each run in one forward padded to its widest row: sorted by width
    and cut where the padding saved outweighs one more forward's fixed cost, counted as `group_cost` row tokens.
    (3, 9, 4, 10) with 4: [[0, 2], [1, 3]] (cost 4 + 2 x 4 + 4 + 2 x 10 = 36, one group 44); with 100: one group."""
    group_cost = GROUP_COST if group_cost is None else group_cost
    order = sorted(range(len(widths)), key=widths.__getitem__)
    distinct = sorted(set(widths))
    below = [0]  # rows narrower than or as wide as each distinct width
    for w in distinct:
        below.append(below[-1] + widths.count(w))
    best, cut = [0], [0]  # the cheapest cost of the rows up to the j-th distinct width, and where its last group starts
    for j in range(1, len(distinct) + 1):
        cost, i = min((best[i] + group_cost + (below[j] - below[i]) * distinct[j - 1], i) for i in range(j))
        best.append(cost)
        cut.append(i)
    groups, j = [], len(distinct)
    while j:
        groups.append(order[below[cut[j]]:below[j]])
        j = cut[j]
    return groups[::-1]


def update_starts(positions: list[int], min_segment: int = MIN_SEGMENT) -> dict[int, int]:
    """Where the update's row of each position starts: at the position itself when it is `min_segment` or more tokens
    past the last segment's end (a new end), else at that last end (0: the empty prefix), the tokens between carried
    in the row. With 2: (1, 2, 3, 7, 8) -> {1: 0, 2: 2, 3: 2, 7: 7, 8: 7}."""
    starts, last = {}, 0
    for t in positions:
        if t - last >= min_segment:
            last = t
        starts[t] = last
    return starts


# ------------------------------------------------------------------------------------------------ the probe
PROBE_LENGTH = 24


@torch.no_grad()
def supports_recurrent_rows(model) -> str | None:
    """None when the engine reproduces the model on itself, else why not. Rows at three positions of a random
    document, several tokens each, are checked against the plain forward over `x_<t` and the row: decoded one token at
    a time from the states at t (sampling), and in one forward from the update's segment ends with the context tokens
    between (the update)."""
    device = next(model.parameters()).device
    try:
        layers = cache_layers(model)
    except Exception as exc:  # a config its cache cannot be built from
        return f"its cache cannot be built ({type(exc).__name__})"
    if not any(is_recurrent(layer) for layer in layers):
        return "no recurrent layer in its cache"
    if any(isinstance(layer, DynamicSlidingWindowLayer) for layer in layers):
        return "sliding-window attention (its cache keeps only the last window of the document's keys)"
    vocab = model.config.get_text_config().vocab_size
    generator = torch.Generator().manual_seed(0)
    doc = torch.randint(vocab, (PROBE_LENGTH,), generator=generator).tolist()
    rows = torch.randint(vocab, (3, 4), generator=generator).tolist()
    ts = [3, 4, PROBE_LENGTH - 1]  # the update's rows of 3 and 4 start at 0 and carry their context; 23's at 23
    try:
        alone = [model(input_ids=torch.tensor([doc[:t] + row], device=device)).logits[0, t:] for t, row in zip(ts, rows)]
        documents = document_states(model, [doc], [ts])
        row_doc, row_t = torch.zeros(3, dtype=torch.long, device=device), torch.tensor(ts, device=device)
        prefix = Prefix(model, documents, row_doc, row_t)
        decode = RecurrentEngine().decoder(model, prefix, row_t, 4)
        with lean_steps(model):
            stepped = torch.stack([decode(torch.tensor([r[j] for r in rows], device=device), j) for j in range(4)], 1)
        batched = [None] * len(rows)
        for group, forward, gaps in update_rows(model, [doc], [0, 0, 0], ts, rows, 0)[0]:
            logits = forward(model).logits
            for k, (i, g) in enumerate(zip(group, gaps)):
                batched[i] = logits[k, g : g + 4]
        batched = torch.stack(batched)
    except Exception as exc:  # any model that cannot run this falls back, whatever the reason
        return f"{type(exc).__name__}: {exc}"[:200]
    expected = torch.stack(alone)
    for what, got in (("decoding", stepped), ("the update", batched)):
        if not torch.allclose(got.float(), expected.float(), atol=1e-3, rtol=1e-3):
            return f"{what} differs from the model's own forward by {(got - expected).abs().max().item():.2g}"
    return None
