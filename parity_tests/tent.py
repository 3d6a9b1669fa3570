"""Twin TENT classifiers (Linear -> BatchNorm -> ReLU -> Linear) for the Adapter's BatchNorm parity row.

TENT (Wang et al., 2021) adapts only the normalisation affine parameters of a model whose
BatchNorm normalises with the test batch's statistics (train mode), by minimising the entropy
of the predictions. Both backends run it through their ``Adapter`` with ``allow="bn.*"``.

BatchNorm conventions differ between the frameworks, so the JAX twin uses
:class:`TorchBatchNorm1d`, which follows ``torch.nn.BatchNorm1d`` exactly:

- momentum: torch's ``momentum=0.1`` means ``running = 0.9 * running + 0.1 * batch``; Flax's
  ``nnx.BatchNorm(momentum=0.9)`` means the same update (its default 0.99 is torch's 0.01);
- epsilon: 1e-5 in both by default, added to the variance inside the square root;
- the variance used to normalise is the biased one (divide by n) in both, but torch's
  ``running_var`` is updated with the unbiased variance (divide by n - 1), while Flax's
  ``nnx.BatchNorm`` stores the biased one; Flax also defaults to ``E[x^2] - E[x]^2``
  (``use_fast_variance=True``) where torch uses ``E[(x - E[x])^2]``;
- torch counts ``num_batches_tracked``; Flax keeps no counter.

With stock ``nnx.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False)`` everything but
``running_var`` follows torch (the adapted parameters too, since train-mode normalisation uses
the batch's own statistics); ``TorchBatchNorm1d`` makes ``running_var`` agree as well.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from jax_impl.core.ssm import torch_default_linear

TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchTentNet(torch.nn.Module):
    """``fc2(relu(bn(fc1(x))))``: logits of shape (batch, classes) for x of shape (batch, features)."""

    def __init__(self, features: int, hidden: int, classes: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(features, hidden, dtype=dtype)
        self.bn = torch.nn.BatchNorm1d(hidden, dtype=dtype)  # momentum 0.1, eps 1e-5
        self.fc2 = torch.nn.Linear(hidden, classes, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class TorchBatchNorm1d(nnx.Module):
    """``torch.nn.BatchNorm1d`` semantics in NNX, over inputs of shape (batch, features).

    Params ``scale``, ``bias`` (Flax's names); ``BatchStat``s ``mean``, ``var`` (unbiased, as
    torch's ``running_var``) and ``count`` (torch's ``num_batches_tracked``). In train mode
    (``use_running_average=False``) it normalises with the batch's biased variance and updates
    the statistics with ``momentum`` in torch's convention.
    """

    def __init__(self, features: int, *, momentum: float = 0.1, epsilon: float = 1e-5, dtype: Any = jnp.float32,
                 use_running_average: bool = False) -> None:
        self.scale = nnx.Param(jnp.ones(features, dtype))
        self.bias = nnx.Param(jnp.zeros(features, dtype))
        self.mean = nnx.BatchStat(jnp.zeros(features, dtype))
        self.var = nnx.BatchStat(jnp.ones(features, dtype))
        self.count = nnx.BatchStat(jnp.zeros((), jnp.int64 if jax.config.jax_enable_x64 else jnp.int32))
        self.momentum, self.epsilon, self.use_running_average = momentum, epsilon, use_running_average

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            n = x.shape[0]
            mean = x.mean(0)
            var = ((x - mean) ** 2).mean(0)
            m = self.momentum
            self.mean[...] = (1 - m) * self.mean[...] + m * mean
            self.var[...] = (1 - m) * self.var[...] + m * var * (n / (n - 1))
            self.count[...] = self.count[...] + 1
        return (x - mean) / jnp.sqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


class JaxTentNet(nnx.Module):
    def __init__(self, features: int, hidden: int, classes: int, dtype: str) -> None:
        rngs = nnx.Rngs(0)
        self.fc1 = torch_default_linear(features, hidden, jnp.dtype(dtype), rngs)
        self.bn = TorchBatchNorm1d(hidden, dtype=jnp.dtype(dtype))
        self.fc2 = torch_default_linear(hidden, classes, jnp.dtype(dtype), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.relu(self.bn(self.fc1(x))))


def torch_state(model: TorchTentNet) -> dict[str, np.ndarray]:
    """Every parameter and buffer, by torch name."""
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def jax_state(model: JaxTentNet) -> dict[str, np.ndarray]:
    """The JAX twin's parameters and statistics under the torch names of :func:`torch_state`."""
    out = {}
    for layer in ("fc1", "fc2"):
        linear = getattr(model, layer)
        out[f"{layer}.weight"] = np.asarray(linear.kernel[...]).T
        out[f"{layer}.bias"] = np.asarray(linear.bias[...])
    bn = model.bn
    out.update({"bn.weight": np.asarray(bn.scale[...]), "bn.bias": np.asarray(bn.bias[...]),
                "bn.running_mean": np.asarray(bn.mean[...]), "bn.running_var": np.asarray(bn.var[...]),
                "bn.num_batches_tracked": np.asarray(bn.count[...])})
    return out


def twin_tent_nets(features: int, hidden: int, classes: int, dtype: str,
                   seed: int) -> tuple[TorchTentNet, JaxTentNet]:
    """A torch classifier and its JAX twin holding the torch weights and statistics."""
    torch.manual_seed(seed)
    torch_model = TorchTentNet(features, hidden, classes, TORCH_DTYPES[dtype])
    with torch.no_grad():  # non-trivial statistics and affine parameters, as after source training
        torch_model.bn.running_mean.normal_(0.0, 0.5)
        torch_model.bn.running_var.uniform_(0.5, 2.0)
        torch_model.bn.weight.uniform_(0.5, 1.5)
        torch_model.bn.bias.normal_(0.0, 0.1)
    jax_model = JaxTentNet(features, hidden, classes, dtype)
    state = torch_state(torch_model)
    for layer in ("fc1", "fc2"):
        getattr(jax_model, layer).kernel[...] = jnp.asarray(state[f"{layer}.weight"].T)
        getattr(jax_model, layer).bias[...] = jnp.asarray(state[f"{layer}.bias"])
    bn = jax_model.bn
    bn.scale[...], bn.bias[...] = jnp.asarray(state["bn.weight"]), jnp.asarray(state["bn.bias"])
    bn.mean[...], bn.var[...] = jnp.asarray(state["bn.running_mean"]), jnp.asarray(state["bn.running_var"])
    bn.count[...] = jnp.asarray(state["bn.num_batches_tracked"], bn.count[...].dtype)
    return torch_model, jax_model
