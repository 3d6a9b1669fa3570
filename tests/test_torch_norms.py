"""Norm layers on MetaMAML's fast path: the primitive-op twins of ``F.layer_norm``, ``F.batch_norm``,
``F.group_norm`` and ``F.instance_norm`` equal torch's kernels (outputs and running statistics), and
second-order MetaMAML through each norm is the same under ``vmap`` (eager and compiled) as in the loop."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.test_torch_meta_maml_modes import assert_trees_close, autograd_meta_gradient, tasks_of
from torch_impl import MetaMAML
from torch_impl.core import norms

F64 = torch.float64


# --------------------------------------------------------------------------- the twins against torch's kernels
def _stats(channels, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(channels, generator=gen, dtype=F64), torch.rand(channels, generator=gen, dtype=F64) + 0.5)


@pytest.mark.parametrize("shape", [(6, 4), (5, 4, 3), (3, 4, 2, 2)])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_twin_equals_torch_outputs_and_running_statistics(shape, training):
    x = torch.randn(*shape, dtype=F64) * 2 + 1
    weight, bias = _stats(4, 1)
    ours_mean, ours_var = _stats(4, 2)
    theirs_mean, theirs_var = ours_mean.clone(), ours_var.clone()
    ours = norms.batch_norm(x, ours_mean, ours_var, weight, bias, training, 0.3, 1e-4)
    theirs = F.batch_norm(x, theirs_mean, theirs_var, weight, bias, training, 0.3, 1e-4)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(ours_mean, theirs_mean, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(ours_var, theirs_var, rtol=1e-14, atol=1e-15)
    assert training == (not torch.equal(ours_mean, _stats(4, 2)[0]))  # train mode moved the statistics


@pytest.mark.parametrize("shape", [(5, 4, 3), (3, 4, 2, 2)])
@pytest.mark.parametrize("use_input_stats", [True, False])
def test_instance_norm_twin_equals_torch_outputs_and_running_statistics(shape, use_input_stats):
    x = torch.randn(*shape, dtype=F64) * 2 + 1
    weight, bias = _stats(4, 1)
    ours_mean, ours_var = _stats(4, 2)
    theirs_mean, theirs_var = ours_mean.clone(), ours_var.clone()
    ours = norms.instance_norm(x, ours_mean, ours_var, weight, bias, use_input_stats, 0.3, 1e-4)
    theirs = F.instance_norm(x, theirs_mean, theirs_var, weight, bias, use_input_stats, 0.3, 1e-4)
    torch.testing.assert_close(ours, theirs, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(ours_mean, theirs_mean, rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(ours_var, theirs_var, rtol=1e-14, atol=1e-15)


def test_layer_and_group_norm_twins_equal_torch():
    x = torch.randn(3, 6, 4, dtype=F64) * 2 + 1
    weight, bias = _stats(4, 1)
    torch.testing.assert_close(norms.layer_norm(x, (4,), weight, bias, 1e-4), F.layer_norm(x, (4,), weight, bias, 1e-4),
                               rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(norms.layer_norm(x, (6, 4)), F.layer_norm(x, (6, 4)), rtol=1e-13, atol=1e-14)
    weight, bias = _stats(6, 3)
    for groups in (1, 2, 3, 6):
        torch.testing.assert_close(norms.group_norm(x, groups, weight, bias, 1e-4),
                                   F.group_norm(x, groups, weight, bias, 1e-4), rtol=1e-13, atol=1e-14)


def test_the_mode_reroutes_modules_and_direct_calls_and_leaves_the_rest():
    calls = []
    twins = dict(norms.PRIMITIVE_TWINS)
    try:
        for fn, twin in twins.items():
            norms.PRIMITIVE_TWINS[fn] = lambda *a, _twin=twin, **k: calls.append(_twin.__name__) or _twin(*a, **k)
        x = torch.randn(4, 6, 3, dtype=F64)
        with norms.PrimitiveNorms():
            nn.LayerNorm(3, dtype=F64)(x)
            nn.BatchNorm1d(6, dtype=F64)(x)
            nn.GroupNorm(2, 6, dtype=F64)(x)
            nn.InstanceNorm1d(6, dtype=F64)(x)
            F.layer_norm(x, (3,))
            torch.tanh(x)
    finally:
        norms.PRIMITIVE_TWINS.update(twins)
    assert calls == ["layer_norm", "batch_norm", "group_norm", "instance_norm", "layer_norm"]


# --------------------------------------------------------------------------- MetaMAML through each norm
class NormBlock(nn.Module):
    """``(N, L, 2) -> Linear -> norm over 6 channels -> tanh -> Linear -> (N, L, 1)``; channel-first norms
    see ``(N, 6, L)``."""

    def __init__(self, norm: nn.Module, channels_first: bool) -> None:
        super().__init__()
        self.inp, self.norm, self.out = nn.Linear(2, 6, dtype=F64), norm, nn.Linear(6, 1, dtype=F64)
        self.channels_first = channels_first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = self.norm(h.transpose(1, 2)).transpose(1, 2) if self.channels_first else self.norm(h)
        return self.out(torch.tanh(h))


class FunctionalLayerNorm(nn.Module):
    """A user's own layer that calls ``F.layer_norm`` directly, with its own parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.gain, self.shift = nn.Parameter(torch.ones(6, dtype=F64)), nn.Parameter(torch.zeros(6, dtype=F64))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(h, (6,), self.gain, self.shift)


NORMS = {
    "LayerNorm": (lambda: nn.LayerNorm(6, dtype=F64), False),
    "BatchNorm train": (lambda: nn.BatchNorm1d(6, dtype=F64), True),
    "BatchNorm eval": (lambda: nn.BatchNorm1d(6, dtype=F64), True),
    "GroupNorm": (lambda: nn.GroupNorm(3, 6, dtype=F64), True),
    "InstanceNorm with running statistics": (lambda: nn.InstanceNorm1d(6, affine=True, track_running_stats=True,
                                                                        dtype=F64), True),
    "F.layer_norm in a user module": (FunctionalLayerNorm, False),
}


def norm_model(kind: str) -> nn.Module:
    torch.manual_seed(0)
    make, channels_first = NORMS[kind]
    model = NormBlock(make(), channels_first)
    with torch.no_grad():  # non-trivial affine parameters and running statistics
        for name, t in model.norm.named_parameters():
            t.copy_(torch.rand_like(t) + 0.5 if name in ("weight", "gain") else torch.randn_like(t) * 0.3)
        for name, t in model.norm.named_buffers():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5 if "var" in name else torch.randn_like(t) * 0.3)
    return model.train(kind != "BatchNorm eval")


NORM_TASKS = [(4, 3, 2), (4, 3, 1), (4, 3, 2), (4, 3, 1)]


@pytest.mark.parametrize("kind", sorted(NORMS))
def test_second_order_through_each_norm_vmap_equals_the_loop(kind):
    model = norm_model(kind)
    before = {n: b.clone() for n, b in model.named_buffers()}
    tasks = tasks_of(NORM_TASKS, n=3)
    loop = MetaMAML(model, 0.3, num_inner_steps=2, vectorize=False).meta_gradient(tasks)
    vectorised = MetaMAML(model, 0.3, num_inner_steps=2).meta_gradient(tasks)
    assert_trees_close(vectorised, loop, rtol=1e-10, atol=1e-12)
    assert_trees_close(loop, autograd_meta_gradient(model, tasks, 0.3, 2, False), rtol=1e-10, atol=1e-12)
    for name, b in model.named_buffers():  # the fresh copies were updated, never the module's own
        torch.testing.assert_close(b, before[name], rtol=0, atol=0, msg=name)


def every_norm() -> nn.Module:
    """LayerNorm, train-mode BatchNorm and GroupNorm in one small model over ``(N, 2)``: one compiled
    shape covers all three."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 6, dtype=F64), nn.LayerNorm(6, dtype=F64), nn.BatchNorm1d(6, dtype=F64),
                         nn.GroupNorm(2, 6, dtype=F64), nn.Tanh(), nn.Linear(6, 1, dtype=F64)).train()


def test_second_order_through_every_norm_compiled_equals_the_loop():
    model = every_norm()
    tasks = tasks_of([(4, 2), (4, 1), (4, 2), (4, 1)], n=2)
    loop = MetaMAML(model, 0.3, vectorize=False).meta_gradient(tasks)
    compiled = MetaMAML(model, 0.3, compile=True).meta_gradient(tasks)
    assert_trees_close(compiled, loop, rtol=1e-10, atol=1e-12)
