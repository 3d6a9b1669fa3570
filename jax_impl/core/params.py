"""Moving an NNX module's parameters to and from the canonical (PyTorch ``state_dict``) layout."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from shared.layout import check_layout, flax_to_torch, torch_to_flax


def to_canonical(params: nnx.State | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """An ``nnx.State`` (or pure nested dict) of parameters -> canonical flat numpy dict."""
    pure = nnx.to_pure_dict(params) if isinstance(params, nnx.State) else params
    return flax_to_torch(pure)


def from_canonical(model: nnx.Module, tensors: Mapping[str, np.ndarray]) -> None:
    """Load canonical flat ``tensors`` into ``model``'s ``nnx.Param``s, in place.

    Raises ``ValueError`` listing missing keys, extra keys and wrong shapes.
    """
    state = nnx.state(model, nnx.Param)
    expected = {name: value.shape for name, value in to_canonical(state).items()}
    check_layout(tensors, expected)
    nested = torch_to_flax(tensors)
    nnx.replace_by_pure_dict(state, _to_jax(nested))
    nnx.update(model, state)


def _to_jax(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {key: _to_jax(value) for key, value in tree.items()}
    return jnp.asarray(tree)


class SplitCache:
    """``nnx.split(model, nnx.Param, ...)`` without a graph traversal on every call.

    A split walks the module graph, which costs more than a small compiled step; the cache reuses
    the last ``(params, rest)`` while the model still holds exactly the same arrays (JAX arrays are
    immutable, so identity is enough), and :meth:`commit` writes new parameters back.
    """

    def __init__(self, model: nnx.Module) -> None:
        self.model = model
        self._leaves: list | None = None

    def get(self) -> tuple[nnx.State, nnx.State]:
        leaves = jax.tree.leaves(self.model)
        if self._leaves is None or len(leaves) != len(self._leaves) or any(
                a is not b for a, b in zip(leaves, self._leaves, strict=True)):
            _, self._params, self._rest = nnx.split(self.model, nnx.Param, ...)
            self._leaves = leaves
        return self._params, self._rest

    def commit(self, params: nnx.State) -> None:
        """``nnx.update(model, params)`` and remember the result."""
        nnx.update(self.model, params)
        self._params, self._leaves = params, jax.tree.leaves(self.model)
