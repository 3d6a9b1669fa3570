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


# ------------------------------------------------------------ value_and_meta_gradient / apply_meta_gradient
def _snapshot(maml: MetaMAML) -> tuple[dict, dict]:
    params = {n: p.detach().clone() for n, p in maml.model.named_parameters()}
    state = {i: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
             for i, s in maml.optimizer.state_dict()["state"].items()}
    return params, state


def _assert_unchanged(maml: MetaMAML, snapshot: tuple[dict, dict]) -> None:
    params, state = snapshot
    for n, p in maml.model.named_parameters():
        torch.testing.assert_close(p.detach(), params[n], rtol=0, atol=0)
    now = maml.optimizer.state_dict()["state"]
    assert set(now) == set(state)
    for i in state:
        for k in state[i]:
            torch.testing.assert_close(now[i][k], state[i][k], rtol=0, atol=0)


def test_value_and_meta_gradient_returns_the_loss_and_the_meta_gradient():
    maml = MetaMAML(MLP(), inner_lr=0.3)
    loss, grads = maml.value_and_meta_gradient(mlp_tasks())
    assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
    assert loss.item() == pytest.approx(meta_loss(maml, mlp_tasks()), rel=1e-12)
    expected = maml.meta_gradient(mlp_tasks())
    assert set(grads) == set(expected)
    for name in grads:
        torch.testing.assert_close(grads[name], expected[name], rtol=0, atol=0)


def test_meta_update_is_value_and_meta_gradient_then_apply_meta_gradient():
    torch.manual_seed(0)
    a, b = MLP(), MLP()
    b.load_state_dict(a.state_dict())
    maml_a, maml_b = MetaMAML(a, inner_lr=0.3, outer_lr=0.01), MetaMAML(b, inner_lr=0.3, outer_lr=0.01)
    for _ in range(3):
        loss_a = maml_a.meta_update(mlp_tasks())
        loss_b, grads = maml_b.value_and_meta_gradient(mlp_tasks())
        assert maml_b.apply_meta_gradient(grads) is None
        assert loss_a == float(loss_b)
    for (n, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_apply_meta_gradient_refuses_non_finite_gradients(bad):
    maml = MetaMAML(MLP(), inner_lr=0.3, outer_lr=0.01)
    maml.meta_update(mlp_tasks())  # Adam state exists
    snapshot = _snapshot(maml)
    grads = maml.meta_gradient(mlp_tasks())
    grads["l1.weight"][0, 0] = bad
    with pytest.raises(ValueError, match="the model was not changed"):
        maml.apply_meta_gradient(grads)
    _assert_unchanged(maml, snapshot)


def test_apply_meta_gradient_checks_keys_and_shapes():
    maml = MetaMAML(MLP())
    grads = maml.meta_gradient(mlp_tasks())
    with pytest.raises(ValueError, match="keys"):
        maml.apply_meta_gradient({k: v for k, v in grads.items() if k != "l1.bias"})
    with pytest.raises(ValueError, match=r"grads\['l1.bias'\] must be an array of shape \(16,\)"):
        maml.apply_meta_gradient({**grads, "l1.bias": torch.zeros(3, dtype=F64)})
    with pytest.raises(TypeError, match="dict"):
        maml.apply_meta_gradient([grads])


@pytest.mark.parametrize(("dtype", "outer_lr"), [(torch.float32, 1e39), (torch.float64, 1e308)])
def test_a_step_whose_parameters_would_not_be_finite_is_refused_and_restored(dtype, outer_lr):
    """float32 with lr 1e39 overflowed inside torch.optim.Adam (a bare RuntimeError); float64 with
    lr 1e308 left Inf/NaN parameters behind. Both now raise ValueError and restore params and Adam state."""
    torch.manual_seed(0)
    model = SSM(4, 2, 1, 6, "cpu", dtype=dtype)
    maml = MetaMAML(model, outer_lr=outer_lr)
    tasks = [tuple(t.to(dtype) for t in task) for task in ssm_tasks()]
    for _ in range(2):  # the first call (empty Adam state) and a second one: both refused, both restore
        snapshot = _snapshot(maml)
        with pytest.raises(ValueError, match=r"would make the parameters NaN/Inf .*; the model was not changed"):
            maml.meta_update(tasks)
        _assert_unchanged(maml, snapshot)


def test_a_huge_but_finite_step_is_taken_and_the_next_call_refuses():
    """outer_lr=1e30: parameters near 1e30 are finite, so the step is what was asked for; the next
    call sees a non-finite loss and leaves the model exactly as the first step left it."""
    torch.manual_seed(0)
    maml = MetaMAML(SSM(4, 2, 1, 6, "cpu"), outer_lr=1e30)
    tasks = [tuple(t.float() for t in task) for task in ssm_tasks()]
    assert np.isfinite(maml.meta_update(tasks))
    assert all(bool(torch.isfinite(p).all()) for p in maml.model.parameters())
    snapshot = _snapshot(maml)
    with pytest.raises(ValueError, match="the model was not changed"):
        maml.meta_update(tasks)
    _assert_unchanged(maml, snapshot)


def test_the_outer_step_is_torch_optim_adams_arithmetic():
    """apply_meta_gradient runs MetaMAML.adam_step (out of place, so it can live in the compiled graph);
    three steps equal torch.optim.Adam's in float64 and leave its state in torch.optim.Adam's format."""
    maml = MetaMAML(MLP(), inner_lr=0.3, outer_lr=0.05)
    reference = MLP()
    reference.load_state_dict(maml.model.state_dict())
    adam = torch.optim.Adam(reference.parameters(), lr=0.05)
    for seed in range(3):
        grads = maml.meta_gradient(mlp_tasks(seed=seed))
        maml.apply_meta_gradient(grads)
        for name, p in reference.named_parameters():
            p.grad = grads[name].clone()
        adam.step()
    for (name, p), q in zip(maml.model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-16, msg=name)
    ours, theirs = maml.optimizer.state_dict()["state"], adam.state_dict()["state"]
    for i in theirs:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(ours[i][key], theirs[i][key], rtol=1e-14, atol=1e-16, msg=f"{i} {key}")
