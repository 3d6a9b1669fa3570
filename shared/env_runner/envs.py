"""The environments we write, as Gymnasium environments (single and numpy-batched vector ones).

- ``Nav2DEnv``: the MAML paper's 2D navigation. A point starts at the origin; actions (velocities)
  are clipped to +-0.1; reward is minus the distance to the goal after the move; 100 steps.
- ``BernoulliBanditEnv``: k arms with success probabilities ``means``; one episode is a trial of
  ``pulls`` pulls. The observation is the previous action (one-hot) and reward, so a recurrent
  policy can learn in context.
- ``VariedCartPoleEnv`` / ``VariedPendulumEnv``: Gymnasium's classic-control dynamics with the
  physics as task parameters and a hidden actuator-sign ``flip``.

The pure transition functions (``nav2d_transition``, ``bandit_transition``) are what the JAX-native
rollouts re-implement; tests check the two equal.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.envs.classic_control import CartPoleEnv, PendulumEnv

NAV2D_HORIZON = 100
NAV2D_MAX_ACTION = 0.1
NAV2D_BOUND = NAV2D_HORIZON * NAV2D_MAX_ACTION  # no position can leave this box within an episode


def nav2d_transition(position: np.ndarray, action: np.ndarray, goal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(..., 2)`` each -> ``(new_position, reward)``; reward is ``-||new_position - goal||``."""
    position = position + np.clip(action, -NAV2D_MAX_ACTION, NAV2D_MAX_ACTION)
    return position, -np.linalg.norm(position - goal, axis=-1)


def bandit_transition(means: np.ndarray, action: np.ndarray, uniform: np.ndarray) -> np.ndarray:
    """Reward 1 where ``uniform < means[action]``. ``means (..., k)``, ``action (...)``, ``uniform (...)``."""
    chosen = np.take_along_axis(means, np.asarray(action)[..., None], axis=-1)[..., 0]
    return (uniform < chosen).astype(np.float32)


def _goal(goal: Any) -> np.ndarray:
    goal = np.asarray(goal, dtype=np.float64)
    if goal.shape[-1:] != (2,) or not np.isfinite(goal).all():
        raise ValueError(f"goal must be finite with last dimension 2, got {goal!r}")
    return goal


class Nav2DEnv(gym.Env):
    """2D point navigation to ``goal`` (a task parameter)."""

    metadata = {"render_modes": []}

    def __init__(self, goal: tuple[float, float] = (0.0, 0.0), horizon: int = NAV2D_HORIZON) -> None:
        self.goal = _goal(goal)
        self.horizon = horizon
        self.observation_space = spaces.Box(-NAV2D_BOUND, NAV2D_BOUND, (2,), np.float32)
        self.action_space = spaces.Box(-NAV2D_MAX_ACTION, NAV2D_MAX_ACTION, (2,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._position, self._t = np.zeros(2), 0
        return self._position.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._position, reward = nav2d_transition(self._position, np.asarray(action, np.float64), self.goal)
        self._t += 1
        return self._position.astype(np.float32), float(reward), False, self._t >= self.horizon, {}


class Nav2DVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` Nav2D environments in one numpy array; ``goals`` is ``(2,)`` or ``(num_envs, 2)``."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, goals: Any = (0.0, 0.0), horizon: int = NAV2D_HORIZON) -> None:
        self.num_envs = num_envs
        self.goals = np.broadcast_to(_goal(goals), (num_envs, 2)).copy()
        self.horizon = horizon
        self.single_observation_space = spaces.Box(-NAV2D_BOUND, NAV2D_BOUND, (2,), np.float32)
        self.single_action_space = spaces.Box(-NAV2D_MAX_ACTION, NAV2D_MAX_ACTION, (2,), np.float32)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._position, self._t = np.zeros((self.num_envs, 2)), 0
        return self._position.astype(np.float32), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        self._position, rewards = nav2d_transition(self._position, np.asarray(actions, np.float64), self.goals)
        self._t += 1
        done = np.full(self.num_envs, self._t >= self.horizon)
        return self._position.astype(np.float32), rewards, np.zeros(self.num_envs, bool), done, {}


def _means(means: Any) -> np.ndarray:
    means = np.asarray(means, dtype=np.float64)
    if means.ndim < 1 or means.shape[-1] < 2 or not ((means >= 0) & (means <= 1)).all():
        raise ValueError(f"bandit means must be probabilities in [0, 1] for at least 2 arms, got {means!r}")
    return means


class BernoulliBanditEnv(gym.Env):
    """A k-armed Bernoulli bandit; one episode is ``pulls`` pulls."""

    metadata = {"render_modes": []}

    def __init__(self, means: tuple[float, ...] = (0.2, 0.8), pulls: int = 100) -> None:
        self.means, self.pulls = _means(means), pulls
        k = len(self.means)
        self.observation_space = spaces.Box(0.0, 1.0, (k + 1,), np.float32)
        self.action_space = spaces.Discrete(k)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        return np.zeros(len(self.means) + 1, np.float32), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        reward = float(bandit_transition(self.means, np.asarray(action), np.asarray(self.np_random.random())))
        self._t += 1
        obs = np.zeros(len(self.means) + 1, np.float32)
        obs[int(action)], obs[-1] = 1.0, reward
        return obs, reward, False, self._t >= self.pulls, {"regret": self.means.max() - self.means[int(action)]}


class BernoulliBanditVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` bandits in one numpy array; ``means`` is ``(k,)`` or ``(num_envs, k)``."""

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.NEXT_STEP}

    def __init__(self, num_envs: int, means: Any = (0.2, 0.8), pulls: int = 100) -> None:
        means = _means(means)
        self.num_envs, self.pulls = num_envs, pulls
        self.means = np.broadcast_to(means, (num_envs, means.shape[-1])).copy()
        k = self.means.shape[1]
        self.single_observation_space = spaces.Box(0.0, 1.0, (k + 1,), np.float32)
        self.single_action_space = spaces.Discrete(k)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._t = 0
        return np.zeros((self.num_envs, self.means.shape[1] + 1), np.float32), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        actions = np.asarray(actions, np.int64)
        rewards = bandit_transition(self.means, actions, self.np_random.random(self.num_envs))
        self._t += 1
        obs = np.zeros((self.num_envs, self.means.shape[1] + 1), np.float32)
        obs[np.arange(self.num_envs), actions] = 1.0
        obs[:, -1] = rewards
        regret = self.means.max(1) - np.take_along_axis(self.means, actions[:, None], 1)[:, 0]
        done = np.full(self.num_envs, self._t >= self.pulls)
        return obs, rewards.astype(np.float64), np.zeros(self.num_envs, bool), done, {"regret": regret}


class VariedCartPoleEnv(CartPoleEnv):
    """CartPole with task physics and a hidden actuator flip (push left means push right)."""

    metadata = {"render_modes": [], "render_fps": 50}  # rendering would need pygame; none is offered

    def __init__(self, masscart: float = 1.0, masspole: float = 0.1, length: float = 0.5, force_mag: float = 10.0,
                 flip: bool = False) -> None:
        super().__init__()
        for name, value in (("masscart", masscart), ("masspole", masspole), ("length", length),
                            ("force_mag", force_mag)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"CartPole {name} must be a positive number, got {value!r}")
        self.masscart, self.masspole, self.length, self.force_mag = masscart, masspole, length, force_mag
        self.total_mass = masspole + masscart
        self.polemass_length = masspole * length
        self.flip = bool(flip)

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        return super().step(1 - int(action) if self.flip else int(action))


class VariedPendulumEnv(PendulumEnv):
    """Pendulum with task mass, length and gravity and a hidden torque-sign flip."""

    metadata = {"render_modes": [], "render_fps": 30}

    def __init__(self, m: float = 1.0, l: float = 1.0, g: float = 10.0, flip: bool = False) -> None:  # noqa: E741
        super().__init__(g=g)
        for name, value in (("m", m), ("l", l), ("g", g)):
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"Pendulum {name} must be a positive number, got {value!r}")
        self.m, self.l, self.flip = m, l, bool(flip)

    def step(self, u: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        return super().step(-np.asarray(u) if self.flip else u)


ENV_IDS = {
    "nav2d": "ssm_metarl/Nav2D-v0",
    "bandit": "ssm_metarl/BernoulliBandit-v0",
    "cartpole": "ssm_metarl/VariedCartPole-v0",
    "pendulum": "ssm_metarl/VariedPendulum-v0",
}


def register_envs() -> None:
    """Register our environments with Gymnasium (idempotent)."""
    specs = [
        (ENV_IDS["nav2d"], Nav2DEnv, Nav2DVectorEnv, None),
        (ENV_IDS["bandit"], BernoulliBanditEnv, BernoulliBanditVectorEnv, None),
        (ENV_IDS["cartpole"], VariedCartPoleEnv, None, 200),
        (ENV_IDS["pendulum"], VariedPendulumEnv, None, 200),
    ]
    for env_id, entry, vector_entry, max_steps in specs:
        if env_id not in gym.registry:
            gym.register(env_id, entry_point=entry, vector_entry_point=vector_entry, max_episode_steps=max_steps)


register_envs()
