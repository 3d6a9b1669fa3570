"""JAX side: each bad input gets a clear ValueError or TypeError that names what was expected."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from jax_impl import SSM, MetaMAML


def make(dtype=jnp.float64):
    return SSM(4, 3, 2, 5, "cpu", dtype=dtype)


def task(batch=2, length=5, dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(batch, length, 3)).astype(dtype), rng.normal(size=(batch, length, 2)).astype(dtype)


def snapshot(model):
    return [np.array(a) for a in jax.tree.leaves(nnx.state(model))]


# ------------------------------------------------------------------ length-0 sequences
def test_ssm_sequence_of_length_zero():
    model = make()
    empty = np.zeros((4, 0, 3))
    for call in (model, model.scan, model.hidden_states, lambda x: model.scan(x, mode="parallel")):
        with pytest.raises(ValueError, match="at least one time step"):
            call(empty)


def test_meta_maml_sequence_of_length_zero():
    maml = MetaMAML(make())
    x, y = task(length=0)
    for call in (lambda: maml.meta_update([(x, y)]), lambda: maml.meta_gradient([(x, y)]), lambda: maml.adapt(x, y)):
        with pytest.raises(ValueError, match="at least one time step"):
            call()


def test_meta_maml_batch_of_size_zero():
    maml = MetaMAML(make())
    with pytest.raises(ValueError, match="at least one sample"):
        maml.meta_update([task(batch=0)])


# ------------------------------------------------------------------ torch tensors
@pytest.mark.parametrize("requires_grad", [False, True])
def test_torch_tensor_to_the_jax_ssm(requires_grad):
    model = make()
    x = torch.zeros(2, 3, dtype=torch.float64, requires_grad=requires_grad)
    with pytest.raises(TypeError, match=r"expected a jax or numpy array, got torch\.Tensor"):
        model(x)
    with pytest.raises(TypeError, match=r"expected a jax or numpy array, got torch\.Tensor"):
        model.step(np.zeros((2, 3)), torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"expected a jax or numpy array, got torch\.Tensor"):
        model.scan(np.zeros((2, 6, 3)), starts=torch.zeros(2, 6))


def test_torch_tensor_to_the_jax_meta_maml():
    maml = MetaMAML(make())
    x, y = (torch.from_numpy(a) for a in task())
    with pytest.raises(TypeError, match=r"must be a jax or numpy array.*got torch\.Tensor"):
        maml.meta_update([(x, y)])
    with pytest.raises(TypeError, match=r"must be a jax or numpy array.*got torch\.Tensor"):
        maml.adapt(x, y)


# ------------------------------------------------------------------ dtypes without x64
def test_float64_numpy_into_a_float32_ssm_is_refused_without_x64():
    with jax.enable_x64(False):
        model = make(jnp.float32)
        with pytest.raises(TypeError, match="dtype float32"):
            model(np.zeros((2, 3)))
        with pytest.raises(TypeError, match="dtype float32"):
            model.scan(np.zeros((2, 6, 3)))
        with pytest.raises(TypeError, match="dtype float32"):
            model.step(np.zeros((2, 3), np.float32), np.zeros((2, 4)))
        with pytest.raises(TypeError, match="dtype float32"):
            MetaMAML(model).meta_update([task()])
        assert model(np.zeros((2, 3), np.float32)).dtype == jnp.float32


# ------------------------------------------------------------------ starts
@pytest.mark.parametrize("bad", [np.nan, 2.0, -1.0, 0.5])
def test_starts_must_hold_only_zero_or_one(bad):
    model = make()
    starts = np.zeros((2, 6))
    starts[1, 3] = bad
    with pytest.raises(ValueError, match="starts must hold only 0 or 1"):
        model.scan(np.zeros((2, 6, 3)), starts=starts)
    with pytest.raises(ValueError, match="starts must hold only 0 or 1"):
        model.step(np.zeros((2, 3)), np.zeros((2, 4)), starts[:, 3])


def test_boolean_and_integer_starts_are_fine():
    model = make()
    xs = np.random.default_rng(0).normal(size=(2, 6, 3))
    starts = np.zeros((2, 6), bool)
    starts[0, 2] = True
    np.testing.assert_array_equal(model.scan(xs, starts=starts)[0], model.scan(xs, starts=starts.astype(int))[0])


# ------------------------------------------------------------------ task shapes
def test_data_and_labels_must_agree_on_the_batch_size():
    maml = MetaMAML(make())
    x, _ = task(batch=4)
    _, y = task(batch=5)
    before = snapshot(maml.model)
    for call in (lambda: maml.meta_update([(x, y)]), lambda: maml.meta_gradient([(x, y)]), lambda: maml.adapt(x, y)):
        with pytest.raises(ValueError, match="same leading \\(batch\\) size"):
            call()
    sx, sy = task(batch=4)
    with pytest.raises(ValueError, match="task 0 query_x: 4, task 0 query_y: 5"):
        maml.meta_update([(sx, sy, x, y)])
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(maml.model), strict=True))


@pytest.mark.parametrize("label_shape", [(2, 5, 1), (2, 1, 2), (2, 5)])
def test_default_mse_refuses_labels_that_broadcast(label_shape):
    maml = MetaMAML(make())
    x, _ = task()
    y = np.zeros(label_shape)
    for call in (lambda: maml.meta_update([(x, y)]), lambda: maml.adapt(x, y)):
        with pytest.raises(ValueError, match=r"outputs have shape \(2, 5, 2\) but labels"):
            call()


def test_a_custom_loss_may_broadcast():
    maml = MetaMAML(make(), loss_fn=lambda out, y: jnp.mean((out - y) ** 2))
    x, _ = task()
    assert np.isfinite(maml.meta_update([(x, np.zeros((2, 5, 1)))]))


# ------------------------------------------------------------------ steps with a non-finite result
def test_nan_in_one_task_is_named_and_changes_nothing():
    maml = MetaMAML(make())
    good, (x, y) = task(), task(seed=1)
    y = y.copy()
    y[1, 2, 0] = np.nan
    before = snapshot(maml.model)
    with pytest.raises(ValueError, match="task 1 support_y contains NaN"):
        maml.meta_update([good, (x, y)])
    with pytest.raises(ValueError, match="task 1 support_y contains NaN"):
        maml.value_and_meta_gradient([good, (x, y)])
    assert all(np.array_equal(a, b) for a, b in zip(before, snapshot(maml.model), strict=True))


def test_outer_lr_1e30_never_leaves_non_finite_parameters():
    """float32, outer_lr=1e30: the first Adam step moves every parameter by about 1e30 (finite, so it is
    taken, as the rule is "refuse a non-finite result"); the next step's loss is then not finite and is
    refused without touching the model. At no point do the parameters hold NaN/Inf."""
    maml = MetaMAML(make(jnp.float32), outer_lr=1e30)
    data = [task(dtype=np.float32)]
    maml.meta_update(data)
    after_first = snapshot(maml.model)
    assert all(np.isfinite(a).all() for a in after_first)
    with pytest.raises(ValueError, match="not changed"):
        maml.meta_update(data)
    assert all(np.array_equal(a, b) for a, b in zip(after_first, snapshot(maml.model), strict=True))
