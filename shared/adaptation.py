"""``AdaptationConfig``: one schema for the test-time Adapter of both backends (ARCHITECTURE.md section 4).

Also the backend-neutral pieces of the Adapter's semantics: parameter selection by name pattern
and the telemetry history.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from shared.config import from_dict, require_positive_float, require_positive_int

Optimizer = Literal["sgd", "adam", "adamw"]
ResetPolicy = Literal["never", "episodic", "every_n"]


@dataclasses.dataclass(frozen=True)
class AdaptationConfig:
    """Everything the Adapter does is set here; no threshold is hidden in the code.

    Attributes:
        enabled: when False, ``update_step`` changes nothing and says so.
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` (coupled L2 ``weight_decay``, as
            ``torch.optim.Adam``) or ``"adamw"`` (decoupled decay).
        lr, betas, eps, momentum, weight_decay: the optimizer's hyper-parameters.
        steps_per_call: optimizer steps per ``update_step`` call.
        grad_clip_norm: clip the global L2 norm of the selected gradients to this (None: off).
        allow, deny: ``fnmatch`` patterns over canonical parameter names (``"B.weight"``); a
            parameter is adapted when it matches some ``allow`` and no ``deny`` pattern.
        trust_region: max L2 distance of the adapted parameters from the source, enforced by
            projection after every step (None: off).
        ema_decay: keep an EMA teacher of the weights, ``teacher = d * teacher + (1 - d) * w``
            (None: off).
        entropy_weight: weight of the mean entropy of the discrete-action logits returned by the
            loss function (TENT); 0 turns it off.
        reset: ``"never"`` (only ``reset()``), ``"episodic"`` (``end_episode()`` resets) or
            ``"every_n"`` (reset at the end of the ``update_step`` call whose
            steps bring the update count to ``reset_every``).
        reset_every: the N of ``"every_n"``.
        seed: seeds the random stream the loss is evaluated under (dropout and the like), per step.
        history_size: how many telemetry records ``history`` keeps (oldest dropped first).
    """

    enabled: bool = True
    optimizer: Optimizer = "adam"
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.0
    weight_decay: float = 0.0
    steps_per_call: int = 1
    grad_clip_norm: float | None = None
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    trust_region: float | None = None
    ema_decay: float | None = None
    entropy_weight: float = 0.0
    reset: ResetPolicy = "never"
    reset_every: int | None = None
    seed: int = 0
    history_size: int = 10_000

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "deny", tuple(self.deny))
        if not isinstance(self.enabled, bool):
            raise TypeError(f"enabled must be a bool, got {self.enabled!r}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {self.optimizer!r}")
        require_positive_float("lr", self.lr)
        require_positive_float("eps", self.eps)
        if len(self.betas) != 2 or not all(_is_real(b) and 0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        for name in ("momentum", "weight_decay", "entropy_weight"):
            value = getattr(self, name)
            if not _is_real(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be < 1, got {self.momentum!r}")
        require_positive_int("steps_per_call", self.steps_per_call)
        for name in ("grad_clip_norm", "trust_region"):
            if getattr(self, name) is not None:
                require_positive_float(name, getattr(self, name))
        if self.ema_decay is not None and not (_is_real(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay!r}")
        if not self.allow or not all(isinstance(p, str) and p for p in (*self.allow, *self.deny)):
            raise ValueError(f"allow must be non-empty and all patterns non-empty strings, got {self.allow!r}, "
                             f"deny {self.deny!r}")
        if self.reset not in ("never", "episodic", "every_n"):
            raise ValueError(f"reset must be 'never', 'episodic' or 'every_n', got {self.reset!r}")
        if self.reset == "every_n":
            require_positive_int("reset_every", self.reset_every)
        elif self.reset_every is not None:
            raise ValueError(f"reset_every is only used with reset='every_n', got reset={self.reset!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {self.seed!r}")
        require_positive_int("history_size", self.history_size)

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and YAML-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdaptationConfig:
        return from_dict(cls, values)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def select_parameters(names: Iterable[str], config: AdaptationConfig) -> list[str]:
    """The canonical names the Adapter adapts; an empty selection is an error, not a silent no-op."""
    names = list(names)
    def matches(name: str, patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    chosen = [n for n in names if matches(n, config.allow) and not matches(n, config.deny)]
    if not chosen:
        raise ValueError(
            f"parameter selection allow={list(config.allow)} deny={list(config.deny)} matches none of the "
            f"trainable parameters {names}"
        )
    return chosen


class History:
    """Telemetry records (dicts), newest last, at most ``size`` kept."""

    def __init__(self, size: int) -> None:
        self._records: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)

    def append(self, record: dict[str, Any]) -> None:
        self._records.append(record)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self._records[index]

    def column(self, key: str) -> list[Any]:
        """One metric over time (None where a record lacks it)."""
        return [r.get(key) for r in self._records]

    def to_list(self) -> list[dict[str, Any]]:
        return list(self._records)
