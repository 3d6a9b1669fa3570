"""MAML-RL with an SSM policy, PyTorch: the policy, the policy-gradient loss, and the glue to MetaMAML.

RL is a loss here, not a second copy of MAML: ``MAMLRL`` hands ``policy_gradient_loss`` to
``MetaMAML`` and calls its ``adapt`` and ``meta_update``. Rollouts are collected by the
backend-neutral runner in ``shared.env_runner`` through :meth:`MAMLRL.act_fn`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from shared.rl import RLBatch
from torch_impl.core.ssm import SSM, ssm_step
from torch_impl.meta_rl.meta_maml import MetaMAML, Params


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

    def __init__(self, policy: nn.Module, inner_lr: float = 0.1, outer_lr: float = 1e-3, num_inner_steps: int = 1,
                 *, first_order: bool = False, vectorize: bool = True, compile: bool = False) -> None:
        self.policy = policy
        self.maml = MetaMAML(policy, inner_lr, outer_lr, num_inner_steps, first_order=first_order,
                             loss_fn=policy_gradient_loss, vectorize=vectorize, compile=compile)
        self.dtype_name = str(next(policy.parameters()).dtype).removeprefix("torch.")  # for numpy batches

    def meta_params(self) -> Params:
        return {name: p.detach() for name, p in self.policy.named_parameters()}

    def act_fn(self, params: list[Params], episodes_per_task: int) -> Any:
        """``act(obs, state)`` for a task-major batch: task ``i`` acts with ``params[i]`` (one call with the
        parameters stacked over tasks; one plain batched call when every task shares the same parameters)."""
        dtype = next(self.policy.parameters()).dtype
        shared = all(p is params[0] for p in params)
        if shared:
            weights = {name: value.detach() for name, value in params[0].items()}
            step = self.policy.act_step
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
        return torch.zeros(n_tasks, episodes_per_task, state_dim, dtype=next(self.policy.parameters()).dtype)

    def to_tensors(self, batch: RLBatch) -> tuple[torch.Tensor, tuple]:
        dtype = next(self.policy.parameters()).dtype

        def tensor(a: np.ndarray) -> torch.Tensor:
            return torch.from_numpy(a) if a.dtype.kind == "i" else torch.from_numpy(a).to(dtype)

        return tensor(batch.obs), tuple(tensor(a) for a in batch.labels)

    def adapt(self, batch: RLBatch, params: Params | None = None) -> Params:
        """One adaptation (``num_inner_steps`` policy-gradient steps) on ``batch``, from ``params``."""
        obs, labels = self.to_tensors(batch)
        return self.maml.adapt(obs, labels, params=params)

    def inner_loss(self, batch: RLBatch, params: Params | None = None) -> float:
        obs, labels = self.to_tensors(batch)
        params = self.meta_params() if params is None else params
        with torch.no_grad():
            return float(policy_gradient_loss(functional_call(self.policy, params, (obs,)), labels))

    def _tasks(self, pairs: list[tuple[RLBatch, RLBatch]]) -> list[tuple]:
        return [(*self.to_tensors(support), *self.to_tensors(query)) for support, query in pairs]

    def meta_update(self, pairs: list[tuple[RLBatch, RLBatch]]) -> float:
        """One outer Adam step on the post-adaptation surrogate loss; ``pairs`` are (support, query)."""
        return self.maml.meta_update(self._tasks(pairs))

    def meta_gradient(self, pairs: list[tuple[RLBatch, RLBatch]]) -> Params:
        return self.maml.meta_gradient(self._tasks(pairs))


def adapter_loss(model: nn.Module, batch: tuple[torch.Tensor, tuple]) -> torch.Tensor:
    """The policy-gradient loss in the Adapter's ``loss_fn(model, batch)`` form; ``batch = (obs, labels)``."""
    return policy_gradient_loss(model(batch[0]), batch[1])
