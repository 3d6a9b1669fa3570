"""Tiny model pairs for the porting kit's tests: keyword inputs with a mask, dict/tuple outputs, a
recurrent step policy, an embedding with padding_idx, and attention on torch's fused SDPA kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from ssm_metarl.porting import torch_compatible_gru_cell

D_IN, D_OUT, HIDDEN = 3, 2, 4


def _linear(i: int, o: int, dtype: str) -> nnx.Linear:
    return nnx.Linear(i, o, dtype=dtype, param_dtype=dtype, rngs=nnx.Rngs(0))


class TorchMasked(nn.Module):
    """``(x, mask=..., scale=...) -> {"y": masked features, "aux": (pooled,)}``; mask True = ignore."""

    def __init__(self, dtype: str = "float64") -> None:
        super().__init__()
        self.proj = nn.Linear(D_IN, D_OUT, dtype=getattr(torch, dtype))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None = None) -> dict:
        h = torch.tanh(self.proj(x)) * (~mask)[..., None]
        if scale is not None:
            h = h * scale[..., None]
        return {"y": h, "aux": (h.sum(dim=1),)}


class FlaxMasked(nnx.Module):
    """The port; ``attend_true``: the mask means "attend" (Flax's convention), a polarity bug against torch."""

    def __init__(self, dtype: str = "float64", attend_true: bool = False) -> None:
        self.proj = _linear(D_IN, D_OUT, dtype)
        self.attend_true = attend_true

    def __call__(self, x: jax.Array, mask: jax.Array, scale: jax.Array | None = None) -> dict:
        keep = mask if self.attend_true else ~mask
        h = jnp.tanh(self.proj(x)) * keep[..., None]
        if scale is not None:
            h = h * scale[..., None]
        return {"y": h, "aux": (h.sum(axis=1),)}


def masked_inputs(dtype: str = "float64") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, D_IN)).astype(dtype)
    return x, {"mask": rng.random((2, 5)) < 0.3, "scale": rng.normal(size=(2, 5)).astype(dtype)}


class TorchStepPolicy(nn.Module):
    """One step: ``(obs, h) -> (action, h)``."""

    def __init__(self, dtype: str = "float64") -> None:
        super().__init__()
        self.gru = nn.GRU(D_IN, HIDDEN, batch_first=True, dtype=getattr(torch, dtype))
        self.head = nn.Linear(HIDDEN, D_OUT, dtype=getattr(torch, dtype))

    def forward(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, h = self.gru(obs[:, None], h[None])
        return self.head(h[0]), h[0]

    def step(self, obs: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same step with nn.GRU's own state layout, (1, batch, hidden)."""
        _, h = self.gru(obs[:, None], h)
        return self.head(h[0]), h


class FlaxStepPolicy(nnx.Module):
    """The port in Flax's cell convention: ``(h, obs) -> (h, action)``."""

    def __init__(self, dtype: str = "float64") -> None:
        self.gru = torch_compatible_gru_cell(D_IN, HIDDEN, param_dtype=jnp.dtype(dtype), rngs=nnx.Rngs(0))
        self.head = _linear(HIDDEN, D_OUT, dtype)

    def __call__(self, h: jax.Array, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        h, _ = self.gru(h, obs)
        return h, self.head(h)

    def step(self, obs: jax.Array, h: jax.Array, leak: float = 0.0) -> tuple[jax.Array, jax.Array]:
        """``(obs, h) -> (action, h)``; ``leak`` > 0 is a bug between the cell and the head."""
        h, _ = self.gru(h, obs)
        return self.head(h + leak), h


class TorchTokens(nn.Module):
    def __init__(self, padding_idx: int | None = 0, dtype: str = "float64") -> None:
        super().__init__()
        self.embed = nn.Embedding(7, HIDDEN, padding_idx=padding_idx, dtype=getattr(torch, dtype))
        self.out = nn.Linear(HIDDEN, D_OUT, dtype=getattr(torch, dtype))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(ids)))


class FlaxTokens(nnx.Module):
    def __init__(self, dtype: str = "float64") -> None:
        self.embed = nnx.Embed(7, HIDDEN, param_dtype=dtype, rngs=nnx.Rngs(0))
        self.out = _linear(HIDDEN, D_OUT, dtype)

    def __call__(self, ids: jax.Array) -> jax.Array:
        return self.out(jnp.tanh(self.embed(ids)))


class TorchAttention(nn.Module):
    """Self-attention through torch's fused SDPA kernel (no double backward on the CPU)."""

    def __init__(self, dtype: str = "float64") -> None:
        super().__init__()
        self.qkv = nn.Linear(HIDDEN, 3 * HIDDEN, dtype=getattr(torch, dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)


class FlaxAttention(nnx.Module):
    def __init__(self, dtype: str = "float64") -> None:
        self.qkv = _linear(HIDDEN, 3 * HIDDEN, dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = jnp.split(self.qkv(x), 3, axis=-1)
        weights = jax.nn.softmax(q @ jnp.swapaxes(k, -1, -2) / jnp.sqrt(q.shape[-1]), axis=-1)
        return weights @ v


def tanh_mlp_torch(dtype: str = "float32") -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(D_IN, HIDDEN, dtype=getattr(torch, dtype)), nn.Tanh(),
                         nn.Linear(HIDDEN, D_OUT, dtype=getattr(torch, dtype)))


def tanh_mlp_flax(dtype: str = "float32") -> nnx.Module:
    return nnx.Sequential(_linear(D_IN, HIDDEN, dtype), jnp.tanh, _linear(HIDDEN, D_OUT, dtype))


def float32_only_torch() -> nn.Module:
    """A factory that takes no dtype: it cannot build a bfloat16 model."""
    return tanh_mlp_torch("float32")


def float32_only_flax() -> nnx.Module:
    return tanh_mlp_flax("float32")
