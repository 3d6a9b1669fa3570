"""JAX MetaMAML: value_and_meta_gradient + apply_meta_gradient == meta_update, refused steps change nothing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_impl import SSM, MetaMAML
from jax_impl.meta_rl.checks import stack_tasks


def make(dtype=jnp.float64, seed=0):
    return SSM(6, 3, 2, 5, "cpu", dtype=dtype, rngs=nnx.Rngs(seed))


def tasks(n=3, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    shapes = [(3, 6, 3), (3, 6, 2), (3, 6, 3), (3, 6, 2)]
    return [tuple(rng.normal(size=s).astype(dtype) for s in shapes) for _ in range(n)]


def snapshot(maml: MetaMAML) -> tuple[list[np.ndarray], list[np.ndarray]]:
    params = [np.array(a) for a in jax.tree.leaves(nnx.state(maml.model, nnx.Param))]
    return params, [np.array(a) for a in jax.tree.leaves(maml.opt_state)]


def assert_same(a, b) -> None:
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("first_order", [False, True])
def test_meta_update_is_value_and_meta_gradient_then_apply(first_order):
    fused = MetaMAML(make(), inner_lr=0.2, outer_lr=0.05, first_order=first_order)
    split = MetaMAML(make(), inner_lr=0.2, outer_lr=0.05, first_order=first_order)
    for step in range(3):
        data = tasks(seed=step)
        loss_fused = fused.meta_update(data)
        loss, grads = split.value_and_meta_gradient(data)
        assert isinstance(loss, jax.Array) and loss.shape == ()
        split.apply_meta_gradient(grads)
        assert float(loss) == pytest.approx(loss_fused, rel=1e-12)
    a, b = snapshot(fused), snapshot(split)
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-15)


def test_meta_gradient_is_the_gradient_of_value_and_meta_gradient():
    maml = MetaMAML(make(), inner_lr=0.2)
    loss, grads = maml.value_and_meta_gradient(tasks())
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(maml.meta_gradient(tasks())), strict=True):
        np.testing.assert_array_equal(g, h)
    batch = stack_tasks(tasks(), maml.dtype, vectorize=True)[1]
    params, rest = nnx.state(maml.model, nnx.Param), maml.rest()
    per_task = [maml.task_query_loss(params, rest, jax.tree.map(lambda a, i=i: a[i], batch)) for i in range(3)]
    assert float(loss) == pytest.approx(float(np.mean(per_task)), rel=1e-12)
    assert float(maml.meta_loss(params, rest, batch)) == pytest.approx(float(loss), rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_apply_meta_gradient_refuses_non_finite_gradients(bad):
    maml = MetaMAML(make(), outer_lr=0.1)
    maml.meta_update(tasks())  # a non-trivial optimizer state
    grads = maml.meta_gradient(tasks(seed=1))
    leaves, treedef = jax.tree.flatten(grads)
    leaves[2] = leaves[2].at[0].set(bad)
    before = snapshot(maml)
    with pytest.raises(ValueError, match="NaN/Inf; the model was not changed"):
        maml.apply_meta_gradient(jax.tree.unflatten(treedef, leaves))
    assert_same(before, snapshot(maml))


def test_huge_outer_lr_is_refused_and_changes_nothing():
    """outer_lr=1e39 in float32: the Adam step gives Inf parameters; refused, model unchanged."""
    maml = MetaMAML(make(jnp.float32), outer_lr=1e39)
    data = tasks(dtype=np.float32)
    before = snapshot(maml)
    with pytest.raises(ValueError, match=r"would make the parameters NaN/Inf.*not changed"):
        maml.meta_update(data)
    assert_same(before, snapshot(maml))
    with pytest.raises(ValueError, match=r"would make the parameters NaN/Inf.*not changed"):
        maml.apply_meta_gradient(maml.meta_gradient(data))
    assert_same(before, snapshot(maml))


def test_apply_meta_gradient_checks_the_structure_shapes_and_dtypes():
    maml = MetaMAML(make())
    grads = maml.meta_gradient(tasks())
    with pytest.raises(ValueError, match="trainable parameters' keys"):
        maml.apply_meta_gradient({"nu_log": np.zeros(6)})
    leaves, treedef = jax.tree.flatten(grads)
    with pytest.raises(ValueError, match="must be an array of shape"):
        maml.apply_meta_gradient(jax.tree.unflatten(treedef, [leaves[0][:1], *leaves[1:]]))
    with pytest.raises(ValueError, match="dtype float64"):
        maml.apply_meta_gradient(jax.tree.unflatten(treedef, [leaves[0].astype(np.float32), *leaves[1:]]))


def test_opt_state_can_be_saved_and_assigned():
    maml = MetaMAML(make(), outer_lr=0.05)
    maml.meta_update(tasks())
    saved_params = jax.tree.map(jnp.copy, nnx.state(maml.model, nnx.Param))
    saved_opt = jax.tree.map(jnp.copy, maml.opt_state)
    first = maml.meta_update(tasks(seed=1))
    nnx.update(maml.model, saved_params)
    maml.opt_state = saved_opt
    assert maml.meta_update(tasks(seed=1)) == first
