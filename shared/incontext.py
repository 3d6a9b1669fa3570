"""The in-context trial: its configuration and the augmented observation an in-context policy sees.

A *trial* is ``episodes`` consecutive episodes of one task, ``episodes * horizon`` steps. The policy's
recurrent state starts at zero at the trial's start and is carried across episode boundaries. At step
``t`` the policy sees the augmented observation

    x_t = [obs_t, action_features(a_{t-1}), r_{t-1}, r_{t-1} - r_{t-2}, boundary_t]   (augmented_obs_dim)

where ``action_features`` is the one-hot action followed by the reward-weighted one-hot (discrete
actions: ``2 * k`` features, so a linear memory can count each arm's pulls *and* successes) or the
raw action (continuous), ``a_{-1} = 0`` and ``r_{-1} = r_{-2} = 0`` at the trial's start (they carry
across episode boundaries), and ``boundary_t = 1`` on the first step of every episode. The reward's
change lets the encoder form products such as ``a_{t-1} (r_{t-1} - r_{t-2})`` (which way the reward
rises, in Nav2D) for the linear memory to accumulate.

This module is numpy only; both backends build the same layout in their own array library.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from shared.config import from_dict, require_positive_int

OBJECTIVES = ("maml", "incontext", "both")
BASELINES = ("state", "time", "linear")
STATE_BASELINE_REG = 1e-3  # ridge of the value fit on the SSM's state: its features are collinear early in training


def action_feature_dim(action_dim: int, discrete: bool) -> int:
    """Width of ``action_features``: ``2 * k`` for ``k`` discrete actions, ``action_dim`` for continuous."""
    return 2 * action_dim if discrete else action_dim


def augmented_obs_dim(obs_dim: int, action_dim: int, discrete: bool) -> int:
    """Width of the augmented observation: obs, action features, previous reward, its change, boundary flag."""
    return obs_dim + action_feature_dim(action_dim, discrete) + 3


def action_features(actions: np.ndarray, rewards: np.ndarray, action_dim: int, discrete: bool) -> np.ndarray:
    """``(..., )`` int actions or ``(..., A)`` float actions with ``(...,)`` rewards -> ``(..., F)``."""
    if discrete:
        one_hot = np.eye(action_dim)[np.asarray(actions)]
        return np.concatenate([one_hot, one_hot * np.asarray(rewards)[..., None]], axis=-1)
    return np.asarray(actions, np.float64)


def augment(obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, horizon: int, action_dim: int,
            discrete: bool) -> np.ndarray:
    """The augmented observations of whole trials, from what happened in them.

    ``obs (N, L, obs_dim)`` (what the environment showed before each action), ``actions (N, L)`` int
    or ``(N, L, A)`` float, ``rewards (N, L)``, ``L`` a multiple of ``horizon``. Returns
    ``(N, L, augmented_obs_dim)``: step ``t`` holds the features of step ``t - 1``'s action and reward.
    """
    obs = np.asarray(obs, np.float64)
    n, length = obs.shape[:2]
    if length % horizon:
        raise ValueError(f"trial length {length} must be a multiple of the episode horizon {horizon}")
    features = action_features(actions, rewards, action_dim, discrete)
    previous = np.concatenate([np.zeros_like(features[:, :1]), features[:, :-1]], axis=1)
    prev_reward = np.concatenate([np.zeros((n, 1)), np.asarray(rewards, np.float64)[:, :-1]], axis=1)
    change = prev_reward - np.concatenate([np.zeros((n, 1)), prev_reward[:, :-1]], axis=1)
    boundary = (np.arange(length) % horizon == 0).astype(np.float64)
    flag = np.broadcast_to(boundary[None, :, None], (n, length, 1))
    return np.concatenate([obs, previous, prev_reward[..., None], change[..., None], flag], axis=-1)


def time_features(length: int) -> np.ndarray:
    """``[s, s^2, s^3, 1]`` with ``s = t / length``, ``(length, 4)``: the time part of the value fits."""
    s = np.arange(length, dtype=np.float64) / length
    return np.stack([s, s**2, s**3, np.ones_like(s)], axis=-1)


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """How an in-context objective is trained.

    Args:
        objective: ``"maml"`` (post-adaptation return only), ``"incontext"`` (the whole trial's return,
            no inner step) or ``"both"`` (an inner gradient step on top of the in-context policy; the
            loss counts the pre- and the post-adaptation trial).
        episodes: episodes per trial (the state is reset only at the trial's start).
        discount: the discount over the whole trial, so that exploration early in the trial earns
            credit for reward later in it.
        baseline: ``"state"`` (a ridge value fit on the SSM's state and time: it sees what the policy
            has learned in the trial), ``"time"`` (the batch mean of the return-to-go at each step,
            across tasks) or ``"linear"`` (the linear feature baseline on the augmented observation).
        trials_per_task: trials sampled per task and meta-iteration.
        entropy: weight of the policy's mean entropy, subtracted from the outer loss (an entropy bonus
            against an early collapse to a near-deterministic policy); the inner step does not use it.
    """

    objective: str = "incontext"
    episodes: int = 2
    discount: float = 0.99
    baseline: str = "state"
    trials_per_task: int = 4
    entropy: float = 0.0

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {list(OBJECTIVES)}, got {self.objective!r}")
        require_positive_int("episodes (trial episodes)", self.episodes)
        require_positive_int("trials_per_task", self.trials_per_task)
        if isinstance(self.discount, bool) or not isinstance(self.discount, (int, float)) or not (
                0.0 < self.discount <= 1.0):
            raise ValueError(f"discount must be a number in (0, 1], got {self.discount!r}")
        if self.baseline not in BASELINES:
            raise ValueError(f"baseline must be one of {list(BASELINES)}, got {self.baseline!r}")
        if isinstance(self.entropy, bool) or not isinstance(self.entropy, (int, float)) or not (
                0.0 <= self.entropy < float("inf")):
            raise ValueError(f"entropy must be a finite number >= 0, got {self.entropy!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrialConfig:
        return from_dict(cls, values)
