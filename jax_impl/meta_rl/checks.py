"""MetaMAML's public-boundary checks, JAX side (twin of ``torch_impl/meta_rl/checks.py``).

Every function raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, size,
value) with a message from ``shared/messages.py``, so the same bad input reads the same in both
backends. Finiteness of task data is not checked here for the meta-steps: the compiled step
computes a flag, and :func:`name_non_finite` names the culprit only when that flag fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.core.ssm import type_name
from shared import messages
from shared.validation import check_tasks as check_task_tuples

ARRAY = "jax or numpy array"
Task = tuple[Any, Any, Any, Any]


def check_leaves(name: str, value: Any, dtype: Any) -> list[tuple[str, Any]]:
    """``value``: an array or a (nested) tuple of them, floating ones in the model's dtype."""
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in check_leaves(f"{name}[{i}]", v, dtype)]
    if not isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(messages.not_an_array(name, ARRAY, type_name(value)))
    if jnp.issubdtype(value.dtype, jnp.floating) and value.dtype != dtype:
        raise TypeError(messages.wrong_dtype(name, str(jnp.dtype(dtype)), str(value.dtype)))
    return [(name, value)]


def check_pair(where: str, names: tuple[str, str], data: Any, labels: Any, dtype: Any) -> list[tuple[str, Any]]:
    """Types, dtypes and one leading (batch) size >= 1; returns the named leaves."""
    leaves = check_leaves(names[0], data, dtype) + check_leaves(names[1], labels, dtype)
    sizes = {}
    for name, a in leaves:
        if np.ndim(a) == 0:
            raise ValueError(messages.no_batch_axis(name))
        sizes[name] = np.shape(a)[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(messages.batch_sizes(where, sizes))
    if next(iter(sizes.values())) == 0:
        raise ValueError(messages.empty_batch(names[0]))
    return leaves


def check_finite(leaves: list[tuple[str, Any]]) -> None:
    """The first floating array with a NaN or Inf is named in the error."""
    for name, a in leaves:
        if jnp.issubdtype(a.dtype, jnp.floating) and not np.isfinite(np.asarray(a)).all():
            raise ValueError(messages.not_finite(name))


def check_task(index: int, task: Task, dtype: Any) -> list[tuple[str, Any]]:
    support_x, support_y, query_x, query_y = (messages.part_name(index, p) for p in messages.PARTS)
    return (check_pair(f"task {index} support", (support_x, support_y), task[0], task[1], dtype)
            + check_pair(f"task {index} query", (query_x, query_y), task[2], task[3], dtype))


def stack_tasks(tasks: Sequence[tuple], dtype: Any, vectorize: bool) -> tuple[list[Task], Any]:
    """The tasks as 4-tuples, and the batch the pure functions take: with ``vectorize`` one tuple of
    arrays with a leading task axis (``vmap``), else the list of tasks (as jax arrays).

    Checks types, dtypes, batch sizes and (``vectorize``) equal shapes. The common case (numpy or
    jax arrays of the right dtype, equal shapes) is recognised leaf by leaf without building names;
    anything else goes through :func:`check_task`, which names the part at fault.
    """
    checked = check_task_tuples(tasks)
    flat, treedef = jax.tree.flatten(checked[0])
    shapes = [np.shape(leaf) for leaf in flat]
    columns = [[leaf] for leaf in flat]
    all_numpy = _fast_ok(flat, dtype)
    if all_numpy is None or not _sizes_ok(checked[0], flat, treedef):
        check_task(0, checked[0], dtype)
    for i, task in enumerate(checked[1:], start=1):
        leaves, other = jax.tree.flatten(task)
        ok = _fast_ok(leaves, dtype)
        same = other == treedef and [np.shape(leaf) for leaf in leaves] == shapes
        if ok is None or (not same and not (vectorize or _sizes_ok(task, leaves, other))):
            check_task(i, task, dtype)
        if not vectorize:
            continue
        if not same:
            check_task(i, task, dtype)
            raise ValueError(messages.ragged_tasks(i, describe(checked[0]), describe(task)))
        all_numpy = all_numpy and ok
        for column, leaf in zip(columns, leaves, strict=True):
            column.append(leaf)
    if not vectorize:
        return checked, [jax.tree.map(jnp.asarray, task) for task in checked]
    if all_numpy:  # stacked on the host: one transfer per leaf with the compiled call
        stacked = [column[0][None] if len(column) == 1 else np.stack(column) for column in columns]
    else:
        stacked = _stack_on_device(columns)
    return checked, jax.tree.unflatten(treedef, stacked)


def name_non_finite(tasks: list[Task], dtype: Any) -> None:
    """After the step's flag said 'inputs not finite': raise the error naming the first bad part."""
    for i, task in enumerate(tasks):
        check_finite(check_task(i, task, dtype))


def check_grads(grads: Any, params_def: Any, params: list) -> list:
    """``grads`` must be a tree of arrays with the parameters' structure, shapes and dtypes; returns its leaves."""
    if not isinstance(grads, (nnx.State, dict)):
        raise TypeError(messages.grads_not_like_params("an nnx.State", type_name(grads)))
    leaves, treedef = jax.tree.flatten(grads)
    if treedef != params_def:
        expected = [jax.tree_util.keystr(path) for path in _paths(params_def)]
        got = [jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_leaves_with_path(grads)]
        raise ValueError(messages.grads_keys(expected, got))
    for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), params, strict=True):
        name = jax.tree_util.keystr(path)
        expected = f"shape {tuple(p.shape)}, dtype {p.dtype}"
        if not isinstance(g, (jax.Array, np.ndarray)):
            raise TypeError(messages.grads_leaf(name, expected, type_name(g)))
        if g.shape != p.shape or g.dtype != p.dtype:
            raise ValueError(messages.grads_leaf(name, expected, f"{tuple(g.shape)} {g.dtype}"))
    return leaves


def _paths(treedef: Any) -> list:
    """The key paths of a tree structure's leaves."""
    tree = jax.tree.unflatten(treedef, range(treedef.num_leaves))
    return [path for path, _ in jax.tree_util.tree_leaves_with_path(tree)]


def describe(tree: Any) -> Any:
    """Shapes of a task, as the messages show them: nested tuples of shape tuples."""
    if isinstance(tree, (tuple, list)):
        return tuple(describe(v) for v in tree)
    if hasattr(tree, "shape"):
        return tuple(tree.shape)
    return type_name(tree)


def _fast_ok(leaves: list, dtype: Any) -> bool | None:
    """True if every leaf is a numpy array of an accepted dtype, False if some are jax arrays, None if
    a leaf is not accepted at all (the caller then runs the slow check that names it)."""
    numpy = True
    for leaf in leaves:
        if type(leaf) is np.ndarray:
            pass
        elif isinstance(leaf, jax.Array):
            numpy = False
        else:
            return None
        if leaf.dtype != dtype and leaf.dtype.kind not in "iub":
            return None
    return numpy


def _sizes_ok(task: Task, leaves: list, treedef: Any) -> bool:
    """Batch sizes agree within the task and are >= 1 (shapes are equal across stacked tasks, so one
    task suffices there)."""
    if len(treedef.children()) != 4 or any(np.ndim(leaf) == 0 for leaf in leaves):
        return False
    support = [np.shape(leaf)[0] for leaf in jax.tree.leaves(task[:2])]
    query = [np.shape(leaf)[0] for leaf in jax.tree.leaves(task[2:])]
    return len(set(support)) == 1 and len(set(query)) == 1 and support[0] > 0 and query[0] > 0


@jax.jit
def _stack_on_device(columns: list[list[Any]]) -> list[jax.Array]:
    return [jnp.stack(column) for column in columns]
