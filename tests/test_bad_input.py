"""Every bad input gets a ValueError/TypeError that names what was expected, in both backends."""

import numpy as np
import pytest

from tests.backends import BACKENDS, Backend

pytestmark = pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)


def arr(backend: Backend, *shape, dtype="float64", fill=None):
    a = np.random.default_rng(0).normal(size=shape).astype(dtype)
    if fill is not None:
        a.flat[0] = fill
    return backend.array(a)


@pytest.mark.parametrize("args", [(0, 3, 2, 5), (4, -1, 2, 5), (4, 3, 0, 5), (4, 3, 2, 0), (4.5, 3, 2, 5)])
def test_non_positive_dims(backend, args):
    with pytest.raises(ValueError, match="must be a positive integer"):
        backend.SSM(*args, "cpu")


def test_bad_decay_ring(backend):
    with pytest.raises(ValueError, match="r_min <= r_max"):
        backend.SSM(4, 3, 2, 5, "cpu", r_min=0.99, r_max=0.5)


def test_wrong_input_width(backend):
    with pytest.raises(ValueError, match="input_dim=3"):
        backend.ssm()(arr(backend, 2, 4))


def test_wrong_input_rank(backend):
    with pytest.raises(ValueError, match="2-D or 3-D"):
        backend.ssm()(arr(backend, 3))
    with pytest.raises(ValueError, match="3-D"):
        backend.ssm().scan(arr(backend, 2, 3))


def test_wrong_dtype(backend):
    with pytest.raises(TypeError, match="dtype"):
        backend.ssm(dtype="float64")(arr(backend, 2, 3, dtype="float32"))


def test_wrong_state_shape(backend):
    with pytest.raises(ValueError, match=r"state must have shape \(2, 4\)"):
        backend.ssm().step(arr(backend, 2, 3), arr(backend, 2, 5))


def test_wrong_starts_shape(backend):
    with pytest.raises(ValueError, match=r"starts must have shape \(2, 6\)"):
        backend.ssm().scan(arr(backend, 2, 6, 3), starts=arr(backend, 2, 5))


def test_bad_scan_mode(backend):
    with pytest.raises(ValueError, match="'sequential' or 'parallel'"):
        backend.ssm().scan(arr(backend, 2, 6, 3), mode="fast")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_input(backend, bad):
    with pytest.raises(ValueError, match="NaN or Inf"):
        backend.ssm()(arr(backend, 2, 3, fill=bad))
    with pytest.raises(ValueError, match="NaN or Inf"):
        backend.ssm().step(arr(backend, 2, 3), arr(backend, 2, 4, fill=bad))


def test_bad_batch_size(backend):
    with pytest.raises(ValueError, match="positive integer"):
        backend.ssm().init_state(0)


# --------------------------------------------------------------------------- MetaMAML
def maml(backend, **kw):
    return backend.MetaMAML(backend.ssm(), **kw)


def task(backend, fill=None, label_fill=None):
    return (arr(backend, 2, 5, 3, fill=fill), arr(backend, 2, 5, 2, fill=label_fill))


@pytest.mark.parametrize("kw, message", [
    ({"inner_lr": 0.0}, "inner_lr must be a positive"),
    ({"inner_lr": -1.0}, "inner_lr must be a positive"),
    ({"outer_lr": 0.0}, "outer_lr must be a positive"),
    ({"outer_lr": float("nan")}, "outer_lr must be a positive"),
    ({"num_inner_steps": 0}, "num_inner_steps must be an integer >= 1"),
])
def test_bad_hyper_parameters(backend, kw, message):
    with pytest.raises(ValueError, match=message):
        maml(backend, **kw)


def test_model_must_be_a_module(backend):
    with pytest.raises(TypeError, match="Module"):
        backend.MetaMAML(lambda x: x)


def test_empty_task_list(backend):
    with pytest.raises(ValueError, match="non-empty list"):
        maml(backend).meta_update([])
    with pytest.raises(ValueError, match="non-empty list"):
        maml(backend).meta_gradient([])


@pytest.mark.parametrize("length", [1, 3, 5])
def test_task_tuple_of_wrong_length(backend, length):
    x, y = task(backend)
    with pytest.raises(ValueError, match=r"2-tuple .* or a 4-tuple"):
        maml(backend).meta_update([(x, y, x, y, x)[:length]])


def test_nan_in_inputs_or_labels(backend):
    with pytest.raises(ValueError, match="NaN or Inf"):
        maml(backend).meta_update([task(backend, fill=np.nan)])
    with pytest.raises(ValueError, match="NaN or Inf"):
        maml(backend).meta_update([task(backend, label_fill=np.inf)])
    with pytest.raises(ValueError, match="NaN or Inf"):
        maml(backend).adapt(*task(backend, label_fill=np.nan))


def test_wrong_dtype_in_task(backend):
    x, _y = task(backend)
    with pytest.raises(TypeError, match="dtype"):
        maml(backend).meta_update([(x, backend.array(np.zeros((2, 5, 2), np.float32)))])


def test_wrong_width_in_task_is_not_a_matmul_error(backend):
    with pytest.raises(ValueError, match="input_dim=3"):
        maml(backend).meta_update([(arr(backend, 2, 5, 4), arr(backend, 2, 5, 2))])


def test_failed_meta_update_leaves_the_model_unchanged(backend):
    learner = maml(backend, inner_lr=1e300)  # the adapted parameters overflow to Inf
    before = {k: np.array(v) for k, v in snapshot(backend, learner.model).items()}
    with pytest.raises(ValueError, match="NaN/Inf"):
        learner.meta_update([task(backend)])
    after = snapshot(backend, learner.model)
    for name, value in before.items():
        np.testing.assert_array_equal(np.array(after[name]), value)


def snapshot(backend, model):
    if backend.name == "torch":
        return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    from flax import nnx

    from jax_impl.core.params import to_canonical

    return to_canonical(nnx.state(model, nnx.Param))

