"""In-context meta-RL with the SSM's memory, JAX: the twin of ``torch_impl/meta_rl/incontext.py``.

The policy adapts inside a trial (``shared/incontext.py``): the SSM's state is carried across episode
boundaries and the policy sees its previous action, reward and the episode-boundary flag. It is
trained on the whole trial's return (RL^2-style) with an advantage baseline that can see what the
policy has learned so far in the trial (a value fit on the SSM's state). Two objectives:

- ``incontext``: the REINFORCE loss over the whole trial, no inner step;
- ``both``: that loss on the pre-adaptation trial *plus* the post-adaptation trial's loss after an
  inner policy-gradient step on the pre-adaptation trial (second order, as MAML).

:class:`InContextRL` runs the whole meta-iteration as one ``jit``-compiled program: trial rollouts in
``jax.numpy`` (``lax.scan`` over time, ``vmap`` over tasks), advantages, the loss and an optax step.
Shapes: ``K`` tasks, ``M`` trials per task, ``L = episodes * horizon`` steps, ``X`` the augmented
observation width, ``S`` the SSM state width.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.core.params import from_canonical, to_canonical
from jax_impl.core.ssm import SSM, torch_default_linear
from jax_impl.meta_rl.maml_rl import canonical_adam_state, load_canonical_adam_state, log_prob
from jax_impl.meta_rl.native import bandit_transition, linear_baseline, nav2d_transition
from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals, Task, TaskDistribution
from shared.incontext import STATE_BASELINE_REG, TrialConfig, augmented_obs_dim

Params = nnx.State


class InContextPolicy(nnx.Module):
    """``x -> tanh(encoder(x)) -> SSM``: categorical logits or a diagonal Gaussian ``[mean, log_std]``.

    The encoder gives the linear recurrence nonlinear features of each step (a bandit arm's pulls and
    successes, a Nav2D position weighted by its reward) to accumulate.
    ``__call__(x (N, L, X), state (N, S) or None) -> (dist_params (N, L, D), final_state (N, S))``.
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, state_dim: int, hidden_dim: int,
                 device: str | jax.Device, *, dtype: Any = jnp.float32, init_log_std: float = 0.0,
                 r_min: float = 0.9, r_max: float = 0.999, rngs: nnx.Rngs | None = None) -> None:
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        self.discrete = discrete
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.augmented_dim = augmented_obs_dim(obs_dim, action_dim, discrete)
        self.encoder = torch_default_linear(self.augmented_dim, hidden_dim, jnp.dtype(dtype), rngs)
        self.ssm = SSM(state_dim, hidden_dim, action_dim, hidden_dim, device, r_min=r_min, r_max=r_max, dtype=dtype,
                       rngs=rngs)
        if not discrete:
            self.log_std = nnx.Param(jnp.full((action_dim,), init_log_std, dtype=dtype))

    def encode(self, x: jax.Array) -> jax.Array:
        return jnp.tanh(self.encoder(x))

    def hidden_states(self, x: jax.Array, state: jax.Array | None = None) -> jax.Array:
        """The SSM's state after every step, ``(N, L, S)``: what the value fit of ``"state"`` sees."""
        return self.ssm.hidden_states(self.encode(x), state)

    def __call__(self, x: jax.Array, state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        out, final = self.ssm.scan(self.encode(x), state)
        return self._dist_params(out), final

    def step(self, x: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
        """One acting step: ``x (N, X)``, ``state (N, S)`` -> ``(dist_params (N, D), new_state)``."""
        out, state = self.ssm.step(self.encode(x), state)
        return self._dist_params(out), state

    def _dist_params(self, out: jax.Array) -> jax.Array:
        if self.discrete:
            return out
        return jnp.concatenate([out, jnp.broadcast_to(self.log_std[...], out.shape)], axis=-1)


# ------------------------------------------------------------------------- advantages
def discounted_returns(rewards: jax.Array, discount: float) -> jax.Array:
    """Return-to-go over the whole trial, ``(N, L)``."""
    def body(running: jax.Array, reward: jax.Array) -> tuple:
        running = reward + discount * running
        return running, running

    _, out = jax.lax.scan(body, jnp.zeros(rewards.shape[0], rewards.dtype), rewards.T, reverse=True)
    return out.T


def time_features(length: int, dtype: Any) -> jax.Array:
    """Twin of ``shared.incontext.time_features``: ``[s, s^2, s^3, 1]``, ``(L, 4)``."""
    s = jnp.arange(length, dtype=dtype) / length
    return jnp.stack([s, s**2, s**3, jnp.ones_like(s)], axis=-1)


def state_values(hidden: jax.Array, returns: jax.Array, reg: float = STATE_BASELINE_REG) -> jax.Array:
    """Ridge fit of ``returns (N, L)`` on ``[h_t, time features]`` over the whole batch; the values ``(N, L)``."""
    n, length = returns.shape
    features = jnp.concatenate([hidden, jnp.broadcast_to(time_features(length, hidden.dtype), (n, length, 4))], -1)
    x = features.reshape(-1, features.shape[-1])
    gram = x.T @ x + reg * x.shape[0] * jnp.eye(x.shape[1], dtype=x.dtype)
    weights = jnp.linalg.solve(gram, x.T @ returns.reshape(-1))
    return features @ weights


def trial_advantages(hidden: jax.Array, x: jax.Array, rewards: jax.Array, discount: float, baseline: str,
                     eps: float = 1e-8) -> jax.Array:
    """Normalised advantages ``G_t - b_t`` over the whole batch of trials, ``(N, L)``.

    ``hidden (N, L, S)`` the SSM's states (used by ``"state"``), ``x (N, L, X)`` the augmented
    observations (used by ``"linear"``), ``rewards (N, L)``.
    """
    returns = discounted_returns(rewards, discount)
    if baseline == "state":
        values = state_values(hidden, returns)
    elif baseline == "time":
        values = jnp.broadcast_to(returns.mean(0, keepdims=True), returns.shape)
    elif baseline == "linear":
        values = linear_baseline(x, returns, jnp.ones_like(returns))
    else:
        raise ValueError(f"baseline must be 'state', 'time' or 'linear', got {baseline!r}")
    adv = returns - values
    return (adv - adv.mean()) / (adv.std() + eps)


# ------------------------------------------------------------------------- losses
def entropy(dist_params: jax.Array, discrete: bool) -> jax.Array:
    """The entropy of each step's action distribution, ``(...)``: categorical logits or ``[mean, log_std]``."""
    if discrete:
        logp = jax.nn.log_softmax(dist_params, -1)
        return -(jnp.exp(logp) * logp).sum(-1)
    _, log_std = jnp.split(dist_params, 2, axis=-1)
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def trial_loss(policy: nnx.Module, x: jax.Array, actions: jax.Array, advantages: jax.Array,
               entropy_weight: float = 0.0) -> jax.Array:
    """REINFORCE surrogate ``-mean(log pi(a_t | x_<=t) A_t)`` over trials ``x (N, L, X)`` from zero state,
    less ``entropy_weight`` times the mean entropy."""
    dist, _ = policy(x)
    loss = -(log_prob(dist, actions) * advantages).mean()
    if entropy_weight:
        loss = loss - entropy_weight * entropy(dist, policy.discrete).mean()
    return loss


def incontext_objective(graphdef: nnx.GraphDef, params: Params, rest: nnx.State, x: jax.Array, actions: jax.Array,
                        advantages: jax.Array, entropy_weight: float = 0.0) -> jax.Array:
    """The in-context loss of ``K`` tasks' trials: ``x (K, M, L, X)``, actions, advantages ``(K, M, L)``."""
    policy = nnx.merge(graphdef, params, rest)
    flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
    return trial_loss(policy, flat(x), flat(actions), flat(advantages), entropy_weight)


def adapt(graphdef: nnx.GraphDef, params: Params, rest: nnx.State, x: jax.Array, actions: jax.Array,
          advantages: jax.Array, inner_lr: float, steps: int) -> Params:
    """``steps`` policy-gradient steps on one task's trials ``x (M, L, X)``; differentiable (second order)."""
    def loss(p: Params) -> jax.Array:
        return trial_loss(nnx.merge(graphdef, p, rest), x, actions, advantages)

    for _ in range(steps):
        grads = jax.grad(loss)(params)
        params = jax.tree.map(lambda p, g: p - inner_lr * g, params, grads)
    return params


def combined_objective(graphdef: nnx.GraphDef, params: Params, rest: nnx.State, pre: tuple, post: tuple,
                       inner_lr: float, steps: int, entropy_weight: float = 0.0) -> jax.Array:
    """Pre-adaptation trial loss plus the post-adaptation trial loss after ``steps`` inner steps per task.

    ``pre`` and ``post`` are ``(x (K, M, L, X), actions, advantages (K, M, L))``; the inner step of task
    ``k`` uses ``pre[.][k]`` and its loss is measured on ``post[.][k]``. The entropy bonus enters both
    outer terms, not the inner step.
    """
    pre_loss = incontext_objective(graphdef, params, rest, *pre, entropy_weight)

    def post_loss(x: jax.Array, actions: jax.Array, adv: jax.Array, q_x: jax.Array, q_actions: jax.Array,
                  q_adv: jax.Array) -> jax.Array:
        adapted = adapt(graphdef, params, rest, x, actions, adv, inner_lr, steps)
        return trial_loss(nnx.merge(graphdef, adapted, rest), q_x, q_actions, q_adv, entropy_weight)

    return pre_loss + jax.vmap(post_loss)(*pre, *post).mean()


# ------------------------------------------------------------------------- rollouts
def task_array(distribution: TaskDistribution, tasks: list[Task], dtype: Any) -> jax.Array:
    """Tasks -> ``(K, 2)`` Nav2D goals or ``(K, arms)`` bandit means."""
    key = "goal" if isinstance(distribution, Nav2DGoals) else "means"
    return jnp.asarray(np.array([t[key] for t in tasks]), dtype)


def trial_rollout(policy: nnx.Module, distribution: TaskDistribution, task: jax.Array, key: jax.Array,
                  trials: int, episodes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``trials`` trials of ``episodes`` episodes of one task; ``(x (M, L, X), actions, rewards (M, L))``.

    The state is zero at the trial's start and carried across episode boundaries; the environment is
    reset at each boundary.
    """
    bandit = isinstance(distribution, BernoulliBandits)
    horizon, dtype = distribution.horizon, policy.encoder.kernel.dtype
    length = episodes * horizon
    state0 = jnp.zeros((trials, policy.ssm.config.state_dim), dtype)
    obs0 = jnp.zeros((trials, distribution.obs_dim), dtype)
    feat_dim = policy.augmented_dim - distribution.obs_dim - 3

    def body(carry: tuple, xs: tuple) -> tuple:
        obs, position, prev_feat, prev_reward, older_reward, state = carry
        t, step_key = xs
        boundary = (t % horizon == 0).astype(dtype)
        obs, position = obs * (1 - boundary), position * (1 - boundary)
        x = jnp.concatenate([obs, prev_feat, prev_reward[:, None], (prev_reward - older_reward)[:, None],
                             jnp.broadcast_to(boundary, (trials, 1))], -1)
        dist, state = policy.step(x, state)
        key_action, key_env = jax.random.split(step_key)
        if bandit:
            action = jax.random.categorical(key_action, dist)
            reward = bandit_transition(task[None], action, jax.random.uniform(key_env, (trials,), dtype)).astype(dtype)
            one_hot = jax.nn.one_hot(action, task.shape[-1], dtype=dtype)
            next_obs = jnp.concatenate([one_hot, reward[:, None]], -1)
            feat = jnp.concatenate([one_hot, one_hot * reward[:, None]], -1)
        else:
            mean, log_std = jnp.split(dist, 2, axis=-1)
            action = mean + jnp.exp(log_std) * jax.random.normal(key_action, mean.shape, dtype)
            position, reward = nav2d_transition(position, action, task)
            next_obs, feat = position, action
        return (next_obs, position, feat, reward, prev_reward, state), (x, action, reward)

    zeros = jnp.zeros((trials,), dtype)
    carry0 = (obs0, obs0, jnp.zeros((trials, feat_dim), dtype), zeros, zeros, state0)
    _, (x, actions, rewards) = jax.lax.scan(body, carry0, (jnp.arange(length), jax.random.split(key, length)))
    swap = lambda a: jnp.swapaxes(a, 0, 1)  # noqa: E731
    return swap(x), swap(actions), swap(rewards)


# ------------------------------------------------------------------------- the trainer
class InContextRL:
    """Trains an :class:`InContextPolicy` on whole trials; one compiled call per meta-iteration.

    Args:
        policy: the policy (its ``augmented_dim`` must match the task family's).
        distribution: Nav2D goals or Bernoulli bandits (the families whose dynamics are written in JAX).
        config: the objective, trial length, discount, baseline and trials per task.
        outer_lr: Adam's step size.
        inner_lr: the step size of the inner step of the ``"both"`` objective.
        num_inner_steps: the number of inner steps of the ``"both"`` objective.
        max_grad_norm: the meta-gradient's global norm is clipped to this before Adam's step (``None``: no clip).
    """

    def __init__(self, policy: InContextPolicy, distribution: TaskDistribution, config: TrialConfig,
                 outer_lr: float = 1e-3, inner_lr: float = 0.1, num_inner_steps: int = 1,
                 max_grad_norm: float | None = 1.0) -> None:
        if not isinstance(distribution, (Nav2DGoals, BernoulliBandits)):
            raise ValueError(f"in-context training covers nav2d and bandit, not {distribution.name!r}")
        if config.objective == "maml":
            raise ValueError("InContextRL trains the 'incontext' and 'both' objectives; 'maml' is MAMLRL's")
        expected = augmented_obs_dim(distribution.obs_dim, distribution.action_dim, distribution.discrete)
        if policy.augmented_dim != expected or policy.discrete != distribution.discrete:
            raise ValueError(f"policy input width {policy.augmented_dim} does not fit {distribution.name!r} "
                             f"(augmented observation width {expected})")
        self.policy, self.distribution, self.config = policy, distribution, config
        self.inner_lr, self.num_inner_steps = inner_lr, num_inner_steps
        self.graphdef, params, self.rest = nnx.split(policy, nnx.Param, ...)
        chain = [optax.clip_by_global_norm(max_grad_norm)] if max_grad_norm else []
        self.optimizer = optax.chain(*chain, optax.adam(outer_lr))
        self.opt_state = self.optimizer.init(params)
        self.dtype = policy.encoder.kernel.dtype
        self._iteration = jax.jit(self._iteration_fn)
        self._evaluate = jax.jit(self._evaluate_fn, static_argnames=("trials", "episodes", "adapt_steps"))

    # ----------------------------------------------------------------- pieces
    def rollouts(self, params: Params, tasks: jax.Array, key: jax.Array, trials: int, episodes: int) -> tuple:
        """Trials of every task, each task with its own ``params`` (stacked, leading axis ``K``)."""
        def one(p: Params, task: jax.Array, k: jax.Array) -> tuple:
            policy = nnx.merge(self.graphdef, jax.lax.stop_gradient(p), self.rest)
            return trial_rollout(policy, self.distribution, task, k, trials, episodes)

        return jax.vmap(one)(params, tasks, jax.random.split(key, tasks.shape[0]))

    def advantages(self, params: Params, x: jax.Array, rewards: jax.Array) -> jax.Array:
        """Advantages of ``K`` tasks' trials, each task's hidden states from its own stacked ``params``."""
        k, m = rewards.shape[:2]
        hidden = jax.vmap(lambda p, xi: nnx.merge(self.graphdef, p, self.rest).hidden_states(xi))(params, x)
        flat = lambda a: a.reshape(k * m, *a.shape[2:])  # noqa: E731
        adv = trial_advantages(flat(hidden), flat(x), flat(rewards), self.config.discount, self.config.baseline)
        return jax.lax.stop_gradient(adv.reshape(k, m, -1))

    def _broadcast(self, params: Params, k: int) -> Params:
        return jax.tree.map(lambda p: jnp.broadcast_to(p, (k, *p.shape)), params)

    def _iteration_fn(self, params: Params, opt_state: Any, tasks: jax.Array, key: jax.Array) -> tuple:
        cfg, k = self.config, tasks.shape[0]
        key_pre, key_post = jax.random.split(key)
        stacked = self._broadcast(params, k)
        x, actions, rewards = self.rollouts(stacked, tasks, key_pre, cfg.trials_per_task, cfg.episodes)
        pre = (x, actions, self.advantages(stacked, x, rewards))
        post_return = jnp.zeros((), rewards.dtype)
        if cfg.objective == "incontext":
            loss, grads = jax.value_and_grad(incontext_objective, argnums=1)(self.graphdef, params, self.rest, *pre,
                                                                             cfg.entropy)
        else:
            adapted = jax.vmap(lambda *a: adapt(self.graphdef, params, self.rest, *a, self.inner_lr,
                                                self.num_inner_steps))(*pre)
            q_x, q_actions, q_rewards = self.rollouts(adapted, tasks, key_post, cfg.trials_per_task, cfg.episodes)
            post = (q_x, q_actions, self.advantages(adapted, q_x, q_rewards))
            loss, grads = jax.value_and_grad(combined_objective, argnums=1)(
                self.graphdef, params, self.rest, pre, post, self.inner_lr, self.num_inner_steps, cfg.entropy)
            post_return = q_rewards.sum(-1).mean()
        finite = jnp.isfinite(loss) & jnp.all(jnp.stack([jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]))
        updates, new_opt_state = self.optimizer.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        # The guarded step: a non-finite loss or gradient leaves parameters and optimizer state as they were.
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)  # noqa: E731
        return keep(new_params, params), keep(new_opt_state, opt_state), loss, rewards.sum(-1).mean(), post_return

    def iteration(self, tasks: list[Task], key: jax.Array) -> dict[str, float]:
        """One meta-iteration on ``tasks``: rollouts, advantages, loss, clipped Adam step (one compiled call)."""
        params = nnx.state(self.policy, nnx.Param)
        params, self.opt_state, loss, pre, post = self._iteration(
            params, self.opt_state, task_array(self.distribution, tasks, self.dtype), key)
        if not bool(jnp.isfinite(loss)):
            raise ValueError("in-context meta-iteration: the loss is NaN/Inf; the policy was not changed")
        nnx.update(self.policy, params)
        return {"loss": float(loss), "pre_return": float(pre), "post_return": float(post)}

    # ----------------------------------------------------------------- canonical state (resume, checkpoints)
    backend = "jax"

    @property
    def dtype_name(self) -> str:
        return jnp.dtype(self.dtype).name

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return to_canonical(nnx.state(self.policy, nnx.Param))

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None:
        from_canonical(self.policy, weights)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Adam's state in the canonical layout of ``shared.learner`` (moments in PyTorch's layout)."""
        return canonical_adam_state(self.opt_state)

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Set Adam's state from the canonical layout, exactly; ``ValueError`` naming what is missing or wrong."""
        self.opt_state = load_canonical_adam_state(self.opt_state, state)

    # ----------------------------------------------------------------- evaluation
    def _evaluate_fn(self, params: Params, tasks: jax.Array, key: jax.Array, trials: int, episodes: int,
                     adapt_steps: int) -> tuple:
        k = tasks.shape[0]
        key_pre, key_post = jax.random.split(key)
        stacked = self._broadcast(params, k)
        x, actions, rewards = self.rollouts(stacked, tasks, key_pre, trials, episodes)
        if adapt_steps == 0:
            return rewards, actions, rewards
        pre = (x, actions, self.advantages(stacked, x, rewards))
        adapted = jax.vmap(lambda *a: adapt(self.graphdef, params, self.rest, *a, self.inner_lr, adapt_steps))(*pre)
        _, _, q_rewards = self.rollouts(adapted, tasks, key_post, trials, episodes)
        return rewards, actions, q_rewards

    def evaluate(self, tasks: list[Task], key: jax.Array, trials: int = 1, episodes: int | None = None,
                 adapt_steps: int = 0) -> dict[str, np.ndarray]:
        """Per-step ``rewards`` and ``actions`` ``(K, trials, L, ...)`` of trials from the meta-parameters,
        and ``adapted_rewards`` after ``adapt_steps`` inner steps on them (the same when 0)."""
        episodes = self.config.episodes if episodes is None else episodes
        tasks_array = task_array(self.distribution, tasks, self.dtype)
        pre, actions, post = self._evaluate(nnx.state(self.policy, nnx.Param), tasks_array, key, trials=trials,
                                            episodes=episodes, adapt_steps=adapt_steps)
        return {"rewards": np.asarray(pre), "actions": np.asarray(actions), "adapted_rewards": np.asarray(post)}


def episode_returns(rewards: np.ndarray, horizon: int) -> np.ndarray:
    """``(..., L)`` per-step rewards -> ``(..., L / horizon)`` per-episode returns."""
    return rewards.reshape(*rewards.shape[:-1], rewards.shape[-1] // horizon, horizon).sum(-1)


__all__ = ["InContextPolicy", "InContextRL", "adapt", "combined_objective", "discounted_returns", "entropy",
           "episode_returns", "incontext_objective", "state_values", "trial_advantages", "trial_loss",
           "trial_rollout"]
