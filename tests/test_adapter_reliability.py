"""The Adapter under bad input, failed steps, the JAX compile cache and BatchNorm in train mode,
in both backends alike."""

import functools
import gc
import json
import math
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jax_impl.adaptation import Adapter as JaxAdapter
from jax_impl.adaptation.test_time_adaptation import entropy as jax_entropy
from shared.adaptation import AdaptationConfig, function_key, select_parameters
from tests.backends import BACKENDS, JAX, TORCH
from torch_impl.adaptation import Adapter as TorchAdapter
from torch_impl.adaptation.test_time_adaptation import entropy as torch_entropy

backends = pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)


# ---------------------------------------------------------------------------- models and data
class TorchBNNet(torch.nn.Module):
    """A classifier with BatchNorm in train mode (the TENT setting)."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.fc = torch.nn.Linear(3, 4, dtype=dtype)
        self.bn = torch.nn.BatchNorm1d(4, dtype=dtype)
        self.out = torch.nn.Linear(4, 2, dtype=dtype)

    def forward(self, x):
        return self.out(torch.relu(self.bn(self.fc(x))))


class JaxBNNet(nnx.Module):
    """The same with stock ``nnx.BatchNorm(use_running_average=False)``, statistics in ``dtype``."""

    def __init__(self, dtype=jnp.float64):
        rngs = nnx.Rngs(0)
        self.fc = nnx.Linear(3, 4, dtype=dtype, param_dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(4, use_running_average=False, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
                                dtype=dtype, param_dtype=dtype, rngs=rngs)
        # nnx.BatchNorm makes its statistics float32 whatever param_dtype says: hold them in the model's dtype,
        # so the train-mode update writes float64 into float64
        self.bn.mean, self.bn.var = nnx.BatchStat(jnp.zeros(4, dtype)), nnx.BatchStat(jnp.ones(4, dtype))
        self.out = nnx.Linear(4, 2, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.bn(self.fc(x))))


def bn_adapter(backend, config, dtype="float64"):
    torch.manual_seed(0)
    if backend is TORCH:
        return TorchAdapter(TorchBNNet(getattr(torch, dtype)).train(), config)
    return JaxAdapter(JaxBNNet(getattr(jnp, dtype)), config)


def ssm_adapter(backend, config, dtype="float64"):
    torch.manual_seed(0)
    model = backend.ssm(dtype=dtype)
    return (TorchAdapter if backend is TORCH else JaxAdapter)(model, config)


def ssm_batch(backend, seed=0, dtype="float64"):
    rng = np.random.default_rng(seed)
    return (backend.array(rng.normal(size=(3, 5, 3)).astype(dtype)),
            backend.array(rng.normal(size=(3, 5, 2)).astype(dtype)))


def features(backend, seed=0, poison=None, dtype="float64"):
    x = np.random.default_rng(seed).normal(size=(8, 3)).astype(dtype)
    if poison is not None:
        x[1, 2] = poison
    return backend.array(x)


def state(backend, adapter):
    """Every parameter and every other variable (BatchNorm statistics), as numpy."""
    if backend is TORCH:
        return {k: v.detach().numpy().copy() for k, v in adapter.model.state_dict().items()}
    flat = nnx.to_flat_state(nnx.state(adapter.model))
    return {".".join(map(str, path)): np.array(v[...]) for path, v in flat}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def entropy_fn(backend):
    return (lambda m, x: torch_entropy(m(x))) if backend is TORCH else (lambda m, x: jax_entropy(m(x)))


def mse(model, b):
    return ((model(b[0]) - b[1]) ** 2).mean()


# ---------------------------------------------------------------------------- 1. JAX compile cache
TRACES = []


def traced(value):
    """Identity that counts how often the loss is traced (it runs only while JAX traces)."""
    TRACES.append(1)
    return value


def test_a_new_lambda_per_call_compiles_once():
    adapter = ssm_adapter(JAX, AdaptationConfig(lr=1e-3))
    data = ssm_batch(JAX)
    scale = 2.0
    traces = []
    for _ in range(30):  # the loop: a new function object on every call
        info = adapter.update_step(lambda m, b: traced(scale * jnp.mean((m(b[0]) - b[1]) ** 2)), data)
        assert info["updated"]
        traces.append(len(TRACES))
    assert adapter.compilations == 1 and len(adapter._compiled) == 1
    assert traces[0] >= 1 and traces[-1] == traces[0], "a structurally equal loss function must not be traced again"


GLOBAL_SCALE = 1.0


def test_function_key_sees_the_globals_the_code_reads():
    def loss():
        return lambda m: GLOBAL_SCALE * m

    global GLOBAL_SCALE
    before = function_key(loss())
    GLOBAL_SCALE = 2.0
    try:
        assert function_key(loss()) != before  # a new value: a new trace, not a stale constant
    finally:
        GLOBAL_SCALE = 1.0
    assert function_key(loss()) == before


def test_the_compile_cache_is_a_bounded_lru():
    adapter = ssm_adapter(JAX, AdaptationConfig(lr=1e-3))
    adapter.cache_size = 2
    data = ssm_batch(JAX)

    def scaled(k):  # different captured constants: different functions, each compiled once
        return lambda m, b: k * jnp.mean((m(b[0]) - b[1]) ** 2)

    adapter.update_step(scaled(1.0), data)
    first = weakref.ref(next(iter(adapter._compiled.values())))
    adapter.update_step(scaled(2.0), data)
    adapter.update_step(scaled(1.0), data)  # a hit: 1.0 becomes the most recent
    assert adapter.compilations == 2
    adapter.update_step(scaled(3.0), data)  # evicts 2.0, the least recently used
    assert adapter.compilations == 3 and len(adapter._compiled) == 2
    adapter.update_step(scaled(1.0), data)
    assert adapter.compilations == 3
    adapter.update_step(scaled(2.0), data)
    assert adapter.compilations == 4 and len(adapter._compiled) == 2
    adapter.update_step(scaled(3.0), data)  # 1.0 is evicted now
    assert adapter.compilations == 5
    gc.collect()
    assert first() is None, "an evicted compiled step must be freed"
    # captured arrays have no stable key: every such lambda compiles, but the cache stays bounded
    for k in range(3):
        weight = jnp.asarray(float(k + 1))
        adapter.update_step(lambda m, b, w=weight: w * jnp.mean((m(b[0]) - b[1]) ** 2), data)
    assert adapter.compilations == 8 and len(adapter._compiled) == 2


def test_function_key_is_structural():
    def make(k):
        return lambda m, b: k * m

    assert function_key(make(2.0)) == function_key(make(2.0))
    assert function_key(make(2.0)) != function_key(make(3.0))
    assert function_key(make(1)) != function_key(make(1.0))  # the type counts: int and float trace differently
    assert function_key(make(np.ones(2))) != function_key(make(np.ones(2)))  # unhashable: identity
    weights = np.ones(2)
    assert function_key(make(weights)) == function_key(make(weights))
    assert len({function_key(lambda m, b: m * b) for _ in range(5)}) == 1
    assert len({function_key(lambda m, b, k=k: m * k) for k in (1.0, 2.0, 1.0)}) == 2

    def loss(m, b, scale):
        return m * scale

    assert function_key(functools.partial(loss, scale=2.0)) == function_key(functools.partial(loss, scale=2.0))
    assert function_key(functools.partial(loss, scale=2.0)) != function_key(functools.partial(loss, scale=3.0))

    class Losses:
        def mse(self, m, b):
            return m

    one, two = Losses(), Losses()
    assert function_key(one.mse) == function_key(one.mse)
    assert function_key(one.mse) != function_key(two.mse)


# ---------------------------------------------------------------------------- 2. skipped steps change nothing
@backends
@pytest.mark.parametrize("poison", [np.nan, np.inf, -np.inf])
def test_non_finite_batch_is_skipped_before_any_forward(backend, poison):
    adapter = bn_adapter(backend, AdaptationConfig(lr=0.01))
    adapter.update_step(entropy_fn(backend), features(backend))
    before = state(backend, adapter)
    info = adapter.update_step(entropy_fn(backend), features(backend, seed=1, poison=poison))
    assert info["skipped"] == "non-finite batch" and not info["updated"] and info["steps"] == 0
    assert info["loss"] is None and info["grad_norm"] is None
    assert_same(state(backend, adapter), before)  # BatchNorm running statistics included


@backends
@pytest.mark.parametrize("reason", ["non-finite loss", "non-finite gradient"])
def test_skipped_step_leaves_batchnorm_statistics(backend, reason):
    def bad_loss(model, x):
        logits = model(x)
        if reason == "non-finite loss":
            return (logits ** 2).mean() * math.inf
        return (logits ** 2).mean() + (logits * 0.0).sum() ** 0.5  # 0 in value, infinite in gradient

    adapter = bn_adapter(backend, AdaptationConfig(lr=0.01))
    adapter.update_step(entropy_fn(backend), features(backend))
    before = state(backend, adapter)
    info = adapter.update_step(bad_loss, features(backend, seed=1))
    assert info["skipped"] == reason
    assert_same(state(backend, adapter), before)


# ---------------------------------------------------------------------------- 3. AdaptationConfig fields
def test_a_single_pattern_string_is_one_pattern():
    assert AdaptationConfig(allow="W*").allow == ("W*",)
    assert AdaptationConfig(deny="B*").deny == ("B*",)
    names = ["B.weight", "B.bias", "W1.weight", "D.bias"]
    assert select_parameters(names, AdaptationConfig(allow="W*")) == ["W1.weight"]
    assert select_parameters(names, AdaptationConfig(deny="B*")) == ["W1.weight", "D.bias"]
    for backend in BACKENDS:
        adapter = ssm_adapter(backend, AdaptationConfig(deny="B*"))
        assert sorted(adapter.names) == ["D.bias", "D.weight", "W1.bias", "W1.weight", "W2.bias", "W2.weight",
                                         "nu_log"]


def test_selection_errors_say_what_happened():
    names = ["B.weight", "B.bias"]
    with pytest.raises(ValueError, match=r"allow=\['B\*'\] selects \['B.bias', 'B.weight'\] and deny=\['B\*'\] "
                                         "removes all of them"):
        select_parameters(names, AdaptationConfig(allow="B*", deny="B*"))
    with pytest.raises(ValueError, match=r"deny pattern 'B\.wieght' matches none"):
        select_parameters(names, AdaptationConfig(deny="B.wieght"))
    with pytest.raises(ValueError, match=r"allow pattern 'C\.\*' matches none"):
        select_parameters(names, AdaptationConfig(allow=("B.*", "C.*")))


@pytest.mark.parametrize("values, message", [
    ({"momentum": 0.9}, r"momentum=0.9 is only used with optimizer='sgd', got optimizer='adam'"),
    ({"optimizer": "adamw", "momentum": 0.5}, "momentum=0.5 is only used with optimizer='sgd'"),
    ({"optimizer": "sgd", "betas": (0.5, 0.5)}, r"betas=\(0.5, 0.5\) is only used with optimizer='adam'"),
    ({"optimizer": "sgd", "eps": 1e-6}, "eps=1e-06 is only used with optimizer='adam'"),
    ({"lr": True}, "lr must be a positive finite number"),
    ({"lr": np.bool_(True)}, "lr must be a positive finite number"),
    ({"lr": math.nan}, "lr must be a positive finite number"),
    ({"lr": math.inf}, "lr must be a positive finite number"),
    ({"lr": np.float32(np.inf)}, "lr must be a positive finite number"),
    ({"lr": "1e-3"}, "lr must be a positive finite number"),
    ({"weight_decay": math.nan}, "weight_decay must be a finite number >= 0"),
    ({"betas": 0.9}, "betas must be two numbers"),
    ({"betas": (0.9, np.nan)}, "betas must be two numbers"),
    ({"allow": None}, "allow must be a pattern string or a list"),
    ({"deny": ("B*", "")}, "deny patterns must be non-empty strings"),
    ({"allow": ""}, "allow patterns must be non-empty strings"),
    ({"steps_per_call": 2.0}, "steps_per_call must be a positive integer"),
    ({"steps_per_call": True}, "steps_per_call must be a positive integer"),
    ({"seed": 1.5}, "seed must be an integer >= 0"),
    ({"ema_decay": np.nan}, "ema_decay must be"),
    ({"enabled": 1}, "enabled must be a bool"),
    ({"optimizer": ["adam"]}, "optimizer must be"),
])
def test_config_traps_are_named(values, message):
    with pytest.raises((ValueError, TypeError), match=message):
        AdaptationConfig(**values)


def test_numpy_scalars_are_accepted_and_stored_as_python_numbers():
    config = AdaptationConfig(optimizer="sgd", lr=np.float32(1e-3), momentum=np.float64(0.5),
                              steps_per_call=np.int64(2), seed=np.int32(3), grad_clip_norm=np.float16(1.0),
                              enabled=np.bool_(True), betas=[0.9, 0.999])
    assert config.lr == float(np.float32(1e-3)) and type(config.lr) is float
    assert type(config.momentum) is float and type(config.steps_per_call) is int and type(config.seed) is int
    assert config.enabled is True and config.betas == (0.9, 0.999)
    assert AdaptationConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


# ---------------------------------------------------------------------------- 4. non-finite results are refused
@backends
@pytest.mark.parametrize("optimizer, lr, dtype", [("adam", 1e39, "float32"), ("adamw", 1e39, "float32"),
                                                   ("sgd", 1e39, "float32")])
def test_a_step_with_a_non_finite_result_is_refused(backend, optimizer, lr, dtype):
    config = AdaptationConfig(optimizer=optimizer, lr=lr)
    adapter = bn_adapter(backend, config, dtype)
    before = state(backend, adapter)
    loss_fn = entropy_fn(backend)
    info = adapter.update_step(loss_fn, features(backend, dtype=dtype))
    assert info["skipped"] == "non-finite update" and not info["updated"] and info["steps"] == 0
    assert np.isfinite(info["loss"]) and np.isfinite(info["grad_norm"])
    assert_same(state(backend, adapter), before)
    assert adapter.update_count == 0 and adapter.drift() == 0.0
    if backend is TORCH:
        assert adapter.optimizer.state_dict()["state"] == {}  # no moment, no step count
    else:
        fresh = bn_adapter(backend, config, dtype)
        jax.tree.map(np.testing.assert_array_equal, adapter.opt_state, fresh.opt_state)


@backends
def test_a_refused_step_restores_the_optimizer_state(backend):
    """SGD momentum: a refused step must not touch the momentum buffer, so the next good step equals
    that of a twin that never saw the refused one."""
    config = AdaptationConfig(optimizer="sgd", lr=1e160, momentum=0.9)
    adapter, twin = ssm_adapter(backend, config), ssm_adapter(backend, config)
    x, y = ssm_batch(backend)
    small, big = backend.array(np.array(1e-165)), backend.array(np.array(1e150))

    def scaled(model, b):  # gradient ~ scale: finite, yet lr * gradient overflows for the big scale
        return mse(model, b) * b[2]

    for a in (adapter, twin):
        assert a.update_step(scaled, (x, y, small))["updated"]
    before = state(backend, adapter)
    info = adapter.update_step(scaled, (x, y, big))
    assert info["skipped"] == "non-finite update" and np.isfinite(info["grad_norm"]), info
    assert_same(state(backend, adapter), before)
    assert adapter.update_count == 1
    for a in (adapter, twin):
        assert a.update_step(scaled, (x, y, small))["updated"]
    assert_same(state(backend, adapter), state(backend, twin))


# ---------------------------------------------------------------------------- 5. loss functions that cannot adapt
@backends
def test_a_python_float_loss_is_a_type_error(backend):
    adapter = bn_adapter(backend, AdaptationConfig())
    before = state(backend, adapter)
    # JAX cannot even make the float under jit: its own ConcretizationTypeError, a TypeError too
    with pytest.raises(TypeError, match="loss_fn must return a floating 0-d" if backend is TORCH else "float"):
        adapter.update_step(lambda m, x: float(m(x).sum()), features(backend))
    with pytest.raises(TypeError, match="loss_fn must return a floating 0-d"):
        adapter.update_step(lambda m, x: 1.0, features(backend))
    assert_same(state(backend, adapter), before)  # the forward's statistics were restored (torch)


@backends
def test_a_loss_independent_of_the_selection_is_a_value_error(backend):
    adapter = bn_adapter(backend, AdaptationConfig(allow="out.*"))
    before = state(backend, adapter)
    constant = {TORCH: lambda m, x: torch.ones((), dtype=torch.float64),
                JAX: lambda m, x: jnp.ones(())}[backend]
    first_layer_only = {TORCH: lambda m, x: (m.fc(x) ** 2).mean(),
                        JAX: lambda m, x: (m.fc(x) ** 2).mean()}[backend]
    for loss_fn in (constant, first_layer_only):
        with pytest.raises(ValueError, match="does not depend on the selected parameters"):
            adapter.update_step(loss_fn, features(backend))
    assert_same(state(backend, adapter), before)
    assert adapter.update_step(entropy_fn(backend), features(backend))["updated"]  # out.* is reachable


# ---------------------------------------------------------------------------- 6. wrong array types
def test_adapters_name_the_other_frameworks_arrays():
    adapter = ssm_adapter(JAX, AdaptationConfig())
    x, y = ssm_batch(TORCH)
    with pytest.raises(TypeError, match=r"expected a jax.Array or numpy array, got torch.Tensor \(batch\[0\]\)"):
        adapter.update_step(mse, (x, y))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        adapter.update_step("mse", ssm_batch(JAX))
    with pytest.raises(TypeError, match=r"expected a torch.Tensor or numpy array, got jax.Array \(batch\[1\]\)"):
        ssm_adapter(TORCH, AdaptationConfig()).update_step(mse, (ssm_batch(TORCH)[0], ssm_batch(JAX)[1]))
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ssm_adapter(TORCH, AdaptationConfig()).update_step(None, ssm_batch(TORCH))


# ---------------------------------------------------------------------------- 7. BatchNorm in train mode (TENT)
@backends
def test_tent_adapts_batchnorm_affine_and_writes_statistics(backend):
    """Entropy minimisation on the BatchNorm affine parameters only; the train-mode forward's
    running statistics are written back after each committed step."""
    adapter = bn_adapter(backend, AdaptationConfig(optimizer="adam", lr=0.05, allow="bn.*"))
    assert sorted(adapter.names) == (["bn.bias", "bn.weight"] if backend is TORCH else ["bn.bias", "bn.scale"])
    loss_fn = entropy_fn(backend)
    source = state(backend, adapter)
    x = features(backend, seed=3)
    first = adapter.update_step(loss_fn, x)
    for _ in range(10):
        last = adapter.update_step(loss_fn, x)
    assert first["updated"] and last["updated"] and last["loss"] < first["loss"]
    after = state(backend, adapter)
    for name in source:
        changed = not np.array_equal(source[name], after[name])
        assert changed == name.startswith("bn."), name  # affine and statistics move, the linear layers do not
    adapter.reset()
    assert_same(state(backend, adapter), source)


def test_jax_batchnorm_matches_torch_except_the_unbiased_running_var():
    """Stock nnx.BatchNorm(momentum=0.9, epsilon=1e-5, use_fast_variance=False) in train mode gives
    torch's TENT trajectory (losses, affine parameters, running_mean); running_var differs by design:
    torch stores the unbiased batch variance (parity_tests/tent.py has the exact twin)."""
    t_adapter = bn_adapter(TORCH, AdaptationConfig(optimizer="adam", lr=0.05, allow="bn.*"))
    j_adapter = bn_adapter(JAX, AdaptationConfig(optimizer="adam", lr=0.05, allow="bn.*"))
    t_model, j_model = t_adapter.model, j_adapter.model
    for layer in ("fc", "out"):  # torch's weights into the JAX twin
        getattr(j_model, layer).kernel[...] = jnp.asarray(getattr(t_model, layer).weight.detach().numpy().T)
        getattr(j_model, layer).bias[...] = jnp.asarray(getattr(t_model, layer).bias.detach().numpy())
    j_adapter = JaxAdapter(j_model, AdaptationConfig(optimizer="adam", lr=0.05, allow="bn.*"))
    for seed in range(5):
        t_info = t_adapter.update_step(entropy_fn(TORCH), features(TORCH, seed=seed))
        j_info = j_adapter.update_step(entropy_fn(JAX), features(JAX, seed=seed))
        assert j_info["loss"] == pytest.approx(t_info["loss"], rel=1e-12)
    np.testing.assert_allclose(np.asarray(j_model.bn.scale[...]), t_model.bn.weight.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(j_model.bn.bias[...]), t_model.bn.bias.detach().numpy(), rtol=1e-12)
    assert j_model.bn.mean[...].dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(j_model.bn.mean[...]), t_model.bn.running_mean.numpy(), rtol=1e-12)
    assert not np.allclose(np.asarray(j_model.bn.var[...]), t_model.bn.running_var.numpy(), rtol=1e-6)
