"""One small facade per backend, so behavioural tests run unchanged on both."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import torch

import jax_impl
import torch_impl


@dataclasses.dataclass(frozen=True)
class Backend:
    name: str
    SSM: type
    MetaMAML: type
    array: Callable[[np.ndarray], Any]
    float64: Any
    float32: Any

    def ssm(self, state=4, inp=3, out=2, hidden=5, dtype: str = "float64"):
        return self.SSM(state, inp, out, hidden, "cpu", dtype=getattr(self, dtype))


TORCH = Backend("torch", torch_impl.SSM, torch_impl.MetaMAML, lambda a: torch.from_numpy(np.asarray(a)),
                torch.float64, torch.float32)
JAX = Backend("jax", jax_impl.SSM, jax_impl.MetaMAML, jnp.asarray, jnp.float64, jnp.float32)
BACKENDS = [TORCH, JAX]
