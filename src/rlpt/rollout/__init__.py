"""Thought engines: sample G thoughts per (document, position), score them, and give the update's log-probs.

- `reference`: every (context, thought) its own row; simple and obviously right, the oracle.
- `packed`: one forward per document for the context KV and for the update; the fast one (DESIGN.md section 4).
- `recurrent`: the same for models with recurrent state (hybrid Mamba-attention, linear attention): one pass over each
  document in segments that end at the chosen positions.
The two fast engines share `decoding.py` (the documents, the teacher's baseline, the decoding loop); a step's rollout
runs in chunks of rows (`base.chunked_rollout`).
"""

from __future__ import annotations

import os
import shutil
import warnings

from rlpt.errors import UserError
from rlpt.rollout.base import Context, RolloutSpec, Rollouts

__all__ = ["Context", "RolloutSpec", "Rollouts", "make_engine"]


def make_engine(name: str, model, compile_decoding: bool = False):
    """The engine called `name` for `model` (`compile_decoding`: see `PackedEngine`). `packed` is the default: for a
    model whose attention cannot take the shared document prefix it becomes `recurrent` where the model carries
    recurrent state that engine reproduces (hybrid Mamba-attention models), else `reference`, with a warning that
    says why (never silently to wrong results)."""
    from rlpt.rollout.packed import PackedEngine, supports_shared_prefix
    from rlpt.rollout.reference import ReferenceEngine

    if name == "reference":
        return ReferenceEngine()
    if name == "packed" and supports_shared_prefix(model):
        if compile_decoding and next(model.parameters()).device.type == "cpu" and not has_cxx_compiler():
            raise UserError("rlp.compile_decoding: torch.compile builds CPU kernels with a C++ compiler, and there "
                            "is none ($CXX unset; no g++, c++ or clang++ on PATH): install g++ or set "
                            "rlp.compile_decoding=false")
        return PackedEngine(compile_decoding)
    try:  # the linear-attention cache layers it builds on are newer than transformers 5.0
        from rlpt.rollout.recurrent import RecurrentEngine, supports_recurrent_rows
    except ImportError as exc:
        why_not = f"this transformers has no recurrent-state cache layers: {exc}"
    else:
        why_not = untested_transformers() or supports_recurrent_rows(model)
        if why_not is None:
            return RecurrentEngine()
    shared = "" if name == "recurrent" else (f"{type(model).__name__} failed the shared-prefix attention probe "
                                             f"(attn_implementation={model.config._attn_implementation!r}) and ")
    warnings.warn(f"rlp.engine={name}: {shared}the recurrent-state probe ({why_not}); using the reference engine",
                  stacklevel=2)
    return ReferenceEngine()


# the transformers versions (major, minor) whose internals the recurrent engine was tested on: it swaps private
# functions of the Mamba-2 modeling modules (`mamba2_torch.py`) and writes the fields of the cache's recurrent layers
# (`recurrent_states.py`); another version may have changed them in ways the start-up probe would not see
RECURRENT_TESTED_TRANSFORMERS = ((5, 24), (5, 25))


def untested_transformers(version: str | None = None) -> str | None:
    """Why the recurrent engine will not run on this transformers (None: a version it was tested on)."""
    import transformers

    version = version or transformers.__version__
    major_minor = tuple(int(part) for part in version.split(".")[:2])
    low, high = RECURRENT_TESTED_TRANSFORMERS
    if low <= major_minor <= high:
        return None
    return (f"transformers {version}: the recurrent engine uses its internals and was tested on "
            f"{low[0]}.{low[1]}-{high[0]}.{high[1]} (pip install 'transformers>={low[0]}.{low[1]},<{high[0]}.{high[1] + 1}')")


def has_cxx_compiler() -> bool:
    return bool(os.environ.get("CXX")) or any(shutil.which(c) for c in ("g++", "c++", "clang++"))
