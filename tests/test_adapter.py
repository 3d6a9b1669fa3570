"""The test-time Adapter in both backends: config validation, every guard, reset, history."""

import json
import math

import numpy as np
import pytest

from shared.adaptation import AdaptationConfig, select_parameters
from tests.backends import BACKENDS, JAX, TORCH


def adapter_for(backend, config, **model_kw):
    import torch

    from jax_impl.adaptation import Adapter as JaxAdapter
    from torch_impl.adaptation import Adapter as TorchAdapter

    torch.manual_seed(0)  # twins built by this helper start from the same weights (JAX: nnx.Rngs(0))
    model = backend.ssm(**model_kw)
    return (TorchAdapter if backend is TORCH else JaxAdapter)(model, config)


def batch(backend, seed=0, poison=None):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(3, 5, 3)), rng.normal(size=(3, 5, 2))
    if poison is not None:
        y[0, 0, 0] = poison
    return backend.array(x), backend.array(y)


def mse(model, b):
    out = model(b[0])
    return ((out - b[1]) ** 2).mean()


def mse_and_logits(model, b):
    out = model(b[0])
    return ((out - b[1]) ** 2).mean(), out


def params(backend, adapter):
    if backend is TORCH:
        return {k: v.detach().numpy().copy() for k, v in adapter.model.state_dict().items()}
    from flax import nnx

    from jax_impl.core.params import to_canonical

    return to_canonical(nnx.state(adapter.model, nnx.Param))


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ---------------------------------------------------------------------------- config
def test_config_round_trips_through_json():
    config = AdaptationConfig(optimizer="sgd", momentum=0.9, allow=("B.*",), reset="every_n", reset_every=3)
    assert AdaptationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize("values, message", [
    ({"optimizer": "rmsprop"}, "optimizer must be"),
    ({"lr": 0.0}, "lr must be a positive"),
    ({"betas": (0.9, 1.0)}, "betas must be"),
    ({"momentum": 1.0}, "momentum must be < 1"),
    ({"weight_decay": -1.0}, "weight_decay must be"),
    ({"steps_per_call": 0}, "steps_per_call must be"),
    ({"grad_clip_norm": 0.0}, "grad_clip_norm must be"),
    ({"trust_region": -1.0}, "trust_region must be"),
    ({"ema_decay": 1.0}, "ema_decay must be"),
    ({"reset": "sometimes"}, "reset must be"),
    ({"reset": "every_n"}, "reset_every must be"),
    ({"reset_every": 3}, "reset_every is only used"),
    ({"allow": ()}, "allow must be non-empty"),
    ({"seed": -1}, "seed must be"),
    ({"learning_rate": 0.1}, r"unknown AdaptationConfig field\(s\) \['learning_rate'\]"),
])
def test_invalid_config_is_named(values, message):
    with pytest.raises((ValueError, TypeError), match=message):
        AdaptationConfig.from_dict(values)


def test_selection_that_matches_nothing_is_an_error():
    with pytest.raises(ValueError, match="matches none"):
        select_parameters(["B.weight"], AdaptationConfig(allow=("C.*",)))
    for backend in BACKENDS:
        with pytest.raises(ValueError, match="matches none"):
            adapter_for(backend, AdaptationConfig(allow=("*",), deny=("*",)))


# ---------------------------------------------------------------------------- behaviour
pytestmark_backends = pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)


@pytestmark_backends
def test_update_lowers_the_loss_and_reports(backend):
    adapter = adapter_for(backend, AdaptationConfig(lr=0.01, steps_per_call=5))
    info = adapter.update_step(mse, batch(backend))
    assert info["updated"] and info["steps"] == 5 and info["skipped"] is None
    assert info["drift"] > 0 and info["grad_norm"] > 0
    later = adapter.update_step(mse, batch(backend))
    assert later["loss"] < info["loss"]
    assert adapter.history.column("update_count") == [5, 10]


def infinite_mse(model, b):
    return mse(model, b) * math.inf


@pytestmark_backends
@pytest.mark.parametrize("poison, loss_fn, reason", [
    (np.nan, mse, "non-finite batch"), (np.inf, mse, "non-finite batch"), (None, infinite_mse, "non-finite loss"),
])
def test_non_finite_step_is_skipped_and_changes_nothing(backend, poison, loss_fn, reason):
    adapter = adapter_for(backend, AdaptationConfig(optimizer="adam", lr=0.01, ema_decay=0.5))
    adapter.update_step(mse, batch(backend))
    before = params(backend, adapter)
    count = adapter.update_count
    info = adapter.update_step(loss_fn, batch(backend, poison=poison))
    assert not info["updated"] and info["skipped"] == reason and info["steps"] == 0
    assert_same(params(backend, adapter), before)
    assert adapter.update_count == count
    # the optimizer state was not touched either: the next good step equals a never-poisoned twin's
    twin = adapter_for(backend, AdaptationConfig(optimizer="adam", lr=0.01, ema_decay=0.5))
    twin.update_step(mse, batch(backend))
    adapter.update_step(mse, batch(backend, seed=1))
    twin.update_step(mse, batch(backend, seed=1))
    assert_same(params(backend, adapter), params(backend, twin))


@pytestmark_backends
def test_non_finite_gradient_is_skipped(backend):
    def finite_loss_infinite_gradient(model, b):
        out = model(b[0])
        return ((out - b[1]) ** 2).mean() + _sqrt_at_zero(out)

    adapter = adapter_for(backend, AdaptationConfig(lr=0.01))
    before = params(backend, adapter)
    info = adapter.update_step(finite_loss_infinite_gradient, batch(backend))
    assert info["skipped"] == "non-finite gradient" and not info["updated"]
    assert_same(params(backend, adapter), before)


def _sqrt_at_zero(out):
    """0 in value, infinite in gradient (d sqrt(u)/du at u = 0)."""
    return (out * 0.0).sum() ** 0.5


@pytestmark_backends
def test_gradient_clip_holds(backend):
    clip = 1e-3
    adapter = adapter_for(backend, AdaptationConfig(optimizer="sgd", lr=1.0, grad_clip_norm=clip))
    before = params(backend, adapter)
    info = adapter.update_step(mse, batch(backend))
    assert info["grad_norm"] > clip  # the clip was active
    after = params(backend, adapter)
    step = np.sqrt(sum(((after[k] - before[k]) ** 2).sum() for k in after))
    assert step == pytest.approx(clip, rel=1e-12)  # plain SGD with lr 1: the step is the clipped gradient


@pytestmark_backends
def test_trust_region_holds(backend):
    radius = 0.05
    adapter = adapter_for(backend, AdaptationConfig(lr=0.1, steps_per_call=10, trust_region=radius))
    info = adapter.update_step(mse, batch(backend))
    assert info["drift"] == pytest.approx(radius, rel=1e-12)
    assert adapter.drift() <= radius * (1 + 1e-12)


@pytestmark_backends
def test_parameter_mask_freezes_the_rest(backend):
    adapter = adapter_for(backend, AdaptationConfig(lr=0.1, allow=("W*",), deny=("W2.bias",)))
    assert sorted(adapter.names) == ["W1.bias", "W1.weight", "W2.weight"]
    before = params(backend, adapter)
    adapter.update_step(mse, batch(backend))
    after = params(backend, adapter)
    for name in before:
        changed = not np.array_equal(before[name], after[name])
        assert changed == (name in adapter.names), name


@pytestmark_backends
def test_reset_restores_exactly_and_restarts_the_optimizer(backend):
    config = AdaptationConfig(optimizer="adam", lr=0.05, steps_per_call=3, ema_decay=0.9)
    adapter = adapter_for(backend, config)
    source = params(backend, adapter)
    first = adapter.update_step(mse, batch(backend))
    after_first = params(backend, adapter)
    adapter.update_step(mse, batch(backend, seed=2))
    adapter.reset()
    assert_same(params(backend, adapter), source)
    assert adapter.drift() == 0.0 and adapter.update_count == 0
    again = adapter.update_step(mse, batch(backend))
    assert again["loss"] == first["loss"]
    assert_same(params(backend, adapter), after_first)


@pytestmark_backends
def test_context_restores_on_exit(backend):
    adapter = adapter_for(backend, AdaptationConfig(lr=0.05))
    source = params(backend, adapter)
    with adapter.context():
        adapter.update_step(mse, batch(backend))
        assert adapter.drift() > 0
    assert_same(params(backend, adapter), source)
    with adapter.context(restore=False):
        adapter.update_step(mse, batch(backend))
    assert adapter.drift() > 0


@pytestmark_backends
def test_reset_policies(backend):
    every = adapter_for(backend, AdaptationConfig(lr=0.05, reset="every_n", reset_every=2))
    every.update_step(mse, batch(backend))
    assert every.update_count == 1
    every.update_step(mse, batch(backend))
    assert every.update_count == 0 and every.drift() == 0.0
    episodic = adapter_for(backend, AdaptationConfig(lr=0.05, reset="episodic"))
    episodic.update_step(mse, batch(backend))
    assert episodic.end_episode() and episodic.drift() == 0.0
    never = adapter_for(backend, AdaptationConfig(lr=0.05))
    never.update_step(mse, batch(backend))
    assert not never.end_episode() and never.drift() > 0


@pytestmark_backends
def test_disabled_changes_nothing(backend):
    adapter = adapter_for(backend, AdaptationConfig(enabled=False))
    before = params(backend, adapter)
    info = adapter.update_step(mse, batch(backend))
    assert info["skipped"] == "disabled" and not info["updated"]
    assert_same(params(backend, adapter), before)


@pytestmark_backends
def test_entropy_term_needs_logits_and_is_reported(backend):
    adapter = adapter_for(backend, AdaptationConfig(entropy_weight=0.5))
    with pytest.raises(ValueError, match=r"\(loss, logits\)"):
        adapter.update_step(mse, batch(backend))
    info = adapter.update_step(mse_and_logits, batch(backend))
    assert 0 < info["entropy"] <= np.log(2) + 1e-12


@pytestmark_backends
def test_ema_teacher_follows_the_weights(backend):
    adapter = adapter_for(backend, AdaptationConfig(lr=0.05, ema_decay=0.5))
    source = params(backend, adapter)
    adapter.update_step(mse, batch(backend))
    current = params(backend, adapter)
    if backend is TORCH:
        teacher = {k: v.detach().numpy() for k, v in adapter.teacher.items()}
    else:
        from jax_impl.core.params import to_canonical

        teacher = to_canonical(adapter.teacher)
    for name in source:
        np.testing.assert_allclose(teacher[name], 0.5 * source[name] + 0.5 * current[name], rtol=1e-14, atol=1e-15)


def test_observe_records_user_metrics():
    adapter = adapter_for(JAX, AdaptationConfig())
    adapter.observe(loss=1.0, entropy=0.5)
    assert adapter.history[-1] == {"update_count": 0, "loss": 1.0, "entropy": 0.5}
    small = adapter_for(TORCH, AdaptationConfig(history_size=2))
    for value in range(3):
        small.observe(loss=float(value))
    assert small.history.column("loss") == [1.0, 2.0]
