"""The randomness of one native meta-iteration, drawn from numpy so that both backends can be given the same.

A native meta-iteration (``torch_impl/meta_rl/native.py``, ``jax_impl/meta_rl/native.py``) consumes
no random generator of its own: the training loop draws a :class:`RolloutNoise` from its seeded
numpy generator and passes it in. Actions are sampled from it exactly as the runner samples them
(``shared.env_runner.environment.sample_actions``): Gaussian actions as ``mean + std * normal``,
categorical ones by Gumbel-max over ``logits - log(-log(uniform))``. Bandit rewards are
``uniform < means[action]`` as in ``shared.env_runner.envs.bandit_transition``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals, Task, TaskDistribution

NATIVE_FAMILIES = {Nav2DGoals: "goal", BernoulliBandits: "means"}  # the task parameter the dynamics read


@dataclasses.dataclass(frozen=True)
class RolloutNoise:
    """Noise for the pre- (index 0) and post-adaptation (index 1) rollouts: ``K`` tasks x ``E`` episodes x ``T`` steps.

    actions: Nav2D: standard normals ``(2, K, E, T, action_dim)``; bandits: uniforms in [0, 1)
        ``(2, K, E, T, arms)`` for Gumbel-max sampling.
    rewards: bandits: uniforms ``(2, K, E, T)``; Nav2D (deterministic dynamics): ``None``.
    """

    actions: np.ndarray
    rewards: np.ndarray | None = None


def check_native(distribution: TaskDistribution) -> str:
    """The task-parameter key of a family with native dynamics; ``ValueError`` naming those families otherwise."""
    for family, key in NATIVE_FAMILIES.items():
        if isinstance(distribution, family):
            return key
    names = [family.name for family in NATIVE_FAMILIES]
    raise ValueError(f"native rollouts exist for the task families {names}, not {distribution.name!r}; "
                     "use the runner (rollouts='runner') for it")


def task_parameters(distribution: TaskDistribution, tasks: list[Task]) -> np.ndarray:
    """The tasks as one float64 array: Nav2D goals ``(K, 2)`` or bandit means ``(K, arms)``."""
    key = check_native(distribution)
    return np.array([task[key] for task in tasks], dtype=np.float64)


def draw_noise(distribution: TaskDistribution, rng: np.random.Generator, n_tasks: int,
               episodes: int) -> RolloutNoise:
    """One meta-iteration's noise from ``rng`` (float64; the native paths cast it to the policy's dtype)."""
    check_native(distribution)
    shape = (2, n_tasks, episodes, distribution.horizon)
    if distribution.discrete:
        return RolloutNoise(rng.random((*shape, distribution.action_dim)), rng.random(shape))
    return RolloutNoise(rng.standard_normal((*shape, distribution.action_dim)))


def check_noise(noise: RolloutNoise, n_tasks: int, episodes: int, distribution: TaskDistribution) -> None:
    """``noise`` has the shapes :func:`draw_noise` gives for these sizes; ``ValueError`` naming the mismatch."""
    if not isinstance(noise, RolloutNoise):
        raise TypeError(f"noise must be a RolloutNoise, got {type(noise).__name__}")
    shape = (2, n_tasks, episodes, distribution.horizon)
    expected = {"actions": (*shape, distribution.action_dim), "rewards": shape if distribution.discrete else None}
    for name, want in expected.items():
        value = getattr(noise, name)
        got = None if value is None else np.shape(value)
        if got != want:
            raise ValueError(f"noise.{name} must have shape {want} for {n_tasks} tasks x {episodes} episodes x "
                             f"{distribution.horizon} steps of {distribution.name!r}, got {got}")
