"""Scale-out of MetaMAML over ``torch.distributed``: a meta-batch split over ranks by task.

Every rank holds the same model and the same task list (same seed). Rank ``r`` computes
``MetaMAML.value_and_meta_gradient`` of its own contiguous slice of the tasks
(``shared.scaleout.task_slice``), the per-rank results are summed with one ``all_reduce`` weighted by
the rank's task count (so uneven splits such as 5 tasks on 2 ranks give exactly the mean over all
tasks), and every rank then takes the same Adam step with ``MetaMAML.apply_meta_gradient``; the
parameters therefore stay identical on every rank. An opt-in check compares a parameter checksum
across ranks every ``check_every`` steps.

Launch with ``torchrun --nproc_per_node N ...``; :func:`init_distributed` reads torchrun's
environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, ``LOCAL_RANK``), picks gloo on
CPU and NCCL on GPU, and sets a collective timeout so that a dead or stuck worker makes the others
fail with :class:`WorkerFailure` instead of hanging.
"""

from __future__ import annotations

import datetime
import hashlib
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from shared.scaleout import task_counts, task_slice
from torch_impl.meta_rl.meta_maml import MetaMAML, Params

DEFAULT_TIMEOUT_S = 120.0


class WorkerFailure(RuntimeError):
    """A collective failed or timed out: another worker died, hung, or disagreed on the meta-batch."""


def init_distributed(backend: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """Join the process group described by torchrun's environment; returns ``(rank, world_size)``.

    Args:
        backend: ``"gloo"`` or ``"nccl"``; default NCCL when CUDA is available, else gloo.
        timeout_s: seconds a collective may wait for the other workers before it raises.
    """
    missing = [name for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(f"init_distributed expects torchrun's environment; {missing} not set "
                         "(launch with `torchrun --nproc_per_node N ...`)")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, got {timeout_s!r}")
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def parameter_checksum(model: torch.nn.Module) -> int:
    """A 63-bit hash of the exact bytes of every parameter and buffer (names included)."""
    digest = hashlib.blake2b(digest_size=8)
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(np.ascontiguousarray(value.detach().cpu().numpy()).tobytes())
    return int.from_bytes(digest.digest(), "little") >> 1


def collective(workers: Any, fn: Any, *args: Any, **kwargs: Any) -> None:
    """``fn(*args, group=workers.group, **kwargs)``; a failure becomes :class:`WorkerFailure` naming the rank."""
    try:
        fn(*args, group=workers.group, **kwargs)
    except (RuntimeError, dist.DistBackendError) as err:
        raise WorkerFailure(
            f"rank {workers.rank}/{workers.world_size}: {fn.__name__} failed; another worker died, hung past the "
            f"collective timeout or left the group ({type(err).__name__}: {str(err).splitlines()[0]})"
        ) from err


class DistributedMetaMAML:
    """A :class:`MetaMAML` whose meta-batches are split over the ranks of a process group.

    Args:
        maml: this rank's MetaMAML (the same model and settings on every rank).
        group: the process group; default the global one (``init_distributed`` first).
        check_every: compare a parameter checksum across ranks after every ``check_every``-th
            ``apply_meta_gradient`` (0: never); a mismatch raises :class:`WorkerFailure`.
        broadcast: copy rank 0's parameters and buffers to every rank now, so all start equal.
    """

    def __init__(self, maml: MetaMAML, group: Any = None, *, check_every: int = 0, broadcast: bool = True) -> None:
        if not isinstance(maml, MetaMAML):
            raise TypeError(f"maml must be a torch_impl MetaMAML, got {type(maml).__name__}")
        if not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised; call init_distributed() (under torchrun) first")
        if not isinstance(check_every, int) or check_every < 0:
            raise ValueError(f"check_every must be an integer >= 0, got {check_every!r}")
        self.maml, self.group, self.check_every = maml, group, check_every
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.steps = 0
        if broadcast:
            with torch.no_grad():
                for value in [*maml.model.parameters(), *maml.model.buffers()]:
                    self._collective(dist.broadcast, value, src=0)

    # ------------------------------------------------------------ public API (MetaMAML's, distributed)
    def value_and_meta_gradient(self, tasks: Sequence[tuple]) -> tuple[torch.Tensor, Params]:
        """``(mean query loss, meta-gradient)`` over all of ``tasks``; this rank computes only its slice.

        Every rank must pass the same task list. Equals ``MetaMAML.value_and_meta_gradient(tasks)``
        to rounding (float64: 1e-12 relative).
        """
        if not isinstance(tasks, (list, tuple)):
            raise TypeError(f"tasks must be a list of task tuples, got {type(tasks).__name__}")
        if len(tasks) == 0:
            raise ValueError("tasks must be a non-empty list of task tuples, got an empty list")
        mine = list(tasks[task_slice(len(tasks), self.rank, self.world_size)])
        return self.local_value_and_meta_gradient(mine, expected_total=len(tasks))

    def local_value_and_meta_gradient(self, local_tasks: Sequence[tuple], *,
                                      expected_total: int | None = None) -> tuple[torch.Tensor, Params]:
        """The same, when each rank already holds only its own tasks (e.g. its own rollouts).

        Ranks may hold different numbers of tasks, none included; the result is the mean over the
        union, weighted by task count. ``expected_total`` (if given) must equal the summed count.
        """
        count = len(local_tasks)
        template = {name: p for name, p in self.maml.model.named_parameters() if p.requires_grad}
        error = None
        try:
            if not count:
                raise LookupError  # this rank has no task: it adds zero
            loss, grads = self.maml.value_and_meta_gradient(list(local_tasks))
        except (LookupError, ValueError, TypeError) as err:  # bad input here: still join the all-reduce
            error = None if isinstance(err, LookupError) else err
            loss = torch.zeros((), dtype=next(iter(template.values())).dtype)
            grads = {name: torch.zeros_like(p) for name, p in template.items()}
        names = list(grads)
        device = next(iter(template.values())).device
        # one all-reduce carries the count-weighted gradients and loss, the count, the ranks' claimed
        # meta-batch size e and e**2 (all ranks agree iff sum(e)**2 == world * sum(e**2)), and how many
        # ranks could not compute their slice
        expected = 0.0 if expected_total is None else float(expected_total)
        tail = torch.tensor([count, expected, expected**2, error is not None], dtype=torch.float64, device=device)
        comm = torch.float64 if loss.dtype == torch.float64 else torch.float32  # counts stay exact
        flat = torch.cat([grads[name].detach().reshape(-1).to(device, comm) * count for name in names]
                         + [(loss.detach().to(device, comm) * count).reshape(1), tail.to(comm)])
        self._collective(dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        total, claimed, claimed_sq, failed = (round(float(v)) for v in flat[-4:])
        if error is not None:
            raise error
        if failed:
            raise ValueError(f"{failed} other rank(s) could not compute their slice of the meta-batch (bad input "
                             "there, see their error); the model was not changed")
        if claimed**2 != self.world_size * claimed_sq or (expected_total is not None and total != expected_total):
            raise WorkerFailure(f"ranks disagree on the meta-batch: rank {self.rank} has {expected_total} tasks, "
                                f"the ranks' slices add up to {total}; every rank must pass the same task list")
        if total == 0:
            raise ValueError("no rank holds a task; expected at least one task in the meta-batch")
        flat = flat[:-4] / total
        out, offset = {}, 0
        for name in names:
            size = grads[name].numel()
            out[name] = flat[offset:offset + size].view_as(grads[name]).to(grads[name].device, grads[name].dtype)
            offset += size
        return flat[offset].to(loss.device, loss.dtype), out

    def apply_meta_gradient(self, grads: Params) -> None:
        """One Adam step with the (all-reduced) meta-gradient; the same step on every rank."""
        self.maml.apply_meta_gradient(grads)
        self.steps += 1
        if self.check_every and self.steps % self.check_every == 0:
            self.check_in_sync()

    def meta_gradient(self, tasks: Sequence[tuple]) -> Params:
        return self.value_and_meta_gradient(tasks)[1]

    def meta_update(self, tasks: Sequence[tuple]) -> float:
        """One distributed outer step on ``tasks`` (the whole meta-batch); returns the mean query loss."""
        loss, grads = self.value_and_meta_gradient(tasks)
        return self._step(loss, grads)

    def local_meta_update(self, local_tasks: Sequence[tuple], *, expected_total: int | None = None) -> float:
        """One distributed outer step when each rank holds only its own tasks."""
        loss, grads = self.local_value_and_meta_gradient(local_tasks, expected_total=expected_total)
        return self._step(loss, grads)

    def check_in_sync(self) -> None:
        """Raise :class:`WorkerFailure` unless every rank holds bit-identical parameters and buffers."""
        device = next(self.maml.model.parameters()).device
        mine = torch.tensor([parameter_checksum(self.maml.model)], dtype=torch.int64, device=device)
        everyone = [torch.zeros_like(mine) for _ in range(self.world_size)]
        self._collective(dist.all_gather, everyone, mine)
        sums = [int(t.item()) for t in everyone]
        if len(set(sums)) != 1:
            raise WorkerFailure(f"parameters diverged across ranks after step {self.steps}: checksums {sums}")

    def reduce_sum(self, values: Sequence[float]) -> list[float]:
        """Sum plain numbers (metrics) over the ranks, in float64."""
        device = next(self.maml.model.parameters()).device
        buffer = torch.tensor(list(values), dtype=torch.float64, device=device)
        self._collective(dist.all_reduce, buffer, op=dist.ReduceOp.SUM)
        return buffer.tolist()

    # ------------------------------------------------------------ internals
    def _step(self, loss: torch.Tensor, grads: Params) -> float:
        if not bool(torch.isfinite(loss)):  # the all-reduced loss: every rank refuses alike
            raise ValueError("meta_update: the query loss is NaN/Inf; the model was not changed")
        self.apply_meta_gradient(grads)
        return float(loss)

    def _collective(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        collective(self, fn, *args, **kwargs)


class TaskShards:
    """This process's share of a meta-batch split by task over ``torch.distributed`` ranks.

    The trainers that need the whole batch for a statistic (``torch_impl/meta_rl/incontext.py``
    normalises advantages over every trial) compute their own tasks (:meth:`mine`), :meth:`gather`
    the results, and :meth:`sum` their gradients. ``TaskShards()`` is one process holding every task
    (each call the identity), so one code path serves one process and many.

    Args:
        rank: this process's rank in ``[0, world_size)`` (:meth:`from_process_group` reads it from the group).
        world_size: the number of ranks sharing each meta-batch.
        group: the process group to split over (with ``world_size > 1``; default: the world).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, group: Any = None) -> None:
        task_slice(max(world_size, 1), rank, world_size)  # refuses a rank outside [0, world_size)
        self.rank, self.world_size, self.group = rank, world_size, group

    @classmethod
    def from_process_group(cls, group: Any = None) -> TaskShards:
        """This rank's shards of the initialised process group (``init_distributed`` first)."""
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("TaskShards.from_process_group needs an initialised process group "
                             "(call init_distributed() under torchrun first)")
        return cls(dist.get_rank(group), dist.get_world_size(group), group)

    def mine(self, n_tasks: int) -> slice:
        """The contiguous slice of ``n_tasks`` tasks this rank computes (``shared.scaleout.task_slice``)."""
        return task_slice(n_tasks, self.rank, self.world_size)

    def gather(self, local: torch.Tensor, n_tasks: int) -> torch.Tensor:
        """Every rank's ``local (n_mine, ...)`` concatenated in rank order: ``(n_tasks, ...)`` on every rank."""
        if self.world_size == 1:
            return local
        counts = task_counts(n_tasks, self.world_size)
        padded = local.new_zeros((max(counts), *local.shape[1:]))
        padded[: local.shape[0]] = local
        everyone = [torch.empty_like(padded) for _ in counts]
        self._collective(dist.all_gather, everyone, padded)
        return torch.cat([part[:count] for part, count in zip(everyone, counts, strict=True)])

    def sum(self, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each tensor summed over the ranks (one ``all_reduce`` of their concatenation)."""
        if self.world_size == 1:
            return tensors
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._collective(dist.all_reduce, flat, op=dist.ReduceOp.SUM)
        return [part.view_as(t) for part, t in zip(flat.split([t.numel() for t in tensors]), tensors, strict=True)]

    def _collective(self, fn: Any, *args: Any, **kwargs: Any) -> None:
        collective(self, fn, *args, **kwargs)
