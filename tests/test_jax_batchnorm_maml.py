"""JAX MetaMAML with BatchNorm in train mode: it runs, never writes the batch statistics back, and its
second-order meta-gradient equals a hand-written torch twin (batch statistics, float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from jax_impl import MetaMAML

F64 = jnp.float64


class BNMLP(nnx.Module):
    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.l1 = nnx.Linear(3, 8, rngs=rngs, param_dtype=F64, dtype=F64)
        self.bn = nnx.BatchNorm(8, use_running_average=False, rngs=rngs, param_dtype=F64, dtype=F64)
        # nnx.BatchNorm makes its statistics float32 whatever param_dtype says: hold them in float64
        self.bn.mean, self.bn.var = nnx.BatchStat(jnp.zeros(8, F64)), nnx.BatchStat(jnp.ones(8, F64))
        self.l2 = nnx.Linear(8, 2, rngs=rngs, param_dtype=F64, dtype=F64)
        rng = np.random.default_rng(3)  # a non-trivial affine part, so its gradients are not special
        self.bn.scale[...] = jnp.asarray(1.0 + 0.3 * rng.normal(size=8))
        self.bn.bias[...] = jnp.asarray(0.2 * rng.normal(size=8))

    def __call__(self, x):
        return self.l2(jnp.tanh(self.bn(self.l1(x))))


def tasks(n=3, batch=6):
    rng = np.random.default_rng(0)
    return [tuple(rng.normal(size=s) for s in [(batch, 3), (batch, 2), (batch, 3), (batch, 2)]) for _ in range(n)]


def batch_stats(model):
    return [np.array(a) for a in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_a_plain_forward_does_update_the_statistics():
    """The sanity side of the next test: the statistics it checks do move when written back."""
    model = BNMLP()
    before = batch_stats(model)
    model(jnp.asarray(tasks()[0][0]))
    assert not all(np.array_equal(a, b) for a, b in zip(before, batch_stats(model), strict=True))


def test_meta_maml_runs_with_batchnorm_and_never_writes_the_statistics():
    model = BNMLP()
    maml = MetaMAML(model, inner_lr=0.1, outer_lr=0.01)
    before = batch_stats(model)
    data = tasks()
    maml.adapt(*data[0][:2])
    maml.meta_gradient(data)
    maml.value_and_meta_gradient(data)
    kernel = np.array(model.l1.kernel[...])
    losses = [maml.meta_update(data) for _ in range(5)]
    assert losses[-1] < losses[0]
    assert not np.array_equal(kernel, np.array(model.l1.kernel[...]))  # the parameters did train
    for a, b in zip(before, batch_stats(model), strict=True):
        np.testing.assert_array_equal(a, b)


def torch_twin(model: BNMLP) -> dict[str, torch.Tensor]:
    state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    t = lambda a: torch.tensor(np.array(a), dtype=torch.float64, requires_grad=True)  # noqa: E731
    return {
        "l1.weight": t(state["l1"]["kernel"].T), "l1.bias": t(state["l1"]["bias"]),
        "bn.weight": t(state["bn"]["scale"]), "bn.bias": t(state["bn"]["bias"]),
        "l2.weight": t(state["l2"]["kernel"].T), "l2.bias": t(state["l2"]["bias"]),
    }


def torch_forward(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    h = F.linear(x, p["l1.weight"], p["l1.bias"])
    h = F.batch_norm(h, None, None, p["bn.weight"], p["bn.bias"], training=True, eps=1e-5)
    return F.linear(torch.tanh(h), p["l2.weight"], p["l2.bias"])


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_gradient_equals_a_torch_twin(first_order):
    model = BNMLP()
    maml = MetaMAML(model, inner_lr=0.3, num_inner_steps=2, first_order=first_order)
    data = tasks()
    grads = nnx.to_pure_dict(maml.meta_gradient(data))
    p = torch_twin(model)
    total = 0.0
    for sx, sy, qx, qy in data:
        sx, sy, qx, qy = (torch.tensor(a) for a in (sx, sy, qx, qy))
        q = p
        for _ in range(2):
            loss = torch.mean((torch_forward(q, sx) - sy) ** 2)
            g = torch.autograd.grad(loss, list(q.values()), create_graph=not first_order)
            q = {k: v - 0.3 * gk for (k, v), gk in zip(q.items(), g, strict=True)}
        total = total + torch.mean((torch_forward(q, qx) - qy) ** 2) / len(data)
    expected = dict(zip(p, torch.autograd.grad(total, list(p.values())), strict=True))
    ours = {
        "l1.weight": grads["l1"]["kernel"].T, "l1.bias": grads["l1"]["bias"],
        "bn.weight": grads["bn"]["scale"], "bn.bias": grads["bn"]["bias"],
        "l2.weight": grads["l2"]["kernel"].T, "l2.bias": grads["l2"]["bias"],
    }
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(ours[name]), value.numpy(), rtol=1e-8, atol=1e-12, err_msg=name)
