"""Scale-out of MetaMAML over a ``jax.sharding.Mesh``: the stacked task axis sharded over devices.

The twin of ``torch_impl/meta_rl/distributed.py`` (same names, same semantics). The stacked task batch
is placed with ``NamedSharding(mesh, P("tasks"))`` and the meta-gradient is one ``jit``-compiled
``jax.value_and_grad`` of the task-weighted mean of ``MetaMAML.task_query_loss``: XLA's partitioner
runs each device's tasks where they live and all-reduces the sum. Parameters are replicated
(``P()``), so every device (and every process) takes the same ``optax`` step through
``MetaMAML.apply_meta_gradient``. Shards must have equal shapes, so a task count that does not
divide the mesh (5 tasks on 2 devices) is padded with copies of task 0 whose weight is 0; the result
is exactly the mean over the real tasks.

Multi-host: call :func:`init_distributed` (``jax.distributed.initialize``) in every process before
anything else touches JAX; ``jax.devices()`` then lists every process's devices, the default mesh
spans all of them, and each process passes the same task list (same seed) and supplies the shards
its own devices hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jax_impl.meta_rl.meta_maml import MetaMAML, Params
from shared.scaleout import padded_size
from shared.validation import check_tasks

AXIS = "tasks"
DEFAULT_TIMEOUT_S = 120.0


class WorkerFailure(RuntimeError):
    """Workers disagree: parameters diverged across processes, or the meta-batch differs."""


def init_distributed(coordinator_address: str | None = None, num_processes: int | None = None,
                     process_id: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """``jax.distributed.initialize`` for multi-host runs; returns ``(process_index, process_count)``.

    With no arguments JAX detects the cluster (SLURM, Open MPI, Cloud TPU). ``timeout_s`` bounds both
    the wait for the other processes at start-up and the heartbeat after which a dead process makes
    the others fail instead of hanging.
    """
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               initialization_timeout=int(timeout_s), heartbeat_timeout_seconds=int(timeout_s))
    return jax.process_index(), jax.process_count()


def make_mesh(workers: int | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"tasks"`` over the first ``workers`` of ``devices`` (default: all devices)."""
    devices = list(jax.devices() if devices is None else devices)
    workers = len(devices) if workers is None else workers
    if not isinstance(workers, int) or not 1 <= workers <= len(devices):
        raise ValueError(f"workers must be an integer in [1, {len(devices)}] (the devices available), got {workers!r}")
    return Mesh(np.array(devices[:workers]), (AXIS,))


def parameter_checksum(model: nnx.Module) -> int:
    """A 63-bit hash of the exact bytes of every variable of ``model`` (paths included)."""
    digest = hashlib.blake2b(digest_size=8)
    for path, value in sorted(jax.tree.leaves_with_path(nnx.state(model)), key=lambda item: str(item[0])):
        digest.update(str(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(value)).tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


class DistributedMetaMAML:
    """A :class:`MetaMAML` whose meta-batches are sharded over the devices of ``mesh`` by task.

    Args:
        maml: the MetaMAML (in multi-host runs: the same model and settings in every process).
        mesh: a mesh with a ``"tasks"`` axis (:func:`make_mesh`); default every device.
        check_every: compare a parameter checksum across processes after every ``check_every``-th
            ``apply_meta_gradient`` (0: never); a mismatch raises :class:`WorkerFailure`.
    """

    def __init__(self, maml: MetaMAML, mesh: Mesh | None = None, *, check_every: int = 0) -> None:
        if not isinstance(maml, MetaMAML):
            raise TypeError(f"maml must be a jax_impl MetaMAML, got {type(maml).__name__}")
        mesh = make_mesh() if mesh is None else mesh
        if not isinstance(mesh, Mesh) or AXIS not in mesh.axis_names:
            raise ValueError(f"mesh must be a jax.sharding.Mesh with a {AXIS!r} axis (see make_mesh), got {mesh!r}")
        if not isinstance(check_every, int) or check_every < 0:
            raise ValueError(f"check_every must be an integer >= 0, got {check_every!r}")
        self.maml, self.mesh, self.check_every = maml, mesh, check_every
        # processes split the rollouts (torch's ranks); the mesh's devices split the meta-gradient
        self.rank, self.world_size = jax.process_index(), jax.process_count()
        self.devices = mesh.shape[AXIS]
        self.steps = 0
        self._replicated = NamedSharding(mesh, P())
        self._by_task = NamedSharding(mesh, P(AXIS))
        self._value_and_grad = jax.jit(jax.value_and_grad(self._weighted_loss), out_shardings=self._replicated)

    # ------------------------------------------------------------ public API (MetaMAML's, sharded)
    def value_and_meta_gradient(self, tasks: Sequence[tuple]) -> tuple[jax.Array, Params]:
        """``(mean query loss, meta-gradient)`` over ``tasks``, each device computing its shard of tasks.

        Equals ``MetaMAML.value_and_meta_gradient(tasks)`` to rounding (float64: 1e-12 relative).
        The results are replicated over the mesh.
        """
        return self._value_and_grad(*self._arguments(tasks))

    def local_value_and_meta_gradient(self, local_tasks: Sequence[tuple], *,
                                      expected_total: int | None = None) -> tuple[jax.Array, Params]:
        """The same, when each process holds only its own tasks (e.g. its own rollouts).

        Processes may hold different numbers of tasks, none included; the result is the mean over the
        union, weighted by task count. ``expected_total`` (if given) must equal the summed count.
        """
        from jax.experimental import multihost_utils

        count = len(local_tasks)
        claimed = -1 if expected_total is None else expected_total
        counts = np.asarray(multihost_utils.process_allgather(np.array([count, claimed]))).reshape(-1, 2)
        total = int(counts[:, 0].sum())
        if len(set(counts[:, 1].tolist())) != 1 or (expected_total is not None and total != expected_total):
            raise WorkerFailure(f"processes disagree on the meta-batch: process {self.rank} expects {expected_total} "
                                f"tasks, the processes hold {counts[:, 0].tolist()}")
        if total == 0:
            raise ValueError("no process holds a task; expected at least one task in the meta-batch")
        if jax.process_count() == 1:
            return self.value_and_meta_gradient(local_tasks)
        # every process supplies the same number of rows (a multiple of its devices), padded with weight 0
        local_devices = self.devices // jax.process_count()
        rows = padded_size(max(int(counts[:, 0].max()), 1), local_devices)
        if count:
            stacked, _ = self._stack(local_tasks)
        else:  # nothing here: any valid task shape will do, with weight 0 (the first process's structure)
            raise ValueError(f"process {self.rank} holds no task; give every process at least one task")
        padded = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[:1], rows - count, axis=0)]), stacked)
        weights = np.concatenate([np.full(count, 1.0 / total), np.zeros(rows - count)]).astype(self._dtype())

        def place(local: np.ndarray) -> jax.Array:
            return jax.make_array_from_process_local_data(
                self._by_task, local, (rows * jax.process_count(), *local.shape[1:]))

        _, params, rest = nnx.split(self.maml.model, nnx.Param, ...)
        return self._value_and_grad(self._place(params, self._replicated), self._place(rest, self._replicated),
                                    jax.tree.map(place, padded), place(weights))

    def apply_meta_gradient(self, grads: Params) -> None:
        """One optax Adam step with the (replicated) meta-gradient; the same step on every device and process."""
        own = nnx.state(self.maml.model, nnx.Param)
        local = jax.tree.map(lambda g, p: jax.device_put(_local_copy(g), p.sharding), grads, own)
        self.maml.apply_meta_gradient(local)
        self.steps += 1
        if self.check_every and self.steps % self.check_every == 0:
            self.check_in_sync()

    def meta_gradient(self, tasks: Sequence[tuple]) -> Params:
        return self.value_and_meta_gradient(tasks)[1]

    def meta_update(self, tasks: Sequence[tuple]) -> float:
        """One sharded outer step on ``tasks`` (the whole meta-batch); returns the mean query loss."""
        loss, grads = self.value_and_meta_gradient(tasks)
        return self._step(loss, grads)

    def local_meta_update(self, local_tasks: Sequence[tuple], *, expected_total: int | None = None) -> float:
        """One sharded outer step when each process holds only its own tasks."""
        loss, grads = self.local_value_and_meta_gradient(local_tasks, expected_total=expected_total)
        return self._step(loss, grads)

    def reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum plain numbers (metrics) over the processes, in float64."""
        from jax.experimental import multihost_utils

        gathered = np.asarray(multihost_utils.process_allgather(np.asarray(values, np.float64)))
        return gathered.reshape(jax.process_count(), -1).sum(axis=0).tolist()

    def check_in_sync(self) -> None:
        """Raise :class:`WorkerFailure` unless every process holds bit-identical variables."""
        from jax.experimental import multihost_utils

        mine = parameter_checksum(self.maml.model)
        everyone = [int(v) for v in np.asarray(multihost_utils.process_allgather(np.array([mine], np.uint64))).ravel()]
        if len(set(everyone)) != 1:
            raise WorkerFailure(f"parameters diverged across processes after step {self.steps}: checksums {everyone}")

    # ------------------------------------------------------------ internals
    def _step(self, loss: jax.Array, grads: Params) -> float:
        if not bool(jnp.isfinite(_local_copy(loss))):  # the reduced loss: every process refuses alike
            raise ValueError("meta_update: the query loss is NaN/Inf; the model was not changed")
        self.apply_meta_gradient(grads)
        return float(_local_copy(loss))

    def _arguments(self, tasks: Sequence[tuple]) -> tuple:
        """``(params, rest, tasks, weights)`` placed on the mesh: the task axis padded and sharded."""
        stacked, n = self._stack(tasks)
        size = padded_size(n, self.devices)
        padded = jax.tree.map(lambda a: np.concatenate([a, np.repeat(a[:1], size - n, axis=0)]), stacked)
        weights = np.concatenate([np.full(n, 1.0 / n), np.zeros(size - n)]).astype(self._dtype())
        _, params, rest = nnx.split(self.maml.model, nnx.Param, ...)
        return (self._place(params, self._replicated), self._place(rest, self._replicated),
                self._place(padded, self._by_task), self._place(weights, self._by_task))

    def _weighted_loss(self, params: Params, rest: nnx.State, tasks: tuple, weights: jax.Array) -> jax.Array:
        """Pure: ``sum_i weights[i] * task_query_loss(task i)``; the weights are ``1/n`` or 0 (padding)."""
        losses = jax.vmap(self.maml.task_query_loss, in_axes=(None, None, 0))(params, rest, tasks)
        return jnp.sum(losses * weights)

    def _dtype(self) -> np.dtype:
        return np.dtype(jax.tree.leaves(nnx.state(self.maml.model, nnx.Param))[0].dtype)

    def _place(self, tree: Any, sharding: NamedSharding) -> Any:
        """Host or device values -> global arrays laid out by ``sharding`` (works across processes)."""
        if jax.process_count() == 1:
            return jax.device_put(tree, sharding)

        def place(value: Any) -> jax.Array:
            host = np.asarray(value)
            return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

        return jax.tree.map(place, tree)

    def _stack(self, tasks: Sequence[tuple]) -> tuple[tuple, int]:
        """A list of tasks -> ``(tuple of host arrays with a leading task axis, task count)``, checked."""
        dtype = self._dtype()
        checked = []
        for i, task in enumerate(check_tasks(tasks)):
            parts = []
            for part, value in zip(("support_x", "support_y", "query_x", "query_y"), task, strict=True):
                parts.append(jax.tree.map(lambda v, name=f"task {i} {part}": _host_array(name, v, dtype), value))
            checked.append(tuple(parts))
        shapes = [jax.tree.map(np.shape, t) for t in checked]
        for i, shape in enumerate(shapes):
            if jax.tree.structure(checked[i]) != jax.tree.structure(checked[0]) or shape != shapes[0]:
                raise ValueError(f"all tasks must have the same structure and shapes to be sharded: task 0 has "
                                 f"{shapes[0]}, task {i} has {shape}")
        return jax.tree.map(lambda *leaves: np.stack(leaves), *checked), len(checked)


def _host_array(name: str, value: Any, dtype: np.dtype) -> np.ndarray:
    if not isinstance(value, (jax.Array, np.ndarray)):
        raise TypeError(f"{name} must be a jax or numpy array (or a tuple of them), got {type(value).__name__}")
    host = np.asarray(value)
    if jnp.issubdtype(value.dtype, jnp.floating):
        if value.dtype != dtype:
            raise TypeError(f"{name} must have dtype {dtype} (the model's), got {value.dtype}")
        if not np.isfinite(host).all():
            raise ValueError(f"{name} contains NaN or Inf; expected finite values")
    return host


def _local_copy(value: jax.Array) -> jax.Array:
    """This process's copy of a replicated global array (a single-device array)."""
    return value.addressable_data(0) if isinstance(value, jax.Array) else value
