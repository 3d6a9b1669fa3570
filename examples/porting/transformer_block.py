"""A pre-LayerNorm transformer block with multi-head attention, RoPE and a causal attention mask, and its
Flax NNX port. ``(batch, time, 8) -> (batch, time, 8)``.

The two sides are written the way each framework's code usually is, so pairing has work to do:

    torch                      flax                         how the kit pairs them
    ln_1 (LayerNorm)           norm1                        alias (ln_1 / norm1)
    attn.q_proj (Linear D->D)  attn.query (LinearGeneral    alias (q_proj / query), Linear -> head-shaped
                                 D -> (N, H))                 kernel (D, N, H)
    attn.o_proj (Linear D->D)  attn.out (Einsum NH->D)      alias, Linear -> Einsum "BTNH,NHD->BTD"
    mlp.fc, mlp.proj           mlp.up, mlp.down             shape within the module

RoPE rotates the two *halves* of each head (``rotate_half``, as Hugging Face's Llama does). The
torch mask is boolean with True = "may not attend" (``scaled_dot_product_attention``'s
``attn_mask`` has the opposite polarity: True = attend; this example uses additive ``-inf``);
the Flax mask is True = attend. ``broken_ports`` shows what the kit reports when either is wrong.

Torch attention runs on the math SDPA backend: the default CPU kernel
(``_scaled_dot_product_flash_attention_for_cpu``) has no double backward, which the second-order
meta-gradient rows need. The Flax side uses ``torch_compatible_attention`` (the inputs' dtype, full
matmul precision), so the float64 comparison holds to round-off.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ssm_metarl.porting import torch_compatible_attention

DIM, HEADS, TIME, BATCH = 8, 2, 5, 2
HEAD_DIM = DIM // HEADS
ROPE_BASE = 10000.0


def rope_angles(time: int, head_dim: int) -> np.ndarray:
    """``(time, head_dim // 2)`` rotation angles ``t / base^(2i / head_dim)``."""
    inverse = 1.0 / ROPE_BASE ** (np.arange(0, head_dim, 2) / head_dim)
    return np.arange(time)[:, None] * inverse[None, :]


# --------------------------------------------------------------------------- torch
class TorchRoPE(nn.Module):
    """Rotary embedding on ``(batch, time, heads, head_dim)``, halves rotated (``rotate_half``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.from_numpy(rope_angles(x.shape[1], x.shape[-1])).to(x.dtype)
        cos = torch.cat([angles.cos(), angles.cos()], -1)[None, :, None, :]
        sin = torch.cat([angles.sin(), angles.sin()], -1)[None, :, None, :]
        first, second = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-second, first], -1) * sin


class TorchCausalAttention(nn.Module):
    """Causal scaled dot-product attention on ``(batch, time, heads, head_dim)`` q, k, v."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        time = q.shape[1]
        blocked = torch.ones(time, time, dtype=torch.bool).triu(1)  # True = may not attend (the future)
        additive = torch.zeros(time, time, dtype=q.dtype).masked_fill(blocked, -math.inf)
        with sdpa_kernel(SDPBackend.MATH):  # differentiable twice (second-order rows)
            out = nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                             attn_mask=additive)
        return out.transpose(1, 2)


class TorchAttention(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.q_proj = nn.Linear(DIM, DIM, dtype=dtype)
        self.k_proj = nn.Linear(DIM, DIM, dtype=dtype)
        self.v_proj = nn.Linear(DIM, DIM, dtype=dtype)
        self.o_proj = nn.Linear(DIM, DIM, dtype=dtype)
        self.rope = TorchRoPE()
        self.core = TorchCausalAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, time, _ = x.shape
        q, k, v = (proj(x).view(batch, time, HEADS, HEAD_DIM) for proj in (self.q_proj, self.k_proj, self.v_proj))
        out = self.core(self.rope(q), self.rope(k), v)
        return self.o_proj(out.reshape(batch, time, DIM))


class TorchMLP(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.fc = nn.Linear(DIM, 4 * DIM, dtype=dtype)
        self.proj = nn.Linear(4 * DIM, DIM, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(nn.functional.gelu(self.fc(x)))


class TorchBlock(nn.Module):
    """``x + attn(ln_1(x))``, then ``+ mlp(ln_2(.))``."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(DIM, dtype=dtype)
        self.attn = TorchAttention(dtype)
        self.ln_2 = nn.LayerNorm(DIM, dtype=dtype)
        self.mlp = TorchMLP(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# --------------------------------------------------------------------------- flax
class FlaxRoPE(nnx.Module):
    """Rotary embedding on ``(batch, time, heads, head_dim)``; ``interleaved`` rotates pairs
    ``(x0, x1), (x2, x3), ...`` instead of halves (the GPT-J/Mesh convention, a classic porting bug)."""

    def __init__(self, interleaved: bool = False) -> None:
        self.interleaved = interleaved

    def __call__(self, x: jax.Array) -> jax.Array:
        angles = jnp.asarray(rope_angles(x.shape[1], x.shape[-1]), x.dtype)[None, :, None, :]
        cos, sin = jnp.cos(angles), jnp.sin(angles)
        if self.interleaved:
            even, odd = x[..., 0::2], x[..., 1::2]
            rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
            return rotated.reshape(x.shape)
        first, second = jnp.split(x, 2, axis=-1)
        return jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)


class FlaxCausalAttention(nnx.Module):
    """Causal attention on ``(batch, time, heads, head_dim)``; ``mask_polarity_bug`` passes torch's
    "True = blocked" mask to Flax, whose mask means "True = attend"."""

    def __init__(self, mask_polarity_bug: bool = False) -> None:
        self.mask_polarity_bug = mask_polarity_bug

    def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
        time = q.shape[1]
        attend = jnp.tril(jnp.ones((time, time), bool))  # Flax: True = attend
        if self.mask_polarity_bug:
            attend = jnp.triu(jnp.ones((time, time), bool), 1)
        return torch_compatible_attention(q, k, v, mask=attend)


class FlaxAttention(nnx.Module):
    def __init__(self, dtype: str, *, mask_polarity_bug: bool = False, interleaved_rope: bool = False,
                 rngs: nnx.Rngs) -> None:
        kw = {"dtype": dtype, "param_dtype": dtype, "rngs": rngs}
        self.query = nnx.LinearGeneral(DIM, (HEADS, HEAD_DIM), **kw)
        self.key = nnx.LinearGeneral(DIM, (HEADS, HEAD_DIM), **kw)
        self.value = nnx.LinearGeneral(DIM, (HEADS, HEAD_DIM), **kw)
        self.out = nnx.Einsum("BTNH,NHD->BTD", (HEADS, HEAD_DIM, DIM), (DIM,), **kw)
        self.rope = FlaxRoPE(interleaved_rope)
        self.core = FlaxCausalAttention(mask_polarity_bug)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = self.rope(self.query(x)), self.rope(self.key(x)), self.value(x)
        return self.out(self.core(q, k, v))


class FlaxMLP(nnx.Module):
    def __init__(self, dtype: str, *, rngs: nnx.Rngs) -> None:
        kw = {"dtype": dtype, "param_dtype": dtype, "rngs": rngs}
        self.up = nnx.Linear(DIM, 4 * DIM, **kw)
        self.down = nnx.Linear(4 * DIM, DIM, **kw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.gelu(self.up(x), approximate=False))


class FlaxBlock(nnx.Module):
    def __init__(self, dtype: str = "float32", *, mask_polarity_bug: bool = False, interleaved_rope: bool = False,
                 rngs: nnx.Rngs) -> None:
        self.norm1 = nnx.LayerNorm(DIM, epsilon=1e-5, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.attn = FlaxAttention(dtype, mask_polarity_bug=mask_polarity_bug, interleaved_rope=interleaved_rope,
                                  rngs=rngs)
        self.norm2 = nnx.LayerNorm(DIM, epsilon=1e-5, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.mlp = FlaxMLP(dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def torch_model(dtype: str = "float32") -> TorchBlock:
    torch.manual_seed(0)
    return TorchBlock(getattr(torch, dtype))


def flax_model(dtype: str = "float32", **bugs: bool) -> FlaxBlock:
    return FlaxBlock(dtype, rngs=nnx.Rngs(0), **bugs)


def example_inputs(dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).normal(size=(BATCH, TIME, DIM)).astype(dtype)
