"""Policy-gradient bookkeeping in numpy: returns, the linear feature baseline, GAE, normalisation.

``jax_impl/meta_rl/native.py`` has the same functions in ``jax.numpy`` for the jit-compiled path;
the parity tests check the two equal on the same rollouts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

GAMMA = 0.99
GAE_LAMBDA = 1.0
BASELINE_REG = 1e-5


@dataclasses.dataclass(frozen=True)
class Episodes:
    """A batch of ``N`` episodes of at most ``T`` steps, as collected by a rollout.

    obs ``(N, T, obs_dim)`` is what the policy saw before acting; actions ``(N, T, act_dim)``
    (float) or ``(N, T)`` (int); rewards and mask ``(N, T)``, mask 1 on the steps that happened.
    """

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    mask: np.ndarray

    @property
    def returns(self) -> np.ndarray:
        """Undiscounted return of each episode, ``(N,)``."""
        return (self.rewards * self.mask).sum(axis=1)


@dataclasses.dataclass(frozen=True)
class RLBatch:
    """What the policy-gradient loss needs: ``obs``, and labels ``(actions, advantages, mask)``."""

    obs: np.ndarray
    actions: np.ndarray
    advantages: np.ndarray
    mask: np.ndarray

    @property
    def labels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.actions, self.advantages, self.mask


def discounted_returns(rewards: np.ndarray, mask: np.ndarray, gamma: float = GAMMA) -> np.ndarray:
    """Reward-to-go ``sum_k gamma^k r_{t+k}`` over the valid steps, ``(N, T)``."""
    out = np.zeros_like(rewards, dtype=np.float64)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = (rewards[:, t] + gamma * running) * mask[:, t]
        out[:, t] = running
    return out


def baseline_features(obs: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Duan et al. (2016) features: ``[obs, obs^2, t, t^2, t^3, 1]`` with ``t`` in hundreds of steps."""
    steps = np.broadcast_to(np.arange(obs.shape[1], dtype=np.float64)[None, :, None] / 100.0, (*obs.shape[:2], 1))
    obs = np.clip(obs.astype(np.float64), -10, 10)
    features = np.concatenate([obs, obs**2, steps, steps**2, steps**3, np.ones_like(steps)], axis=-1)
    return features * mask[..., None]


def linear_baseline(obs: np.ndarray, returns: np.ndarray, mask: np.ndarray, reg: float = BASELINE_REG) -> np.ndarray:
    """Fit the linear feature baseline to ``returns`` by ridge regression; its values, ``(N, T)``."""
    features = baseline_features(obs, mask)
    x = features.reshape(-1, features.shape[-1])
    y = (returns * mask).reshape(-1)
    # lstsq, not solve: the features are collinear for one-hot observations (obs == obs^2), and a
    # least-squares solve stays finite where a plain solve of the near-singular system does not.
    weights = np.linalg.lstsq(x.T @ x + reg * np.eye(x.shape[1]), x.T @ y, rcond=None)[0]
    return features @ weights


def gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float = GAMMA,
        lam: float = GAE_LAMBDA) -> np.ndarray:
    """Generalised advantage estimation over the valid steps, ``(N, T)``."""
    next_values = np.concatenate([values[:, 1:] * mask[:, 1:], np.zeros_like(values[:, :1])], axis=1)
    deltas = (rewards + gamma * next_values - values) * mask
    out = np.zeros_like(deltas)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = (deltas[:, t] + gamma * lam * running) * mask[:, t]
        out[:, t] = running
    return out


def normalize(advantages: np.ndarray, mask: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Zero mean, unit variance over the valid steps."""
    count = mask.sum()
    mean = (advantages * mask).sum() / count
    std = np.sqrt((((advantages - mean) * mask) ** 2).sum() / count)
    return (advantages - mean) / (std + eps) * mask


def to_batch(episodes: Episodes, gamma: float = GAMMA, lam: float = GAE_LAMBDA, dtype: str = "float32") -> RLBatch:
    """Episodes -> an :class:`RLBatch` with normalised GAE advantages from a fitted linear baseline."""
    rewards, mask = episodes.rewards.astype(np.float64), episodes.mask.astype(np.float64)
    values = linear_baseline(episodes.obs, discounted_returns(rewards, mask, gamma), mask)
    advantages = normalize(gae(rewards, values, mask, gamma, lam), mask)
    actions = episodes.actions if episodes.actions.dtype.kind == "i" else episodes.actions.astype(dtype)
    return RLBatch(episodes.obs.astype(dtype), actions, advantages.astype(dtype), mask.astype(dtype))
