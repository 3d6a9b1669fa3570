"""``AdaptationConfig``: one schema for the test-time Adapter of both backends (ARCHITECTURE.md section 4).

Also the backend-neutral pieces of the Adapter's semantics: parameter selection by name pattern
and the telemetry history.
"""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import functools
import math
import numbers
import types
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, Literal

import numpy as np

from shared.config import from_dict

Optimizer = Literal["sgd", "adam", "adamw"]
ResetPolicy = Literal["never", "episodic", "every_n"]


@dataclasses.dataclass(frozen=True)
class AdaptationConfig:
    """Everything the Adapter does is set here; no threshold is hidden in the code.

    Attributes:
        enabled: when False, ``update_step`` changes nothing and says so.
        optimizer: ``"sgd"`` (with ``momentum``), ``"adam"`` (coupled L2 ``weight_decay``, as
            ``torch.optim.Adam``) or ``"adamw"`` (decoupled decay).
        lr, betas, eps, momentum, weight_decay: the optimizer's hyper-parameters. Numbers may be
            Python or numpy scalars (stored as ``float``); bools, NaN and Inf are rejected. A field
            the chosen optimizer does not use is an error, not silently ignored: ``momentum`` needs
            ``"sgd"``; ``betas`` and ``eps`` need ``"adam"``/``"adamw"`` (unless left at default).
        steps_per_call: optimizer steps per ``update_step`` call.
        grad_clip_norm: clip the global L2 norm of the selected gradients to this (None: off).
        allow, deny: ``fnmatch`` patterns over canonical parameter names (``"B.weight"``): one
            pattern as a string (``allow="W*"``) or a list/tuple of them. A parameter is adapted when
            it matches some ``allow`` and no ``deny`` pattern; a pattern that matches no parameter
            is an error (a typo), and so is a selection that leaves nothing to adapt.
        trust_region: max L2 distance of the adapted parameters from the source, enforced by
            projection after every step (None: off).
        ema_decay: keep an EMA teacher, ``teacher = d * teacher + (1 - d) * w`` after every
            committed step, over every floating variable of the model: the parameters and the
            running statistics (BatchNorm ``running_mean``/``running_var``, NNX ``BatchStat``s);
            integer variables (counters) are copied (None: off).
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
        if not isinstance(self.enabled, (bool, np.bool_)):
            raise TypeError(f"enabled must be a bool, got {self.enabled!r}")
        object.__setattr__(self, "enabled", bool(self.enabled))
        if not isinstance(self.optimizer, str) or self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"optimizer must be 'sgd', 'adam' or 'adamw', got {self.optimizer!r}")
        self._set_real("lr", positive=True)
        self._set_real("eps", positive=True)
        betas = self.betas
        if isinstance(betas, (str, bytes)) or not isinstance(betas, Iterable):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        betas = tuple(betas)
        if len(betas) != 2 or not all(_is_real(b) and 0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(float(b) for b in betas))
        for name in ("momentum", "weight_decay", "entropy_weight"):
            self._set_real(name, positive=False)
        if self.momentum >= 1.0:
            raise ValueError(f"momentum must be < 1, got {self.momentum!r}")
        if self.optimizer != "sgd" and self.momentum != 0.0:
            raise ValueError(f"momentum={self.momentum!r} is only used with optimizer='sgd', got "
                             f"optimizer={self.optimizer!r} (adam and adamw take betas)")
        if self.optimizer == "sgd":
            for name, default in (("betas", (0.9, 0.999)), ("eps", 1e-8)):
                if getattr(self, name) != default:
                    raise ValueError(f"{name}={getattr(self, name)!r} is only used with optimizer='adam' or 'adamw', "
                                     f"got optimizer='sgd' (sgd takes momentum)")
        self._set_int("steps_per_call")
        for name in ("grad_clip_norm", "trust_region"):
            if getattr(self, name) is not None:
                self._set_real(name, positive=True)
        if self.ema_decay is not None:
            if not (_is_real(self.ema_decay) and 0.0 <= self.ema_decay < 1.0):
                raise ValueError(f"ema_decay must be a number in [0, 1) or None, got {self.ema_decay!r}")
            object.__setattr__(self, "ema_decay", float(self.ema_decay))
        for name in ("allow", "deny"):
            object.__setattr__(self, name, _patterns(name, getattr(self, name)))
        if not self.allow:
            raise ValueError("allow must be non-empty: give at least one pattern, e.g. '*' (every parameter)")
        if not isinstance(self.reset, str) or self.reset not in ("never", "episodic", "every_n"):
            raise ValueError(f"reset must be 'never', 'episodic' or 'every_n', got {self.reset!r}")
        if self.reset == "every_n":
            self._set_int("reset_every")
        elif self.reset_every is not None:
            raise ValueError(f"reset_every is only used with reset='every_n', got reset={self.reset!r}")
        self._set_int("seed", minimum=0)
        self._set_int("history_size")

    def _set_real(self, name: str, *, positive: bool) -> None:
        """Check a real field (Python or numpy number, not bool, finite; > 0 or >= 0) and store it as float."""
        value = getattr(self, name)
        if not _is_real(value) or (value <= 0 if positive else value < 0):
            kind = "a positive finite number" if positive else "a finite number >= 0"
            raise ValueError(f"{name} must be {kind} (a Python or numpy real, not a bool), got {value!r}")
        object.__setattr__(self, name, float(value))

    def _set_int(self, name: str, minimum: int = 1) -> None:
        """Check an integer field (Python or numpy integer, not bool) and store it as int."""
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise ValueError(f"{name} must be {kind}, got {value!r}")
        object.__setattr__(self, name, int(value))

    def to_dict(self) -> dict[str, Any]:
        """A JSON- and YAML-friendly dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> AdaptationConfig:
        return from_dict(cls, values)


def _is_real(value: object) -> bool:
    """A finite real number: Python int/float or a numpy scalar (``numbers.Real``), never a bool."""
    return (isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def _patterns(name: str, value: object) -> tuple[str, ...]:
    """``allow``/``deny``: one pattern as a string (``"W*"``), or a list/tuple of them."""
    if isinstance(value, str):
        value = (value,)
    if isinstance(value, (bytes, Mapping)) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a pattern string or a list of pattern strings, got {value!r}")
    patterns = tuple(value)
    if not all(isinstance(p, str) and p for p in patterns):
        raise ValueError(f"{name} patterns must be non-empty strings, got {value!r}")
    return patterns


def select_parameters(names: Iterable[str], config: AdaptationConfig) -> list[str]:
    """The canonical names the Adapter adapts, in ``names`` order.

    A name is chosen when it matches some ``allow`` pattern and no ``deny`` pattern. Errors
    (``ValueError``), never a silent no-op: a pattern that matches none of ``names`` (a typo), and
    a selection that leaves nothing to adapt. Messages list names sorted, so that both backends
    (whose parameter orders differ) say the same.
    """
    names = list(names)

    def matching(pattern: str) -> list[str]:
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)]

    for field in ("allow", "deny"):
        for pattern in getattr(config, field):
            if not matching(pattern):
                raise ValueError(f"{field} pattern {pattern!r} matches none of the trainable parameters "
                                 f"{sorted(names)}")
    allowed = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in config.allow)]
    chosen = [n for n in allowed if not any(fnmatch.fnmatchcase(n, p) for p in config.deny)]
    if not chosen:
        raise ValueError(
            f"parameter selection matches none of the trainable parameters: allow={list(config.allow)} selects "
            f"{sorted(allowed)} and deny={list(config.deny)} removes all of them"
        )
    return chosen


class _Unkeyable(Exception):
    """No structural key (an empty closure cell): the callable is keyed by identity."""


class _Identity:
    """Hashes and compares by identity and keeps its object alive (so an id is never reused)."""

    __slots__ = ("obj",)

    def __init__(self, obj: object) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


def function_key(fn: Callable[..., Any]) -> Hashable:
    """A hashable key under which two callables are known to compute the same function.

    A plain function (a ``lambda`` written inside a loop is a new object every time) is keyed by
    its code object and by the values it reads: its closure cells, its defaults, and the globals
    its code names, each with its type (``1`` and ``1.0`` differ). Functions in closures and
    defaults, ``functools.partial`` and bound methods are keyed structurally too (a few levels
    deep); global functions, modules and values with no stable hashable form (an array, a list)
    count by identity, so rebinding a global or capturing a new array gives a new key. Values are
    read as ``jax.jit`` reads them, at trace time: an object mutated in place after tracing is not
    seen. Used by the JAX Adapter to reuse a compiled step across equal loss functions.
    """
    try:
        return _callable_key(fn, depth=0)
    except _Unkeyable:
        return _Identity(fn)


_MAX_DEPTH = 4


def _callable_key(fn: Any, depth: int) -> Hashable:
    if depth > _MAX_DEPTH:
        return _Identity(fn)
    if isinstance(fn, types.FunctionType):
        try:
            cells = tuple(c.cell_contents for c in fn.__closure__ or ())
        except ValueError:  # an empty cell (a name assigned after the function was made)
            raise _Unkeyable from None
        namespace = fn.__globals__
        names = sorted(n for n in _code_names(fn.__code__) if n in namespace)
        read = tuple((n, _global_key(namespace[n])) for n in names)
        return ("function", fn.__code__, _Identity(namespace), read, _value_key(cells, depth),
                _value_key(fn.__defaults__, depth), _value_key(fn.__kwdefaults__, depth))
    if isinstance(fn, functools.partial):
        return ("partial", _callable_key(fn.func, depth + 1), _value_key(fn.args, depth),
                _value_key(fn.keywords, depth))
    if isinstance(fn, types.MethodType):
        return ("method", _callable_key(fn.__func__, depth + 1), _Identity(fn.__self__))
    return _Identity(fn)


def _code_names(code: types.CodeType) -> set[str]:
    """The global (and attribute) names ``code`` and the code nested in it refer to."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _code_names(const)
    return names


def _global_key(value: Any) -> Hashable:
    """A global: module-level functions, classes and modules are stable objects, keyed by identity
    (rebinding the name gives a new key); hashable plain values by value; anything else by identity."""
    if callable(value) or isinstance(value, types.ModuleType):
        return _Identity(value)
    try:
        hash(value)
    except TypeError:
        return _Identity(value)
    return (type(value), value)


def _value_key(value: Any, depth: int) -> Hashable:
    if isinstance(value, (types.FunctionType, functools.partial, types.MethodType)):
        return _callable_key(value, depth + 1)
    if isinstance(value, types.ModuleType):
        return _Identity(value)
    if isinstance(value, tuple):
        return (tuple, tuple(_value_key(v, depth) for v in value))
    if isinstance(value, dict):
        return (dict, tuple(sorted((k, _value_key(v, depth)) for k, v in value.items())))
    try:
        hash(value)
    except TypeError:  # arrays, lists, ...: the object itself (kept alive, so its id is not reused)
        return _Identity(value)
    return (type(value), value)


def empty_info(drift: float) -> dict[str, Any]:
    """The ``info`` an ``update_step`` call starts from: no step taken, none skipped, the current ``drift``."""
    return {"updated": False, "steps": 0, "loss": None, "entropy": None, "grad_norm": None, "drift": drift,
            "skipped": None}


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
