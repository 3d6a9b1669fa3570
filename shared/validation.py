"""Backend-neutral input checks that produce messages naming what was expected."""

from __future__ import annotations

from collections.abc import Sequence


def check_rank_and_width(name: str, shape: Sequence[int], ranks: Sequence[int], width: int, width_name: str) -> None:
    """``shape`` must have one of ``ranks`` dimensions and a last dimension of ``width``."""
    if len(shape) not in ranks:
        expected = " or ".join(f"{r}-D" for r in ranks)
        raise ValueError(
            f"{name} must be {expected} with last dimension {width_name}={width}, got shape {tuple(shape)}"
        )
    if shape[-1] != width:
        raise ValueError(f"{name} must have last dimension {width_name}={width}, got shape {tuple(shape)}")


def check_shape(name: str, shape: Sequence[int], expected: Sequence[int]) -> None:
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)}, got {tuple(shape)}")


def check_task_tuple(index: int, task: object) -> tuple:
    """A task is ``(x, y)`` or ``(support_x, support_y, query_x, query_y)``; returns the 4-tuple."""
    if not isinstance(task, (tuple, list)) or len(task) not in (2, 4):
        kind = type(task).__name__
        got = f"a {kind} of length {len(task)}" if isinstance(task, (tuple, list)) else kind
        raise ValueError(
            f"task {index} must be a 2-tuple (x, y) or a 4-tuple (support_x, support_y, query_x, query_y), got {got}"
        )
    return tuple(task) if len(task) == 4 else (task[0], task[1], task[0], task[1])


def check_tasks(tasks: object) -> list[tuple]:
    if not isinstance(tasks, (list, tuple)):
        raise TypeError(f"tasks must be a list of task tuples, got {type(tasks).__name__}")
    if len(tasks) == 0:
        raise ValueError("tasks must be a non-empty list of task tuples, got an empty list")
    return [check_task_tuple(i, task) for i, task in enumerate(tasks)]
