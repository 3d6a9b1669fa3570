"""MAML-RL with an SSM policy, JAX: the twin of ``torch_impl/meta_rl/maml_rl.py``.

RL is a loss here, not a second copy of MAML: ``MAMLRL`` hands ``policy_gradient_loss`` to
``MetaMAML``. Acting for many tasks at once is one ``jit``-compiled, ``vmap``ped step.
``jax_impl/meta_rl/native.py`` adds a fully jit-compiled path with the environments in JAX.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.core.ssm import SSM
from jax_impl.meta_rl.meta_maml import MetaMAML, Params
from shared.rl import RLBatch


class SSMPolicy(nnx.Module):
    """An SSM run over whole episodes; categorical logits or a diagonal Gaussian ``[mean, log_std]``.

    ``__call__(obs (N, T, obs_dim), state (N, S) or None) -> (dist_params (N, T, D), final_state)``
    with ``D = action_dim`` (discrete) or ``2 * action_dim`` (continuous).
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, state_dim: int, hidden_dim: int,
                 device: str | jax.Device, *, dtype: Any = jnp.float32, init_log_std: float = 0.0,
                 r_min: float = 0.9, r_max: float = 0.999,
                 rngs: nnx.Rngs | None = None) -> None:
        self.discrete = discrete
        self.ssm = SSM(state_dim, obs_dim, action_dim, hidden_dim, device, r_min=r_min, r_max=r_max, dtype=dtype,
                       rngs=rngs)
        if not discrete:
            self.log_std = nnx.Param(jnp.full((action_dim,), init_log_std, dtype=dtype))

    def __call__(self, obs: jax.Array, state: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        out, final = self.ssm.scan(obs, state)
        if self.discrete:
            return out, final
        return jnp.concatenate([out, jnp.broadcast_to(self.log_std[...], out.shape)], axis=-1), final


def log_prob(dist_params: jax.Array, actions: jax.Array) -> jax.Array:
    """Log-likelihood of ``actions`` under categorical logits (int actions) or ``[mean, log_std]``."""
    if not jnp.issubdtype(actions.dtype, jnp.floating):
        return jnp.take_along_axis(jax.nn.log_softmax(dist_params, -1), actions[..., None], axis=-1)[..., 0]
    mean, log_std = jnp.split(dist_params, 2, axis=-1)
    z = (actions - mean) * jnp.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def policy_gradient_loss(outputs: tuple[jax.Array, jax.Array], labels: tuple) -> jax.Array:
    """REINFORCE surrogate ``-mean(log pi(a|s) * A)`` over the valid steps; labels ``(actions, adv, mask)``."""
    actions, advantages, mask = labels
    return -(log_prob(outputs[0], actions) * advantages * mask).sum() / mask.sum()


class MAMLRL:
    """Meta-trains ``policy`` with second-order MAML on policy-gradient losses.

    Args:
        policy: an :class:`SSMPolicy` (or any module with its call signature).
        inner_lr, outer_lr, num_inner_steps, first_order: as in :class:`MetaMAML`.
    """

    def __init__(self, policy: nnx.Module, inner_lr: float = 0.1, outer_lr: float = 1e-3, num_inner_steps: int = 1,
                 *, first_order: bool = False) -> None:
        self.policy = policy
        self.maml = MetaMAML(policy, inner_lr, outer_lr, num_inner_steps, first_order=first_order,
                             loss_fn=policy_gradient_loss)
        self._act = jax.jit(jax.vmap(self._act_one, in_axes=(0, None, 0, 0)))
        self.dtype_name = jnp.dtype(self.maml.dtype).name  # for numpy batches

    def meta_params(self) -> Params:
        return jax.tree.map(jnp.copy, nnx.state(self.policy, nnx.Param))

    def _act_one(self, params: Params, rest: nnx.State, obs: jax.Array, state: jax.Array) -> tuple:
        out, h = nnx.merge(self.maml.graphdef, params, rest)(obs[:, None], state)
        return out[:, 0], h

    def act_fn(self, params: list[Params], episodes_per_task: int) -> Any:
        """``act(obs, state)`` for a task-major batch: task ``i`` acts with ``params[i]`` (one vmapped call)."""
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
        rest = self.maml.rest()
        dtype = self.maml._param_dtype()

        def act(obs: np.ndarray, state: jax.Array) -> tuple[np.ndarray, jax.Array]:
            x = jnp.asarray(obs, dtype).reshape(len(params), episodes_per_task, -1)
            out, state = self._act(stacked, rest, x, state)
            return np.asarray(out).reshape(len(params) * episodes_per_task, -1), state

        return act

    def initial_state(self, n_tasks: int, episodes_per_task: int) -> jax.Array:
        state_dim = self.policy.ssm.config.state_dim
        return jnp.zeros((n_tasks, episodes_per_task, state_dim), self.maml._param_dtype())

    def to_arrays(self, batch: RLBatch) -> tuple[jax.Array, tuple]:
        dtype = self.maml._param_dtype()

        def array(a: np.ndarray) -> jax.Array:
            return jnp.asarray(a) if a.dtype.kind == "i" else jnp.asarray(a, dtype)

        return array(batch.obs), tuple(array(a) for a in batch.labels)

    def adapt(self, batch: RLBatch, params: Params | None = None) -> Params:
        """One adaptation (``num_inner_steps`` policy-gradient steps) on ``batch``, from ``params``."""
        obs, labels = self.to_arrays(batch)
        return self.maml.adapt(obs, labels, params=params)

    def inner_loss(self, batch: RLBatch, params: Params | None = None) -> float:
        obs, labels = self.to_arrays(batch)
        params = self.meta_params() if params is None else params
        return float(policy_gradient_loss(nnx.merge(self.maml.graphdef, params, self.maml.rest())(obs), labels))

    def _tasks(self, pairs: list[tuple[RLBatch, RLBatch]]) -> list[tuple]:
        return [(*self.to_arrays(support), *self.to_arrays(query)) for support, query in pairs]

    def meta_update(self, pairs: list[tuple[RLBatch, RLBatch]]) -> float:
        """One outer Adam step on the post-adaptation surrogate loss; ``pairs`` are (support, query)."""
        return self.maml.meta_update(self._tasks(pairs))

    def meta_gradient(self, pairs: list[tuple[RLBatch, RLBatch]]) -> Params:
        return self.maml.meta_gradient(self._tasks(pairs))


def adapter_loss(model: nnx.Module, batch: tuple[jax.Array, tuple]) -> jax.Array:
    """The policy-gradient loss in the Adapter's ``loss_fn(model, batch)`` form; ``batch = (obs, labels)``."""
    return policy_gradient_loss(model(batch[0]), batch[1])
