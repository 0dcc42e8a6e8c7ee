"""Typed configs: the training config shared by every trainer, and (de)serialisation of any config
dataclass with errors that name the unknown or ill-typed field. Component configs live with their
component (WorldConfig in data/world.py, VAEConfig in vae/model.py, DiTConfig in dit/model.py)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kinema.precision import check_bf16_setting

T = TypeVar("T")


def to_dict(cfg: Any) -> dict:
    """A config dataclass as plain JSON-able values (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


# the simple annotations whose values from_dict checks (anything else is left to the dataclass's own checks)
_SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,), "dict": (dict,),
                 "int | None": (int, type(None)), "float | None": (int, float, type(None)),
                 "str | None": (str, type(None)), "dict | None": (dict, type(None))}


def from_dict(cls: type[T], d: dict, where: str = "") -> T:
    """Build `cls` from a dict, with errors that name `where` and the field: unknown keys, missing required
    fields, and values of the wrong type for simple fields (int, float, str, bool, dict; a bool is not an
    int). List values become tuples where the field's default is a tuple."""
    where = where or cls.__name__
    if not isinstance(d, dict):
        raise ValueError(f"{where}: expected a JSON object with {cls.__name__}'s fields, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(d) - set(fields)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {sorted(unknown)}; {cls.__name__} has {sorted(fields)}")
    missing = [name for name, f in fields.items() if name not in d and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    kwargs = {}
    for k, v in d.items():
        allowed = _SIMPLE_TYPES.get(str(fields[k].type))
        if allowed and (not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed)):
            raise ValueError(f"{where}: field {k!r} must be {fields[k].type}, got {v!r}")
        default = fields[k].default
        kwargs[k] = tuple(v) if isinstance(v, list) and isinstance(default, tuple) else v
    return cls(**kwargs)


def load_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e


@dataclass(frozen=True)
class TrainConfig:
    """How to train, whatever the model: one loop reads this (train/loop.py)."""

    steps: int = 1000
    batch_size: int = 8  # per process, per micro-step
    grad_accum: int = 1
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    ema_decay: float = 0.0  # 0 disables EMA
    bf16: bool | str = "auto"  # bf16 autocast: True, False, or "auto" (where the hardware is fast: precision.py)
    seed: int = 0
    log_every: int = 10
    ckpt_every: int = 200
    sample_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    parallel: str = "auto"  # auto (DDP when torchrun), ddp, fsdp, none
    compile: bool = False
    activation_checkpointing: bool = False
    # > 0: a wall-clock budget for the run; its length is sized at the end of LR warmup from the rate measured
    # there, so the cosine ends with the budget (train/loop.py, StepBudget), and `steps` is only a cap
    minutes: float = 0.0

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError(f"TrainConfig: steps, batch_size, grad_accum must be >= 1, got "
                             f"{self.steps}, {self.batch_size}, {self.grad_accum}")
        if not 0 <= self.ema_decay < 1:
            raise ValueError(f"TrainConfig.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.parallel not in ("auto", "ddp", "fsdp", "none"):
            raise ValueError(f"TrainConfig.parallel = {self.parallel!r}; expected auto, ddp, fsdp or none")
        check_bf16_setting(self.bf16, "TrainConfig.bf16")
        if self.lr <= 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr}")
        if self.minutes < 0 or self.minutes > 0 and self.warmup_steps < 2:
            raise ValueError(f"TrainConfig: minutes = {self.minutes} with warmup_steps = {self.warmup_steps}; a time "
                             "budget must be > 0 and needs warmup_steps >= 2 (the run's length is sized from the "
                             "rate measured during warmup)")
