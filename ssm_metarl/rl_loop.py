"""One MAML-RL meta-iteration and the held-out evaluation, for either backend's ``MAMLRL``.

Both backends' ``MAMLRL`` implement ``shared.learner.MetaRLLearner``, so this loop is written once,
above both. :func:`meta_iteration` is the runner path (gymnasium environments); :func:`native_iteration_fn`
the native path (the dynamics in the framework, one compiled program per meta-iteration).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from shared.env_runner import MetaEnvironment
from shared.env_runner.tasks import Task
from shared.native_noise import draw_noise
from shared.rl import Episodes, RLBatch, to_batch


def rollout(learner: Any, meta_env: MetaEnvironment, tasks: list[Task], params: list[Any],
            episodes: int) -> list[Episodes]:
    act = learner.act_fn(params, episodes)
    return meta_env.rollout(tasks, episodes, act, learner.initial_state(len(tasks), episodes))


def batches(learner: Any, episodes: list[Episodes]) -> list[RLBatch]:
    return [to_batch(e, dtype=learner.dtype_name) for e in episodes]


def meta_iteration(learner: Any, meta_env: MetaEnvironment, n_tasks: int, episodes: int) -> dict[str, float]:
    """The runner path: sample tasks; roll out, adapt every task in one vectorised call, roll out again;
    one guarded outer step. Each batch is converted to the backend's arrays once. Returns mean returns and the loss."""
    tasks = meta_env.sample_tasks(n_tasks)
    meta = learner.meta_params()
    pre = rollout(learner, meta_env, tasks, [meta] * n_tasks, episodes)
    support = [learner.convert(b) for b in batches(learner, pre)]
    adapted = learner.adapt_tasks(support)
    post = rollout(learner, meta_env, tasks, adapted, episodes)
    query = [learner.convert(b) for b in batches(learner, post)]
    loss = learner.meta_update(list(zip(support, query, strict=True)))
    return {"pre_return": float(np.mean([e.returns.mean() for e in pre])),
            "post_return": float(np.mean([e.returns.mean() for e in post])), "loss": loss}


def native_iteration_fn(learner: Any, meta_env: MetaEnvironment, n_tasks: int,
                        episodes: int) -> Callable[[], dict[str, float]]:
    """The native path: one meta-iteration per call, its tasks and noise drawn from ``meta_env.rng``."""
    native = learner.native(meta_env.distribution, episodes)

    def step() -> dict[str, float]:
        tasks = meta_env.sample_tasks(n_tasks)
        return native.iteration(tasks, draw_noise(meta_env.distribution, meta_env.rng, n_tasks, episodes))

    return step


def evaluate(learner: Any, meta_env: MetaEnvironment, tasks: list[Task], episodes: int,
             steps: int = 3) -> dict[str, list[float]]:
    """Mean return per task after 0..``steps`` inner steps, each step on fresh rollouts."""
    params = [learner.meta_params()] * len(tasks)
    returns = {}
    for k in range(steps + 1):
        eps = rollout(learner, meta_env, tasks, params, episodes)
        returns[str(k)] = [float(e.returns.mean()) for e in eps]
        if k < steps:
            params = learner.adapt_tasks(batches(learner, eps), None if k == 0 else params)
    return returns
