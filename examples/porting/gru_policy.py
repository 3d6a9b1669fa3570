"""A small GRU policy, ``(batch, time, obs_dim) -> (batch, time, action_dim)``, and its Flax NNX port.

The port needs a GRU cell whose hidden Dense has a bias (torch's ``b_hn`` sits inside
``r * (W_hn h + b_hn)``; stock ``nnx.GRUCell`` has no such bias): ``torch_compatible_gru_cell``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from ssm_metarl.porting import torch_compatible_gru_cell

OBS_DIM, HIDDEN_DIM, ACTION_DIM = 3, 8, 2


class TorchGRUPolicy(nn.Module):
    def __init__(self, obs_dim: int = OBS_DIM, hidden_dim: int = HIDDEN_DIM, action_dim: int = ACTION_DIM,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.gru = nn.GRU(obs_dim, hidden_dim, batch_first=True, dtype=dtype)
        self.head = nn.Linear(hidden_dim, action_dim, dtype=dtype)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(obs)[0])


class FlaxGRUPolicy(nnx.Module):
    def __init__(self, obs_dim: int = OBS_DIM, hidden_dim: int = HIDDEN_DIM, action_dim: int = ACTION_DIM,
                 dtype: str = "float32", *, rngs: nnx.Rngs) -> None:
        self.gru = nnx.RNN(torch_compatible_gru_cell(obs_dim, hidden_dim, param_dtype=jnp.dtype(dtype), rngs=rngs))
        self.head = nnx.Linear(hidden_dim, action_dim, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, obs: jnp.ndarray) -> jnp.ndarray:
        return self.head(self.gru(obs))


def torch_model(dtype: str = "float32") -> TorchGRUPolicy:
    torch.manual_seed(0)
    return TorchGRUPolicy(dtype=getattr(torch, dtype))


def flax_model(dtype: str = "float32") -> FlaxGRUPolicy:
    return FlaxGRUPolicy(dtype=dtype, rngs=nnx.Rngs(0))


def example_inputs(dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 6, OBS_DIM)).astype(dtype)
