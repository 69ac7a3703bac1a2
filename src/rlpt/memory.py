"""One RLP step's memory, by part, and the chunks of it that fit a budget: what `rlpt plan` prints and what `rlpt train`
sizes its chunks by (`train.memory_gb`, `train.rollout_rows`, `train.micro_batch_thoughts`).

Besides the float32 weights, gradients, Adam moments and EMA teacher, a step holds one of two phases at a time:
- the rollout of a chunk of rows decoded at once (G rows a context): the chunk's documents' keys and values, each
  row's own keys and values (the thought, its tags and the scored tokens), a decoding step's logits (float32, and the
  sampler's float64 CDF); with recurrent state, each row's states and each position's, and the documents' pass (its
  recorded convolution inputs, one layer's scan buffers);
- the update of a micro-batch of thoughts, forward and backward over their documents: every layer's activations of
  the rows and of the documents, a log-prob chunk, the next-token term; with recurrent state, the states of the rows
  and of their positions with their gradients, and every recurrent layer's scan buffers.
The peak is the fixed part and the larger phase. Sizes are per process (DDP: every GPU holds all of its share).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass
class Shape:
    """What memory depends on in a causal LM: its sizes (from its config.json, or given)."""

    layers: int
    hidden: int
    vocab: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    attention_layers: int | None = None  # layers with a KV cache (a hybrid model's attention layers); None: all
    conv_state: int = 0  # per row: the recurrent layers' convolution states, values (in the compute dtype)
    ssm_state: int = 0  # per row: their SSM / linear-attention states, float32 values
    counted_params: int | None = None  # the model's own count, where known
    recurrent_layers: int = 0  # layers with recurrent state (Mamba-2 mixers, gated DeltaNet)
    conv_kernel: int = 1  # their convolution's width
    scan_heads: int = 0  # a recurrent layer's heads
    mixer_width: int = 0  # a recurrent layer's inner width (heads x head_dim)
    scan_chunk: int = 256  # the model's own scan chunk
    mlp_layers: int | None = None  # layers with an MLP (NemotronH's are layers of their own); None: all

    @property
    def params(self) -> int:
        """The model's own count when known; else the weights of a Llama-like model with tied embeddings (attention,
        gated MLP, two norms a layer, a final one)."""
        if self.counted_params is not None:
            return self.counted_params
        attention = self.hidden * self.head_dim * (2 * self.heads + 2 * self.kv_heads)
        layer = attention + 3 * self.hidden * self.intermediate + 2 * self.hidden
        return self.vocab * self.hidden + self.layers * layer + self.hidden

    @property
    def kv_layers(self) -> int:
        return self.layers if self.attention_layers is None else self.attention_layers

    @property
    def layers_with_mlp(self) -> int:
        return self.layers if self.mlp_layers is None else self.mlp_layers


# Measured with one update micro-batch of thoughts of 2,048 tokens over a document of 2,048 (the resident memory a
# thought adds, `bench/paper_shape.py`'s models, CPU float32): 0.34 GiB a thought on the 2-layer Qwen3 of hidden 64,
# 2.67 GiB on the NemotronH `M*` with Nemotron-Nano-12B-v2's mixer. The counts below give 0.36 and 2.4.
# Values a token keeps per layer for the backward, besides attention: the layer's input, normed input, q/k/v, rotated
# q/k, attention output and its projection, residual, normed residual (about 10 x hidden) and the MLP's gate, up,
# activation and product (4 x intermediate).
ACTIVATIONS_PER_HIDDEN, ACTIVATIONS_PER_INTERMEDIATE = 10, 4
# attention keeps its scores' softmax and a copy of it split into the document's and the row's own part, in every
# layer; the backward of one layer at a time holds about 1.5 more (the gradient of the scores)
ATTENTION_COPIES, ATTENTION_BACKWARD_COPIES = 2, 1.5
# a Mamba-2 mixer keeps about this many values of its inner width per token outside its scan: the input projection's
# parts, the convolution's input and output, its activation, the gate and the norm
ACTIVATIONS_PER_MIXER_WIDTH = 6
# the chunked scan (`mamba2_chunk_scan`), float32: per token, B and C repeated over the heads and B's decay (4 x heads x
# state), three (chunk x heads) intra-chunk matrices, and 8 copies of the inner width (the inputs times dt, the
# diagonal and off-diagonal outputs and their parts); per chunk, three states of every head
SCAN_TOKEN_STATE_COPIES, SCAN_INTRA_COPIES, SCAN_TOKEN_WIDTH_COPIES, SCAN_STATE_COPIES = 4, 3, 8, 3
# float32 copies of a log-prob chunk's logits at once: the logits (turned into their gradient in place in the backward),
# the exponentials inside the log-sum-exp, and what the allocator holds between chunks: 3.1 measured on CPU
# (`bench/memory.py`'s run at 8k, chunks of 2^24 against 2^20 logits), rounded up
LOGIT_COPIES = 4
# bytes a decoding step holds per row and vocabulary entry: the float32 logits and their log-softmax, and the
# sampler's float64 probabilities and cumulative sum
DECODING_LOGIT_BYTES = 4 + 4 + 8 + 8


@dataclass(frozen=True)
class StepSettings:
    """What one step's memory depends on besides the model: `rlpt train`'s settings (per process)."""

    group_size: int = 16
    thought_tokens: int = 2048
    doc_tokens: int = 512  # data.max_length: a document window's tokens at most
    documents: int = 8  # train.batch_documents
    positions: int = 511  # contexts a document (rlp.positions; `all`: every position)
    reward_tokens: int = 1
    compute_bytes: int = 4
    checkpointing: bool = False
    next_token_documents: int = 0
    next_token_doc_tokens: int = 0  # the next-token term's longest document (a run knows it); 0: doc_tokens

    @property
    def contexts(self) -> int:
        return self.documents * self.positions

    @property
    def rows(self) -> int:
        return self.contexts * self.group_size


def positions_per_document(rule: str, doc_tokens: int) -> int:
    """How many contexts `rlp.positions` makes in a document of `doc_tokens` (at most; one for the marker rules)."""
    kind, _, value = rule.partition(":")
    if kind in ("all", "after"):  # after:TEXT: every position after the first TEXT
        return doc_tokens - 1
    if kind == "every":
        return max(1, (doc_tokens - 1) // int(value))
    if kind == "random":
        return min(int(value), doc_tokens - 1)
    if kind == "list":
        return len(value.split(","))
    return 1  # first:TEXT, answer: one a document (a JSONL record)


def kv_bytes(shape: Shape, compute_bytes: int) -> int:
    """One token's keys and values over the attention layers."""
    return 2 * shape.kv_layers * shape.kv_heads * shape.head_dim * compute_bytes


def state_bytes(shape: Shape, compute_bytes: int) -> int:
    """One row's recurrent states: the conv states in the compute dtype, the SSM states in float32."""
    return shape.conv_state * compute_bytes + shape.ssm_state * 4


def scan_bytes(shape: Shape, length: int) -> int:
    """One sequence's buffers in one recurrent layer's chunked scan, float32."""
    from rlpt.rollout.mamba2_torch import scan_chunk  # the engine's choice of chunk (imports torch: only here)

    if not shape.ssm_state:
        return 0
    chunk = scan_chunk(length, shape.scan_chunk)
    chunks = math.ceil(length / chunk)
    per_layer_state = shape.ssm_state // shape.recurrent_layers
    heads, width = shape.scan_heads, shape.mixer_width
    state_size = per_layer_state // max(width, 1)
    per_token = (SCAN_TOKEN_STATE_COPIES * heads * state_size + SCAN_INTRA_COPIES * chunk * heads
                 + SCAN_TOKEN_WIDTH_COPIES * width)
    return 4 * (chunks * chunk * per_token + SCAN_STATE_COPIES * (chunks + 1) * per_layer_state)


def token_activations(shape: Shape, context: int, compute_bytes: int) -> int:
    """Bytes one token keeps for the backward over all layers, attending to `context` tokens. (The packed engine
    scores a micro-batch's document keys in a grid of its documents x the rows of its largest one, a copy when there
    are two documents or more: the trainer's micro-batches keep such a grid to half the slots, `micro_batches`,
    so that none costs more than a micro-batch of one document's rows, counted here.)"""
    scores = shape.heads * context
    attention = ((ACTIVATIONS_PER_HIDDEN * shape.hidden + ATTENTION_COPIES * scores) * shape.kv_layers
                 + (ATTENTION_BACKWARD_COPIES * scores if shape.kv_layers else 0))
    mlp = ACTIVATIONS_PER_INTERMEDIATE * shape.intermediate * shape.layers_with_mlp
    mixers = ACTIVATIONS_PER_MIXER_WIDTH * shape.mixer_width * shape.recurrent_layers
    return int((attention + mlp + mixers) * compute_bytes)


def documents_spanned(settings: StepSettings, contexts: int) -> int:
    """Documents a run of `contexts` consecutive contexts reads at most (a document's contexts are consecutive)."""
    return min(settings.documents, math.ceil(contexts / settings.positions) + 1)


def fixed_parts(shape: Shape) -> dict[str, float]:
    n = shape.params
    return {"weights (float32)": 4 * n, "gradients (float32)": 4 * n, "Adam moments (float32)": 8 * n,
            "EMA teacher (float32)": 4 * n}


def rollout_parts(shape: Shape, settings: StepSettings, rows: int) -> dict[str, float]:
    """What decoding `rows` rows at once holds (rows of whole groups)."""
    s, cb = settings, settings.compute_bytes
    contexts = math.ceil(rows / s.group_size)
    docs = documents_spanned(s, contexts)
    width = s.thought_tokens + 2 + s.reward_tokens  # <think>, the thought, </think>, the scored tokens
    conv_inputs = shape.conv_state // max(shape.conv_kernel, 1) * s.doc_tokens * cb  # every layer's, recorded
    return {
        "rollout: the documents' keys and values": kv_bytes(shape, cb) * s.doc_tokens * docs,
        "rollout: the rows' own keys and values": kv_bytes(shape, cb) * rows * width,
        "rollout: a decoding step's logits": DECODING_LOGIT_BYTES * rows * shape.vocab,
        "rollout: recurrent states of the rows and their positions": state_bytes(shape, cb) * (rows + contexts),
        "rollout: the documents' pass (conv inputs, a layer's scan)": docs * (conv_inputs + scan_bytes(shape, s.doc_tokens)),
    }


def update_parts(shape: Shape, settings: StepSettings, thoughts: int) -> dict[str, float]:
    """What the forward and backward of a micro-batch of `thoughts` thoughts holds."""
    from rlpt.logprobs import CHUNK_ELEMENTS

    s, cb = settings, settings.compute_bytes
    contexts = math.ceil(thoughts / s.group_size) + 1
    # over d documents a micro-batch costs d x its largest document's rows x GRID_COPY: at most thoughts / GRID_COPY
    docs = min(documents_spanned(s, contexts), max(1, thoughts // GRID_COPY))
    tokens = thoughts * s.thought_tokens
    per_token = token_activations(shape, s.doc_tokens + s.thought_tokens, cb)
    if s.checkpointing:  # one layer's at a time, plus every layer's input
        per_token = per_token // shape.layers + shape.layers * shape.hidden * cb
    rows = tokens * per_token
    documents = docs * s.doc_tokens * token_activations(shape, s.doc_tokens, cb)
    term_tokens = s.next_token_doc_tokens or s.doc_tokens
    next_token = s.next_token_documents * term_tokens * token_activations(shape, term_tokens, cb)
    logits = LOGIT_COPIES * 4 * min(CHUNK_ELEMENTS, max(tokens, s.next_token_documents * term_tokens) * shape.vocab)
    layers = shape.recurrent_layers
    return {
        "update: the thought rows' activations": rows,
        "update: the documents' activations": documents,
        "update: the next-token term's activations beyond the update's": max(0, next_token - rows - documents),
        "update: log-prob chunk": logits,
        # float32: added into the gradient in place; bfloat16: the head's weight cast once, and a chunk's product
        "update: the output head's gradient of one chunk": 0 if cb == 4 else 2 * cb * shape.vocab * shape.hidden,
        # the states the rows start from and their positions', and their gradients
        "update: recurrent states of the rows and their positions": 2 * state_bytes(shape, cb) * (thoughts + contexts),
        # the documents' pass scans them twice: the model's own scan, and each segment's apart (`segment_end_states`)
        "update: scan buffers (every recurrent layer)": layers * (thoughts * scan_bytes(shape, s.thought_tokens)
                                                                  + 2 * docs * scan_bytes(shape, s.doc_tokens)),
    }


def step_parts(shape: Shape, settings: StepSettings, rollout_rows: int, micro_batch_thoughts: int) -> dict[str, float]:
    """The parts of the step's peak: the fixed ones and those of its larger phase."""
    rollout = rollout_parts(shape, settings, rollout_rows)
    update = update_parts(shape, settings, micro_batch_thoughts)
    return {**fixed_parts(shape), **(rollout if sum(rollout.values()) >= sum(update.values()) else update)}


@dataclass(frozen=True)
class Chunks:
    rollout_rows: int  # rows decoded at once (whole groups)
    micro_batch_thoughts: int  # thoughts a forward and backward of the update
    fits: bool  # whether even these fit the budget


# a grid slot's cost when a micro-batch's rows are in several documents, against one document's rows (measured 1.6 at
# the paper's lengths: 0.43 GiB a slot against 0.27): the trainer's micro-batches keep such a grid to 1 / GRID_COPY of
# their size (`micro_batches`), so a micro-batch of size m never costs more than m rows of one document
GRID_COPY = 2


def micro_batches(rows: list[int], size: int, document_of) -> list[list[int]]:
    """`rows` in order, cut into micro-batches that cost no more than `size` rows of one document. The update's
    attention scores a micro-batch's document keys in a grid of its documents x the rows of its largest one
    (`shared_prefix.SharedPrefix`), every slot, and over two documents or more in a copy of the rows: 29 rows split
    28 + 1 over two documents would score 56 slots, copied. A micro-batch ends where its next row would take it past
    `size` slots, or past `size` / GRID_COPY over several documents (what `update_parts` prices: `size` rows of one)."""
    batches, current, per_document = [], [], {}
    for row in rows:
        document = document_of(row)
        counts = {**per_document, document: per_document.get(document, 0) + 1}
        grid = len(counts) * max(counts.values()) * (GRID_COPY if len(counts) > 1 else 1)
        if current and grid > size:
            batches.append(current)
            current, counts = [], {document: 1}
        current.append(row)
        per_document = counts
    return batches + [current] if current else batches


# of a memory budget, what the chunks leave to the allocator: memory it holds freed and has not given back, beyond the
# live tensors counted here (at the paper's lengths on CPU 1.6 GiB of 16 by the update's third micro-batch)
ALLOCATOR_SHARE = 0.1


def chunks_that_fit(shape: Shape, settings: StepSettings, budget: float, rollout_rows: int = 0,
                    micro_batch_thoughts: int = 0) -> Chunks:
    """The largest rollout chunk (whole groups, up to the step's rows) and update micro-batch whose step fits `budget`
    bytes less the allocator's share; a size given (> 0) is kept. At least one group and one thought. The micro-batch
    goes up to GRID_COPY times the step's rows: what it takes for the step's rows to run in one micro-batch over
    several documents."""
    budget = budget * (1 - ALLOCATOR_SHARE)
    fixed = sum(fixed_parts(shape).values())
    G, rows = settings.group_size, settings.rows

    def largest(cost, most: int, unit: int) -> int:
        low, high = 1, max(1, most // unit)  # in units; cost is increasing in the count
        while low < high:
            middle = (low + high + 1) // 2
            low, high = (middle, high) if fixed + sum(cost(middle * unit).values()) <= budget else (low, middle - 1)
        return low * unit

    rollout = rollout_rows or largest(lambda r: rollout_parts(shape, settings, r), rows, G)
    micro = micro_batch_thoughts or largest(lambda m: update_parts(shape, settings, m), GRID_COPY * rows, 1)
    # a size given above that runs as that
    fits = fixed + max(sum(rollout_parts(shape, settings, min(rollout, rows)).values()),
                       sum(update_parts(shape, settings, min(micro, GRID_COPY * rows)).values())) <= budget
    return Chunks(rollout, micro, fits)


def available_memory(device) -> float:
    """Bytes this process may use: a GPU's total memory, or on CPU what the system has available now (MemAvailable:
    free memory and caches it can drop), this process's resident memory included."""
    import torch

    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    fields = {}
    with open("/proc/meminfo") as handle:
        for line in handle:
            name, value = line.split(":", 1)
            fields[name] = int(value.split()[0]) * 1024
    with open("/proc/self/status") as handle:
        resident = next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmRSS:"))
    return float(fields.get("MemAvailable", fields["MemTotal"]) + resident)
