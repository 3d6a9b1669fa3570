"""The JAX-native MAML-RL path: environments in ``jax.numpy``, ``lax.scan`` over time, ``vmap`` over tasks.

One call of :meth:`NativeMAMLRL.iteration` is one whole meta-iteration (pre-adaptation rollouts,
advantages, inner adaptation, post-adaptation rollouts, meta-gradient, optax step), compiled once.
The dynamics are the JAX twins of ``shared/env_runner/envs.py`` (tested equal), and the advantage
maths the twin of ``shared/rl.py``. It covers the task families whose dynamics we write: Nav2D and
Bernoulli bandits.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.meta_rl.maml_rl import MAMLRL
from shared.env_runner.envs import NAV2D_MAX_ACTION
from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals, Task, TaskDistribution
from shared.rl import BASELINE_REG, GAE_LAMBDA, GAMMA


# ------------------------------------------------------------------------- dynamics
def nav2d_transition(position: jax.Array, action: jax.Array, goal: jax.Array) -> tuple[jax.Array, jax.Array]:
    """JAX twin of ``shared.env_runner.envs.nav2d_transition``."""
    position = position + jnp.clip(action, -NAV2D_MAX_ACTION, NAV2D_MAX_ACTION)
    return position, -jnp.linalg.norm(position - goal, axis=-1)


def bandit_transition(means: jax.Array, action: jax.Array, uniform: jax.Array) -> jax.Array:
    """JAX twin of ``shared.env_runner.envs.bandit_transition``."""
    chosen = jnp.take_along_axis(means, action[..., None], axis=-1)[..., 0]
    return (uniform < chosen).astype(jnp.float32)


# ------------------------------------------------------------------------- advantages
def _reverse_discounted(values: jax.Array, mask: jax.Array, discount: float) -> jax.Array:
    def body(running: jax.Array, xs: tuple) -> tuple:
        value, m = xs
        running = (value + discount * running) * m
        return running, running

    _, out = jax.lax.scan(body, jnp.zeros(values.shape[0], values.dtype), (values.T, mask.T), reverse=True)
    return out.T


def discounted_returns(rewards: jax.Array, mask: jax.Array, gamma: float = GAMMA) -> jax.Array:
    return _reverse_discounted(rewards, mask, gamma)


def baseline_features(obs: jax.Array, mask: jax.Array) -> jax.Array:
    steps = jnp.broadcast_to(jnp.arange(obs.shape[1], dtype=mask.dtype)[None, :, None] / 100.0, (*obs.shape[:2], 1))
    obs = jnp.clip(obs.astype(mask.dtype), -10, 10)
    features = jnp.concatenate([obs, obs**2, steps, steps**2, steps**3, jnp.ones_like(steps)], axis=-1)
    return features * mask[..., None]


def linear_baseline(obs: jax.Array, returns: jax.Array, mask: jax.Array, reg: float = BASELINE_REG) -> jax.Array:
    features = baseline_features(obs, mask)
    x = features.reshape(-1, features.shape[-1])
    y = (returns * mask).reshape(-1)
    weights = jnp.linalg.lstsq(x.T @ x + reg * jnp.eye(x.shape[1], dtype=x.dtype), x.T @ y, rcond=None)[0]
    return features @ weights


def gae(rewards: jax.Array, values: jax.Array, mask: jax.Array, gamma: float = GAMMA,
        lam: float = GAE_LAMBDA) -> jax.Array:
    next_values = jnp.concatenate([values[:, 1:] * mask[:, 1:], jnp.zeros_like(values[:, :1])], axis=1)
    deltas = (rewards + gamma * next_values - values) * mask
    return _reverse_discounted(deltas, mask, gamma * lam)


def normalize(advantages: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    count = mask.sum()
    mean = (advantages * mask).sum() / count
    std = jnp.sqrt((((advantages - mean) * mask) ** 2).sum() / count)
    return (advantages - mean) / (std + eps) * mask


def advantages(obs: jax.Array, rewards: jax.Array, mask: jax.Array) -> jax.Array:
    """Normalised GAE advantages from a fitted linear baseline: the twin of ``shared.rl.to_batch``."""
    values = linear_baseline(obs, discounted_returns(rewards, mask), mask)
    return normalize(gae(rewards, values, mask), mask)


# ------------------------------------------------------------------------- the native loop
class NativeMAMLRL:
    """Jit-compiled rollouts and meta-iterations for Nav2D and bandits, on top of :class:`MAMLRL`."""

    def __init__(self, learner: MAMLRL, distribution: TaskDistribution, episodes_per_task: int) -> None:
        if not isinstance(distribution, (Nav2DGoals, BernoulliBandits)):
            raise ValueError(f"the JAX-native path covers nav2d and bandit, not {distribution.name!r}")
        self.learner, self.distribution, self.episodes = learner, distribution, episodes_per_task
        self.maml = learner.maml
        self._iteration = jax.jit(self._iteration_fn)
        self._rollouts = jax.jit(jax.vmap(self.rollout, in_axes=(0, None, 0, 0)))

    def task_array(self, tasks: list[Task]) -> jax.Array:
        key = "goal" if isinstance(self.distribution, Nav2DGoals) else "means"
        return jnp.asarray(np.array([t[key] for t in tasks]), self.maml._param_dtype())

    def rollout(self, params: nnx.State, rest: nnx.State, task: jax.Array, key: jax.Array) -> tuple:
        """``episodes`` episodes of one task: ``(obs, actions, rewards, mask)``, each ``(E, T, ...)``."""
        dtype = self.maml._param_dtype()
        policy = nnx.merge(self.maml.graphdef, jax.lax.stop_gradient(params), rest)
        n, horizon = self.episodes, self.distribution.horizon
        bandit = isinstance(self.distribution, BernoulliBandits)
        state0 = jnp.zeros((n, policy.ssm.config.state_dim), dtype)
        obs0 = jnp.zeros((n, self.distribution.obs_dim), dtype)

        def body(carry: tuple, step_key: jax.Array) -> tuple:
            obs, state, env_state = carry
            out, state = policy(obs[:, None], state)
            out = out[:, 0]
            key_action, key_env = jax.random.split(step_key)
            if bandit:
                action = jax.random.categorical(key_action, out)
                reward = bandit_transition(task[None], action, jax.random.uniform(key_env, (n,), dtype)).astype(dtype)
                next_obs = jnp.concatenate([jax.nn.one_hot(action, task.shape[-1], dtype=dtype), reward[:, None]], -1)
                env_state = next_obs
            else:
                mean, log_std = jnp.split(out, 2, axis=-1)
                action = mean + jnp.exp(log_std) * jax.random.normal(key_action, mean.shape, dtype)
                env_state, reward = nav2d_transition(env_state, action, task)
                next_obs = env_state
            return (next_obs, state, env_state), (obs, action, reward)

        _, (obs, actions, rewards) = jax.lax.scan(body, (obs0, state0, obs0), jax.random.split(key, horizon))
        swap = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
        return swap(obs), swap(actions), swap(rewards), jnp.ones((n, horizon), dtype)

    def _iteration_fn(self, params: nnx.State, opt_state: Any, rest: nnx.State, tasks: jax.Array,
                      key: jax.Array) -> tuple:
        n = tasks.shape[0]
        key_pre, key_post = jax.random.split(key)
        broadcast = jax.tree.map(lambda p: jnp.broadcast_to(p, (n, *p.shape)), params)
        obs, actions, rewards, mask = self._rollouts(broadcast, rest, tasks, jax.random.split(key_pre, n))
        support = (obs, (actions, jax.vmap(advantages)(obs, rewards, mask), mask))
        adapted = jax.vmap(self.maml.inner_loop, in_axes=(None, None, 0, 0))(params, rest, *support)
        q_obs, q_actions, q_rewards, q_mask = self._rollouts(adapted, rest, tasks, jax.random.split(key_post, n))
        query = (q_obs, (q_actions, jax.vmap(advantages)(q_obs, q_rewards, q_mask), q_mask))
        params, opt_state, loss, _ = self.maml.meta_step(params, opt_state, rest, (*support, *query))
        return params, opt_state, loss, rewards.sum(-1).mean(), q_rewards.sum(-1).mean()

    def iteration(self, tasks: list[Task], key: jax.Array) -> dict[str, float]:
        """One whole meta-iteration, one compiled call; updates the policy and the optimizer state."""
        maml = self.maml
        params, opt_state, loss, pre, post = self._iteration(
            nnx.state(self.learner.policy, nnx.Param), maml.opt_state, maml.rest(), self.task_array(tasks), key)
        if not bool(jnp.isfinite(loss)):
            raise ValueError("meta-iteration: the query loss is NaN/Inf; the policy was not changed")
        nnx.update(self.learner.policy, params)
        maml.opt_state = opt_state
        return {"pre_return": float(pre), "post_return": float(post), "loss": float(loss)}
