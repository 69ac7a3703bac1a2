"""LoRA through PEFT: `model.lora: {r: 16, alpha: 32, target_modules: all-linear}` trains low-rank adapters on a
frozen base.

The EMA teacher then is the frozen base plus an EMA of the adapters (`AdapterEmaTeacher`): it holds the adapter
tensors alone, and its forward is the policy's own forward with the adapter weights swapped for the EMA ones
(`torch.func.functional_call`), so the teacher costs no second copy of the base.

A checkpoint of a LoRA run is a plain Hugging Face folder of the base (the frozen weights, think tags included) with the
trained adapter in `adapter/` (PEFT's layout). `rlpt eval`, `rlpt sample` and `rlpt export` load it with the adapter
merged into the weights; resuming keeps it apart.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from rlpt.errors import UserError

ADAPTER = "adapter"
KEYS = {"r", "alpha", "target_modules", "dropout"}


def check(spec: dict) -> None:
    unknown = set(spec) - KEYS
    if unknown:
        raise UserError(f"model.lora: unknown key(s) {sorted(unknown)} (known: {sorted(KEYS)})")
    if spec and not (isinstance(spec.get("r"), int) and spec["r"] >= 1):
        raise UserError(f"model.lora.r: expected a rank >= 1, got {spec.get('r')!r}")


def peft():
    try:
        import peft as module
    except ImportError as exc:
        raise UserError("model.lora needs PEFT: pip install 'rlpt[lora]'") from exc
    return module


@contextmanager
def quiet():
    """PEFT still asks for a transformers attribute that v5 renamed, with a FutureWarning each time."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")
        yield


def wrap(model, spec: dict):
    """The model with fresh trainable adapters (B = 0: at the start it computes exactly what the base does), in eval
    mode: `get_peft_model` leaves it in train mode, and RLP wants no dropout. The policy that samples a thought, the
    one that scores it and the one the update differentiates must be one function, or the ratio and the rewards are
    noise; so `dropout` is accepted (a config shared with supervised training) and inert here."""
    targets = spec.get("target_modules", "all-linear")
    config = peft().LoraConfig(
        r=spec["r"], lora_alpha=spec.get("alpha", 2 * spec["r"]), lora_dropout=spec.get("dropout", 0.0),
        target_modules=targets if isinstance(targets, (str, list)) else list(targets), task_type="CAUSAL_LM")
    try:
        with quiet():
            return peft().get_peft_model(model, config).eval()
    except ValueError as exc:
        raise UserError(f"model.lora.target_modules: {exc}") from exc


def is_lora(model) -> bool:
    return hasattr(model, "peft_config")


def attach(model, folder: Path, trainable: bool):
    """The model with the adapter saved in `folder/adapter`: kept apart (to train on) or merged into the weights."""
    with quiet():
        adapted = peft().PeftModel.from_pretrained(model, folder / ADAPTER, is_trainable=trainable)
    return (adapted if trainable else adapted.merge_and_unload()).eval()


def save(model, folder: Path) -> None:
    """The frozen base as a plain HF folder, and the adapter in `folder/adapter`."""
    base = model.get_base_model()
    weights = {name.replace(".base_layer.", "."): tensor for name, tensor in base.state_dict().items() if "lora_" not in name}
    base.save_pretrained(folder, state_dict=weights)
    model.save_pretrained(folder / ADAPTER)


class AdapterTeacher:
    """Callable like the model: the policy's forward with its adapter weights replaced by the EMA tensors. Anything
    else (config, parameters, device) is the policy's."""

    def __init__(self, policy, tensors: dict[str, torch.Tensor]):
        self._policy, self._tensors = policy, tensors

    def __call__(self, *args, **kwargs):
        return torch.func.functional_call(self._policy, self._tensors, args, kwargs, strict=False)

    def __getattr__(self, name):
        return getattr(self._policy, name)


class AdapterEmaTeacher:
    """The EMA teacher of a LoRA run: phi = frozen base + EMA(adapters); the interface of `rlpt.ema.EmaTeacher`."""

    def __init__(self, decay: float):
        self.decay = decay
        self.tensors: dict[str, torch.Tensor] | None = None
        self.model = None

    @property
    def initialized(self) -> bool:
        return self.tensors is not None

    def init_from(self, policy) -> None:
        self.tensors = {name: p.detach().float().clone() for name, p in policy.named_parameters() if p.requires_grad}
        self.model = AdapterTeacher(policy, self.tensors)

    @torch.no_grad()
    def update(self, policy) -> None:
        trained = [(self.tensors[name], p.detach().float()) for name, p in policy.named_parameters() if p.requires_grad]
        torch._foreach_lerp_([e for e, _ in trained], [p for _, p in trained], 1.0 - self.decay)

    def save(self, path: Path) -> None:
        save_file({name: t.contiguous() for name, t in self.tensors.items()}, str(path))

    def load(self, path: Path, policy) -> None:
        self.init_from(policy)
        saved = load_file(str(path), device=str(next(iter(self.tensors.values())).device))
        if saved.keys() != self.tensors.keys():
            raise UserError(f"{path}: its adapter tensors do not match the model's LoRA adapters")
        for name, tensor in saved.items():
            self.tensors[name].copy_(tensor)
