"""Every non-public JAX API this package uses, in one place, each with the reason it is needed.

A JAX upgrade that moves one of these breaks this module only; everything else uses ``jax``,
``jax.numpy``, ``optax`` and ``flax.nnx``'s public names.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jax.interpreters import partial_eval


def used_inputs(jaxpr: Any, outputs_used: Sequence[bool]) -> list[bool]:
    """Which inputs of ``jaxpr`` reach the used outputs. ``partial_eval.dce_jaxpr`` (dead-code
    elimination) answers it exactly from one abstract trace; JAX has no public dependence query. The
    Adapter uses it to refuse a loss that no selected parameter reaches."""
    _, used = partial_eval.dce_jaxpr(jaxpr, list(outputs_used))
    return list(used)


def compiled_count(jitted: Any) -> int:
    """How many compilations a ``jax.jit`` function holds (``_cache_size``: no public counter). Tests use
    it to show that a step compiles once per signature."""
    return jitted._cache_size()
