"""A small CNN with BatchNorm and LayerNorm, ``(batch, 1, H, W) -> (batch, 3)``, and its Flax NNX port.

The port takes the same channels-first input and moves channels last for ``nnx.Conv``; it pads
explicitly like torch (``'SAME'`` with stride 2 would pad (0, 1), torch's ``padding=1`` pads (1, 1)),
uses ``TorchBatchNorm`` (torch's statistics update) and ``LayerNorm(epsilon=1e-5)`` (torch's eps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from ssm_metarl.porting import TorchBatchNorm


class TorchCNN(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1, bias=False, dtype=dtype)  # a bias before BatchNorm cancels
        self.bn = nn.BatchNorm2d(4, dtype=dtype)
        self.conv2 = nn.Conv2d(4, 8, 3, stride=2, padding=1, dtype=dtype)
        self.norm = nn.LayerNorm(8, dtype=dtype)
        self.head = nn.Linear(8, 3, dtype=dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv1(images)))
        h = torch.relu(self.conv2(h)).mean(dim=(2, 3))
        return self.head(self.norm(h))


class FlaxCNN(nnx.Module):
    def __init__(self, dtype: str = "float32", *, padding: str | None = None, rngs: nnx.Rngs) -> None:
        kw = {"dtype": dtype, "param_dtype": dtype, "rngs": rngs}
        pad = padding or ((1, 1), (1, 1))
        self.conv1 = nnx.Conv(1, 4, (3, 3), padding=pad, use_bias=False, **kw)
        self.bn = TorchBatchNorm(4, momentum=0.1, eps=1e-5, param_dtype=jnp.dtype(dtype), rngs=rngs)
        self.conv2 = nnx.Conv(4, 8, (3, 3), strides=(2, 2), padding=pad, **kw)
        self.norm = nnx.LayerNorm(8, epsilon=1e-5, **kw)
        self.head = nnx.Linear(8, 3, **kw)

    def __call__(self, images: jax.Array) -> jax.Array:
        h = jnp.transpose(images, (0, 2, 3, 1))  # (B, C, H, W) -> (B, H, W, C)
        h = jax.nn.relu(self.bn(self.conv1(h)))
        h = jax.nn.relu(self.conv2(h)).mean(axis=(1, 2))
        return self.head(self.norm(h))


def torch_model(dtype: str = "float32") -> TorchCNN:
    torch.manual_seed(0)
    return TorchCNN(getattr(torch, dtype))


def flax_model(dtype: str = "float32") -> FlaxCNN:
    return FlaxCNN(dtype, rngs=nnx.Rngs(0))


def example_inputs(dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).normal(size=(4, 1, 6, 6)).astype(dtype)
