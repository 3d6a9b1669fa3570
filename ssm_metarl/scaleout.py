"""MAML-RL sharded by task: each worker rolls out, adapts on and differentiates only its own tasks.

Every worker samples the same tasks and per-task seeds from the same seeded ``MetaEnvironment``;
worker ``r`` takes its slice (``shared.scaleout.task_slice``), collects its episodes with
``rollout_per_task`` (each task's randomness is its own, so the split does not change any episode),
and the meta-gradients are combined by the backend's ``DistributedMetaMAML`` (weighted by task
count). A run on N workers therefore gives the same numbers as the same run on 1 worker, to rounding.

:func:`connect` is the hook ``ssm_metarl.train`` calls: under ``torchrun`` (``WORLD_SIZE`` set) it joins
the process group and returns the :class:`Ranks` that drive the loop; otherwise ``None``. Only rank 0
writes; the other ranks read the run directory (a resume checkpoint) after rank 0 has prepared it, so
multi-host runs need the output directory on a shared file system.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np

from shared.env_runner import MetaEnvironment
from shared.env_runner.per_task import rollout_per_task
from shared.scaleout import task_slice
from ssm_metarl.rl_loop import batches

SYNC_CHECK_ENV = "SSM_METARL_SYNC_CHECK_EVERY"  # opt-in: compare parameter checksums every N steps
TIMEOUT_ENV = "SSM_METARL_COLLECTIVE_TIMEOUT"  # seconds a collective waits for a lost worker (default 120)


class SingleWorker:
    """The one-worker stand-in for ``DistributedMetaMAML``: the same calls, no communication."""

    rank, world_size = 0, 1

    def __init__(self, maml: Any) -> None:
        self.maml = maml

    def local_meta_update(self, local_tasks: list, *, expected_total: int | None = None) -> float:
        if expected_total is not None and expected_total != len(local_tasks):
            raise ValueError(f"one worker holds every task: expected {expected_total}, got {len(local_tasks)}")
        return self.maml.meta_update(local_tasks)

    def reduce_sum(self, values: list[float]) -> list[float]:
        return [float(v) for v in values]


def sharded_meta_iteration(learner: Any, workers: Any, meta_env: MetaEnvironment, n_tasks: int,
                           episodes: int) -> dict[str, float]:
    """One MAML-RL meta-iteration on this worker's slice of ``n_tasks`` tasks; returns the global metrics.

    ``workers`` is a ``DistributedMetaMAML`` over ``learner.maml`` (or :class:`SingleWorker`); ``learner`` is
    any ``shared.learner.MetaRLLearner``.
    """
    tasks = meta_env.sample_tasks(n_tasks)
    seeds = meta_env.rng.integers(2**31, size=(2, n_tasks))  # pre- and post-adaptation rollouts
    mine = task_slice(n_tasks, workers.rank, workers.world_size)
    local = tasks[mine]
    pre_sum = post_sum = 0.0
    local_tasks = []
    if local:
        meta, state = learner.meta_params(), learner.initial_state(len(local), episodes)
        pre = rollout_per_task(meta_env.distribution, local, seeds[0, mine], episodes,
                               learner.act_fn([meta] * len(local), episodes), state)
        support = [learner.convert(b) for b in batches(learner, pre)]
        adapted = learner.adapt_tasks(support)
        post = rollout_per_task(meta_env.distribution, local, seeds[1, mine], episodes,
                                learner.act_fn(adapted, episodes), learner.initial_state(len(local), episodes))
        query = [learner.convert(b) for b in batches(learner, post)]
        local_tasks = [(*s, *q) for s, q in zip(support, query, strict=True)]
        pre_sum = float(np.sum([e.returns.mean() for e in pre]))
        post_sum = float(np.sum([e.returns.mean() for e in post]))
    loss = workers.local_meta_update(local_tasks, expected_total=n_tasks)
    pre_total, post_total = workers.reduce_sum([pre_sum, post_sum])
    return {"pre_return": pre_total / n_tasks, "post_return": post_total / n_tasks, "loss": loss}


@dataclasses.dataclass
class Ranks:
    """This process's place in a torchrun job: rank, world size, and a patient group to wait in."""

    rank: int
    world_size: int
    patient: Any = None  # a gloo group with a long timeout: the other ranks wait there while rank 0 evaluates

    @property
    def writes(self) -> bool:
        """Only rank 0 writes outputs (run directory, checkpoints, metrics, evaluation, plots)."""
        return self.rank == 0

    def iteration_fn(self, learner: Any, meta_env: MetaEnvironment, n_tasks: int, episodes: int) -> Any:
        """One sharded meta-iteration per call, with ``learner.maml`` wrapped (rank 0's weights broadcast)."""
        from torch_impl.meta_rl.distributed import DistributedMetaMAML

        workers = DistributedMetaMAML(learner.maml, check_every=int(os.environ.get(SYNC_CHECK_ENV, "0")))
        return lambda: sharded_meta_iteration(learner, workers, meta_env, n_tasks, episodes)

    def task_shards(self) -> Any:
        """The in-context trainers' split of each meta-batch over these ranks."""
        from torch_impl.meta_rl.distributed import TaskShards

        return TaskShards(self.rank, self.world_size)

    def wait(self) -> None:
        """All ranks meet here (no collective timeout: rank 0 may be evaluating for a long time)."""
        import torch.distributed as dist

        dist.barrier(group=self.patient)


def connect() -> Ranks | None:
    """Under torchrun (``WORLD_SIZE`` set): join the process group; otherwise ``None``."""
    if "WORLD_SIZE" not in os.environ:
        return None
    import datetime

    import torch.distributed as dist

    from torch_impl.meta_rl.distributed import init_distributed

    rank, world = init_distributed(timeout_s=float(os.environ.get(TIMEOUT_ENV, "120")))
    return Ranks(rank, world, dist.new_group(backend="gloo", timeout=datetime.timedelta(hours=24)))


def check_backend(ranks: Ranks | None, backends: list[str], rollouts: list[str] | None = None) -> None:
    """torchrun shards the torch backend's runner path (and the in-context objectives, whose ``rollouts`` is
    passed as ``None``); anything else is refused before any compute."""
    if ranks is not None and any(r not in ("runner", None) for r in rollouts or []):
        raise ValueError("torchrun shards the runner path by task (--rollouts runner); the native path is one "
                         "compiled program per meta-iteration and runs in one process")
    if ranks is not None and any(b != "torch" for b in backends):
        raise ValueError("torchrun runs the torch backend (--backend torch); the JAX backend scales over the "
                         "devices of a jax.sharding.Mesh (jax_impl.meta_rl.distributed; docs/guides/scaling-out.md)")
