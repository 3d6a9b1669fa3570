"""Flax NNX layers that compute exactly what their PyTorch namesakes do, where stock NNX differs.

- :func:`torch_compatible_gru_cell`: ``nnx.GRUCell`` (flax 0.12) builds its hidden ``dense_h``
  without a bias, so it cannot hold ``nn.GRU``'s ``b_hn`` (which sits inside ``r * (W_hn h + b_hn)``).
  This cell has a biased ``dense_h``; everything else is the stock cell (gate order (r, z, n), as torch).
- :func:`torch_compatible_lstm_cell`: ``nnx.OptimizedLSTMCell`` (gates packed (i, f, g, o), as torch)
  whose ``dense_i`` has a bias too, so it holds both of ``nn.LSTM``'s biases exactly.
- :class:`TorchRNN` / :func:`torch_compatible_rnn`: ``nn.GRU``/``nn.LSTM`` with ``num_layers`` and
  ``bidirectional``, batch-first: one ``nnx.RNN`` (or ``nnx.Bidirectional``) per layer.
- :func:`torch_compatible_attention`: an ``attention_fn`` for ``nnx.MultiHeadAttention`` that computes
  in the inputs' dtype at full matmul precision (float64 stays float64, on every backend; the stock
  kernel's softmax is always float32), scaling the query before the product as torch does;
  :func:`torch_compatible_multihead_attention` builds ``nn.MultiheadAttention``'s twin (separate
  ``kdim``/``vdim``, with or without biases).
- :class:`OffsetRMSNorm`: ``y = x_normed * (1 + scale)``, the twin of torch RMSNorm classes that
  store ``weight`` around 0 (Gemma style).
- :class:`TorchBatchNorm`: ``nnx.BatchNorm`` updates its running variance with the *biased* batch
  variance and by default uses the fast ``E[x^2] - E[x]^2`` formula; torch uses the unbiased one
  (``n / (n - 1)``) for the running statistics and the two-pass variance. Momentum is given in
  torch's convention (0.1) and stored in Flax's (0.9 = 1 - 0.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx


def torch_compatible_gru_cell(in_features: int, hidden_features: int, *, param_dtype: Any = jnp.float32,
                              rngs: nnx.Rngs) -> nnx.GRUCell:
    """An ``nnx.GRUCell`` whose ``dense_h`` has a bias, i.e. torch's ``nn.GRU`` cell exactly:
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``. Input ``(..., in_features)``, carry ``(..., hidden)``."""
    cell = nnx.GRUCell(in_features, hidden_features, dtype=param_dtype, param_dtype=param_dtype, rngs=rngs)
    cell.dense_h = nnx.Linear(hidden_features, 3 * hidden_features, use_bias=True, dtype=param_dtype,
                              param_dtype=param_dtype, rngs=rngs)
    return cell


class TorchBatchNorm(nnx.BatchNorm):
    """``torch.nn.BatchNorm{1,2,3}d`` over the last (feature) axis, running statistics included.

    Train mode normalises with the biased batch variance and updates
    ``mean <- (1 - m) mean + m batch_mean``, ``var <- (1 - m) var + m batch_var * n / (n - 1)``
    (torch's momentum ``m``; stored as Flax's ``momentum = 1 - m``). Eval mode uses the running statistics.
    """

    def __init__(self, num_features: int, *, momentum: float = 0.1, eps: float = 1e-5, param_dtype: Any = jnp.float32,
                 use_running_average: bool = False, rngs: nnx.Rngs) -> None:
        super().__init__(num_features, momentum=1.0 - momentum, epsilon=eps, dtype=param_dtype,
                         param_dtype=param_dtype, use_fast_variance=False, use_running_average=use_running_average,
                         rngs=rngs)
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), param_dtype))
        self.var = nnx.BatchStat(jnp.ones((num_features,), param_dtype))

    def __call__(self, x: jax.Array, use_running_average: bool | None = None, *, mask: Any = None) -> jax.Array:
        if mask is not None:
            raise NotImplementedError("TorchBatchNorm does not support masks (torch BatchNorm has none)")
        use_running_average = self.use_running_average if use_running_average is None else use_running_average
        axes = tuple(range(x.ndim - 1))
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean = x.mean(axes)
            var = jnp.square(x - mean).mean(axes)
            count = math.prod(x.shape[:-1])
            unbiased = var * (count / max(count - 1, 1))
            self.mean[...] = jax.lax.stop_gradient(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
            self.var[...] = jax.lax.stop_gradient(self.momentum * self.var[...] + (1 - self.momentum) * unbiased)
        y = (x - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.scale is not None:
            y = y * self.scale[...]
        if self.bias is not None:
            y = y + self.bias[...]
        return y


def torch_compatible_lstm_cell(in_features: int, hidden_features: int, *, param_dtype: Any = jnp.float32,
                               rngs: nnx.Rngs) -> nnx.OptimizedLSTMCell:
    """An ``nnx.OptimizedLSTMCell`` whose ``dense_i`` has a bias: torch's ``nn.LSTM`` cell exactly,
    ``(i, f, g, o) = W_ih x + b_ih + W_hh h + b_hh``, ``c' = f c + i g``, ``h' = o tanh(c')``.
    Carry ``(c, h)``, each ``(..., hidden)``; input ``(..., in_features)``."""
    cell = nnx.OptimizedLSTMCell(in_features, hidden_features, dtype=param_dtype, param_dtype=param_dtype,
                                 rngs=rngs)
    cell.dense_i = nnx.Linear(in_features, 4 * hidden_features, use_bias=True, dtype=param_dtype,
                              param_dtype=param_dtype, rngs=rngs)
    return cell


CELLS: dict[str, Callable[..., nnx.Module]] = {"gru": torch_compatible_gru_cell, "lstm": torch_compatible_lstm_cell}


class TorchRNN(nnx.Sequential):
    """``nn.GRU``/``nn.LSTM(batch_first=True)`` with ``num_layers`` and ``bidirectional``.

    ``(batch, time, in_features) -> (batch, time, hidden * directions)``: layer ``k`` is an
    ``nnx.RNN`` over a torch-compatible cell, or an ``nnx.Bidirectional`` of two (the backward one
    reads the sequence reversed and its outputs are put back in time order, then concatenated after
    the forward ones, as torch does). Inter-layer dropout is not modelled (torch's ``dropout=0``).
    Its weights pair with the torch layer's ``weight_ih_l{k}[_reverse]`` automatically.
    """

    def __init__(self, kind: str, in_features: int, hidden_features: int, *, num_layers: int = 1,
                 bidirectional: bool = False, param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        if kind not in CELLS:
            raise ValueError(f"kind must be one of {sorted(CELLS)}, got {kind!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        directions = 2 if bidirectional else 1
        layers = []
        for k in range(num_layers):
            features = in_features if k == 0 else hidden_features * directions

            def rnn(features: int = features) -> nnx.RNN:
                return nnx.RNN(CELLS[kind](features, hidden_features, param_dtype=param_dtype, rngs=rngs))

            layers.append(nnx.Bidirectional(rnn(), rnn(), rngs=rngs) if bidirectional else rnn())
        super().__init__(*layers)
        self.kind, self.num_layers, self.bidirectional = kind, num_layers, bidirectional


def torch_compatible_rnn(kind: str, in_features: int, hidden_features: int, *, num_layers: int = 1,
                         bidirectional: bool = False, param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> TorchRNN:
    """The twin of ``nn.GRU``/``nn.LSTM(in_features, hidden_features, num_layers, bidirectional=...,
    batch_first=True)`` (``kind`` ``"gru"`` or ``"lstm"``); see :class:`TorchRNN`."""
    return TorchRNN(kind, in_features, hidden_features, num_layers=num_layers, bidirectional=bidirectional,
                    param_dtype=param_dtype, rngs=rngs)


def torch_compatible_attention(query: jax.Array, key: jax.Array, value: jax.Array, bias: jax.Array | None = None,
                               mask: jax.Array | None = None, *, dropout_rate: float = 0.0,
                               deterministic: bool = True, dtype: Any = None, precision: Any = None,
                               is_causal: bool = False, **unused: Any) -> jax.Array:
    """Scaled dot-product attention in the inputs' own dtype, as torch's reference path computes it.

    ``query (..., Lq, N, H)``, ``key``/``value (..., Lk, N, H)``; ``mask`` broadcastable to
    ``(..., N, Lq, Lk)``, True = attend (Flax's polarity: torch's ``key_padding_mask`` is the
    opposite); ``bias`` is added to the logits. Returns ``(..., Lq, N, H)``.

    Stock ``jax.nn.dot_product_attention`` (what ``nnx.MultiHeadAttention`` runs when dropout is off;
    jax 0.10) always casts the logits to float32 for the softmax, so a float64 port is off by about
    1e-7, and uses the default matmul precision (TF32/bf16 passes on GPU/TPU). This one uses
    ``Precision.HIGHEST`` and never changes dtype, so float64 stays float64 on every backend. A
    fully masked row gets uniform weights (Flax's convention; torch gives NaN). No dropout.
    """
    if dropout_rate > 0.0 and not deterministic:
        raise NotImplementedError("torch_compatible_attention has no dropout; run the comparison in eval mode "
                                  "(deterministic=True) or set dropout_rate=0")
    if dtype is not None:
        query, key, value = (jnp.asarray(a, dtype) for a in (query, key, value))
    precision = jax.lax.Precision.HIGHEST if precision is None else precision
    head_dim = query.shape[-1]
    scaled = query * jnp.asarray(1.0 / math.sqrt(head_dim), query.dtype)
    logits = jnp.einsum("...qhd,...khd->...hqk", scaled, key, precision=precision)
    if bias is not None:
        logits = logits + bias
    if is_causal:
        causal = jnp.tril(jnp.ones(logits.shape[-2:], bool))
        mask = causal if mask is None else jnp.logical_and(mask, causal)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("...hqk,...khd->...qhd", weights, value, precision=precision)


def torch_compatible_multihead_attention(embed_dim: int, num_heads: int, *, kdim: int | None = None,
                                         vdim: int | None = None, bias: bool = True, param_dtype: Any = jnp.float32,
                                         rngs: nnx.Rngs) -> nnx.MultiHeadAttention:
    """The twin of ``nn.MultiheadAttention(embed_dim, num_heads, bias=bias, kdim=kdim, vdim=vdim,
    batch_first=True)``: an ``nnx.MultiHeadAttention`` with :func:`torch_compatible_attention`, and,
    when ``vdim != kdim``, its own ``value`` projection (stock Flax has one ``in_kv_features``).
    Call it as ``mha(q, k, v, mask=...)``; ``mask`` True = attend."""
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    kdim = embed_dim if kdim is None else kdim
    vdim = embed_dim if vdim is None else vdim
    mha = nnx.MultiHeadAttention(num_heads, embed_dim, qkv_features=embed_dim, out_features=embed_dim,
                                 in_kv_features=kdim, use_bias=bias, attention_fn=torch_compatible_attention,
                                 decode=False, dtype=param_dtype, param_dtype=param_dtype, rngs=rngs)
    if vdim != kdim:
        mha.value = nnx.LinearGeneral(vdim, (num_heads, embed_dim // num_heads), axis=-1, use_bias=bias,
                                      dtype=param_dtype, param_dtype=param_dtype, rngs=rngs)
    return mha


class OffsetRMSNorm(nnx.RMSNorm):
    """RMSNorm over the last axis with ``y = x / sqrt(mean(x^2) + eps) * (scale_offset + scale)``; the
    scale starts at 0. The twin of torch RMSNorm classes that store ``weight`` around 0 and multiply
    by ``1 + weight`` (Gemma): their weight copies into ``scale`` unchanged (exact both ways)."""

    def __init__(self, num_features: int, *, scale_offset: float = 1.0, epsilon: float = 1e-6,
                 param_dtype: Any = jnp.float32, rngs: nnx.Rngs) -> None:
        super().__init__(num_features, epsilon=epsilon, dtype=param_dtype, param_dtype=param_dtype,
                         scale_init=nnx.initializers.zeros, rngs=rngs)
        self.scale_offset = scale_offset

    def __call__(self, x: jax.Array, mask: Any = None) -> jax.Array:
        if mask is not None:
            raise NotImplementedError("OffsetRMSNorm does not support masks")
        mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
        return x * jax.lax.rsqrt(mean_square + self.epsilon) * (self.scale_offset + self.scale[...])
