"""The two MetaMAMLs are twins: the same public names and signatures, and the same bad input gets the
same exception type and the same words in both (only the frameworks' own type names differ)."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import pytest
import torch

from jax_impl.meta_rl import meta_maml as jax_meta_maml
from tests.backends import BACKENDS, JAX, TORCH, Backend
from torch_impl.meta_rl import meta_maml as torch_meta_maml

PUBLIC = ["loss", "rest", "inner_loop", "task_query_loss", "meta_loss", "meta_step", "adam_step", "adapt",
          "value_and_meta_gradient", "meta_gradient", "apply_meta_gradient", "meta_update", "trainable_parameters"]


def _methods(cls: type) -> list[str]:
    """The class's own methods in the order its file defines them."""
    return [name for name, value in vars(cls).items() if inspect.isfunction(value)]


def test_the_same_public_methods_with_the_same_parameters_in_the_same_order():
    torch_cls, jax_cls = torch_meta_maml.MetaMAML, jax_meta_maml.MetaMAML
    for name in PUBLIC:
        torch_params = list(inspect.signature(getattr(torch_cls, name)).parameters)
        jax_params = list(inspect.signature(getattr(jax_cls, name)).parameters)
        assert torch_params == jax_params, name
    torch_order = [n for n in _methods(torch_cls) if n in PUBLIC]
    jax_order = [n for n in _methods(jax_cls) if n in PUBLIC]
    assert torch_order == jax_order
    shared_options = ["inner_lr", "outer_lr", "num_inner_steps", "first_order", "loss_fn", "vectorize"]
    for cls in (torch_cls, jax_cls):
        assert [p for p in inspect.signature(cls).parameters if p in shared_options] == shared_options


# ------------------------------------------------------------------ one table of bad inputs, both backends
def arrays(backend: Backend, *shapes: tuple[int, ...], dtype: str = "float64", seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    return [backend.array(rng.normal(size=s).astype(dtype)) for s in shapes]


def task(backend: Backend, batch: int = 2, length: int = 5, dtype: str = "float64", seed: int = 0) -> tuple:
    return tuple(arrays(backend, (batch, length, 3), (batch, length, 2), (batch, length, 3), (batch, length, 2),
                        dtype=dtype, seed=seed))


def with_nan(backend: Backend, a: Any) -> Any:
    values = np.array(a.numpy() if isinstance(a, torch.Tensor) else a)
    values.flat[3] = np.nan
    return backend.array(values)


def poisoned_grads(backend: Backend, maml: Any) -> Any:
    grads = maml.meta_gradient([task(backend)])
    if backend is TORCH:
        return {**grads, next(iter(grads)): torch.full_like(next(iter(grads.values())), float("nan"))}
    leaves, treedef = jax.tree.flatten(grads)
    return jax.tree.unflatten(treedef, [np.full_like(np.asarray(leaves[0]), np.nan), *leaves[1:]])


_SHARED: dict[str, Any] = {}


def maml(backend: Backend, dtype: str = "float64", **kw: Any) -> Any:
    """A MetaMAML; the default one is shared by the cases (each is refused, so none changes it), which
    keeps the JAX compilations few."""
    if dtype != "float64" or kw:
        return backend.MetaMAML(backend.ssm(dtype=dtype), **kw)
    if backend.name not in _SHARED:
        _SHARED[backend.name] = backend.MetaMAML(backend.ssm())
    return _SHARED[backend.name]


Case = Callable[[Backend], Any]
CASES: dict[str, Case] = {
    "tasks not a list": lambda b: maml(b).meta_update(task(b)),
    "empty task list": lambda b: maml(b).meta_update([]),
    "task of length 3": lambda b: maml(b).meta_update([task(b)[:3]]),
    "support_x not an array": lambda b: maml(b).meta_update([("abc", *task(b)[1:])]),
    "query_y of the wrong dtype": lambda b: maml(b).meta_gradient([(*task(b)[:3], task(b, dtype="float32")[3])]),
    "support_x and support_y of different batch sizes": lambda b: maml(b).meta_update(
        [(task(b, batch=4)[0], *task(b, batch=5)[1:])]),
    "a batch of size 0": lambda b: maml(b).meta_update([task(b, batch=0)]),
    "a 0-d label": lambda b: maml(b).meta_update([(task(b)[0], b.array(np.float64(1.0)))]),
    "NaN in task 1 query_y": lambda b: maml(b).meta_update([task(b), (*task(b)[:3], with_nan(b, task(b)[3]))]),
    "NaN in task 0 support_x, meta_gradient": lambda b: maml(b).meta_gradient([(with_nan(b, task(b)[0]),
                                                                                *task(b)[1:])]),
    "mse with labels of the wrong shape": lambda b: maml(b).meta_update([(task(b)[0], task(b)[0])]),
    "mse with labels of the wrong shape, adapt": lambda b: maml(b).adapt(task(b)[0], task(b)[0]),
    "loss_fn returning a non-scalar": lambda b: maml(b, loss_fn=lambda o, y: (o - y) ** 2).meta_update([task(b)]),
    "ragged tasks under vectorize=True": lambda b: maml(b).meta_update([task(b), task(b, length=4)]),
    "adapt on NaN data": lambda b: maml(b).adapt(with_nan(b, task(b)[0]), task(b)[1]),
    "adapt with labels of another batch size": lambda b: maml(b).adapt(task(b, batch=3)[0], task(b)[1]),
    "a step that would make the parameters non-finite": lambda b: maml(b, "float32", outer_lr=1e39).meta_update(
        [task(b, dtype="float32")]),
    "apply_meta_gradient with a NaN gradient": lambda b: (lambda m: m.apply_meta_gradient(poisoned_grads(b, m)))(
        maml(b)),
    "apply_meta_gradient with a list": lambda b: maml(b).apply_meta_gradient([1.0]),
    "a model that is not a module": lambda b: b.MetaMAML(object()),
    "loss_fn not callable": lambda b: b.MetaMAML(b.ssm(), loss_fn=3),
    "vectorize not a bool": lambda b: b.MetaMAML(b.ssm(), vectorize=1),
}

# The frameworks' own words, replaced before the two messages are compared.
FRAMEWORK_WORDS = [
    (r"torch\.Tensor|jax or numpy array", "ARRAY"),
    (r"torch\.nn\.Module|flax\.nnx\.Module", "MODULE"),
    (r"torch\.(float\d+)", r"\1"),
    (r"a dict|an nnx\.State", "CONTAINER"),
    (r"\bTensor\b|\bArrayImpl\b", "ARRAY"),
]


def raised(backend: Backend, case: Case) -> tuple[type, str]:
    with pytest.raises((TypeError, ValueError)) as info:
        case(backend)
    message = str(info.value.args[0])
    for pattern, word in FRAMEWORK_WORDS:
        message = re.sub(pattern, word, message)
    return type(info.value), message


@pytest.mark.parametrize("name", list(CASES))
def test_the_same_bad_input_gets_the_same_error_in_both_backends(name):
    torch_error, jax_error = (raised(backend, CASES[name]) for backend in BACKENDS)
    assert torch_error == jax_error


def test_the_table_covers_the_messages_users_meet():
    """A few of the table's messages, spelled out: what a user reads."""
    assert raised(JAX, CASES["support_x and support_y of different batch sizes"]) == (
        ValueError, "task 0 support: data and labels must have the same leading (batch) size, got "
        "task 0 support_x: 4, task 0 support_y: 5")
    assert raised(TORCH, CASES["NaN in task 1 query_y"]) == (
        ValueError, "task 1 query_y contains NaN or Inf; expected finite values")
    assert raised(TORCH, CASES["a step that would make the parameters non-finite"]) == (
        ValueError, "meta_update: the Adam step would make the parameters NaN/Inf (outer_lr=1e+39 too large?); "
        "the model was not changed")
    kind, message = raised(JAX, CASES["ragged tasks under vectorize=True"])
    assert kind is ValueError and message.endswith("use MetaMAML(..., vectorize=False) for tasks of different shapes")


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_ragged_tasks_run_with_vectorize_false_and_equal_the_per_task_mean(backend):
    """The fix the ragged-task message names works in both backends."""
    tasks = [task(backend), task(backend, length=4, seed=1)]
    looped = backend.MetaMAML(backend.ssm(), inner_lr=0.1, vectorize=False)
    loss, _ = looped.value_and_meta_gradient(tasks)
    single = [float(looped.value_and_meta_gradient([t])[0]) for t in tasks]
    assert float(loss) == pytest.approx(np.mean(single), rel=1e-12)
