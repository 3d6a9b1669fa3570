"""Configuration schemas shared by both backends (dataclasses with strict validation)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys by name."""
    if not isinstance(values, Mapping):
        raise TypeError(f"{cls.__name__} expects a mapping of field names, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {unknown}; expected a subset of {sorted(known)}")
    return cls(**values)


def require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def require_positive_float(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


@dataclasses.dataclass(frozen=True)
class SSMConfig:
    """Sizes and decay-ring radii of the diagonal SSM (ARCHITECTURE.md section 2).

    The decays ``lambda = exp(-exp(nu_log))`` are initialised uniformly in ``[r_min, r_max]``.
    """

    state_dim: int
    input_dim: int
    output_dim: int
    hidden_dim: int
    r_min: float = 0.9
    r_max: float = 0.999

    def __post_init__(self) -> None:
        for name in ("state_dim", "input_dim", "output_dim", "hidden_dim"):
            require_positive_int(name, getattr(self, name))
        if not (0.0 < self.r_min <= self.r_max < 1.0):
            raise ValueError(
                f"decay ring must satisfy 0 < r_min <= r_max < 1, got r_min={self.r_min!r}, r_max={self.r_max!r}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SSMConfig:
        return from_dict(cls, values)


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """MetaMAML hyper-parameters (the seed's defaults)."""

    inner_lr: float = 0.01
    outer_lr: float = 0.001
    num_inner_steps: int = 1
    first_order: bool = False

    def __post_init__(self) -> None:
        require_positive_float("inner_lr", self.inner_lr)
        require_positive_float("outer_lr", self.outer_lr)
        steps = self.num_inner_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"num_inner_steps must be an integer >= 1, got {self.num_inner_steps!r}")
        if not isinstance(self.first_order, bool):
            raise TypeError(f"first_order must be a bool, got {type(self.first_order).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MetaConfig:
        return from_dict(cls, values)
