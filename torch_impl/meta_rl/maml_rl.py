"""MAML-RL with an SSM policy, PyTorch: the policy, the policy-gradient loss, and the glue to MetaMAML.

RL is a loss here, not a second copy of MAML: ``MAMLRL`` hands ``policy_gradient_loss`` to
``MetaMAML`` and calls its ``inner_loop`` and ``meta_update``. Rollouts are collected either by the
backend-neutral runner in ``shared.env_runner`` through :meth:`MAMLRL.act_fn`, or in-graph by
``torch_impl/meta_rl/native.py`` (:meth:`MAMLRL.native`). ``MAMLRL`` implements
``shared.learner.MetaRLLearner``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from shared.learner import ADAM_MOMENTS, ADAM_STEP, Batch, check_optimizer_state
from shared.rl import RLBatch
from torch_impl.core.ssm import SSM, ssm_step
from torch_impl.meta_rl.meta_maml import MetaMAML, Params

COMPILE_ENV = "SSM_METARL_TORCH_COMPILE"  # "1"/"0": force the native path compiled/eager (see MAMLRL.native)


class SSMPolicy(nn.Module):
    """An SSM run over whole episodes; categorical logits or a diagonal Gaussian ``[mean, log_std]``.

    ``forward(obs (N, T, obs_dim), state (N, S) or None) -> (dist_params (N, T, D), final_state)``
    with ``D = action_dim`` (discrete) or ``2 * action_dim`` (continuous).
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, state_dim: int, hidden_dim: int,
                 device: str | torch.device, *, dtype: torch.dtype = torch.float32, init_log_std: float = 0.0,
                 r_min: float = 0.9, r_max: float = 0.999) -> None:
        super().__init__()
        self.discrete = discrete
        self.ssm = SSM(state_dim, obs_dim, action_dim, hidden_dim, device, r_min=r_min, r_max=r_max, dtype=dtype)
        if not discrete:
            self.log_std = nn.Parameter(torch.full((action_dim,), init_log_std, dtype=dtype, device=device))

    def forward(self, obs: torch.Tensor, state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # The parallel scan: far fewer autograd nodes than T sequential steps under double backward.
        out, final = self.ssm.scan(obs, state, mode="parallel")
        return self._dist_params(out, getattr(self, "log_std", None)), final

    def _dist_params(self, out: torch.Tensor, log_std: torch.Tensor | None) -> torch.Tensor:
        if self.discrete:
            return out
        if log_std.dim() == 2:  # stacked per-task parameters (act_step): (N, A) against out (N, B, A)
            log_std = log_std.unsqueeze(-2)
        return torch.cat([out, log_std.expand_as(out)], dim=-1)

    def act_step(self, params: dict[str, torch.Tensor], obs: torch.Tensor,
                 state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One acting step as a pure function of ``params`` (no checks).

        ``obs (N, obs_dim)``, ``state (N, S)`` -> ``(dist_params (N, D), new_state)``; with ``params``
        stacked over ``K`` tasks (a leading axis), ``obs (K, N, obs_dim)`` and ``state (K, N, S)``.
        """
        ssm_params = {name[len("ssm."):]: value for name, value in params.items() if name.startswith("ssm.")}
        out, state = ssm_step(ssm_params, obs, state)
        return self._dist_params(out, params.get("log_std")), state


def log_prob(dist_params: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of ``actions`` under categorical logits (int actions) or ``[mean, log_std]``."""
    if not actions.is_floating_point():
        return torch.log_softmax(dist_params, -1).gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    mean, log_std = dist_params.chunk(2, dim=-1)
    z = (actions - mean) * torch.exp(-log_std)
    return (-0.5 * z**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)


def policy_gradient_loss(outputs: tuple[torch.Tensor, torch.Tensor], labels: tuple) -> torch.Tensor:
    """REINFORCE surrogate ``-mean(log pi(a|s) * A)`` over the valid steps; labels ``(actions, adv, mask)``."""
    actions, advantages, mask = labels
    return -(log_prob(outputs[0], actions) * advantages * mask).sum() / mask.sum()


class MAMLRL:
    """Meta-trains ``policy`` with second-order MAML on policy-gradient losses.

    Implements ``shared.learner.MetaRLLearner`` (the same names as the JAX twin).

    Args:
        policy: an :class:`SSMPolicy` (or any module with its call signature).
        inner_lr: inner (adaptation) SGD step size, as in :class:`MetaMAML`.
        outer_lr: outer Adam learning rate.
        num_inner_steps: inner SGD steps per task.
        first_order: drop the second-order term of the meta-gradient.
        vectorize: vmap over tasks (default) or loop, as in :class:`MetaMAML`.
        compile: compile the meta-gradient once for the run's fixed batch shape (tasks x episodes x
            horizon): worth it for long runs (default: eager).
    """

    backend = "torch"

    def __init__(self, policy: nn.Module, inner_lr: float = 0.1, outer_lr: float = 1e-3, num_inner_steps: int = 1,
                 *, first_order: bool = False, vectorize: bool = True, compile: bool = False) -> None:
        self.policy = policy
        self.maml = MetaMAML(policy, inner_lr, outer_lr, num_inner_steps, first_order=first_order,
                             loss_fn=policy_gradient_loss, vectorize=vectorize, compile=compile)
        self.dtype = next(policy.parameters()).dtype
        self.dtype_name = str(self.dtype).removeprefix("torch.")  # for numpy batches
        self._adapt_tasks = {}  # vmapped inner loops: from shared meta-parameters (None) or per-task ones (0)

    @classmethod
    def build(cls, obs_dim: int, action_dim: int, discrete: bool, state_dim: int, hidden_dim: int,
              weights: dict[str, np.ndarray], *, inner_lr: float, outer_lr: float, r_min: float,
              r_max: float) -> MAMLRL:
        """A learner whose :class:`SSMPolicy` holds the canonical ``weights`` (their dtype is the policy's)."""
        dtype = getattr(torch, str(next(iter(weights.values())).dtype))
        policy = SSMPolicy(obs_dim, action_dim, discrete, state_dim, hidden_dim, "cpu", dtype=dtype,
                           r_min=r_min, r_max=r_max)
        learner = cls(policy, inner_lr, outer_lr)
        learner.load_canonical_weights(weights)
        return learner

    # ------------------------------------------------------------ weights and optimizer state
    def meta_params(self) -> Params:
        return {name: p.detach() for name, p in self.policy.named_parameters()}

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The policy's parameters by canonical name (its ``state_dict``), as numpy copies."""
        return {name: t.detach().cpu().numpy().copy() for name, t in self.policy.state_dict().items()}

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Set the policy's parameters exactly from canonical ``weights`` (``load_state_dict`` checks them)."""
        self.policy.load_state_dict({name: torch.from_numpy(np.array(v)) for name, v in weights.items()})

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Adam's state in the canonical layout of ``shared.learner`` (zeros before the first step)."""
        return canonical_adam_state(self.maml.optimizer, self.maml.trainable_parameters())

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Set Adam's state from the canonical layout, exactly; ``ValueError`` naming what is missing or wrong."""
        load_canonical_adam_state(self.maml.optimizer, self.maml.trainable_parameters(), state)

    # ------------------------------------------------------------ acting
    def act_fn(self, params: list[Params], episodes_per_task: int) -> Any:
        """``act(obs, state)`` for a task-major batch: task ``i`` acts with ``params[i]`` (one call with the
        parameters stacked over tasks; one plain batched call when every task shares the same parameters)."""
        dtype = self.dtype
        shared = all(p is params[0] for p in params)
        if shared:
            weights = {name: value.detach() for name, value in params[0].items()}
        else:
            weights = {name: torch.stack([p[name].detach() for p in params]) for name in params[0]}
        step = self.policy.act_step
        width = len(params) * episodes_per_task

        @torch.no_grad()
        def act(obs: np.ndarray, state: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
            x = torch.from_numpy(obs).to(dtype)
            if shared:
                out, state = step(weights, x, state.reshape(width, -1))
                return out.numpy(), state.reshape(len(params), episodes_per_task, -1)
            out, state = step(weights, x.reshape(len(params), episodes_per_task, -1), state)
            return out.reshape(width, -1).numpy(), state

        return act

    def initial_state(self, n_tasks: int, episodes_per_task: int) -> torch.Tensor:
        state_dim = self.policy.ssm.config.state_dim
        return torch.zeros(n_tasks, episodes_per_task, state_dim, dtype=self.dtype)

    # ------------------------------------------------------------ batches, adaptation, meta-update
    def convert(self, batch: RLBatch | Batch) -> Batch:
        """An :class:`RLBatch` as tensors ``(obs, (actions, advantages, mask))`` (a converted one passes through)."""
        if not isinstance(batch, RLBatch):
            return batch
        dtype = self.dtype

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a) if a.dtype.kind == "i" else torch.from_numpy(a).to(dtype)

        return tensor(batch.obs), tuple(tensor(a) for a in batch.labels)

    def adapt(self, batch: RLBatch | Batch, params: Params | None = None) -> Params:
        """One adaptation (``num_inner_steps`` policy-gradient steps) on ``batch``, from ``params``."""
        obs, labels = self.convert(batch)
        return self.maml.adapt(obs, labels, params=params)

    def adapt_tasks(self, batches: Sequence[RLBatch | Batch], params: Sequence[Params] | None = None) -> list[Params]:
        """Every task's inner loop in one ``torch.func.vmap`` call, from the meta-parameters or ``params[i]``.

        The same maths as ``[adapt(b, p) for b, p in zip(batches, params)]`` (tested equal); every task's
        batch must have the same shapes. Returns every parameter (frozen ones unchanged), per task.
        """
        converted = [self.convert(b) for b in batches]
        obs = torch.stack([c[0] for c in converted])
        labels = tuple(torch.stack([c[1][i] for c in converted]) for i in range(len(converted[0][1])))
        floats = [obs, *(t for t in labels if t.is_floating_point())]
        if not bool(torch.stack([t.abs().max() for t in floats]).isfinite().all()):
            raise ValueError("adapt_tasks: a batch contains NaN or Inf; expected finite observations and advantages")
        own = self.maml.trainable_parameters()
        if params is None:
            start, axis = {name: p.detach() for name, p in own.items()}, None
        else:
            start, axis = {name: torch.stack([p[name].detach() for p in params]) for name in own}, 0
        inner = self._adapt_tasks.get(axis)
        if inner is None:
            inner = self._adapt_tasks[axis] = torch.func.vmap(self.maml.inner_loop, in_dims=(axis, None, 0, 0))
        adapted = inner(start, self.maml.rest(), obs, labels)
        frozen = self.meta_params()
        return [{**frozen, **{name: value[i].detach() for name, value in adapted.items()}}
                for i in range(len(converted))]

    def inner_loss(self, batch: RLBatch | Batch, params: Params | None = None) -> float:
        obs, labels = self.convert(batch)
        params = self.meta_params() if params is None else params
        with torch.no_grad():
            return float(policy_gradient_loss(functional_call(self.policy, params, (obs,)), labels))

    def _tasks(self, pairs: Sequence[tuple[RLBatch | Batch, RLBatch | Batch]]) -> list[tuple]:
        return [(*self.convert(support), *self.convert(query)) for support, query in pairs]

    def meta_update(self, pairs: Sequence[tuple[RLBatch | Batch, RLBatch | Batch]]) -> float:
        """One guarded outer Adam step on the post-adaptation surrogate loss; ``pairs`` are (support, query)."""
        return self.maml.meta_update(self._tasks(pairs))

    def meta_gradient(self, pairs: Sequence[tuple[RLBatch | Batch, RLBatch | Batch]]) -> Params:
        return self.maml.meta_gradient(self._tasks(pairs))

    # ------------------------------------------------------------ other paths
    def native(self, distribution: Any, episodes_per_task: int, *, compile: bool | None = None) -> Any:
        """The in-graph rollout path (``torch_impl.meta_rl.native``) for Nav2D or bandits.

        ``compile=None`` compiles on a GPU (with CUDA graphs) and runs eagerly on the CPU, where the
        compiled parts were measured no faster than eager (4.05 s vs 3.31 s per Nav2D meta-iteration) after
        minutes of compiling; ``SSM_METARL_TORCH_COMPILE=1`` or ``0`` forces either form.
        """
        from torch_impl.meta_rl.native import NativeMAMLRL

        if compile is None:
            forced = os.environ.get(COMPILE_ENV)
            compile = next(self.policy.parameters()).is_cuda if forced is None else forced != "0"
        return NativeMAMLRL(self, distribution, episodes_per_task, compile=compile)

    def adapter(self, config: Any) -> Any:
        """A test-time :class:`~torch_impl.adaptation.Adapter` over the policy."""
        from torch_impl.adaptation import Adapter

        return Adapter(self.policy, config)

    def adapter_step(self, adapter: Any, batch: RLBatch | Batch) -> dict[str, Any]:
        """One Adapter update on the policy-gradient loss of ``batch``."""
        return adapter.update_step(adapter_loss, self.convert(batch))


def canonical_adam_state(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    """``torch.optim.Adam``'s state of ``params`` (by name) in the canonical layout of ``shared.learner``
    (the step count and both moments; zeros before the first step)."""
    out = {ADAM_STEP: np.asarray(0, np.int64)}
    for name, p in params.items():
        state = optimizer.state.get(p, {})
        if "step" in state:
            out[ADAM_STEP] = np.asarray(int(state["step"]), np.int64)
        for key in ADAM_MOMENTS:
            moment = state.get(key.removeprefix("adam."))
            out[f"{key}.{name}"] = (np.zeros(tuple(p.shape), str(p.dtype).removeprefix("torch.")) if moment is None
                                    else moment.detach().cpu().numpy().copy())
    return out


def load_canonical_adam_state(optimizer: torch.optim.Optimizer, params: dict[str, torch.Tensor],
                              state: dict[str, np.ndarray]) -> None:
    """Set ``optimizer``'s state of ``params`` from the canonical layout, exactly; ``ValueError`` naming what is
    missing, or a moment whose shape or dtype differs from its parameter's. Nothing changes on an error."""
    check_optimizer_state(state, list(params), "load_optimizer_state")
    step = int(state[ADAM_STEP])
    entries = {}
    for name, p in params.items():
        entry = {"step": torch.tensor(float(step), dtype=_step_dtype())}
        dtype = str(p.dtype).removeprefix("torch.")
        for key in ADAM_MOMENTS:
            value = np.asarray(state[f"{key}.{name}"])
            if value.shape != tuple(p.shape) or value.dtype != np.dtype(dtype):
                raise ValueError(f"load_optimizer_state: {key}.{name} must be {dtype} of shape "
                                 f"{tuple(p.shape)}, got {value.dtype} {value.shape}")
            entry[key.removeprefix("adam.")] = torch.from_numpy(value.copy()).to(p.device)
        entries[p] = entry
    optimizer.state.clear()
    if step:
        optimizer.state.update(entries)


def _step_dtype() -> torch.dtype:
    """The dtype ``torch.optim.Adam`` gives its step count (float64 when that is the default dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def adapter_loss(model: nn.Module, batch: tuple[torch.Tensor, tuple]) -> torch.Tensor:
    """The policy-gradient loss in the Adapter's ``loss_fn(model, batch)`` form; ``batch = (obs, labels)``."""
    return policy_gradient_loss(model(batch[0]), batch[1])
