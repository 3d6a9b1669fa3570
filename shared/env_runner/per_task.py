"""Rollouts whose randomness belongs to each task, so that any split of the tasks gives the same episodes.

``MetaEnvironment.rollout`` draws every task's environment resets and sampled actions from one
generator shared by the whole batch, so rolling out a slice of the tasks (as one worker of a
distributed run does) would draw different numbers than rolling out all of them. Here task ``i``
gets its own generator, seeded by ``seeds[i]``, for its resets and its actions; its episodes are
zeroed after they end (not continued while other tasks of the batch still run). Task ``i``'s
episodes therefore depend only on the task, its seed and the policy, whichever worker and batch
they are collected in. The policy still acts for the whole batch in one call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.env_runner.environment import ActFn, sample_actions
from shared.env_runner.tasks import Task, TaskDistribution
from shared.rl import Episodes


def rollout_per_task(distribution: TaskDistribution, tasks: Sequence[Task], seeds: Sequence[int],
                     episodes_per_task: int, act: ActFn, state: Any) -> list[Episodes]:
    """Episodes for each task (a list in task order), ``episodes_per_task`` per task.

    Args:
        distribution: the task family (its vector environments, horizon, action type).
        tasks: the tasks to run; ``seeds``: one integer seed per task.
        act: ``act(obs (N, obs_dim), state) -> (dist_params (N, D), state)`` for all ``N =
            len(tasks) * episodes_per_task`` episodes, task-major.
    """
    if len(seeds) != len(tasks):
        raise ValueError(f"expected one seed per task ({len(tasks)}), got {len(seeds)}")
    if not tasks:
        return []
    per = episodes_per_task
    rngs = [np.random.default_rng(int(seed)) for seed in seeds]
    envs = [distribution.make_vector([task], per) for task in tasks]
    try:
        obs = np.concatenate([env.reset(seed=int(rng.integers(2**31)))[0] for env, rng in zip(envs, rngs,
                                                                                               strict=True)])
        n, horizon = len(tasks) * per, distribution.horizon
        observations, actions, rewards = [], [], []
        mask = np.zeros((n, horizon))
        alive = np.ones(n, bool)
        for t in range(horizon):
            dist_params, state = act(np.asarray(obs, np.float32), state)
            dist_params = np.asarray(dist_params, np.float64)
            action = np.concatenate([sample_actions(dist_params[i * per:(i + 1) * per], distribution.discrete, rng)
                                     for i, rng in enumerate(rngs)])
            observations.append(np.asarray(obs, np.float32))
            actions.append(action)
            steps = [env.step(action[i * per:(i + 1) * per]) for i, env in enumerate(envs)]
            obs = np.concatenate([s[0] for s in steps])
            reward = np.concatenate([s[1] for s in steps])
            done = np.concatenate([s[2] | s[3] for s in steps])
            rewards.append(np.where(alive, reward, 0.0))
            mask[:, t] = alive
            alive = alive & ~done
            if not alive.any():
                break
    finally:
        for env in envs:
            env.close()
    pad = horizon - len(rewards)
    valid = mask[:, : len(rewards)].astype(bool)
    obs_all = np.stack(observations, 1) * valid[..., None]
    act_all = np.stack(actions, 1)
    act_all = act_all * (valid if distribution.discrete else valid[..., None])
    episodes = Episodes(
        obs=np.pad(obs_all, ((0, 0), (0, pad), (0, 0))).astype(np.float32),
        actions=np.pad(act_all, ((0, 0), (0, pad)) + ((0, 0),) * (not distribution.discrete)),
        rewards=np.pad(np.stack(rewards, 1), ((0, 0), (0, pad))),
        mask=mask,
    )
    return [Episodes(episodes.obs[i * per:(i + 1) * per], episodes.actions[i * per:(i + 1) * per],
                     episodes.rewards[i * per:(i + 1) * per], episodes.mask[i * per:(i + 1) * per])
            for i in range(len(tasks))]
