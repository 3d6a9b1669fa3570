"""The porting kit's report: worst leaves, per-layer localisation of a gradient divergence, the Adam
split step, second-order rows on a kernel without double backward, and hints for known causes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from ssm_metarl.porting import compare_models, copy_torch_to_flax, find_divergence
from tests.porting_pairs import FlaxAttention, FlaxTokens, TorchAttention, TorchTokens

F64 = torch.float64


def _ids() -> np.ndarray:
    ids = np.random.default_rng(0).integers(0, 7, size=(4, 5))
    ids[:, 0] = 0  # the padding id occurs
    return ids


def test_gradient_divergence_is_localised_to_the_embedding_with_padding_idx() -> None:
    report = compare_models(TorchTokens(padding_idx=0), FlaxTokens(), _ids(), rows=("weights", "forward", "gradients"))
    assert [r.quantity for r in report.rows if not r.passed] == ["loss gradients w.r.t. every parameter"]
    found = report.gradient_divergence
    assert found is not None and (found.module, found.module_type) == ("embed", "Embedding")
    assert found.parameters == ("embed.weight",)
    assert any("Embedding padding_idx=0" in h for h in found.hints)
    table = report.table()
    assert "worst leaves of 'loss gradients w.r.t. every parameter'" in table and "embed.weight (7, 4)" in table
    assert "first divergent module in the backward pass: 'embed'" in table


def test_the_adam_split_step_is_reported() -> None:
    report = compare_models(TorchTokens(padding_idx=0), FlaxTokens(), _ids(), rows=("adam",), adam_steps=3)
    assert not report.passed and report.adam_split == 1
    assert "the Adam trajectories split at meta-step 1" in report.table()


def test_matching_pair_has_no_gradient_divergence() -> None:
    report = compare_models(TorchTokens(padding_idx=None), FlaxTokens(), _ids(), rows=("gradients",))
    assert report.passed and report.gradient_divergence is None and report.adam_split is None


def test_second_order_rows_run_attention_on_the_math_backend_instead_of_crashing() -> None:
    x = np.random.default_rng(0).normal(size=(2, 1, 3, 4))  # (batch, heads, time, features)
    report = compare_models(TorchAttention(), FlaxAttention(), x, rows=("meta_gradient",))
    assert report.passed, report.table()
    assert any("math SDPA backend" in note for note in report.notes)


# --------------------------------------------------------------------------- hints
def _divergence(torch_model: nn.Module, flax_model: nnx.Module, inputs: np.ndarray, train: bool = True):
    copy_torch_to_flax(torch_model, flax_model)
    return find_divergence(torch_model, flax_model, inputs, tolerance=1e-10, train=train)


def _lin(i: int, o: int, **kw: object) -> nnx.Linear:
    return nnx.Linear(i, o, param_dtype=jnp.float64, rngs=nnx.Rngs(0), **kw)


def test_hint_group_norm_epsilon() -> None:
    torch_model = nn.Sequential(nn.Linear(3, 4, dtype=F64), nn.GroupNorm(2, 4, dtype=F64))
    flax_model = nnx.Sequential(_lin(3, 4), nnx.GroupNorm(4, num_groups=2, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    found = _divergence(torch_model, flax_model, np.random.default_rng(0).normal(size=(5, 3)) * 1e-3)
    assert (found.module, found.module_type) == ("1", "GroupNorm")
    assert any("GroupNorm epsilon: torch eps=1e-05, flax epsilon=1e-06" in h for h in found.hints)


def test_active_dropout_is_named() -> None:
    torch_model = nn.Sequential(nn.Linear(3, 4, dtype=F64), nn.Dropout(0.5))
    flax_model = nnx.Sequential(_lin(3, 4), nnx.Dropout(0.5, rngs=nnx.Rngs(1)))
    found = _divergence(torch_model, flax_model, np.random.default_rng(0).normal(size=(5, 3)))
    assert found.module_type == "Dropout" and any("active dropout (p=0.5)" in h for h in found.hints)
    report = compare_models(torch_model, flax_model, np.random.default_rng(0).normal(size=(5, 3)), rows=("forward",))
    assert any("active dropout in train mode" in n for n in report.notes)
    assert compare_models(torch_model, flax_model, np.random.default_rng(0).normal(size=(5, 3)), rows=("forward",),
                          train=False).passed


class TorchPool(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, dtype=F64)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)  # count_include_pad=True
        self.mix = nn.Conv2d(2, 1, 1, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(self.pool(self.conv(x)))


class FlaxPool(nnx.Module):
    def __init__(self) -> None:
        self.conv = nnx.Conv(1, 2, (3, 3), padding=1, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        self.mix = nnx.Conv(2, 1, (1, 1), param_dtype=jnp.float64, rngs=nnx.Rngs(0))

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv(jnp.moveaxis(x, 1, -1))
        h = nnx.avg_pool(h, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)
        return jnp.moveaxis(self.mix(h), -1, 1)


def test_hint_count_include_pad() -> None:
    found = _divergence(TorchPool(), FlaxPool(), np.random.default_rng(0).normal(size=(2, 1, 4, 4)))
    assert (found.module, found.module_type) == ("pool", "AvgPool2d")
    assert any("count_include_pad: torch's AvgPool2d has count_include_pad=True" in h for h in found.hints)


class TorchFlatten(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, dtype=F64)
        self.head = nn.Linear(2 * 3 * 3, 1, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).flatten(1))


class FlaxFlatten(nnx.Module):
    def __init__(self) -> None:
        self.conv = nnx.Conv(1, 2, (3, 3), padding=1, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        self.head = _lin(2 * 3 * 3, 1)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.conv(jnp.moveaxis(x, 1, -1)))
        return self.head(h.reshape(h.shape[0], -1))  # (H, W, C) order: the bug


def test_hint_flatten_order_after_a_conv() -> None:
    found = _divergence(TorchFlatten(), FlaxFlatten(), np.random.default_rng(0).normal(size=(2, 1, 3, 3)))
    assert found.module == "head" and not found.input_matches
    assert any("flatten order after a conv" in h for h in found.hints), found.describe()


class TorchRotary(nn.Module):
    """Rotates the halves of each vector (HF Llama's rotate_half)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4, dtype=F64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rope_half(self.proj(x))


def rope_half(x: torch.Tensor) -> torch.Tensor:
    angle = torch.arange(x.shape[-2], dtype=x.dtype)[:, None] * torch.tensor([1.0, 0.1], dtype=x.dtype)
    cos, sin = torch.cat([angle.cos()] * 2, -1), torch.cat([angle.sin()] * 2, -1)
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], -1) * sin


class FlaxRotary(nnx.Module):
    """The port rotates interleaved pairs (x[0::2], x[1::2]): a RoPE layout bug (apply_rotary)."""

    def __init__(self) -> None:
        self.proj = _lin(4, 4)

    def __call__(self, x: jax.Array) -> jax.Array:
        return apply_rotary_interleaved(self.proj(x))


def apply_rotary_interleaved(x: jax.Array) -> jax.Array:
    angle = jnp.arange(x.shape[-2])[:, None] * jnp.array([1.0, 0.1])
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    even, odd = x[..., 0::2], x[..., 1::2]
    return jnp.stack([even * cos - odd * sin, even * sin + odd * cos], -1).reshape(x.shape)


class TorchRotaryBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = TorchRotary()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x)


class FlaxRotaryBlock(nnx.Module):
    def __init__(self) -> None:
        self.attn = FlaxRotary()

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.attn(x)


def test_hint_rope_half_split_against_interleaved() -> None:
    found = _divergence(TorchRotaryBlock(), FlaxRotaryBlock(), np.random.default_rng(0).normal(size=(2, 3, 4)))
    assert found.module == "attn"
    assert any("RoPE layout" in h and "INTERLEAVED" in h for h in found.hints), found.describe()


class FlaxHalfPrecisionInside(nnx.Module):
    """A float64 port whose middle layer computes in float32 (dtype=float32): float32 rounding level."""

    def __init__(self) -> None:
        self.a = _lin(3, 4)
        self.b = _lin(4, 4, dtype=jnp.float32)
        self.c = _lin(4, 2)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c(jnp.tanh(self.b(jnp.tanh(self.a(x))).astype(jnp.float64)))


def test_hint_float32_rounding_level_in_a_float64_run() -> None:
    torch_model = nn.Sequential()
    torch_model.a, torch_model.b, torch_model.c = (nn.Linear(3, 4, dtype=F64), nn.Linear(4, 4, dtype=F64),
                                                   nn.Linear(4, 2, dtype=F64))

    class Torch(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = torch_model.a, torch_model.b, torch_model.c

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(torch.tanh(self.b(torch.tanh(self.a(x)))))

    found = _divergence(Torch(), FlaxHalfPrecisionInside(), np.random.default_rng(0).normal(size=(5, 3)))
    assert found.module == "b"
    assert any("float32 rounding level" in h for h in found.hints), found.describe()
    assert any("built with dtype=float32" in h or "in float32" in h for h in found.hints)
