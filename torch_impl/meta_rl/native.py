"""The PyTorch-native MAML-RL path: the twin of ``jax_impl/meta_rl/native.py``.

The environments are written in torch (:func:`nav2d_step`, :func:`bandit_step`, tested equal to the
numpy ones in ``shared/env_runner/envs.py``), the time loop (:func:`time_loop`) steps every task's
episodes at once with the parameters stacked over tasks, the advantages are the twin of
``shared/rl.py``, the inner loop is ``torch.func.vmap`` of ``MetaMAML.inner_loop`` and the
meta-gradient ``torch.func.grad_and_value`` of ``MetaMAML.meta_loss``. :meth:`NativeMAMLRL.program`
is all of it as one function, run under ``torch.compile`` (``compile=True``, the default; CUDA
graphs on a GPU) or eagerly (``compile=False``, the same maths). The step is then committed through
``MetaMAML.apply_meta_gradient`` (guarded). Randomness is injected as numpy arrays
(``shared.native_noise``), so given the same noise both backends compute the same iteration.

Shapes: ``K`` tasks, ``E`` episodes per task, ``T`` steps; observations ``(K, E, T, obs_dim)``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from shared.env_runner.envs import NAV2D_MAX_ACTION
from shared.env_runner.tasks import BernoulliBandits, Task, TaskDistribution
from shared.native_noise import RolloutNoise, check_native, check_noise, task_parameters
from shared.rl import BASELINE_REG, GAE_LAMBDA, GAMMA
from torch_impl.meta_rl.maml_rl import MAMLRL, Params


# ------------------------------------------------------------------------- dynamics
def nav2d_transition(position: torch.Tensor, action: torch.Tensor,
                     goal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch twin of ``shared.env_runner.envs.nav2d_transition``."""
    position = position + torch.clamp(action, -NAV2D_MAX_ACTION, NAV2D_MAX_ACTION)
    return position, -torch.linalg.vector_norm(position - goal, dim=-1)


def bandit_transition(means: torch.Tensor, action: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """Torch twin of ``shared.env_runner.envs.bandit_transition`` (rewards in ``uniform``'s dtype)."""
    means = means.expand(*action.shape, means.shape[-1])
    chosen = torch.gather(means, -1, action.unsqueeze(-1)).squeeze(-1)
    return (uniform < chosen).to(uniform.dtype)


def sample_actions(dist_params: torch.Tensor, noise: torch.Tensor, discrete: bool) -> torch.Tensor:
    """Twin of ``shared.env_runner.environment.sample_actions`` with the noise given: Gumbel-max over
    ``logits - log(-log(uniform))`` (discrete), ``mean + exp(log_std) * normal`` (Gaussian)."""
    if discrete:
        return torch.argmax(dist_params - torch.log(-torch.log(noise)), dim=-1)
    mean, log_std = dist_params.chunk(2, dim=-1)
    return mean + torch.exp(log_std) * noise


def nav2d_step(env_state: torch.Tensor, action: torch.Tensor, goal: torch.Tensor,
               uniform: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Nav2D step: ``(next_obs, reward, env_state)``; the env state is the position ``(..., 2)``."""
    position, reward = nav2d_transition(env_state, action, goal)
    return position, reward, position


def bandit_step(env_state: torch.Tensor, action: torch.Tensor, means: torch.Tensor,
                uniform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One bandit pull: ``(next_obs, reward, env_state)``; the observation is ``[one_hot(action), reward]``."""
    reward = bandit_transition(means, action, uniform.to(env_state.dtype))
    obs = torch.cat([F.one_hot(action, means.shape[-1]).to(env_state.dtype), reward.unsqueeze(-1)], -1)
    return obs, reward, obs


def time_loop(act: Callable, env_step: Callable, tasks: torch.Tensor, carry: tuple, action_noise: torch.Tensor,
              reward_noise: torch.Tensor | None, discrete: bool) -> tuple[tuple, tuple]:
    """``T`` steps of ``K x E`` parallel episodes.

    ``act(obs (K, E, I), policy_state (K, E, S)) -> (dist_params, policy_state)``; ``env_step`` is
    :func:`nav2d_step` or :func:`bandit_step`; ``tasks (K, P)``; ``carry = (obs, policy_state,
    env_state)`` at the start (zeros for a fresh episode; pass the previous final carry to continue
    across episodes); ``action_noise (K, E, T, ...)``, ``reward_noise (K, E, T)`` (bandits) or ``None``.
    Returns ``(final carry, (obs, actions, rewards))`` with ``(K, E, T, ...)`` tensors.
    """
    obs, state, env_state = carry
    task = tasks.unsqueeze(1)  # (K, 1, P) against (K, E, ...)
    observations, actions, rewards = [], [], []
    for t in range(action_noise.shape[2]):
        dist_params, state = act(obs, state)
        action = sample_actions(dist_params, action_noise[:, :, t], discrete)
        observations.append(obs)
        actions.append(action)
        uniform = None if reward_noise is None else reward_noise[:, :, t]
        obs, reward, env_state = env_step(env_state, action, task, uniform)
        rewards.append(reward)
    history = (torch.stack(observations, 2), torch.stack(actions, 2), torch.stack(rewards, 2))
    return (obs, state, env_state), history


# ------------------------------------------------------------------------- advantages
def _reverse_discounted(values: torch.Tensor, mask: torch.Tensor, discount: float) -> torch.Tensor:
    """``out[t] = m[t] (v[t] + discount out[t+1])`` for prefix masks (episodes that end and never restart),
    as one product with the discount matrix ``discount^(s - t)`` for ``s >= t``."""
    steps = torch.arange(values.shape[-1], device=values.device, dtype=values.dtype)
    lag = steps.unsqueeze(0) - steps.unsqueeze(1)  # [t, s] = s - t
    weights = torch.where(lag >= 0, discount ** lag.clamp(min=0), torch.zeros_like(lag))
    return ((values * mask) @ weights.T) * mask


def discounted_returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = GAMMA) -> torch.Tensor:
    return _reverse_discounted(rewards, mask, gamma)


def baseline_features(obs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n, horizon = obs.shape[:2]
    steps = (torch.arange(horizon, dtype=mask.dtype, device=mask.device) / 100.0).view(1, horizon, 1).expand(n, -1, -1)
    obs = torch.clamp(obs.to(mask.dtype), -10, 10)
    features = torch.cat([obs, obs**2, steps, steps**2, steps**3, torch.ones_like(steps)], dim=-1)
    return features * mask.unsqueeze(-1)


def linear_baseline(obs: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
                    reg: float = BASELINE_REG) -> torch.Tensor:
    features = baseline_features(obs, mask)
    x = features.reshape(-1, features.shape[-1])
    y = (returns * mask).reshape(-1, 1)
    eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    driver = "gelsd" if x.device.type == "cpu" else None  # SVD-based, as numpy's and JAX's lstsq
    weights = torch.linalg.lstsq(x.T @ x + reg * eye, x.T @ y, driver=driver).solution
    return (features @ weights).squeeze(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = GAMMA,
        lam: float = GAE_LAMBDA) -> torch.Tensor:
    next_values = torch.cat([values[:, 1:] * mask[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = (rewards + gamma * next_values - values) * mask
    return _reverse_discounted(deltas, mask, gamma * lam)


def normalize(advantages: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    count = mask.sum()
    mean = (advantages * mask).sum() / count
    std = torch.sqrt((((advantages - mean) * mask) ** 2).sum() / count)
    return (advantages - mean) / (std + eps) * mask


def advantages(obs: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Normalised GAE advantages from a fitted linear baseline for one task's ``(E, T)`` episodes:
    the twin of ``shared.rl.to_batch``."""
    values = linear_baseline(obs, discounted_returns(rewards, mask), mask)
    return normalize(gae(rewards, values, mask), mask)


# ------------------------------------------------------------------------- the native loop
class NativeMAMLRL:
    """In-graph rollouts and meta-iterations for Nav2D and bandits, on top of :class:`MAMLRL`.

    Args:
        learner: the PyTorch :class:`MAMLRL` whose policy is meta-trained.
        distribution: a Nav2D or bandit task distribution (else ``ValueError`` naming those families).
        episodes_per_task: ``E``.
        compile: run :meth:`program` under ``torch.compile`` (compiled once per task count and dtype);
            ``False`` runs the same maths eagerly.
    """

    def __init__(self, learner: MAMLRL, distribution: TaskDistribution, episodes_per_task: int, *,
                 compile: bool = True) -> None:
        check_native(distribution)
        self.learner, self.distribution, self.episodes = learner, distribution, episodes_per_task
        self.maml = learner.maml
        self.discrete = isinstance(distribution, BernoulliBandits)
        self.env_step = bandit_step if self.discrete else nav2d_step
        self.compile = compile
        self._compiled: Callable | None = None

    def rollouts(self, params: Params, tasks: torch.Tensor, action_noise: torch.Tensor,
                 reward_noise: torch.Tensor | None, stacked: bool = False) -> tuple:
        """Fresh episodes of every task: ``(obs, actions, rewards, mask)``, each ``(K, E, T, ...)``.

        ``params`` are shared by the tasks, or stacked over them (a leading ``K`` axis) if ``stacked``.
        """
        k, e = action_noise.shape[:2]
        step = self.learner.policy.act_step
        weights = {name: value.detach() for name, value in params.items()}

        def act(obs: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if stacked:
                return step(weights, obs, state)
            out, state = step(weights, obs.reshape(k * e, -1), state.reshape(k * e, -1))
            return out.reshape(k, e, -1), state.reshape(k, e, -1)

        dtype = action_noise.dtype
        obs0 = torch.zeros(k, e, self.distribution.obs_dim, dtype=dtype, device=action_noise.device)
        carry = (obs0, torch.zeros(k, e, self.learner.policy.ssm.config.state_dim, dtype=dtype,
                                   device=action_noise.device), obs0)
        with torch.no_grad():
            _, (obs, actions, rewards) = time_loop(act, self.env_step, tasks, carry, action_noise, reward_noise,
                                                   self.discrete)
        return obs, actions, rewards, torch.ones_like(rewards)

    def program(self, params: Params, rest: Params, tasks: torch.Tensor, action_noise: torch.Tensor,
                reward_noise: torch.Tensor | None) -> tuple:
        """Pure: one meta-iteration's ``(meta-gradient, loss, pre-adaptation return, post-adaptation return)``."""
        per_task_advantages = torch.func.vmap(advantages)
        pre_noise = None if reward_noise is None else reward_noise[0]
        post_noise = None if reward_noise is None else reward_noise[1]
        obs, actions, rewards, mask = self.rollouts(params, tasks, action_noise[0], pre_noise)
        support = (obs, (actions, per_task_advantages(obs, rewards, mask), mask))
        adapted = torch.func.vmap(self.maml.inner_loop, in_dims=(None, None, 0, 0))(params, rest, *support)
        q_obs, q_actions, q_rewards, q_mask = self.rollouts(adapted, tasks, action_noise[1], post_noise, stacked=True)
        query = (q_obs, (q_actions, per_task_advantages(q_obs, q_rewards, q_mask), q_mask))
        grads, loss = torch.func.grad_and_value(self.maml.meta_loss)(params, rest, (*support, *query))
        return grads, loss, rewards.sum(-1).mean(), q_rewards.sum(-1).mean()

    def arrays(self, tasks: list[Task] | np.ndarray, noise: RolloutNoise) -> tuple:
        """Tasks and noise as tensors in the policy's dtype (checked against the configured sizes)."""
        tasks = np.asarray(tasks, np.float64) if isinstance(tasks, np.ndarray) else task_parameters(
            self.distribution, tasks)
        check_noise(noise, len(tasks), self.episodes, self.distribution)
        device = next(self.learner.policy.parameters()).device

        def tensor(a: np.ndarray | None) -> torch.Tensor | None:
            return None if a is None else torch.as_tensor(np.asarray(a), device=device).to(self.learner.dtype)

        return tensor(tasks), tensor(noise.actions), tensor(noise.rewards)

    def _program(self) -> Callable:
        if not self.compile:
            return self.program
        if self._compiled is None:
            cuda = next(self.learner.policy.parameters()).is_cuda
            self._compiled = torch.compile(self.program, dynamic=False,
                                           mode="reduce-overhead" if cuda else None)  # CUDA graphs on a GPU
        return self._compiled

    def iteration(self, tasks: list[Task] | np.ndarray, noise: RolloutNoise) -> dict[str, float]:
        """One whole meta-iteration, committed through MetaMAML's guarded step (``apply_meta_gradient``)."""
        params = {name: p.detach() for name, p in self.maml.trainable_parameters().items()}
        inputs = self.arrays(tasks, noise)
        try:
            grads, loss, pre, post = self._program()(params, self.maml.rest(), *inputs)
        except RuntimeError as err:  # e.g. LAPACK refusing a NaN baseline fit: nothing has been committed
            raise ValueError(f"meta-iteration failed ({type(err).__name__}: {str(err).splitlines()[0]}); "
                             "the model was not changed") from err
        if not bool(torch.isfinite(loss)):
            raise ValueError("meta-iteration: the query loss is NaN/Inf; the model was not changed")
        self.maml.apply_meta_gradient({name: g.detach().clone() for name, g in grads.items()})
        return {"pre_return": float(pre), "post_return": float(post), "loss": float(loss)}
