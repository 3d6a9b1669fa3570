"""Flax NNX layers that compute exactly what their PyTorch namesakes do, where stock NNX differs.

- :func:`torch_compatible_gru_cell`: ``nnx.GRUCell`` (flax 0.12) builds its hidden ``dense_h``
  without a bias, so it cannot hold ``nn.GRU``'s ``b_hn`` (which sits inside ``r * (W_hn h + b_hn)``).
  This cell has a biased ``dense_h``; everything else is the stock cell (gate order (r, z, n), as torch).
- :class:`TorchBatchNorm`: ``nnx.BatchNorm`` updates its running variance with the *biased* batch
  variance and by default uses the fast ``E[x^2] - E[x]^2`` formula; torch uses the unbiased one
  (``n / (n - 1)``) for the running statistics and the two-pass variance. Momentum is given in
  torch's convention (0.1) and stored in Flax's (0.9 = 1 - 0.1).
"""

from __future__ import annotations

import math
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
