"""The JAX twin on its own: step == scans, finite-difference meta-gradients, jit/vmap, frozen variables."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_impl import SSM, MetaMAML
from jax_impl._private import compiled_count
from jax_impl.core.params import to_canonical


def make(state=6, inp=3, out=2, hidden=5):
    return SSM(state, inp, out, hidden, "cpu", dtype=jnp.float64)


@pytest.mark.parametrize("length", [1, 7, 64])
def test_step_equals_sequential_equals_parallel_with_resets(length):
    model = make()
    rng = np.random.default_rng(length)
    xs = rng.normal(size=(3, length, 3))
    starts = (rng.random((3, length)) < 0.2).astype(np.float64)
    state = h0 = rng.normal(size=(3, 6))
    ys_step, hs_step = [], []
    for t in range(length):
        y, state = model.step(xs[:, t], state, starts[:, t])
        ys_step.append(y)
        hs_step.append(state)
    ys_step, hs_step = jnp.stack(ys_step, 1), jnp.stack(hs_step, 1)
    for mode in ("sequential", "parallel"):
        ys, last = model.scan(xs, h0, starts, mode=mode)
        np.testing.assert_allclose(ys, ys_step, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.hidden_states(xs, h0, starts, mode=mode), hs_step, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(last, hs_step[:, -1], rtol=1e-10, atol=1e-12)


def test_seed_usage_example_in_jax():
    model = SSM(state_dim=128, input_dim=64, output_dim=32, hidden_dim=128, device="cpu")
    assert model(jnp.ones((32, 64), jnp.float32)).shape == (32, 32)


def test_scan_is_jittable_and_differentiable_to_second_order():
    model = make()
    graphdef, params = nnx.split(model)
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 3)))

    def loss(p, mode):
        return jnp.sum(nnx.merge(graphdef, p).scan(xs, mode=mode)[0] ** 2)

    for mode in ("sequential", "parallel"):
        g = jax.jit(jax.grad(loss), static_argnums=1)(params, mode)
        hvp = jax.jvp(lambda p, mode=mode: jax.grad(loss)(p, mode), (params,), (g,))[1]
        assert all(bool(jnp.isfinite(leaf).all()) for leaf in jax.tree.leaves(hvp))
    g_seq, g_par = jax.grad(loss)(params, "sequential"), jax.grad(loss)(params, "parallel")
    for a, b in zip(jax.tree.leaves(g_seq), jax.tree.leaves(g_par), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def tasks(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [tuple(rng.normal(size=s) for s in [(3, 6, 3), (3, 6, 2), (3, 6, 3), (3, 6, 2)]) for _ in range(n)]


def meta_loss(maml: MetaMAML, task_list) -> float:
    rest = nnx.split(maml.model, nnx.Param, ...)[2]
    values = [maml.loss_fn(nnx.merge(maml.graphdef, maml.adapt(sx, sy), rest)(qx), qy) for sx, sy, qx, qy in task_list]
    return float(np.mean(values))


def test_meta_gradient_matches_finite_differences():
    maml = MetaMAML(make(), inner_lr=0.3, num_inner_steps=2)
    data = tasks()
    grads = maml.meta_gradient(data)
    params = jax.tree.map(jnp.copy, nnx.state(maml.model, nnx.Param))  # a snapshot, not a live view
    rng = np.random.default_rng(1)
    eps = 1e-6
    for _ in range(3):
        direction = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
        pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(direction), strict=True)
        analytic = sum(float(jnp.sum(g * d)) for g, d in pairs)
        values = []
        for sign in (1.0, -1.0):
            nnx.update(maml.model, jax.tree.map(lambda p, d, s=sign: p + s * eps * d, params, direction))
            values.append(meta_loss(maml, data))
        nnx.update(maml.model, params)
        assert (values[0] - values[1]) / (2 * eps) == pytest.approx(analytic, rel=1e-6, abs=1e-9)


def test_second_order_differs_from_first_order():
    model = make()
    second = to_canonical(MetaMAML(model, inner_lr=0.3, num_inner_steps=2).meta_gradient(tasks()))
    first = to_canonical(MetaMAML(model, inner_lr=0.3, num_inner_steps=2, first_order=True).meta_gradient(tasks()))
    diff = max(float(np.abs(second[k] - first[k]).max()) for k in second)
    assert diff > 1e-3 * max(float(np.abs(v).max()) for v in second.values())


class Frozen(nnx.Variable):
    """A non-trainable variable: the JAX counterpart of ``requires_grad=False``."""


class ScaledMLP(nnx.Module):
    def __init__(self) -> None:
        rngs = nnx.Rngs(0)
        self.l1 = nnx.Linear(3, 8, rngs=rngs, param_dtype=jnp.float64)
        self.l2 = nnx.Linear(8, 2, rngs=rngs, param_dtype=jnp.float64)
        self.scale = Frozen(jnp.asarray(0.5))

    def __call__(self, x):
        return self.l2(jnp.tanh(self.l1(x))) * self.scale[...]


def test_non_param_variables_are_neither_adapted_nor_trained():
    model = ScaledMLP()
    maml = MetaMAML(model, inner_lr=0.3, outer_lr=0.1)
    data = [tuple(np.random.default_rng(i).normal(size=s) for s in [(5, 3), (5, 2)]) for i in range(2)]
    before = np.array(model.l1.kernel[...])
    adapted = maml.adapt(*data[0])
    assert "scale" not in nnx.to_pure_dict(adapted)
    losses = [maml.meta_update(data) for _ in range(20)]
    assert float(model.scale[...]) == 0.5
    assert not np.array_equal(np.array(model.l1.kernel[...]), before)
    assert losses[-1] < losses[0]


def test_meta_update_is_one_compiled_call():
    maml = MetaMAML(make(), inner_lr=0.1, outer_lr=0.01)
    data = tasks()
    maml.meta_update(data)
    assert compiled_count(maml._meta_step) == 1
    maml.meta_update(data)
    assert compiled_count(maml._meta_step) == 1


def test_tasks_of_different_shapes_cannot_be_stacked():
    maml = MetaMAML(make())
    a, b = tasks(2)
    b = (b[0][:, :4], b[1][:, :4], b[2], b[3])
    with pytest.raises(ValueError, match=r"same structure, shapes and dtypes.*vectorize=False"):
        maml.meta_update([a, b])
