"""PyTorch MetaMAML modes (vectorize / loop / compile): agreement, the errors that name the option to
use, BatchNorm and nn.GRU in their documented mode, the compiled-step cache, and bad input."""

import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call

from torch_impl import SSM, MetaMAML
from torch_impl.meta_rl import meta_maml as meta_maml_module

F64 = torch.float64


def tasks_of(shapes, n=3, seed=0, dtype=F64):
    rng = np.random.default_rng(seed)
    return [tuple(torch.from_numpy(rng.normal(size=s)).to(dtype) for s in shapes) for _ in range(n)]


def mlp(dtype=F64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 8, dtype=dtype), nn.Tanh(), nn.Linear(8, 1, dtype=dtype))


def autograd_meta_gradient(model, tasks, inner_lr, steps, first_order):
    """Reference: the plain autograd loop (create_graph), independent of torch.func."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    total = 0
    for sx, sy, qx, qy in tasks:
        adapted = dict(params)
        for _ in range(steps):
            loss = torch.mean((functional_call(model, {**buffers, **adapted}, (sx,)) - sy) ** 2)
            grads = torch.autograd.grad(loss, list(adapted.values()), create_graph=not first_order)
            adapted = {n: p - inner_lr * g for (n, p), g in zip(adapted.items(), grads, strict=True)}
        total = total + torch.mean((functional_call(model, {**buffers, **adapted}, (qx,)) - qy) ** 2) / len(tasks)
    return dict(zip(names, torch.autograd.grad(total, list(params.values())), strict=True))


def assert_trees_close(a, b, rtol=1e-12, atol=1e-14):
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=name)


# --------------------------------------------------------------------------- agreement
@pytest.mark.parametrize("first_order", [False, True])
@pytest.mark.parametrize("vectorize", [True, False])
def test_each_eager_mode_equals_the_autograd_loop_ssm(vectorize, first_order):
    torch.manual_seed(0)
    model = SSM(4, 2, 1, 6, "cpu", dtype=F64)
    tasks = tasks_of([(3, 6, 2), (3, 6, 1), (3, 6, 2), (3, 6, 1)])
    maml = MetaMAML(model, 0.3, num_inner_steps=2, first_order=first_order, vectorize=vectorize)
    expected = autograd_meta_gradient(model, tasks, 0.3, 2, first_order)
    assert_trees_close(maml.meta_gradient(tasks), expected)


def test_defaults_are_vectorized_and_eager():
    maml = MetaMAML(mlp())
    assert maml.vectorize is True and maml.compile is False


@pytest.mark.parametrize("option", ["vectorize", "compile"])
def test_options_must_be_bools(option):
    with pytest.raises(TypeError, match=option):
        MetaMAML(mlp(), **{option: 1})


# --------------------------------------------------------------------------- errors naming the option
def test_ragged_tasks_under_vmap_name_vectorize_false_and_run_in_the_loop():
    tasks = tasks_of([(8, 2), (8, 1)], n=1) + tasks_of([(5, 2), (5, 1)], n=1, seed=1)
    with pytest.raises(ValueError, match=r"task 1 has .*vectorize=False"):
        MetaMAML(mlp()).meta_gradient(tasks)
    grads = MetaMAML(mlp(), 0.3, vectorize=False).meta_gradient(tasks)
    two_tuples = [(sx, sy, sx, sy) for sx, sy in tasks]
    assert_trees_close(grads, autograd_meta_gradient(mlp(), two_tuples, 0.3, 1, False))


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1, dtype=F64)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent Python control flow
            return self.lin(x)
        return -self.lin(x)


def test_data_dependent_control_flow_under_vmap_names_vectorize_false():
    tasks = tasks_of([(8, 2), (8, 1)], n=2)
    with pytest.raises(ValueError, match=r"vectorize=False"):
        MetaMAML(DataDependent()).meta_gradient(tasks)
    assert np.isfinite(MetaMAML(DataDependent(), vectorize=False).meta_update(tasks))


class GRUModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.gru = nn.GRU(2, 5, batch_first=True, dtype=F64)
        self.out = nn.Linear(5, 1, dtype=F64)

    def forward(self, x):
        return self.out(self.gru(x)[0])


def test_gru_under_vmap_names_vectorize_false():
    tasks = tasks_of([(3, 4, 2), (3, 4, 1)], n=2)
    with pytest.raises(ValueError, match=r"vectorize=False"):
        MetaMAML(GRUModel()).meta_gradient(tasks)


def test_gru_runs_second_order_in_the_loop_mode():
    model = GRUModel()
    tasks = tasks_of([(3, 4, 2), (3, 4, 1), (3, 4, 2), (3, 4, 1)], n=2)
    grads = MetaMAML(model, 0.3, vectorize=False).meta_gradient(tasks)
    assert_trees_close(grads, autograd_meta_gradient(model, tasks, 0.3, 1, False), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- BatchNorm in train mode
def bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6, dtype=F64), nn.BatchNorm1d(6, dtype=F64), nn.Tanh(),
                         nn.Linear(6, 1, dtype=F64)).train()


def test_batchnorm_train_mode_second_order_runs_in_the_loop_and_never_writes_buffers():
    model = bn_model()
    before = {n: b.clone() for n, b in model.named_buffers()}
    tasks = tasks_of([(8, 2), (8, 1), (8, 2), (8, 1)], n=3)
    maml = MetaMAML(model, 0.3, outer_lr=0.01, num_inner_steps=2, vectorize=False)
    assert_trees_close(maml.meta_gradient(tasks), autograd_meta_gradient(model, tasks, 0.3, 2, False),
                       rtol=1e-10, atol=1e-12)
    maml.adapt(*tasks[0][:2])
    maml.meta_update(tasks)
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, before[name], rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("first_order", [False, True])
def test_batchnorm_under_vmap_equals_the_autograd_loop_and_never_writes_buffers(first_order):
    tasks = tasks_of([(8, 2), (8, 1), (8, 2), (8, 1)], n=3)
    model = bn_model()
    before = {n: b.clone() for n, b in model.named_buffers()}
    grads = MetaMAML(model, 0.3, first_order=first_order).meta_gradient(tasks)
    assert_trees_close(grads, autograd_meta_gradient(model, tasks, 0.3, 1, first_order), rtol=1e-10, atol=1e-12)
    for name, b in model.named_buffers():
        torch.testing.assert_close(b, before[name], rtol=0, atol=0, msg=name)


def test_layernorm_second_order_under_vmap_equals_the_autograd_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 6, dtype=F64), nn.LayerNorm(6, dtype=F64), nn.Linear(6, 1, dtype=F64))
    tasks = tasks_of([(8, 2), (8, 1)], n=2)
    two = [(sx, sy, sx, sy) for sx, sy in tasks]
    for vectorize in (True, False):
        grads = MetaMAML(model, 0.3, vectorize=vectorize).meta_gradient(tasks)
        assert_trees_close(grads, autograd_meta_gradient(model, two, 0.3, 1, False), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- compile
def test_compiled_meta_gradient_equals_the_loop_tiny_mlp():
    tasks = tasks_of([(5, 2), (5, 1)], n=2)
    compiled = MetaMAML(mlp(), 0.3, compile=True)
    expected = autograd_meta_gradient(mlp(), [(sx, sy, sx, sy) for sx, sy in tasks], 0.3, 1, False)
    assert_trees_close(compiled.meta_gradient(tasks), expected)
    eager = MetaMAML(mlp(), 0.3, compile=False)
    for _ in range(2):  # the compiled step folds Adam and the checks in: the same step as eager
        assert compiled.meta_update(tasks) == pytest.approx(eager.meta_update(tasks), rel=1e-12)
        assert_trees_close(dict(compiled.model.named_parameters()), dict(eager.model.named_parameters()))
    assert len(compiled._compiled) == 2  # meta_gradient's step and meta_update's step, each compiled once
    poisoned = [tasks[0], (tasks[1][0].clone().fill_(float("nan")), tasks[1][1])]
    for maml in (compiled, eager):  # refused inside the compiled graph and eagerly: nothing written
        before = _model_and_adam_state(maml)
        with pytest.raises(ValueError, match="task 1 support_x contains NaN or Inf"):
            maml.meta_update(poisoned)
        _assert_bit_identical(before, _model_and_adam_state(maml))
    assert len(compiled._compiled) == 2


def _model_and_adam_state(maml):
    params = [p.detach().clone() for p in maml.model.parameters()]
    state = [v.clone() for s in maml.optimizer.state_dict()["state"].values() for v in s.values()]
    return params + state


def _assert_bit_identical(before, after):
    assert len(before) == len(after)
    for a, b in zip(before, after, strict=True):
        assert torch.equal(a, b)


def test_compile_of_data_dependent_control_flow_names_compile_false():
    tasks = tasks_of([(8, 2), (8, 1)], n=2)
    with pytest.raises(ValueError, match=r"compile=False"):
        MetaMAML(DataDependent(), vectorize=False, compile=True).meta_gradient(tasks)


def test_compiled_steps_are_cached_by_signature_and_bounded(monkeypatch):
    compiled_calls = []

    def fake_compile(fn, **kwargs):
        compiled_calls.append(kwargs)
        return fn

    monkeypatch.setattr(meta_maml_module.torch, "compile", fake_compile)
    monkeypatch.setattr(meta_maml_module, "COMPILED_CACHE_SIZE", 2)
    maml = MetaMAML(mlp(), 0.3, compile=True)
    for n in (1, 1, 2, 2, 1, 3):  # signatures: 1 task, 2 tasks, 1 task (cached), 3 tasks (evicts 2 tasks)
        maml.meta_gradient(tasks_of([(5, 2), (5, 1)], n=n))
    assert len(compiled_calls) == 3
    assert all(call == {"fullgraph": True, "dynamic": False} for call in compiled_calls)
    assert len(maml._compiled) == 2
    maml.meta_gradient(tasks_of([(5, 2), (5, 1)], n=2))  # evicted: compiled again
    assert len(compiled_calls) == 4
    maml.meta_gradient(tasks_of([(5, 2), (5, 1)], n=2, dtype=F64)[:1] * 2)
    assert len(compiled_calls) == 4


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("vectorize", [True, False])
def test_data_and_labels_must_share_the_batch_size(vectorize):
    maml = MetaMAML(SSM(8, 3, 2, 16, "cpu"), vectorize=vectorize)
    with pytest.raises(ValueError, match=r"same leading \(batch\) size.*: 4.*: 5"):
        maml.meta_update([(torch.randn(4, 3), torch.randn(5, 2))])
    with pytest.raises(ValueError, match=r"same leading \(batch\) size"):
        maml.adapt(torch.randn(4, 3), torch.randn(5, 2))


@pytest.mark.parametrize("labels_shape", [(1, 2), (4, 1), (2,), (4, 2, 1)])
@pytest.mark.parametrize("vectorize", [True, False])
def test_default_mse_refuses_labels_that_would_broadcast(labels_shape, vectorize):
    maml = MetaMAML(SSM(8, 3, 2, 16, "cpu"), vectorize=vectorize)
    x, y = torch.randn(4, 3), torch.randn(*labels_shape)
    if labels_shape[0] != 4:
        with pytest.raises(ValueError, match=r"leading \(batch\) size"):
            maml.meta_update([(x, y)])
        return
    expected = re.escape(f"outputs have shape (4, 2) but labels have shape {labels_shape}")
    with pytest.raises(ValueError, match=expected):
        maml.meta_update([(x, y)])


def test_default_mse_names_both_shapes_in_adapt():
    with pytest.raises(ValueError, match=r"\(4, 2\).*\(4, 2, 1\)"):
        MetaMAML(SSM(8, 3, 2, 16, "cpu")).adapt(torch.randn(4, 3), torch.randn(4, 2, 1))


def test_a_loss_fn_returning_a_python_float_is_a_type_error():
    maml = MetaMAML(mlp(), loss_fn=lambda out, y: 1.0, vectorize=False)
    with pytest.raises(TypeError, match=r"loss_fn must return a scalar \(0-d\), got float"):
        maml.meta_gradient(tasks_of([(5, 2), (5, 1)], n=1))


def test_non_finite_data_is_refused_at_the_boundary_in_every_mode():
    tasks = tasks_of([(5, 2), (5, 1), (5, 2), (5, 1)], n=2)
    tasks[1][2][0, 0] = float("nan")
    for vectorize in (True, False):
        with pytest.raises(ValueError, match=r"task 1 query_x contains NaN or Inf"):
            MetaMAML(mlp(), vectorize=vectorize).meta_update(tasks)
