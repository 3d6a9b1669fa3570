"""A deliberately broken port: ``jax.nn.gelu`` defaults to the tanh approximation, torch's ``nn.GELU`` is exact.

``flax_model`` is the broken port, ``fixed_flax_model`` the correct one (``approximate=False``).
Both take ``(batch, 4)`` and return ``(batch, 2)``.
"""

from __future__ import annotations

import functools

import jax
import numpy as np
import torch
from flax import nnx
from torch import nn


class TorchMLP(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(4, 16, dtype=dtype), nn.GELU(), nn.Linear(16, 16, dtype=dtype),
                                 nn.LayerNorm(16, dtype=dtype), nn.Linear(16, 2, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class FlaxMLP(nnx.Module):
    def __init__(self, dtype: str = "float32", *, approximate: bool, rngs: nnx.Rngs) -> None:
        kw = {"dtype": dtype, "param_dtype": dtype, "rngs": rngs}
        gelu = jax.nn.gelu if approximate else functools.partial(jax.nn.gelu, approximate=False)
        self.mlp = nnx.Sequential(nnx.Linear(4, 16, **kw), gelu, nnx.Linear(16, 16, **kw),
                                  nnx.LayerNorm(16, epsilon=1e-5, **kw), nnx.Linear(16, 2, **kw))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.mlp(x)


def torch_model(dtype: str = "float32") -> TorchMLP:
    torch.manual_seed(0)
    return TorchMLP(getattr(torch, dtype))


def flax_model(dtype: str = "float32") -> FlaxMLP:
    """The broken port: ``jax.nn.gelu`` with its default ``approximate=True``."""
    return FlaxMLP(dtype, approximate=True, rngs=nnx.Rngs(0))


def fixed_flax_model(dtype: str = "float32") -> FlaxMLP:
    return FlaxMLP(dtype, approximate=False, rngs=nnx.Rngs(0))


def example_inputs(dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).normal(size=(8, 4)).astype(dtype)
