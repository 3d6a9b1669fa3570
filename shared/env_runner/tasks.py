"""Task distributions, each with a fixed held-out test set drawn from a fixed seed."""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np

from shared.env_runner.envs import ENV_IDS

Task = dict[str, Any]
HELD_OUT_SEED = 20_240_601


@dataclasses.dataclass(frozen=True)
class TaskDistribution:
    """Base class: ``sample`` tasks, ``held_out`` the fixed test set, ``make_vector`` the envs."""

    name: str = ""
    obs_dim: int = 0
    action_dim: int = 0  # continuous: action size; discrete: number of actions
    discrete: bool = False
    horizon: int = 0

    @property
    def env_id(self) -> str:
        return ENV_IDS[self.name]

    def sample(self, n: int, rng: np.random.Generator) -> list[Task]:
        raise NotImplementedError

    def held_out(self, n: int = 40) -> list[Task]:
        """The fixed held-out test tasks: the same ``n`` tasks on every call and machine."""
        return self.sample(n, np.random.default_rng(HELD_OUT_SEED))

    def make_vector(self, tasks: list[Task], episodes_per_task: int) -> gym.vector.VectorEnv:
        """One vector env holding ``episodes_per_task`` copies of each task, task-major."""
        fns = [lambda task=task: gym.make(self.env_id, **task) for task in tasks for _ in range(episodes_per_task)]
        return gym.vector.SyncVectorEnv(fns)


@dataclasses.dataclass(frozen=True)
class Nav2DGoals(TaskDistribution):
    """The MAML paper's 2D navigation: goal ~ U[-0.5, 0.5]^2."""

    name: str = "nav2d"
    obs_dim: int = 2
    action_dim: int = 2
    horizon: int = 100
    low: float = -0.5
    high: float = 0.5

    def sample(self, n: int, rng: np.random.Generator) -> list[Task]:
        return [{"goal": tuple(float(v) for v in rng.uniform(self.low, self.high, 2))} for _ in range(n)]

    def make_vector(self, tasks: list[Task], episodes_per_task: int) -> gym.vector.VectorEnv:
        goals = np.repeat(np.array([t["goal"] for t in tasks]), episodes_per_task, axis=0)
        return gym.make_vec(self.env_id, num_envs=len(goals), vectorization_mode="vector_entry_point", goals=goals)


@dataclasses.dataclass(frozen=True)
class BernoulliBandits(TaskDistribution):
    """k arms with means ~ U[0, 1]; one episode is a trial of ``pulls`` pulls."""

    name: str = "bandit"
    arms: int = 5
    pulls: int = 100
    discrete: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_dim", self.arms + 1)
        object.__setattr__(self, "action_dim", self.arms)
        object.__setattr__(self, "horizon", self.pulls)

    def sample(self, n: int, rng: np.random.Generator) -> list[Task]:
        return [{"means": tuple(float(v) for v in rng.uniform(0, 1, self.arms)), "pulls": self.pulls}
                for _ in range(n)]

    def make_vector(self, tasks: list[Task], episodes_per_task: int) -> gym.vector.VectorEnv:
        means = np.repeat(np.array([t["means"] for t in tasks]), episodes_per_task, axis=0)
        return gym.make_vec(self.env_id, num_envs=len(means), vectorization_mode="vector_entry_point",
                            means=means, pulls=self.pulls)


@dataclasses.dataclass(frozen=True)
class CartPoleTasks(TaskDistribution):
    """CartPole with cart/pole masses, pole length and force varied, and a hidden action flip."""

    name: str = "cartpole"
    obs_dim: int = 4
    action_dim: int = 2
    discrete: bool = True
    horizon: int = 200

    def sample(self, n: int, rng: np.random.Generator) -> list[Task]:
        return [{"masscart": float(rng.uniform(0.5, 2.0)), "masspole": float(rng.uniform(0.05, 0.5)),
                 "length": float(rng.uniform(0.25, 1.0)), "force_mag": float(rng.uniform(5.0, 15.0)),
                 "flip": bool(rng.random() < 0.5)} for _ in range(n)]


@dataclasses.dataclass(frozen=True)
class PendulumTasks(TaskDistribution):
    """Pendulum with mass, length and gravity varied, and a hidden torque-sign flip."""

    name: str = "pendulum"
    obs_dim: int = 3
    action_dim: int = 1
    horizon: int = 200

    def sample(self, n: int, rng: np.random.Generator) -> list[Task]:
        return [{"m": float(rng.uniform(0.5, 1.5)), "l": float(rng.uniform(0.5, 1.5)),
                 "g": float(rng.uniform(8.0, 12.0)), "flip": bool(rng.random() < 0.5)} for _ in range(n)]


DISTRIBUTIONS: dict[str, TaskDistribution] = {
    d.name: d for d in (Nav2DGoals(), BernoulliBandits(), CartPoleTasks(), PendulumTasks())
}


def get_distribution(name: str) -> TaskDistribution:
    if name not in DISTRIBUTIONS:
        raise ValueError(f"unknown task family {name!r}; expected one of {sorted(DISTRIBUTIONS)}")
    return DISTRIBUTIONS[name]
