"""The parity contract's tolerances and its report row (ARCHITECTURE.md section 5), backend-neutral.

:data:`TOLERANCES` holds the contract's float64 and float32 columns (normwise relative error; 0 means
bit-exact; ``None``: not part of the contract). :data:`PROFILES` adds named profiles for half precision
(bfloat16, float16) used by the porting kit; :func:`tolerances` resolves a profile plus user overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from shared.compare import Comparison

KINDS = ("weights", "outputs", "gradients", "adapted", "meta_gradient", "meta_update", "adapter", "pg_loss", "rl")

# The contract's tolerances (normwise relative error); 0 means bit-exact. None: not part of the contract.
TOLERANCES: dict[str, dict[str, float | None]] = {
    "float64": {"weights": 0.0, "outputs": 1e-10, "gradients": 1e-9, "adapted": 1e-9, "meta_gradient": 1e-8,
                "meta_update": 1e-9, "adapter": 1e-9, "pg_loss": 1e-10, "rl": 1e-9},
    "float32": {"weights": 0.0, "outputs": 1e-5, "gradients": 1e-4, "adapted": 1e-4, "meta_gradient": 1e-3,
                "meta_update": None, "adapter": None, "pg_loss": None, "rl": None},
}
# Second- and first-order meta-gradients must differ by at least this (normwise), far above rounding.
MUST_DIFFER = 1e-6

# Half precision, not part of the section 5 contract: a few units of each format's rounding (bfloat16
# eps 7.8e-3, float16 eps 9.8e-4) grown by the depth of the computation (forward < gradient < meta).
HALF_PRECISION: dict[str, dict[str, float | None]] = {
    "bfloat16": {"weights": 0.0, "outputs": 3e-2, "gradients": 6e-2, "adapted": 6e-2, "meta_gradient": 1.5e-1,
                 "meta_update": None, "adapter": None, "pg_loss": None, "rl": None},
    "float16": {"weights": 0.0, "outputs": 5e-3, "gradients": 1e-2, "adapted": 1e-2, "meta_gradient": 3e-2,
                "meta_update": None, "adapter": None, "pg_loss": None, "rl": None},
}
PROFILES: dict[str, dict[str, float | None]] = {**TOLERANCES, **HALF_PRECISION}


def tolerances(dtype: str, overrides: Mapping[str, float] | None = None) -> dict[str, float | None]:
    """The profile for ``dtype`` with ``overrides`` (kind -> normwise rtol) applied on top.

    Raises ``ValueError`` naming the known profiles or kinds when either is unknown, or for a negative rtol.
    """
    if dtype not in PROFILES:
        raise ValueError(f"no tolerance profile for dtype {dtype!r}; known: {sorted(PROFILES)}")
    profile = dict(PROFILES[dtype])
    for kind, value in (overrides or {}).items():
        if kind not in profile:
            raise ValueError(f"unknown tolerance kind {kind!r}; expected one of {list(KINDS)}")
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise ValueError(f"tolerance {kind!r} must be a non-negative number, got {value!r}")
        profile[kind] = None if value is None else float(value)
    return profile


@dataclasses.dataclass(frozen=True)
class Row:
    """One quantity of the matrix: max absolute and normwise relative error against its tolerance."""

    quantity: str
    dtype: str
    max_abs: float
    rel: float
    tolerance: float
    passed: bool
    comparison: Comparison | None = dataclasses.field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("quantity", "dtype", "max_abs", "rel", "tolerance", "passed")}


def row(quantity: str, dtype: str, kind: str, comparison: Comparison,
        profile: Mapping[str, float | None] | None = None) -> Row:
    """A :class:`Row` at the tolerance of ``kind`` in ``profile`` (default: the contract's ``dtype`` column)."""
    tol = (PROFILES[dtype] if profile is None else profile)[kind]
    if tol is None:
        raise ValueError(f"{kind} has no {dtype} tolerance in the contract")
    return Row(quantity, dtype, comparison.max_abs, comparison.rel, tol, comparison.passes(tol), comparison)
