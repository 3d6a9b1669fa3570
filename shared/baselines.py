"""Classical baselines on the same held-out tasks as the learned policies (numpy, vectorised over trials).

Bernoulli bandits (``means (K, arms)``, ``pulls`` pulls per trial, ``trials`` independent trials per
bandit): :func:`bandit_random`, :func:`bandit_greedy`, :func:`bandit_epsilon_greedy`,
:func:`bandit_ucb1`, :func:`bandit_thompson`. Each returns the chosen arms ``(K, trials, pulls)``;
:func:`pseudo_regret` turns arms into regret ``sum_t (max_i mu_i - mu_{a_t})``, ``(K, trials)``.

Nav2D (``goals (K, 2)``): :func:`nav2d_oracle` (knows the goal and moves straight to it at full
speed) and :func:`nav2d_random` (uniform actions in the action box); each returns per-episode returns.
"""

from __future__ import annotations

import math

import numpy as np

from shared.env_runner.envs import NAV2D_MAX_ACTION, bandit_transition, nav2d_transition

TEXTBOOK_UCB1_C = math.sqrt(2.0)  # index mean + c sqrt(ln t / n) (Auer et al. 2002)
EPSILON = 0.1


def _check_means(means: np.ndarray, pulls: int, trials: int) -> np.ndarray:
    means = np.asarray(means, np.float64)
    if means.ndim != 2 or means.shape[1] < 2 or not ((means >= 0) & (means <= 1)).all():
        raise ValueError(f"means must be (bandits, arms >= 2) probabilities, got shape {means.shape}")
    for name, value in (("pulls", pulls), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return means


def _run(means: np.ndarray, pulls: int, trials: int, seed: int, choose) -> np.ndarray:
    """Play ``choose(t, counts, successes, rng) -> arms (K, trials)`` for ``pulls`` pulls."""
    means = _check_means(means, pulls, trials)
    rng = np.random.default_rng(seed)
    k, arms = means.shape
    counts = np.zeros((k, trials, arms))
    successes = np.zeros((k, trials, arms))
    chosen = np.zeros((k, trials, pulls), np.int64)
    wide = np.broadcast_to(means[:, None], (k, trials, arms))
    for t in range(pulls):
        action = choose(t, counts, successes, rng)
        reward = bandit_transition(wide, action, rng.random((k, trials)))
        np.put_along_axis(counts, action[..., None], np.take_along_axis(counts, action[..., None], -1) + 1, -1)
        np.put_along_axis(successes, action[..., None],
                          np.take_along_axis(successes, action[..., None], -1) + reward[..., None], -1)
        chosen[..., t] = action
    return chosen


def _argmax_random_ties(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = rng.random(values.shape) * 1e-9
    return np.argmax(values + noise * (values == values.max(-1, keepdims=True)), axis=-1)


def _untried_first(counts: np.ndarray, index: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _argmax_random_ties(np.where(counts == 0, np.inf, index), rng)


def bandit_random(means: np.ndarray, pulls: int, trials: int = 1, seed: int = 0) -> np.ndarray:
    return _run(means, pulls, trials, seed, lambda t, n, s, rng: rng.integers(0, n.shape[-1], n.shape[:-1]))


def bandit_greedy(means: np.ndarray, pulls: int, trials: int = 1, seed: int = 0) -> np.ndarray:
    """Each arm once, then the best empirical mean (ties at random)."""
    return _run(means, pulls, trials, seed,
                lambda t, n, s, rng: _untried_first(n, s / np.maximum(n, 1), rng))


def bandit_epsilon_greedy(means: np.ndarray, pulls: int, trials: int = 1, seed: int = 0,
                          epsilon: float = EPSILON) -> np.ndarray:
    """Greedy, but a uniformly random arm with probability ``epsilon``."""
    def choose(t: int, n: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        greedy = _untried_first(n, s / np.maximum(n, 1), rng)
        explore = rng.random(greedy.shape) < epsilon
        return np.where(explore, rng.integers(0, n.shape[-1], greedy.shape), greedy)

    return _run(means, pulls, trials, seed, choose)


def bandit_ucb1(means: np.ndarray, pulls: int, trials: int = 1, seed: int = 0,
                c: float = TEXTBOOK_UCB1_C) -> np.ndarray:
    """UCB1: each arm once, then ``argmax mean_i + c sqrt(ln t / n_i)``; textbook ``c = sqrt(2)``."""
    def choose(t: int, n: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        index = s / np.maximum(n, 1) + c * np.sqrt(np.log(max(t, 1)) / np.maximum(n, 1))
        return _untried_first(n, index, rng)

    return _run(means, pulls, trials, seed, choose)


def bandit_thompson(means: np.ndarray, pulls: int, trials: int = 1, seed: int = 0) -> np.ndarray:
    """Thompson sampling with a Beta(1, 1) prior on every arm."""
    return _run(means, pulls, trials, seed, lambda t, n, s, rng: np.argmax(rng.beta(1 + s, 1 + n - s), axis=-1))


BANDIT_BASELINES = {
    "random": bandit_random,
    "greedy": bandit_greedy,
    "epsilon-greedy": bandit_epsilon_greedy,
    "UCB1": bandit_ucb1,
    "Thompson sampling": bandit_thompson,
}


def pseudo_regret(means: np.ndarray, arms: np.ndarray) -> np.ndarray:
    """``sum_t (max_i mu_i - mu_{a_t})`` per trial.

    ``means (K, arms)``, ``arms (K, trials, pulls)`` -> ``(K, trials)``.
    """
    means = np.asarray(means, np.float64)
    chosen = np.take_along_axis(means[:, None, :], arms.reshape(arms.shape[0], -1)[:, None, :], -1)
    chosen = chosen.reshape(arms.shape)
    return (means.max(-1)[:, None, None] - chosen).sum(-1)


def _nav2d_episodes(goals: np.ndarray, horizon: int, act) -> np.ndarray:
    goals = np.asarray(goals, np.float64)
    if goals.ndim != 2 or goals.shape[1] != 2:
        raise ValueError(f"goals must be (tasks, 2), got shape {goals.shape}")
    position = np.zeros_like(goals)
    total = np.zeros(goals.shape[0])
    for _ in range(horizon):
        position, reward = nav2d_transition(position, act(position, goals), goals)
        total += reward
    return total


def nav2d_oracle(goals: np.ndarray, horizon: int = 100) -> np.ndarray:
    """Return per episode ``(K,)`` of a policy that knows the goal and moves straight to it at full speed."""
    return _nav2d_episodes(goals, horizon, lambda p, g: np.clip(g - p, -NAV2D_MAX_ACTION, NAV2D_MAX_ACTION))


def nav2d_random(goals: np.ndarray, horizon: int = 100, episodes: int = 1, seed: int = 0) -> np.ndarray:
    """Returns ``(K, episodes)`` of uniformly random actions in the action box."""
    rng = np.random.default_rng(seed)
    return np.stack([_nav2d_episodes(goals, horizon, lambda p, g: rng.uniform(-NAV2D_MAX_ACTION, NAV2D_MAX_ACTION,
                                                                                p.shape))
                     for _ in range(episodes)], axis=1)
