"""Backend-neutral scale-out arithmetic: how a meta-batch of tasks is split over workers.

Both ``torch_impl/meta_rl/distributed.py`` (ranks of ``torch.distributed``) and
``jax_impl/meta_rl/distributed.py`` (devices of a ``jax.sharding.Mesh``) split the task axis into
contiguous slices. torch ranks take :func:`task_counts` (the first ``n_tasks % workers`` ranks hold one
task more); JAX pads the axis to :func:`padded_size` with masked (zero-weight) tasks, because shards
must have equal shapes. A worker may hold no real task when there are fewer tasks than workers; it then
contributes zero. Either way the result is the mean over the real tasks, weighted by task count.
"""

from __future__ import annotations


def _check(n_tasks: int, workers: int) -> None:
    if not isinstance(n_tasks, int) or isinstance(n_tasks, bool) or n_tasks < 1:
        raise ValueError(f"n_tasks must be a positive integer, got {n_tasks!r}")
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")


def task_counts(n_tasks: int, workers: int) -> list[int]:
    """Tasks per worker, e.g. ``task_counts(5, 2) == [3, 2]`` and ``task_counts(3, 4) == [1, 1, 1, 0]``."""
    _check(n_tasks, workers)
    base, extra = divmod(n_tasks, workers)
    return [base + (1 if w < extra else 0) for w in range(workers)]


def task_slice(n_tasks: int, rank: int, workers: int) -> slice:
    """The contiguous slice of the task list that worker ``rank`` (0-based) computes."""
    counts = task_counts(n_tasks, workers)
    if not isinstance(rank, int) or not 0 <= rank < workers:
        raise ValueError(f"rank must be an integer in [0, {workers}), got {rank!r}")
    start = sum(counts[:rank])
    return slice(start, start + counts[rank])


def padded_size(n_tasks: int, workers: int) -> int:
    """The task axis padded up to a multiple of ``workers`` (JAX shards need equal shapes)."""
    _check(n_tasks, workers)
    return -(-n_tasks // workers) * workers
