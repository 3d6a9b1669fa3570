"""Parity rows of the in-context objectives: the same recorded trials through both backends (float64).

Trials are recorded once with the PyTorch policy (a short horizon keeps them small); both backends
then compute the advantages under every baseline, the in-context loss and its gradient, and the
combined (inner step on top) loss and its second-order gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from jax_impl.core.params import from_canonical, to_canonical
from jax_impl.meta_rl import incontext as jax_ic
from parity_tests.models import TORCH_DTYPES, canonical
from shared.compare import compare_trees
from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals, TaskDistribution
from shared.incontext import BASELINES
from torch_impl.meta_rl import incontext as torch_ic

TRIAL_TASKS, TRIALS, EPISODES, HORIZON = 3, 2, 2, 8
INNER_LR = 0.1
ENTROPY_WEIGHT = 0.05  # the losses carry the entropy bonus, so the parity rows cover it


def twin_policies(dist: TaskDistribution, dtype: str, state_dim: int, hidden_dim: int,
                  seed: int) -> tuple[torch_ic.InContextPolicy, jax_ic.InContextPolicy]:
    args = (dist.obs_dim, dist.action_dim, dist.discrete, state_dim, hidden_dim, "cpu")
    torch.manual_seed(seed)
    t_policy = torch_ic.InContextPolicy(*args, dtype=TORCH_DTYPES[dtype], init_log_std=-0.5)
    j_policy = jax_ic.InContextPolicy(*args, dtype=dtype, rngs=nnx.Rngs(seed))
    from_canonical(j_policy, canonical(t_policy))
    return t_policy, j_policy


def recorded_trials(t_policy: torch_ic.InContextPolicy, dist: TaskDistribution, seed: int) -> tuple:
    """``(x, actions, rewards)`` of ``TRIAL_TASKS`` tasks' trials, as numpy, recorded with ``t_policy``."""
    tasks = dist.sample(TRIAL_TASKS, np.random.default_rng(seed))
    dtype = t_policy.encoder.weight.dtype
    params = {name: p.detach().expand(TRIAL_TASKS, *p.shape) for name, p in t_policy.named_parameters()}
    noise = torch_ic.trial_noise(dist, torch.Generator().manual_seed(seed), TRIAL_TASKS, TRIALS,
                                 EPISODES * dist.horizon, dtype)
    out = torch_ic.trial_rollout(t_policy, params, dist, torch_ic.task_tensor(dist, tasks, dtype), noise,
                                 TRIALS, EPISODES)
    return tuple(a.numpy() for a in out)


def small_families() -> dict[str, TaskDistribution]:
    return {"nav2d": Nav2DGoals(horizon=HORIZON), "bandit": BernoulliBandits(arms=3, pulls=HORIZON)}


def incontext_losses(setup) -> list:
    """Advantages (every baseline), in-context loss and gradient, combined loss and second-order gradient."""
    from parity_tests.matrix import TOLERANCES, row

    if TOLERANCES[setup.dtype]["rl"] is None:
        return []
    dtype, rows = setup.dtype, []
    for family, dist in small_families().items():
        t_policy, j_policy = twin_policies(dist, dtype, setup.sizes.state_dim, setup.sizes.hidden_dim,
                                           setup.sizes.seed)
        x, actions, rewards = recorded_trials(t_policy, dist, setup.sizes.seed)
        k, m, length = rewards.shape
        flat = lambda a, n=k * m: a.reshape(n, *a.shape[2:])  # noqa: E731
        t_x, t_actions, t_rewards = (torch.from_numpy(a) for a in (x, actions, rewards))
        j_x, j_actions, j_rewards = (jnp.asarray(a) for a in (x, actions, rewards))
        with torch.no_grad():
            t_hidden = t_policy.hidden_states(flat(t_x))
        j_hidden = nnx.jit(lambda policy, x: policy.hidden_states(x))(j_policy, flat(j_x))
        rows.append(row(f"in-context SSM states over whole trials ({family})", dtype, "outputs",
                        compare_trees(np.asarray(j_hidden), t_hidden.numpy())))
        advantages = {}
        for baseline in BASELINES:
            t_adv = torch_ic.trial_advantages(t_hidden, flat(t_x), flat(t_rewards), 0.99, baseline)
            j_adv = jax.jit(jax_ic.trial_advantages, static_argnums=(3, 4))(j_hidden, flat(j_x), flat(j_rewards), 0.99,
                                                                            baseline)
            rows.append(row(f"in-context advantages, {baseline} baseline ({family})", dtype, "pg_loss",
                            compare_trees(np.asarray(j_adv), t_adv.numpy())))
            advantages[baseline] = t_adv.reshape(k, m, length).numpy()
        adv = advantages["state"]
        t_pre = (t_x, t_actions, torch.from_numpy(adv))
        j_pre = (j_x, j_actions, jnp.asarray(adv))
        t_params = {name: p.detach().clone().requires_grad_(True) for name, p in t_policy.named_parameters()}
        graphdef, j_params, rest = nnx.split(j_policy, nnx.Param, ...)

        t_loss = torch_ic.incontext_objective(t_policy, t_params, *t_pre, ENTROPY_WEIGHT)
        t_grads = dict(zip(t_params, torch.autograd.grad(t_loss, list(t_params.values())), strict=True))
        j_loss, j_grads = jax.jit(jax.value_and_grad(jax_ic.incontext_objective, argnums=1), static_argnums=(0, 6))(
            graphdef, j_params, rest, *j_pre, ENTROPY_WEIGHT)
        rows.append(row(f"in-context trial loss with entropy bonus ({family})", dtype, "pg_loss",
                        compare_trees(np.asarray(j_loss), t_loss.detach().numpy())))
        rows.append(row(f"in-context trial loss gradient ({family})", dtype, "gradients",
                        compare_trees(to_canonical(j_grads), {n: g.numpy() for n, g in t_grads.items()})))

        # The post-adaptation trials: the same recordings, reversed over tasks (any fixed data will do).
        t_post = tuple(torch.flip(a, (0,)) for a in t_pre)
        j_post = tuple(jnp.flip(a, 0) for a in j_pre)
        t_loss = torch_ic.combined_objective(t_policy, t_params, t_pre, t_post, INNER_LR, 1, ENTROPY_WEIGHT)
        t_grads = dict(zip(t_params, torch.autograd.grad(t_loss, list(t_params.values())), strict=True))
        j_loss, j_grads = jax.jit(jax.value_and_grad(jax_ic.combined_objective, argnums=1),
                                  static_argnums=(0, 5, 6, 7))(graphdef, j_params, rest, j_pre, j_post, INNER_LR, 1,
                                                               ENTROPY_WEIGHT)
        rows.append(row(f"combined (in-context + inner step) loss ({family})", dtype, "pg_loss",
                        compare_trees(np.asarray(j_loss), t_loss.detach().numpy())))
        rows.append(row(f"combined loss gradient, second order ({family})", dtype, "rl",
                        compare_trees(to_canonical(j_grads), {n: g.numpy() for n, g in t_grads.items()})))
    return rows
