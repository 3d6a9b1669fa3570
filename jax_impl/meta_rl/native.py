"""The JAX-native MAML-RL path: environments in ``jax.numpy``, ``lax.scan`` over time, ``vmap`` over tasks.

One call of :meth:`NativeMAMLRL.iteration` is one whole meta-iteration (pre-adaptation rollouts,
advantages, inner adaptation, post-adaptation rollouts, meta-gradient) compiled once, then the
guarded Adam step of ``MetaMAML``. The randomness comes in as numpy arrays
(``shared.native_noise``); ``torch_impl/meta_rl/native.py`` is the PyTorch twin (parity-tested).
The dynamics (:func:`nav2d_step`, :func:`bandit_step`) and the time loop (:func:`time_loop`, which
takes and returns a carry so episodes can continue one another) are reusable on their own.
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
from shared.env_runner.tasks import BernoulliBandits, Task, TaskDistribution
from shared.native_noise import RolloutNoise, check_native, check_noise, task_parameters
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


def sample_actions(dist_params: jax.Array, noise: jax.Array, discrete: bool) -> jax.Array:
    """Twin of ``shared.env_runner.environment.sample_actions`` with the noise given: Gumbel-max over
    ``logits - log(-log(uniform))`` (discrete), ``mean + exp(log_std) * normal`` (Gaussian)."""
    if discrete:
        return jnp.argmax(dist_params - jnp.log(-jnp.log(noise)), axis=-1)
    mean, log_std = jnp.split(dist_params, 2, axis=-1)
    return mean + jnp.exp(log_std) * noise


def nav2d_step(env_state: jax.Array, action: jax.Array, goal: jax.Array,
               uniform: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One Nav2D step: ``(next_obs, reward, env_state)``; the env state is the position ``(..., 2)``."""
    position, reward = nav2d_transition(env_state, action, goal)
    return position, reward.astype(position.dtype), position


def bandit_step(env_state: jax.Array, action: jax.Array, means: jax.Array,
                uniform: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One bandit pull: ``(next_obs, reward, env_state)``; the observation is ``[one_hot(action), reward]``."""
    reward = bandit_transition(means, action, uniform).astype(env_state.dtype)
    obs = jnp.concatenate([jax.nn.one_hot(action, means.shape[-1], dtype=env_state.dtype), reward[..., None]], -1)
    return obs, reward, obs


def time_loop(act: Any, env_step: Any, task: jax.Array, carry: tuple, action_noise: jax.Array,
              reward_noise: jax.Array | None, discrete: bool) -> tuple[tuple, tuple]:
    """``T`` steps of ``E`` parallel episodes of one task, as a ``lax.scan``.

    ``act(obs (E, I), policy_state (E, S)) -> (dist_params, policy_state)``; ``env_step`` is
    :func:`nav2d_step` or :func:`bandit_step`; ``carry = (obs, policy_state, env_state)`` at the
    start (zeros for a fresh episode; pass the previous final carry to continue across episodes);
    ``action_noise (E, T, ...)``, ``reward_noise (E, T)`` (bandits) or ``None``.
    Returns ``(final carry, (obs, actions, rewards))`` with ``(E, T, ...)`` arrays.
    """
    swap = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    steps = (swap(action_noise), None if reward_noise is None else swap(reward_noise))

    def body(carry: tuple, noise: tuple) -> tuple:
        obs, state, env_state = carry
        dist_params, state = act(obs, state)
        action = sample_actions(dist_params, noise[0], discrete)
        next_obs, reward, env_state = env_step(env_state, action, task[None], noise[1])
        return (next_obs, state, env_state), (obs, action, reward)

    carry, (obs, actions, rewards) = jax.lax.scan(body, carry, steps)
    return carry, (swap(obs), swap(actions), swap(rewards))


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
    """Jit-compiled rollouts and meta-iterations for Nav2D and bandits, on top of :class:`MAMLRL`.

    One :meth:`iteration` is one compiled call computing the loss, the meta-gradient and the returns;
    the step is then committed through ``MetaMAML.apply_meta_gradient`` (guarded: a non-finite loss,
    gradient or resulting parameter leaves the policy unchanged). Its randomness is injected
    (``shared.native_noise.RolloutNoise``), so the PyTorch twin given the same noise computes the same.
    """

    def __init__(self, learner: MAMLRL, distribution: TaskDistribution, episodes_per_task: int) -> None:
        check_native(distribution)
        self.learner, self.distribution, self.episodes = learner, distribution, episodes_per_task
        self.maml = learner.maml
        self.discrete = isinstance(distribution, BernoulliBandits)
        self.env_step = bandit_step if self.discrete else nav2d_step
        self._program = jax.jit(self.program)
        self._rollouts = jax.jit(self.rollouts)

    def rollout(self, params: nnx.State, rest: nnx.State, task: jax.Array, action_noise: jax.Array,
                reward_noise: jax.Array | None) -> tuple:
        """``E`` fresh episodes of one task: ``(obs, actions, rewards, mask)``, each ``(E, T, ...)``."""
        policy = nnx.merge(self.maml.graphdef, jax.lax.stop_gradient(params), rest)
        dtype = self.maml.dtype
        n = action_noise.shape[0]

        def act(obs: jax.Array, state: jax.Array) -> tuple:
            out, state = policy(obs[:, None], state)
            return out[:, 0], state

        obs0 = jnp.zeros((n, self.distribution.obs_dim), dtype)
        carry = (obs0, jnp.zeros((n, policy.ssm.config.state_dim), dtype), obs0)
        _, (obs, actions, rewards) = time_loop(act, self.env_step, task, carry, action_noise, reward_noise,
                                               self.discrete)
        return obs, actions, rewards, jnp.ones(rewards.shape, dtype)

    def rollouts(self, params: nnx.State, rest: nnx.State, tasks: jax.Array, action_noise: jax.Array,
                 reward_noise: jax.Array | None, stacked: bool = False) -> tuple:
        """Every task's episodes at once (``vmap``); ``params`` shared, or stacked per task if ``stacked``."""
        in_axes = (0 if stacked else None, None, 0, 0, None if reward_noise is None else 0)
        return jax.vmap(self.rollout, in_axes=in_axes)(params, rest, tasks, action_noise, reward_noise)

    def program(self, params: nnx.State, rest: nnx.State, tasks: jax.Array, action_noise: jax.Array,
                reward_noise: jax.Array | None) -> tuple:
        """Pure: one meta-iteration's ``(loss, meta-gradient, pre-adaptation return, post-adaptation return)``."""
        pre_noise = None if reward_noise is None else reward_noise[0]
        post_noise = None if reward_noise is None else reward_noise[1]
        obs, actions, rewards, mask = self.rollouts(params, rest, tasks, action_noise[0], pre_noise)
        support = (obs, (actions, jax.vmap(advantages)(obs, rewards, mask), mask))
        adapted = jax.vmap(self.maml.inner_loop, in_axes=(None, None, 0, 0))(params, rest, *support)
        q_obs, q_actions, q_rewards, q_mask = self.rollouts(adapted, rest, tasks, action_noise[1], post_noise,
                                                            stacked=True)
        query = (q_obs, (q_actions, jax.vmap(advantages)(q_obs, q_rewards, q_mask), q_mask))
        loss, grads = jax.value_and_grad(self.maml.meta_loss)(params, rest, (*support, *query))
        return loss, grads, rewards.sum(-1).mean(), q_rewards.sum(-1).mean()

    def arrays(self, tasks: list[Task] | np.ndarray, noise: RolloutNoise) -> tuple:
        """Tasks and noise as arrays in the policy's dtype (checked against the configured sizes)."""
        dtype = self.maml.dtype
        tasks = np.asarray(tasks, np.float64) if isinstance(tasks, np.ndarray) else task_parameters(
            self.distribution, tasks)
        check_noise(noise, len(tasks), self.episodes, self.distribution)
        reward = None if noise.rewards is None else jnp.asarray(noise.rewards, dtype)
        return jnp.asarray(tasks, dtype), jnp.asarray(noise.actions, dtype), reward

    def iteration(self, tasks: list[Task] | np.ndarray, noise: RolloutNoise) -> dict[str, float]:
        """One whole meta-iteration (one compiled call), committed through MetaMAML's guarded step."""
        params, rest = self.learner.state()
        loss, grads, pre, post = self._program(params, rest, *self.arrays(tasks, noise))
        if not bool(jnp.isfinite(loss)):
            raise ValueError("meta-iteration: the query loss is NaN/Inf; the model was not changed")
        self.maml.apply_meta_gradient(grads)
        return {"pre_return": float(pre), "post_return": float(post), "loss": float(loss)}
