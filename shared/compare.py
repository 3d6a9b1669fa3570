"""Compare two pytrees (nested dicts, lists, tuples) of arrays and report the differences.

Per leaf it reports the max absolute error, the max element-wise relative error and the
*normwise* relative error ``max|a - b| / max|b|``, which is what a tolerance is checked against:
element-wise relative error is meaningless where a reference entry is (almost) zero.
Non-finite entries must sit at the same positions with the same values (NaN with NaN, +Inf with +Inf).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


def to_numpy(value: Any) -> np.ndarray:
    """Any array-like (numpy, JAX, or a torch tensor, duck-typed) -> numpy array."""
    if hasattr(value, "detach"):  # a torch tensor; shared/ must not import torch
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def flatten(tree: Any, prefix: str = "") -> Iterator[tuple[str, np.ndarray]]:
    """Yield ``(dotted_path, array)`` for every leaf, in sorted key order for mappings."""
    if isinstance(tree, Mapping):
        for key in sorted(tree, key=str):
            yield from flatten(tree[key], f"{prefix}{key}.")
    elif isinstance(tree, (list, tuple)):
        for index, item in enumerate(tree):
            yield from flatten(item, f"{prefix}{index}.")
    else:
        yield prefix.rstrip(".") or "<root>", to_numpy(tree)


@dataclasses.dataclass(frozen=True)
class LeafDiff:
    name: str
    shape: tuple[int, ...]
    max_abs: float
    max_rel_elementwise: float
    rel: float  # normwise: max|a - b| / max|b|
    nonfinite_match: bool

    def passes(self, rtol: float) -> bool:
        return self.nonfinite_match and (self.max_abs == 0.0 or self.rel <= rtol)


@dataclasses.dataclass(frozen=True)
class Comparison:
    leaves: tuple[LeafDiff, ...]

    @property
    def max_abs(self) -> float:
        return max((leaf.max_abs for leaf in self.leaves), default=0.0)

    @property
    def rel(self) -> float:
        return max((leaf.rel for leaf in self.leaves), default=0.0)

    @property
    def max_rel_elementwise(self) -> float:
        return max((leaf.max_rel_elementwise for leaf in self.leaves), default=0.0)

    def passes(self, rtol: float) -> bool:
        return all(leaf.passes(rtol) for leaf in self.leaves)

    def report(self, rtol: float | None = None) -> str:
        lines = [f"{'leaf':<32} {'shape':<14} {'max abs':>10} {'rel':>10} {'elem rel':>10}  ok"]
        for leaf in self.leaves:
            ok = "" if rtol is None else ("yes" if leaf.passes(rtol) else "NO")
            if not leaf.nonfinite_match:
                ok += " (NaN/Inf positions differ)"
            lines.append(
                f"{leaf.name:<32} {leaf.shape!s:<14} {leaf.max_abs:>10.2e} {leaf.rel:>10.2e} "
                f"{leaf.max_rel_elementwise:>10.2e}  {ok}"
            )
        return "\n".join(lines)


def compare_leaf(name: str, actual: np.ndarray, expected: np.ndarray) -> LeafDiff:
    if actual.shape != expected.shape:
        raise ValueError(f"leaf {name!r}: shapes differ, {actual.shape} vs expected {expected.shape}")
    a = actual.astype(np.float64)
    b = expected.astype(np.float64)
    finite_a, finite_b = np.isfinite(a), np.isfinite(b)
    nonfinite_match = bool(
        np.array_equal(finite_a, finite_b)
        and np.array_equal(np.isnan(a), np.isnan(b))
        and np.array_equal(a[np.isinf(a)], b[np.isinf(b)])
    )
    both = finite_a & finite_b
    diff = np.abs(a[both] - b[both])
    ref = np.abs(b[both])
    max_abs = float(diff.max(initial=0.0))
    scale = float(ref.max(initial=0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        elem = np.where(diff == 0, 0.0, diff / ref)
    rel = 0.0 if max_abs == 0.0 else (max_abs / scale if scale > 0 else float("inf"))
    return LeafDiff(name, tuple(a.shape), max_abs, float(elem.max(initial=0.0)), rel, nonfinite_match)


def compare_trees(actual: Any, expected: Any) -> Comparison:
    """Compare two pytrees leaf by leaf; their paths must match exactly."""
    left, right = dict(flatten(actual)), dict(flatten(expected))
    if left.keys() != right.keys():
        raise ValueError(
            f"trees differ in structure: only in actual {sorted(left.keys() - right.keys())}, "
            f"only in expected {sorted(right.keys() - left.keys())}"
        )
    return Comparison(tuple(compare_leaf(name, left[name], right[name]) for name in left))
