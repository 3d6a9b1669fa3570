"""MAML-RL with an SSM policy, JAX: the twin of ``torch_impl/meta_rl/maml_rl.py``.

RL is a loss here, not a second copy of MAML: ``MAMLRL`` hands ``policy_gradient_loss`` to
``MetaMAML``. Acting for many tasks at once is one ``jit``-compiled, ``vmap``ped step.
``jax_impl/meta_rl/native.py`` adds a fully jit-compiled path with the environments in JAX
(:meth:`MAMLRL.native`). ``MAMLRL`` implements ``shared.learner.MetaRLLearner``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.core.params import SplitCache, from_canonical, to_canonical
from jax_impl.core.ssm import SSM
from jax_impl.meta_rl.meta_maml import MetaMAML, Params
from shared.layout import torch_to_flax
from shared.learner import ADAM_MOMENTS, ADAM_STEP, Batch, check_optimizer_state
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

    Implements ``shared.learner.MetaRLLearner`` (the same names as the PyTorch twin).

    Args:
        policy: an :class:`SSMPolicy` (or any module with its call signature).
        inner_lr: inner (adaptation) SGD step size, as in :class:`MetaMAML`.
        outer_lr: outer Adam learning rate.
        num_inner_steps: inner SGD steps per task.
        first_order: drop the second-order term of the meta-gradient.
    """

    backend = "jax"

    def __init__(self, policy: nnx.Module, inner_lr: float = 0.1, outer_lr: float = 1e-3, num_inner_steps: int = 1,
                 *, first_order: bool = False) -> None:
        self.policy = policy
        self.maml = MetaMAML(policy, inner_lr, outer_lr, num_inner_steps, first_order=first_order,
                             loss_fn=policy_gradient_loss)
        self._split = SplitCache(policy)
        self._act = jax.jit(jax.vmap(self._act_one, in_axes=(0, None, 0, 0)))
        # every task's inner loop at once: from shared meta-parameters (None) or per-task ones (0)
        self._adapt_tasks = {axis: jax.jit(jax.vmap(self.maml.inner_loop, in_axes=(axis, None, 0, 0)))
                             for axis in (None, 0)}
        self.dtype = self.maml.dtype
        self.dtype_name = jnp.dtype(self.dtype).name  # for numpy batches

    @classmethod
    def build(cls, obs_dim: int, action_dim: int, discrete: bool, state_dim: int, hidden_dim: int,
              weights: dict[str, np.ndarray], *, inner_lr: float, outer_lr: float, r_min: float,
              r_max: float) -> MAMLRL:
        """A learner whose :class:`SSMPolicy` holds the canonical ``weights`` (their dtype is the policy's)."""
        dtype = jnp.dtype(next(iter(weights.values())).dtype)
        policy = SSMPolicy(obs_dim, action_dim, discrete, state_dim, hidden_dim, "cpu", dtype=dtype,
                           r_min=r_min, r_max=r_max)
        learner = cls(policy, inner_lr, outer_lr)
        learner.load_canonical_weights(weights)
        return learner

    # ------------------------------------------------------------ weights and optimizer state
    def meta_params(self) -> Params:
        return jax.tree.map(jnp.copy, nnx.state(self.policy, nnx.Param))

    def state(self) -> tuple[Params, nnx.State]:
        """``(params, rest)``: the policy's live parameters and other variables (no copies)."""
        return self._split.get()

    def rest(self) -> nnx.State:
        """The policy's non-Param variables (what ``nnx.merge`` needs besides the parameters)."""
        return self._split.get()[1]

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The policy's parameters by canonical name (PyTorch ``state_dict`` names and layout), as numpy."""
        return to_canonical(nnx.state(self.policy, nnx.Param))

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Set the policy's parameters exactly from canonical ``weights`` (names and shapes are checked)."""
        from_canonical(self.policy, weights)

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Adam's state in the canonical layout of ``shared.learner`` (moments in PyTorch's layout)."""
        return canonical_adam_state(self.maml.opt_state)

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Set Adam's state from the canonical layout, exactly; ``ValueError`` naming what is missing or wrong."""
        self.maml.opt_state = load_canonical_adam_state(self.maml.opt_state, state)

    # ------------------------------------------------------------ acting
    def _act_one(self, params: Params, rest: nnx.State, obs: jax.Array, state: jax.Array) -> tuple:
        out, h = nnx.merge(self.maml.graphdef, params, rest)(obs[:, None], state)
        return out[:, 0], h

    def act_fn(self, params: list[Params], episodes_per_task: int) -> Any:
        """``act(obs, state)`` for a task-major batch: task ``i`` acts with ``params[i]`` (one vmapped call)."""
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params)
        rest = self.rest()
        dtype = self.dtype

        def act(obs: np.ndarray, state: jax.Array) -> tuple[np.ndarray, jax.Array]:
            x = jnp.asarray(obs, dtype).reshape(len(params), episodes_per_task, -1)
            out, state = self._act(stacked, rest, x, state)
            return np.asarray(out).reshape(len(params) * episodes_per_task, -1), state

        return act

    def initial_state(self, n_tasks: int, episodes_per_task: int) -> jax.Array:
        state_dim = self.policy.ssm.config.state_dim
        return jnp.zeros((n_tasks, episodes_per_task, state_dim), self.dtype)

    # ------------------------------------------------------------ batches, adaptation, meta-update
    def convert(self, batch: RLBatch | Batch) -> Batch:
        """An :class:`RLBatch` as arrays ``(obs, (actions, advantages, mask))`` (a converted one passes through)."""
        if not isinstance(batch, RLBatch):
            return batch
        dtype = self.dtype

        def array(a: np.ndarray) -> jax.Array:
            return jnp.asarray(a) if a.dtype.kind == "i" else jnp.asarray(a, dtype)

        return array(batch.obs), tuple(array(a) for a in batch.labels)

    def adapt(self, batch: RLBatch | Batch, params: Params | None = None) -> Params:
        """One adaptation (``num_inner_steps`` policy-gradient steps) on ``batch``, from ``params``."""
        obs, labels = self.convert(batch)
        return self.maml.adapt(obs, labels, params=params)

    def adapt_tasks(self, batches: Sequence[RLBatch | Batch], params: Sequence[Params] | None = None) -> list[Params]:
        """Every task's inner loop in one ``jit(vmap)`` call, from the meta-parameters or ``params[i]``.

        The same maths as ``[adapt(b, p) for b, p in zip(batches, params)]`` (tested equal); every task's
        batch must have the same shapes.
        """
        converted = [self.convert(b) for b in batches]
        obs = jnp.stack([c[0] for c in converted])
        labels = tuple(jnp.stack([c[1][i] for c in converted]) for i in range(len(converted[0][1])))
        floats = [obs, *(t for t in labels if jnp.issubdtype(t.dtype, jnp.floating))]
        if not bool(jnp.all(jnp.stack([jnp.isfinite(t).all() for t in floats]))):
            raise ValueError("adapt_tasks: a batch contains NaN or Inf; expected finite observations and advantages")
        if params is None:
            start, axis = self._split.get()[0], None
        else:
            start, axis = jax.tree.map(lambda *leaves: jnp.stack(leaves), *params), 0
        adapted = self._adapt_tasks[axis](start, self.rest(), obs, labels)
        return [jax.tree.map(lambda a, i=i: a[i], adapted) for i in range(len(converted))]

    def inner_loss(self, batch: RLBatch | Batch, params: Params | None = None) -> float:
        obs, labels = self.convert(batch)
        params = self.meta_params() if params is None else params
        return float(policy_gradient_loss(nnx.merge(self.maml.graphdef, params, self.rest())(obs), labels))

    def _tasks(self, pairs: Sequence[tuple[RLBatch | Batch, RLBatch | Batch]]) -> list[tuple]:
        return [(*self.convert(support), *self.convert(query)) for support, query in pairs]

    def meta_update(self, pairs: Sequence[tuple[RLBatch | Batch, RLBatch | Batch]]) -> float:
        """One guarded outer Adam step on the post-adaptation surrogate loss; ``pairs`` are (support, query)."""
        return self.maml.meta_update(self._tasks(pairs))

    def meta_gradient(self, pairs: Sequence[tuple[RLBatch | Batch, RLBatch | Batch]]) -> Params:
        return self.maml.meta_gradient(self._tasks(pairs))

    # ------------------------------------------------------------ other paths
    def native(self, distribution: Any, episodes_per_task: int) -> Any:
        """The in-graph rollout path (``jax_impl.meta_rl.native``) for Nav2D or bandits."""
        from jax_impl.meta_rl.native import NativeMAMLRL

        return NativeMAMLRL(self, distribution, episodes_per_task)

    def adapter(self, config: Any) -> Any:
        """A test-time :class:`~jax_impl.adaptation.Adapter` over the policy."""
        from jax_impl.adaptation import Adapter

        return Adapter(self.policy, config)

    def adapter_step(self, adapter: Any, batch: RLBatch | Batch) -> dict[str, Any]:
        """One Adapter update on the policy-gradient loss of ``batch``."""
        return adapter.update_step(adapter_loss, self.convert(batch))


def adapter_loss(model: nnx.Module, batch: tuple[jax.Array, tuple]) -> jax.Array:
    """The policy-gradient loss in the Adapter's ``loss_fn(model, batch)`` form; ``batch = (obs, labels)``."""
    return policy_gradient_loss(model(batch[0]), batch[1])


def _is_adam(node: Any) -> bool:
    return isinstance(node, optax.ScaleByAdamState)


def _adam(opt_state: Any) -> optax.ScaleByAdamState:
    """optax's ``ScaleByAdamState`` inside an optimizer state (a chain of transforms, or Adam alone)."""
    found = [x for x in jax.tree.leaves(opt_state, is_leaf=_is_adam) if _is_adam(x)]
    if not found:
        raise ValueError("the outer optimizer state has no Adam moments (expected optax.adam's ScaleByAdamState)")
    return found[0]


def canonical_adam_state(opt_state: Any) -> dict[str, np.ndarray]:
    """The Adam part of an optax state in the canonical layout of ``shared.learner`` (moments in PyTorch's
    layout, by canonical parameter name)."""
    adam = _adam(opt_state)
    out = {ADAM_STEP: np.asarray(int(adam.count), np.int64)}
    for key, tree in zip(ADAM_MOMENTS, (adam.mu, adam.nu), strict=True):
        out.update({f"{key}.{name}": value for name, value in to_canonical(tree).items()})
    return out


def load_canonical_adam_state(opt_state: Any, state: dict[str, np.ndarray]) -> Any:
    """``opt_state`` with its Adam part set from the canonical layout, exactly; ``ValueError`` naming what is
    missing, or a moment whose shape or dtype differs from the one it replaces."""
    adam = _adam(opt_state)
    check_optimizer_state(state, list(to_canonical(adam.mu)), "load_optimizer_state")
    moments = []
    for key, tree in zip(ADAM_MOMENTS, (adam.mu, adam.nu), strict=True):
        expected = to_canonical(tree)
        values = {name: np.asarray(state[f"{key}.{name}"]) for name in expected}
        for name, value in values.items():
            if value.shape != expected[name].shape or value.dtype != expected[name].dtype:
                raise ValueError(f"load_optimizer_state: {key}.{name} must be {expected[name].dtype} of shape "
                                 f"{expected[name].shape}, got {value.dtype} {value.shape}")
        moment = jax.tree.map(jnp.copy, tree)
        nnx.replace_by_pure_dict(moment, jax.tree.map(jnp.asarray, torch_to_flax(values)))
        moments.append(moment)
    new = adam._replace(count=jnp.asarray(int(state[ADAM_STEP]), adam.count.dtype), mu=moments[0], nu=moments[1])
    return jax.tree.map(lambda x: new if _is_adam(x) else x, opt_state, is_leaf=_is_adam)
