"""MetaMAML's public-boundary checks, PyTorch side (twin of ``jax_impl/meta_rl/checks.py``).

Every function raises ``TypeError`` (wrong type or dtype) or ``ValueError`` (wrong shape, size,
value) with a message from ``shared/messages.py``, so the same bad input reads the same in both
backends. Finiteness of task data is not checked here for the meta-steps: the compiled step
computes a flag, and :func:`name_non_finite` names the culprit only when that flag fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shared import messages
from shared.validation import check_tasks as check_task_tuples
from torch_impl._private import all_finite_eager

ARRAY = "torch.Tensor"
Task = tuple[Any, Any, Any, Any]

def type_name(value: object) -> str:
    return type(value).__name__


def check_leaves(name: str, value: Any, reference: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """``value``: a tensor or a (nested) tuple of them, on the model's device, floating ones in its dtype."""
    if isinstance(value, (tuple, list)):
        return [item for i, v in enumerate(value) for item in check_leaves(f"{name}[{i}]", v, reference)]
    if not isinstance(value, torch.Tensor):
        raise TypeError(messages.not_an_array(name, ARRAY, type_name(value)))
    if value.is_floating_point() and value.dtype != reference.dtype:
        raise TypeError(messages.wrong_dtype(name, str(reference.dtype), str(value.dtype)))
    if value.device != reference.device:
        raise ValueError(messages.wrong_device(name, str(reference.device), str(value.device)))
    return [(name, value)]


def check_pair(where: str, names: tuple[str, str], data: Any, labels: Any,
               reference: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    """Types, dtypes, devices and one leading (batch) size >= 1; returns the named leaves."""
    leaves = check_leaves(names[0], data, reference) + check_leaves(names[1], labels, reference)
    sizes = {}
    for name, t in leaves:
        if t.dim() == 0:
            raise ValueError(messages.no_batch_axis(name))
        sizes[name] = t.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(messages.batch_sizes(where, sizes))
    if next(iter(sizes.values())) == 0:
        raise ValueError(messages.empty_batch(names[0]))
    return leaves


def check_finite(leaves: list[tuple[str, torch.Tensor]]) -> None:
    """One host sync for every floating tensor; the first non-finite one is named in the error."""
    floats = [(name, t) for name, t in leaves if t.is_floating_point()]
    if floats and not all_finite_eager([t for _, t in floats]):
        bad = next(name for name, t in floats if not bool(torch.isfinite(t).all()))
        raise ValueError(messages.not_finite(bad))


def check_task(index: int, task: Task, reference: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    support_x, support_y, query_x, query_y = (messages.part_name(index, p) for p in messages.PARTS)
    return (check_pair(f"task {index} support", (support_x, support_y), task[0], task[1], reference)
            + check_pair(f"task {index} query", (query_x, query_y), task[2], task[3], reference))


def check_tasks(tasks: Sequence[tuple], reference: torch.Tensor, vectorize: bool) -> list[Task]:
    """The tasks as 4-tuples; types, dtypes, devices and batch sizes, and (``vectorize``) equal shapes."""
    checked = check_task_tuples(tasks)
    first = signature(checked[0])
    check_task(0, checked[0], reference)
    for i, task in enumerate(checked[1:], start=1):
        same = signature(task) == first
        if not same or not vectorize:
            check_task(i, task, reference)
        if vectorize and not same:
            raise ValueError(messages.ragged_tasks(i, describe(checked[0]), describe(task)))
    return checked


def name_non_finite(tasks: list[Task], reference: torch.Tensor) -> None:
    """After the step's flag said 'inputs not finite': raise the error naming the first bad part."""
    for i, task in enumerate(tasks):
        check_finite(check_task(i, task, reference))


def check_grads(grads: Any, params: dict[str, torch.Tensor]) -> None:
    if not isinstance(grads, dict):
        raise TypeError(messages.grads_not_like_params("a dict", type_name(grads)))
    if set(grads) != set(params):
        raise ValueError(messages.grads_keys(list(params), list(grads)))
    for name, p in params.items():
        g = grads[name]
        if not isinstance(g, torch.Tensor):
            raise TypeError(messages.grads_leaf(f"[{name!r}]", f"shape {tuple(p.shape)}, dtype {p.dtype}",
                                                type_name(g)))
        if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
            raise ValueError(messages.grads_leaf(f"[{name!r}]", f"shape {tuple(p.shape)}, dtype {p.dtype}",
                                                 f"{tuple(g.shape)} {g.dtype} on {g.device}"))


def signature(tree: Any) -> Any:
    """Structure, shapes and dtypes of a tensor tree (tuples, lists, dicts of tensors)."""
    if isinstance(tree, torch.Tensor):
        return tuple(tree.shape), tree.dtype, tree.device.type
    if isinstance(tree, dict):
        return tuple((k, signature(v)) for k, v in tree.items())
    if isinstance(tree, (tuple, list)):
        return type(tree).__name__, tuple(signature(v) for v in tree)
    return type(tree).__name__


def describe(tree: Any) -> Any:
    """Shapes of a task, as the messages show them: nested tuples of shape tuples."""
    if isinstance(tree, torch.Tensor):
        return tuple(tree.shape)
    if isinstance(tree, (tuple, list)):
        return tuple(describe(v) for v in tree)
    return type_name(tree)
