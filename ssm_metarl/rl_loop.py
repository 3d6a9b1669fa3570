"""One MAML-RL meta-iteration and the held-out evaluation, for either backend's ``MAMLRL``.

Both backends' ``MAMLRL`` have the same methods (``meta_params``, ``act_fn``, ``initial_state``,
``adapt``, ``meta_update``), so this loop is written once, above both.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from shared.env_runner import MetaEnvironment
from shared.env_runner.tasks import Task
from shared.rl import Episodes, RLBatch, to_batch


def rollout(learner: Any, meta_env: MetaEnvironment, tasks: list[Task], params: list[Any],
            episodes: int) -> list[Episodes]:
    act = learner.act_fn(params, episodes)
    return meta_env.rollout(tasks, episodes, act, learner.initial_state(len(tasks), episodes))


def batches(learner: Any, episodes: list[Episodes]) -> list[RLBatch]:
    return [to_batch(e, dtype=learner.dtype_name) for e in episodes]


def meta_iteration(learner: Any, meta_env: MetaEnvironment, n_tasks: int, episodes: int) -> dict[str, float]:
    """Sample tasks; roll out, adapt, roll out again; one outer step. Returns mean returns and the loss."""
    tasks = meta_env.sample_tasks(n_tasks)
    meta = learner.meta_params()
    pre = rollout(learner, meta_env, tasks, [meta] * n_tasks, episodes)
    support = batches(learner, pre)
    adapted = [learner.adapt(b) for b in support]
    post = rollout(learner, meta_env, tasks, adapted, episodes)
    loss = learner.meta_update(list(zip(support, batches(learner, post), strict=True)))
    return {"pre_return": float(np.mean([e.returns.mean() for e in pre])),
            "post_return": float(np.mean([e.returns.mean() for e in post])), "loss": loss}


def evaluate(learner: Any, meta_env: MetaEnvironment, tasks: list[Task], episodes: int,
             steps: int = 3) -> dict[str, list[float]]:
    """Mean return per task after 0..``steps`` inner steps, each step on fresh rollouts."""
    params = [learner.meta_params()] * len(tasks)
    returns = {}
    for k in range(steps + 1):
        eps = rollout(learner, meta_env, tasks, params, episodes)
        returns[str(k)] = [float(e.returns.mean()) for e in eps]
        if k < steps:
            params = [learner.adapt(b, p) for b, p in zip(batches(learner, eps), params, strict=True)]
    return returns
