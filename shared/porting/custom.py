"""The escape hatch: a user's own copy functions instead of rules, still checked (pure numpy).

    def to_flax(torch_tensors):   # state_dict names -> normalised flax paths
        return {"dense.kernel": torch_tensors["fc.weight"].T, "dense.bias": torch_tensors["fc.bias"]}

    def to_torch(flax_tensors):   # optional: the inverse
        return {"fc.weight": flax_tensors["dense.kernel"].T, "fc.bias": flax_tensors["dense.bias"]}

    compare_models(torch_model, flax_model, x, overrides=CustomCopy(to_flax, to_torch))

When the plan is made the kit checks that ``to_flax`` fills every Flax variable with the right shape
and dtype, and, given ``to_torch``, that the round trip torch -> flax -> torch gives back every
tensor bit for bit. Without ``to_torch`` nothing maps back, so the rows that compare gradients in
torch's names cannot run; the error says so.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from shared.porting.pairing import ModelTree, Pair, PairingError

Copy = Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class CustomCopy:
    """User-supplied mapping: ``to_flax(torch tensors) -> flax tensors`` and optionally its inverse."""

    to_flax: Copy
    to_torch: Copy | None = None

    def __post_init__(self) -> None:
        for name in ("to_flax", "to_torch"):
            value = getattr(self, name)
            if value is not None and not callable(value):
                raise TypeError(f"CustomCopy.{name} must be a function of a dict of arrays, got {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class CustomPlan:
    """A :class:`~shared.porting.pairing.Plan` made of a :class:`CustomCopy` (same interface)."""

    copy: CustomCopy
    torch_shapes: Mapping[str, tuple[int, ...]]
    flax_shapes: Mapping[str, tuple[int, ...]]
    round_trip_checked: bool
    pairs: tuple[Pair, ...] = ()
    ties: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_flax(self, torch_tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.copy.to_flax(dict(torch_tensors)).items()}

    def to_torch(self, flax_tensors: Mapping[str, np.ndarray],
                 torch_fill: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        if self.copy.to_torch is None:
            raise PairingError("this CustomCopy has no to_torch, so flax values (weights, gradients) cannot be "
                               "named in torch's terms: give CustomCopy(to_flax, to_torch) or run only the "
                               "forward rows")
        out = {k: np.asarray(v) for k, v in self.copy.to_torch(dict(flax_tensors)).items()}
        for alias, canonical in self.ties.items():
            if alias not in out and canonical in out:
                out[alias] = np.array(out[canonical], copy=True)
        for key in self.torch_shapes:
            if key not in out and torch_fill is not None and key in torch_fill:
                out[key] = np.array(torch_fill[key], copy=True)
        return out

    def describe(self, everything: bool = False) -> str:
        checked = "round trip torch -> flax -> torch checked exact" if self.round_trip_checked else \
            "no to_torch: the round trip is not checked"
        return f"pairing plan: a user's CustomCopy ({checked})"


def _check(produced: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], side: str) -> list[str]:
    errors = []
    missing = sorted(set(expected) - set(produced))
    extra = sorted(set(produced) - set(expected))
    if missing:
        errors.append(f"leaves {side} {missing} unset")
    if extra:
        errors.append(f"produces {extra}, which the {side} model does not have")
    for key in sorted(set(produced) & set(expected)):
        got, want = np.asarray(produced[key]), np.asarray(expected[key])
        if got.shape != want.shape or got.dtype != want.dtype:
            errors.append(f"{side} {key!r}: produced {got.shape} {got.dtype}, the model holds "
                          f"{want.shape} {want.dtype}")
    return errors


def custom_plan(torch_tree: ModelTree, flax_tree: ModelTree, copy: CustomCopy) -> CustomPlan:
    """Check ``copy`` against both models (shapes, dtypes, and the exact round trip when it has
    ``to_torch``) and wrap it as a plan; :class:`PairingError` lists every problem."""
    if not isinstance(copy, CustomCopy):
        raise TypeError(f"expected a CustomCopy, got {type(copy).__name__}")
    torch_tensors = dict(torch_tree.tensors)
    try:
        flax = dict(copy.to_flax(dict(torch_tensors)))
    except Exception as err:  # the user's code: report it with context
        raise PairingError(f"CustomCopy.to_flax failed on the torch model's tensors: {type(err).__name__}: {err}") \
            from err
    errors = ["to_flax " + e for e in _check(flax, flax_tree.tensors, "flax")]
    checked = False
    if copy.to_torch is not None and not errors:
        try:
            back = dict(copy.to_torch(flax))
        except Exception as err:
            raise PairingError(f"CustomCopy.to_torch failed on to_flax's output: {type(err).__name__}: {err}") from err
        expected = {k: v for k, v in torch_tensors.items() if k in back or k not in torch_tree.ties}
        errors += ["to_torch " + e for e in _check(back, expected, "torch")]
        for key in sorted(set(back) & set(expected)):
            if np.shape(back[key]) == np.shape(expected[key]) and not np.array_equal(back[key], expected[key]):
                errors.append(f"round trip torch -> flax -> torch changes {key!r} (max abs "
                              f"{float(np.max(np.abs(np.asarray(back[key], float) - expected[key]))):.2e})")
        checked = not errors
    if errors:
        raise PairingError("the CustomCopy does not map these two models:\n  " + "\n  ".join(errors))
    return CustomPlan(copy, {k: tuple(np.shape(v)) for k, v in torch_tree.tensors.items()},
                      {k: tuple(np.shape(v)) for k, v in flax_tree.tensors.items()}, checked,
                      ties=dict(torch_tree.ties))
