"""The environment runner: Gymnasium environments, single or batched, seeded, with episode statistics.

Rollouts are backend-neutral: a policy is any ``act(obs, state) -> (dist_params, new_state)`` with
numpy in and out, and actions are sampled here with a seeded numpy generator, so two backends that
compute the same distribution parameters collect the same episodes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

from shared.env_runner.envs import ENV_IDS, register_envs
from shared.env_runner.tasks import Task, TaskDistribution, get_distribution
from shared.rl import Episodes

ActFn = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]


def sample_actions(dist_params: np.ndarray, discrete: bool, rng: np.random.Generator) -> np.ndarray:
    """Categorical (``dist_params`` are logits) or diagonal Gaussian (``[mean, log_std]``) samples."""
    if discrete:
        return np.argmax(dist_params - np.log(-np.log(rng.random(dist_params.shape))), axis=-1)
    mean, log_std = np.split(dist_params, 2, axis=-1)
    return mean + np.exp(log_std) * rng.standard_normal(mean.shape)


class Environment:
    """A Gymnasium vector environment with seeding, rollouts and episode statistics.

    Args:
        env: a ``gymnasium.vector.VectorEnv``, a single ``gymnasium.Env`` (wrapped as a batch of
            one), or a registered id such as ``"ssm_metarl/Nav2D-v0"`` or ``"CartPole-v1"``.
        discrete: whether actions are discrete (inferred from the action space when omitted).
        seed: seeds the environments and the action sampler.
        env_kwargs: keyword arguments for ``gymnasium.make`` when ``env`` is an id.
    """

    def __init__(self, env: gym.Env | gym.vector.VectorEnv | str, *, discrete: bool | None = None, seed: int = 0,
                 **env_kwargs: Any) -> None:
        if isinstance(env, str):
            register_envs()
            try:
                env = gym.make(env, **env_kwargs)
            except gym.error.Error as err:
                raise ValueError(f"unknown environment {env!r} ({err}); ours are {sorted(ENV_IDS.values())}") from err
        if isinstance(env, gym.Env):
            single = env
            env = gym.vector.SyncVectorEnv([lambda: single])
        if not isinstance(env, gym.vector.VectorEnv):
            raise TypeError(f"env must be a gymnasium Env, VectorEnv or id, got {type(env).__name__}")
        self.env = env
        self.discrete = isinstance(env.single_action_space, gym.spaces.Discrete) if discrete is None else discrete
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.episode_returns: list[float] = []
        self.episode_lengths: list[int] = []

    @property
    def num_envs(self) -> int:
        return self.env.num_envs

    def rollout(self, act: ActFn, state: Any, horizon: int) -> Episodes:
        """Run every sub-environment for one episode of at most ``horizon`` steps."""
        obs, _ = self.env.reset(seed=int(self.rng.integers(2**31)))
        n = self.num_envs
        observations, actions, rewards = [], [], []
        mask = np.zeros((n, horizon))
        alive = np.ones(n, bool)
        for t in range(horizon):
            dist_params, state = act(np.asarray(obs, np.float32), state)
            action = sample_actions(np.asarray(dist_params, np.float64), self.discrete, self.rng)
            observations.append(np.asarray(obs, np.float32))
            actions.append(action)
            obs, reward, terminated, truncated, _ = self.env.step(action)
            rewards.append(np.where(alive, reward, 0.0))
            mask[:, t] = alive
            alive = alive & ~(terminated | truncated)
            if not alive.any():
                break
        length = len(rewards)
        pad = horizon - length
        episodes = Episodes(
            obs=np.pad(np.stack(observations, 1), ((0, 0), (0, pad), (0, 0))),
            actions=np.pad(np.stack(actions, 1), ((0, 0), (0, pad)) + ((0, 0),) * (not self.discrete)),
            rewards=np.pad(np.stack(rewards, 1), ((0, 0), (0, pad))),
            mask=mask,
        )
        self.episode_returns.extend(episodes.returns.tolist())
        self.episode_lengths.extend(mask.sum(1).astype(int).tolist())
        return episodes

    def close(self) -> None:
        self.env.close()


class MetaEnvironment:
    """Samples tasks from a task distribution and builds batched environments for them."""

    def __init__(self, distribution: TaskDistribution | str, seed: int = 0) -> None:
        self.distribution = get_distribution(distribution) if isinstance(distribution, str) else distribution
        self.rng = np.random.default_rng(seed)

    def sample_tasks(self, n: int) -> list[Task]:
        return self.distribution.sample(n, self.rng)

    def environment(self, tasks: list[Task], episodes_per_task: int) -> Environment:
        """One vector environment: ``episodes_per_task`` copies of each task, task-major."""
        env = self.distribution.make_vector(tasks, episodes_per_task)
        return Environment(env, discrete=self.distribution.discrete, seed=int(self.rng.integers(2**31)))

    def rollout(self, tasks: list[Task], episodes_per_task: int, act: ActFn, state: Any) -> list[Episodes]:
        """Episodes for each task (a list in task order) from one batched rollout."""
        env = self.environment(tasks, episodes_per_task)
        try:
            episodes = env.rollout(act, state, self.distribution.horizon)
        finally:
            env.close()
        return [split_episodes(episodes, i, episodes_per_task) for i in range(len(tasks))]


def split_episodes(episodes: Episodes, index: int, per_task: int) -> Episodes:
    rows = slice(index * per_task, (index + 1) * per_task)
    return Episodes(episodes.obs[rows], episodes.actions[rows], episodes.rewards[rows], episodes.mask[rows])
