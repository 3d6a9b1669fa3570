"""Porting kit, transformer and RNN layers: each rule exact both ways and the same outputs in float64,
sizes drawn by hypothesis (a few draws each: CI budget)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.porting import PairingError
from shared.porting.rules import einsum_rule
from ssm_metarl.porting import (
    OffsetRMSNorm,
    copy_torch_to_flax,
    torch_compatible_attention,
    torch_compatible_multihead_attention,
    torch_compatible_rnn,
)
from tests.test_porting_rules import assert_close, assert_exact_both_ways

F64 = torch.float64
SETTINGS = settings(max_examples=3, deadline=None)


def rngs() -> nnx.Rngs:
    return nnx.Rngs(0)


# --------------------------------------------------------------------------- attention
@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.sampled_from([None, 3]), st.sampled_from([None, 2]), st.booleans())
def test_multihead_attention(heads: int, head_dim: int, kdim: int | None, vdim: int | None, bias: bool) -> None:
    embed = heads * head_dim
    t = torch.nn.MultiheadAttention(embed, heads, bias=bias, kdim=kdim, vdim=vdim, batch_first=True, dtype=F64)
    f = torch_compatible_multihead_attention(embed, heads, kdim=kdim, vdim=vdim, bias=bias,
                                             param_dtype=jnp.float64, rngs=rngs())
    assert_exact_both_ways(t, f)
    rng = np.random.default_rng(0)
    q = rng.normal(size=(2, 4, embed))
    k = rng.normal(size=(2, 5, kdim or embed))
    v = rng.normal(size=(2, 5, vdim or embed))
    ignore = np.zeros((2, 5), bool)
    ignore[0, 3:] = True  # torch key_padding_mask: True = ignore; flax mask: True = attend
    expected, _ = t(*(torch.from_numpy(a) for a in (q, k, v)), key_padding_mask=torch.from_numpy(ignore))
    assert_close(f(q, k, v, mask=(~ignore)[:, None, None, :]), expected)


def test_multihead_attention_packed_weight_splits_into_heads() -> None:
    t = torch.nn.MultiheadAttention(4, 2, batch_first=True, dtype=F64)
    f = nnx.MultiHeadAttention(2, 4, param_dtype=jnp.float64, rngs=rngs())
    copy_torch_to_flax(t, f)
    w = t.in_proj_weight.detach().numpy()
    # key projection, head 1, unit 0 is row E + 1 * head_dim + 0 of in_proj_weight
    np.testing.assert_array_equal(np.asarray(f.key.kernel[...])[:, 1, 0], w[4 + 2])
    np.testing.assert_array_equal(np.asarray(f.out.kernel[...])[1, 0], t.out_proj.weight.detach().numpy()[:, 2])


def test_attention_function_keeps_the_inputs_dtype_at_full_precision() -> None:
    rng = np.random.default_rng(1)
    q, k, v = (jnp.asarray(rng.normal(size=(1, 3, 2, 4))) for _ in range(3))
    ours = torch_compatible_attention(q, k, v)
    assert ours.dtype == jnp.float64
    tq, tk, tv = (torch.from_numpy(np.array(a)).transpose(1, 2) for a in (q, k, v))
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH):
        reference = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv).transpose(1, 2).numpy()
    np.testing.assert_allclose(np.asarray(ours), reference, rtol=1e-13, atol=1e-14)
    # in float32 it matches torch's float32 math too, with logits never widened past the inputs
    q32, k32, v32 = (a.astype(jnp.float32) for a in (q, k, v))
    assert torch_compatible_attention(q32, k32, v32).dtype == jnp.float32
    jaxpr = str(jax.make_jaxpr(torch_compatible_attention)(q32, k32, v32))
    assert "f64" not in jaxpr


def test_add_bias_kv_has_no_twin() -> None:
    t = torch.nn.MultiheadAttention(4, 2, add_bias_kv=True, batch_first=True, dtype=F64)
    f = nnx.MultiHeadAttention(2, 4, param_dtype=jnp.float64, rngs=rngs())
    with pytest.raises(PairingError, match="add_bias_kv"):
        copy_torch_to_flax(t, f)


# --------------------------------------------------------------------------- transposed convolutions
@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.integers(0, 1),
       st.integers(1, 2), st.booleans(), st.booleans())
def test_conv_transpose(cin: int, cout: int, kernel: int, stride: int, padding: int, dilation: int, two_d: bool,
                        transpose_kernel: bool) -> None:
    padding = min(padding, dilation * (kernel - 1))
    output_padding = 1 if stride > 1 else 0
    dims = 2 if two_d else 1
    t = (torch.nn.ConvTranspose2d if two_d else torch.nn.ConvTranspose1d)(
        cin, cout, kernel, stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
        dtype=F64)
    low = dilation * (kernel - 1) - padding
    f = nnx.ConvTranspose(cin, cout, (kernel,) * dims, strides=stride, padding=[(low, low + output_padding)] * dims,
                          kernel_dilation=dilation, transpose_kernel=transpose_kernel, param_dtype=jnp.float64,
                          rngs=rngs())
    assert_exact_both_ways(t, f)
    x = np.random.default_rng(2).normal(size=(2, cin, *(4,) * dims))
    assert_close(f(np.moveaxis(x, 1, -1)), t(torch.from_numpy(x)), moveaxis=True)


def test_conv_transpose_flips_the_kernel() -> None:
    t = torch.nn.ConvTranspose1d(1, 1, 3, bias=False, dtype=F64)
    with torch.no_grad():
        t.weight.copy_(torch.tensor([[[1.0, 2.0, 3.0]]], dtype=F64))
    f = nnx.ConvTranspose(1, 1, (3,), padding=[(2, 2)], use_bias=False, param_dtype=jnp.float64, rngs=rngs())
    copy_torch_to_flax(t, f)
    np.testing.assert_array_equal(np.asarray(f.kernel[...])[:, 0, 0], [3.0, 2.0, 1.0])


# --------------------------------------------------------------------------- recurrent stacks
@SETTINGS
@given(st.sampled_from(["gru", "lstm"]), st.integers(1, 3), st.integers(1, 3), st.integers(1, 2), st.booleans())
def test_recurrent_layers_and_directions(kind: str, in_dim: int, hidden: int, layers: int, bidirectional: bool) -> None:
    torch_class = torch.nn.GRU if kind == "gru" else torch.nn.LSTM
    t = torch_class(in_dim, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=True, dtype=F64)
    f = torch_compatible_rnn(kind, in_dim, hidden, num_layers=layers, bidirectional=bidirectional,
                             param_dtype=jnp.float64, rngs=rngs())
    assert_exact_both_ways(t, f)
    x = np.random.default_rng(3).normal(size=(2, 4, in_dim))
    assert_close(f(x), t(torch.from_numpy(x))[0])


def test_lstm_single_cell_and_layer_count_mismatch() -> None:
    from ssm_metarl.porting import torch_compatible_lstm_cell

    t = torch.nn.LSTM(3, 4, batch_first=True, dtype=F64)
    f = nnx.RNN(torch_compatible_lstm_cell(3, 4, param_dtype=jnp.float64, rngs=rngs()))
    assert_exact_both_ways(t, f)
    with pytest.raises(PairingError, match=r"dense_i has no bias.*torch_compatible_lstm_cell"):
        copy_torch_to_flax(t, nnx.RNN(nnx.OptimizedLSTMCell(3, 4, param_dtype=jnp.float64, rngs=rngs())))
    bidirectional = torch.nn.LSTM(3, 4, bidirectional=True, batch_first=True, dtype=F64)
    cells = [nnx.RNN(torch_compatible_lstm_cell(3, 4, param_dtype=jnp.float64, rngs=rngs())) for _ in range(2)]
    stock_bidirectional = nnx.Bidirectional(*cells, rngs=rngs())  # a user's own, not TorchRNN
    assert_exact_both_ways(bidirectional, stock_bidirectional)
    x = np.random.default_rng(8).normal(size=(2, 4, 3))
    assert_close(stock_bidirectional(x), bidirectional(torch.from_numpy(x))[0])
    two = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, dtype=F64)
    with pytest.raises(PairingError, match=r"holds layer 0, layer 1; the flax side holds cells for layer 0"):
        copy_torch_to_flax(two, f)


# --------------------------------------------------------------------------- head-shaped Linear
@SETTINGS
@given(st.integers(1, 4), st.integers(1, 3), st.integers(1, 3))
def test_linear_to_head_shaped_kernels(model_dim: int, heads: int, head_dim: int) -> None:
    class TorchProj(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q = torch.nn.Linear(model_dim, heads * head_dim, dtype=F64)
            self.o = torch.nn.Linear(heads * head_dim, model_dim, dtype=F64)
            self.k = torch.nn.Linear(model_dim, heads * head_dim, bias=False, dtype=F64)

    class FlaxProj(nnx.Module):
        def __init__(self) -> None:
            self.q = nnx.LinearGeneral(model_dim, (heads, head_dim), param_dtype=jnp.float64, rngs=rngs())
            self.o = nnx.Einsum("BTNH,NHD->BTD", (heads, head_dim, model_dim), (model_dim,),
                                param_dtype=jnp.float64, rngs=rngs())
            self.k = nnx.Einsum("BTD,NDH->BTNH", (heads, model_dim, head_dim), param_dtype=jnp.float64, rngs=rngs())

    t, f = TorchProj(), FlaxProj()
    assert_exact_both_ways(t, f)
    x = np.random.default_rng(4).normal(size=(2, 3, model_dim))
    batch = x.shape[:2]
    assert_close(f.q(x).reshape(*batch, -1), t.q(torch.from_numpy(x)))
    assert_close(f.k(x).reshape(*batch, -1), t.k(torch.from_numpy(x)))
    h = np.random.default_rng(5).normal(size=(2, 3, heads, head_dim))
    assert_close(f.o(h), t.o(torch.from_numpy(h.reshape(*batch, -1))))


def test_einsum_that_is_not_a_linear_is_refused() -> None:
    from shared.porting import RuleError

    with pytest.raises(RuleError, match="not a Linear"):
        einsum_rule("BTNH,NHD->BTND")


# --------------------------------------------------------------------------- norms by structure
class PlainRMSNorm(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(dim, dtype=F64) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class GemmaStyleRMSNorm(PlainRMSNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1.0 + self.weight)


@SETTINGS
@given(st.integers(1, 6))
def test_custom_rms_norm_classes_pair_by_structure(dim: int) -> None:
    x = np.random.default_rng(6).normal(size=(3, dim))
    plain = PlainRMSNorm(dim)
    f = nnx.RMSNorm(dim, epsilon=1e-6, param_dtype=jnp.float64, rngs=rngs())
    assert_exact_both_ways(plain, f)
    assert_close(f(x), plain(torch.from_numpy(x)))
    gemma = GemmaStyleRMSNorm(dim)
    offset = OffsetRMSNorm(dim, epsilon=1e-6, param_dtype=jnp.float64, rngs=rngs())
    assert_exact_both_ways(gemma, offset)
    assert_close(offset(x), gemma(torch.from_numpy(x)))


def test_one_plus_weight_onto_a_plain_scale_is_named() -> None:
    with pytest.raises(PairingError, match=r"multiplies by \(1 \+ weight\).*OffsetRMSNorm"):
        copy_torch_to_flax(GemmaStyleRMSNorm(4), nnx.RMSNorm(4, param_dtype=jnp.float64, rngs=rngs()))


def test_stock_flax_attention_is_float32_rounded_in_float64_and_ours_is_not() -> None:
    """jax.nn.dot_product_attention (stock nnx.MultiHeadAttention's kernel without dropout) casts the
    logits to float32 for the softmax whatever the inputs' dtype: a float64 port is off by ~1e-7."""
    t = torch.nn.MultiheadAttention(8, 2, batch_first=True, dtype=F64)
    stock = nnx.MultiHeadAttention(2, 8, dtype=jnp.float64, param_dtype=jnp.float64, decode=False, rngs=rngs())
    ours = torch_compatible_multihead_attention(8, 2, param_dtype=jnp.float64, rngs=rngs())
    copy_torch_to_flax(t, stock)
    copy_torch_to_flax(t, ours)
    x = 3.0 * np.random.default_rng(7).normal(size=(2, 5, 8))
    expected = t(*(torch.from_numpy(x),) * 3)[0].detach().numpy()
    scale = float(np.abs(expected).max())
    stock_rel = float(np.abs(np.asarray(stock(x, x, x)) - expected).max()) / scale
    ours_rel = float(np.abs(np.asarray(ours(x, x, x)) - expected).max()) / scale
    assert 1e-10 < stock_rel < 1e-5, stock_rel  # float32 rounding: fails the float64 outputs tolerance (1e-10)
    assert ours_rel < 1e-14, ours_rel


@SETTINGS
@given(st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.lists(st.integers(1, 3), min_size=1, max_size=2))
def test_numpy_layer_rules_are_exact_inverses(heads: int, head_dim: int, other: int, kernel: list[int]) -> None:
    from shared.porting import attention, recurrent, rules

    rng = np.random.default_rng(9)
    embed = heads * head_dim
    cases = [
        (attention.MULTIHEAD_ATTENTION,
         {"in_proj_weight": rng.normal(size=(3 * embed, embed)), "in_proj_bias": rng.normal(size=3 * embed),
          "out_proj.weight": rng.normal(size=(embed, embed)), "out_proj.bias": rng.normal(size=embed)},
         {"query.kernel": (embed, heads, head_dim)}),
        (attention.MULTIHEAD_ATTENTION,
         {"q_proj_weight": rng.normal(size=(embed, embed)), "k_proj_weight": rng.normal(size=(embed, other)),
          "v_proj_weight": rng.normal(size=(embed, other + 1)), "out_proj.weight": rng.normal(size=(embed, embed))},
         {"query.kernel": (embed, heads, head_dim)}),
        (rules.CONV_TRANSPOSE, {"weight": rng.normal(size=(other, 2, *kernel)), "bias": rng.normal(size=2)}, {}),
        (rules.LINEAR_GENERAL, {"weight": rng.normal(size=(embed, other)), "bias": rng.normal(size=embed)},
         {"kernel": (other, heads, head_dim), "bias": (heads, head_dim)}),
        (einsum_rule("BTD,NDH->BTNH"), {"weight": rng.normal(size=(embed, other))},
         {"kernel": (heads, other, head_dim)}),
        (recurrent.LSTM, _bidirectional_lstm_tensors(rng, other, head_dim),
         {f"{d}.dense_{w}.{n}": () for d in ("forward_rnn", "backward_rnn") for w in "ih" for n in ("kernel", "bias")}),
    ]
    for rule, tensors, flax_shapes in cases:
        flax = rule.to_flax(tensors, flax_shapes)
        torch_shapes = {k: np.shape(v) for k, v in tensors.items()}
        back = rule.to_torch(flax, torch_shapes)
        assert back.keys() == tensors.keys(), rule.name
        for name in tensors:
            np.testing.assert_array_equal(back[name], tensors[name], err_msg=f"{rule.name} {name}")
        again = rule.to_flax(back, {**flax_shapes, **{k: np.shape(v) for k, v in flax.items()}})
        for name in flax:
            np.testing.assert_array_equal(again[name], flax[name], err_msg=f"{rule.name} {name}")


def _bidirectional_lstm_tensors(rng: np.random.Generator, inputs: int, hidden: int) -> dict[str, np.ndarray]:
    out = {}
    for suffix in ("", "_reverse"):
        out[f"weight_ih_l0{suffix}"] = rng.normal(size=(4 * hidden, inputs))
        out[f"weight_hh_l0{suffix}"] = rng.normal(size=(4 * hidden, hidden))
        out[f"bias_ih_l0{suffix}"] = rng.normal(size=4 * hidden)
        out[f"bias_hh_l0{suffix}"] = rng.normal(size=4 * hidden)
    return out
