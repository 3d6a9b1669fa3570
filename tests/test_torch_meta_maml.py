"""PyTorch MetaMAML: finite-difference meta-gradients, second vs first order, frozen params, buffers."""

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from torch_impl import SSM, MetaMAML

F64 = torch.float64


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(2, 16, dtype=F64)
        self.l2 = nn.Linear(16, 1, dtype=F64)
        self.register_buffer("scale", torch.tensor(0.5, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x))) * self.scale


def mlp_tasks(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(torch.from_numpy(rng.normal(size=s)) for s in [(8, 2), (8, 1), (8, 2), (8, 1)]) for _ in range(n)]


def ssm_tasks(n=2, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(torch.from_numpy(rng.normal(size=s)) for s in [(3, 6, 2), (3, 6, 1), (3, 6, 2), (3, 6, 1)])
            for _ in range(n)]


def meta_loss(maml: MetaMAML, tasks) -> float:
    """The post-adaptation query loss, evaluated through the public API only."""
    total = 0.0
    for sx, sy, qx, qy in tasks:
        adapted = maml.adapt(sx, sy)
        buffers = dict(maml.model.named_buffers())
        with torch.no_grad():
            total += float(maml.loss_fn(functional_call(maml.model, {**adapted, **buffers}, (qx,)), qy))
    return total / len(tasks)


def finite_difference_check(maml: MetaMAML, tasks, eps=1e-6, directions=3):
    grads = maml.meta_gradient(tasks)
    params = maml.trainable_parameters()
    gen = torch.Generator().manual_seed(1)
    for _ in range(directions):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=F64) for n, p in params.items()}
        analytic = sum(float((grads[n] * direction[n]).sum()) for n in params)
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for n, p in params.items():
                    p.add_(sign * eps * direction[n])
            values.append(meta_loss(maml, tasks))
            with torch.no_grad():
                for n, p in params.items():
                    p.sub_(sign * eps * direction[n])
        numeric = (values[0] - values[1]) / (2 * eps)
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("steps", [1, 3])
def test_meta_gradient_matches_finite_differences_mlp(steps):
    finite_difference_check(MetaMAML(MLP(), inner_lr=0.3, num_inner_steps=steps), mlp_tasks())


def test_meta_gradient_matches_finite_differences_ssm_sequences():
    model = SSM(4, 2, 1, 6, "cpu", dtype=F64)
    finite_difference_check(MetaMAML(model, inner_lr=0.3, num_inner_steps=2), ssm_tasks())


def test_second_order_differs_from_first_order():
    torch.manual_seed(0)
    model = MLP()
    second = MetaMAML(model, inner_lr=0.3, num_inner_steps=2).meta_gradient(mlp_tasks())
    first = MetaMAML(model, inner_lr=0.3, num_inner_steps=2, first_order=True).meta_gradient(mlp_tasks())
    diff = max(float((second[n] - first[n]).abs().max()) for n in second)
    scale = max(float(second[n].abs().max()) for n in second)
    assert diff > 1e-3 * scale


def test_first_order_is_the_query_gradient_at_the_adapted_parameters():
    model = MLP()
    maml = MetaMAML(model, inner_lr=0.3, num_inner_steps=2, first_order=True)
    (sx, sy, qx, qy), = mlp_tasks(1)
    adapted = {n: p.clone().requires_grad_() for n, p in maml.adapt(sx, sy).items()}
    loss = maml.loss_fn(functional_call(model, {**adapted, "scale": model.scale}, (qx,)), qy)
    expected = torch.autograd.grad(loss, list(adapted.values()))
    grads = maml.meta_gradient([(sx, sy, qx, qy)])
    for name, g in zip(adapted, expected, strict=True):
        torch.testing.assert_close(grads[name], g, rtol=1e-12, atol=1e-14)


def test_frozen_parameters_are_neither_adapted_nor_trained():
    model = MLP()
    model.l1.weight.requires_grad_(False)
    frozen = model.l1.weight.detach().clone()
    maml = MetaMAML(model, inner_lr=0.3, outer_lr=0.1)
    adapted = maml.adapt(*mlp_tasks(1)[0][:2])
    assert set(adapted) == {n for n, _ in model.named_parameters()}
    torch.testing.assert_close(adapted["l1.weight"], frozen, rtol=0, atol=0)
    assert "l1.weight" not in maml.meta_gradient(mlp_tasks())
    before = model.l2.weight.detach().clone()
    for _ in range(3):
        maml.meta_update(mlp_tasks())
    torch.testing.assert_close(model.l1.weight, frozen, rtol=0, atol=0)
    assert not torch.equal(model.l2.weight, before)


def test_meta_update_steps_adam_and_lowers_the_loss():
    model = MLP()
    maml = MetaMAML(model, inner_lr=0.1, outer_lr=0.01)
    tasks = mlp_tasks()
    losses = [maml.meta_update(tasks) for _ in range(30)]
    assert all(isinstance(v, float) for v in losses)
    assert losses[-1] < losses[0]


def test_two_tuple_task_uses_the_same_batch_for_support_and_query():
    maml = MetaMAML(MLP(), inner_lr=0.3)
    x, y = mlp_tasks(1)[0][:2]
    two = maml.meta_gradient([(x, y)])
    four = maml.meta_gradient([(x, y, x, y)])
    for name in two:
        torch.testing.assert_close(two[name], four[name], rtol=0, atol=0)


def test_tuple_labels_with_a_custom_loss():
    def weighted(outputs, labels):
        targets, weights = labels
        return ((outputs - targets) ** 2 * weights).mean()

    maml = MetaMAML(MLP(), inner_lr=0.3, loss_fn=weighted)
    x, y = mlp_tasks(1)[0][:2]
    weights = torch.rand(8, 1, dtype=F64)
    loss = maml.meta_update([(x, (y, weights))])
    assert np.isfinite(loss)


def test_ssm_sequences_meta_update():
    maml = MetaMAML(SSM(4, 2, 1, 6, "cpu", dtype=F64), inner_lr=0.1, outer_lr=0.01, num_inner_steps=2)
    losses = [maml.meta_update(ssm_tasks()) for _ in range(10)]
    assert losses[-1] < losses[0]
