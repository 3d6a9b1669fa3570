"""In-context meta-RL with the SSM's memory, PyTorch: the twin of ``jax_impl/meta_rl/incontext.py``.

The policy adapts inside a trial (``shared/incontext.py``): the SSM's state is carried across episode
boundaries and the policy sees its previous action, reward and the episode-boundary flag. It is
trained on the whole trial's return (RL^2-style) with an advantage baseline that can see what the
policy has learned so far in the trial (a value fit on the SSM's state). Two objectives:

- ``incontext``: the REINFORCE loss over the whole trial, no inner step;
- ``both``: that loss on the pre-adaptation trial *plus* the post-adaptation trial's loss after an
  inner policy-gradient step on the pre-adaptation trial (second order, as MAML).

:class:`InContextRL` runs a meta-iteration: trial rollouts in ``torch`` (one batched step per time
step over every task and trial), advantages, the loss (``torch.func``, vmapped over tasks in the
combined objective) and a clipped Adam step. Shapes: ``K`` tasks, ``M`` trials per task,
``L = episodes * horizon`` steps, ``X`` the augmented observation width, ``S`` the SSM state width.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from shared.env_runner.envs import NAV2D_MAX_ACTION
from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals, Task, TaskDistribution
from shared.incontext import STATE_BASELINE_REG, TrialConfig, augmented_obs_dim
from shared.rl import BASELINE_REG
from torch_impl.core.ssm import SSM
from torch_impl.meta_rl.distributed import TaskShards
from torch_impl.meta_rl.maml_rl import canonical_adam_state, load_canonical_adam_state, log_prob

Params = dict[str, torch.Tensor]


class InContextPolicy(nn.Module):
    """``x -> tanh(encoder(x)) -> SSM``: categorical logits or a diagonal Gaussian ``[mean, log_std]``.

    The encoder gives the linear recurrence nonlinear features of each step (a bandit arm's pulls and
    successes, a Nav2D position weighted by its reward) to accumulate.
    ``forward(x (N, L, X), state (N, S) or None) -> (dist_params (N, L, D), final_state (N, S))``.
    """

    def __init__(self, obs_dim: int, action_dim: int, discrete: bool, state_dim: int, hidden_dim: int,
                 device: str | torch.device, *, dtype: torch.dtype = torch.float32, init_log_std: float = 0.0,
                 r_min: float = 0.9, r_max: float = 0.999) -> None:
        super().__init__()
        self.discrete = discrete
        self.obs_dim, self.action_dim = obs_dim, action_dim
        self.augmented_dim = augmented_obs_dim(obs_dim, action_dim, discrete)
        self.encoder = nn.Linear(self.augmented_dim, hidden_dim, device=device, dtype=dtype)
        self.ssm = SSM(state_dim, hidden_dim, action_dim, hidden_dim, device, r_min=r_min, r_max=r_max, dtype=dtype)
        if not discrete:
            self.log_std = nn.Parameter(torch.full((action_dim,), init_log_std, dtype=dtype, device=device))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.encoder(x))

    def hidden_states(self, x: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """The SSM's state after every step, ``(N, L, S)``: what the value fit of ``"state"`` sees."""
        return self.ssm.hidden_states(self.encode(x), state)

    def forward(self, x: torch.Tensor, state: torch.Tensor | None = None,
                hidden_only: bool = False) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        """Whole trials ``x (N, L, X)``, or one acting step for ``x (N, X)`` (see :meth:`step`);
        ``hidden_only`` returns :meth:`hidden_states` instead (so ``functional_call`` reaches it)."""
        if hidden_only:
            return self.hidden_states(x, state)
        if x.dim() == 2:
            return self.step(x, state)
        out, final = self.ssm.scan(self.encode(x), state)
        return self._dist_params(out), final

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One acting step: ``x (N, X)``, ``state (N, S)`` -> ``(dist_params (N, D), new_state)``."""
        out, state = self.ssm.step(self.encode(x), state)
        return self._dist_params(out), state

    def _dist_params(self, out: torch.Tensor) -> torch.Tensor:
        if self.discrete:
            return out
        return torch.cat([out, self.log_std.expand_as(out)], dim=-1)


# ------------------------------------------------------------------------- advantages
def discounted_returns(rewards: torch.Tensor, discount: float) -> torch.Tensor:
    """Return-to-go over the whole trial, ``(N, L)``."""
    out = []
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + discount * running
        out.append(running)
    return torch.stack(out[::-1], dim=1)


def time_features(length: int, dtype: torch.dtype) -> torch.Tensor:
    """Twin of ``shared.incontext.time_features``: ``[s, s^2, s^3, 1]``, ``(L, 4)``."""
    s = torch.arange(length, dtype=dtype) / length
    return torch.stack([s, s**2, s**3, torch.ones_like(s)], dim=-1)


def state_values(hidden: torch.Tensor, returns: torch.Tensor, reg: float = STATE_BASELINE_REG) -> torch.Tensor:
    """Ridge fit of ``returns (N, L)`` on ``[h_t, time features]`` over the whole batch; the values ``(N, L)``."""
    n, length = returns.shape
    features = torch.cat([hidden, time_features(length, hidden.dtype).expand(n, length, 4)], -1)
    x = features.reshape(-1, features.shape[-1])
    gram = x.T @ x + reg * x.shape[0] * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x.T @ returns.reshape(-1))
    return features @ weights


def linear_baseline(obs: torch.Tensor, returns: torch.Tensor, reg: float = BASELINE_REG) -> torch.Tensor:
    """The linear feature baseline (twin of ``shared.rl.linear_baseline``, every step valid)."""
    steps = (torch.arange(obs.shape[1], dtype=obs.dtype) / 100.0)[None, :, None].expand(*obs.shape[:2], 1)
    obs = obs.clamp(-10, 10)
    features = torch.cat([obs, obs**2, steps, steps**2, steps**3, torch.ones_like(steps)], dim=-1)
    x = features.reshape(-1, features.shape[-1])
    eye = torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.lstsq(x.T @ x + reg * eye, (x.T @ returns.reshape(-1))[:, None]).solution[:, 0]
    return features @ weights


def trial_advantages(hidden: torch.Tensor, x: torch.Tensor, rewards: torch.Tensor, discount: float, baseline: str,
                     eps: float = 1e-8) -> torch.Tensor:
    """Normalised advantages ``G_t - b_t`` over the whole batch of trials, ``(N, L)``.

    ``hidden (N, L, S)`` the SSM's states (used by ``"state"``), ``x (N, L, X)`` the augmented
    observations (used by ``"linear"``), ``rewards (N, L)``.
    """
    returns = discounted_returns(rewards, discount)
    if baseline == "state":
        values = state_values(hidden, returns)
    elif baseline == "time":
        values = returns.mean(0, keepdim=True).expand_as(returns)
    elif baseline == "linear":
        values = linear_baseline(x, returns)
    else:
        raise ValueError(f"baseline must be 'state', 'time' or 'linear', got {baseline!r}")
    adv = returns - values
    return (adv - adv.mean()) / (adv.std(correction=0) + eps)


# ------------------------------------------------------------------------- losses
def entropy(dist_params: torch.Tensor, discrete: bool) -> torch.Tensor:
    """The entropy of each step's action distribution, ``(...)``: categorical logits or ``[mean, log_std]``."""
    if discrete:
        logp = torch.log_softmax(dist_params, -1)
        return -(logp.exp() * logp).sum(-1)
    _, log_std = dist_params.chunk(2, dim=-1)
    return (log_std + 0.5 * math.log(2 * math.pi * math.e)).sum(-1)


def trial_loss(policy: nn.Module, params: Params, x: torch.Tensor, actions: torch.Tensor,
               advantages: torch.Tensor, entropy_weight: float = 0.0) -> torch.Tensor:
    """REINFORCE surrogate ``-mean(log pi(a_t | x_<=t) A_t)`` over trials ``x (N, L, X)`` from zero state,
    less ``entropy_weight`` times the mean entropy."""
    dist, _ = functional_call(policy, params, (x,))
    loss = -(log_prob(dist, actions) * advantages).mean()
    if entropy_weight:
        loss = loss - entropy_weight * entropy(dist, policy.discrete).mean()
    return loss


def incontext_objective(policy: nn.Module, params: Params, x: torch.Tensor, actions: torch.Tensor,
                        advantages: torch.Tensor, entropy_weight: float = 0.0) -> torch.Tensor:
    """The in-context loss of ``K`` tasks' trials: ``x (K, M, L, X)``, actions, advantages ``(K, M, L)``."""
    flat = lambda a: a.reshape(-1, *a.shape[2:])  # noqa: E731
    return trial_loss(policy, params, flat(x), flat(actions), flat(advantages), entropy_weight)


def adapt(policy: nn.Module, params: Params, x: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
          inner_lr: float, steps: int) -> Params:
    """``steps`` policy-gradient steps on one task's trials ``x (M, L, X)``; differentiable (second order)."""
    loss_grad = grad(lambda p: trial_loss(policy, p, x, actions, advantages))
    for _ in range(steps):
        grads = loss_grad(params)
        params = {name: p - inner_lr * grads[name] for name, p in params.items()}
    return params


def combined_objective(policy: nn.Module, params: Params, pre: tuple, post: tuple, inner_lr: float,
                       steps: int, entropy_weight: float = 0.0) -> torch.Tensor:
    """Pre-adaptation trial loss plus the post-adaptation trial loss after ``steps`` inner steps per task.

    ``pre`` and ``post`` are ``(x (K, M, L, X), actions, advantages (K, M, L))``; the inner step of task
    ``k`` uses ``pre[.][k]`` and its loss is measured on ``post[.][k]``. The entropy bonus enters both
    outer terms, not the inner step.
    """
    pre_loss = incontext_objective(policy, params, *pre, entropy_weight)

    def post_loss(x: torch.Tensor, actions: torch.Tensor, adv: torch.Tensor, q_x: torch.Tensor,
                  q_actions: torch.Tensor, q_adv: torch.Tensor) -> torch.Tensor:
        adapted = adapt(policy, params, x, actions, adv, inner_lr, steps)
        return trial_loss(policy, adapted, q_x, q_actions, q_adv, entropy_weight)

    return pre_loss + vmap(post_loss)(*pre, *post).mean()


# ------------------------------------------------------------------------- rollouts
def task_tensor(distribution: TaskDistribution, tasks: list[Task], dtype: torch.dtype) -> torch.Tensor:
    """Tasks -> ``(K, 2)`` Nav2D goals or ``(K, arms)`` bandit means."""
    key = "goal" if isinstance(distribution, Nav2DGoals) else "means"
    return torch.as_tensor(np.array([t[key] for t in tasks]), dtype=dtype)


TrialNoise = tuple[torch.Tensor, torch.Tensor | None]


def trial_noise(distribution: TaskDistribution, generator: torch.Generator, k: int, trials: int, length: int,
                dtype: torch.dtype) -> TrialNoise:
    """All the randomness of ``k`` tasks' trials, drawn at once so that any slice of tasks sees its own.

    ``(actions, rewards)``: bandits: uniforms ``(K, M, L, arms)`` for Gumbel-max sampling and ``(K, M, L)``
    for the Bernoulli rewards; Nav2D: standard normals ``(K, M, L, 2)`` and ``None`` (the dynamics are
    deterministic). The same draws as ``shared.native_noise``.
    """
    shape = (k, trials, length)
    if isinstance(distribution, BernoulliBandits):
        return (torch.rand(*shape, distribution.action_dim, dtype=dtype, generator=generator),
                torch.rand(*shape, dtype=dtype, generator=generator))
    return torch.randn(*shape, distribution.action_dim, dtype=dtype, generator=generator), None


@torch.no_grad()
def trial_rollout(policy: nn.Module, params: Params, distribution: TaskDistribution, tasks: torch.Tensor,
                  noise: TrialNoise, trials: int, episodes: int) -> tuple:
    """``trials`` trials of ``episodes`` episodes of each task; ``(x (K, M, L, X), actions, rewards (K, M, L))``.

    ``params`` are stacked per task (leading axis ``K``) and ``noise`` comes from :func:`trial_noise`.
    The state is zero at the trial's start and carried across episode boundaries; the environment is
    reset at each boundary.
    """
    bandit = isinstance(distribution, BernoulliBandits)
    k, horizon, dtype = tasks.shape[0], distribution.horizon, tasks.dtype
    action_noise, reward_noise = noise
    state = torch.zeros(k, trials, policy.ssm.config.state_dim, dtype=dtype)
    obs = torch.zeros(k, trials, distribution.obs_dim, dtype=dtype)
    position = torch.zeros(k, trials, distribution.obs_dim, dtype=dtype)
    prev_feat = torch.zeros(k, trials, policy.augmented_dim - distribution.obs_dim - 3, dtype=dtype)
    prev_reward = older_reward = torch.zeros(k, trials, dtype=dtype)
    xs, acts, rews = [], [], []
    for t in range(episodes * horizon):
        boundary = float(t % horizon == 0)
        if boundary:
            obs, position = torch.zeros_like(obs), torch.zeros_like(position)
        x = torch.cat([obs, prev_feat, prev_reward[..., None], (prev_reward - older_reward)[..., None],
                       torch.full((k, trials, 1), boundary, dtype=dtype)], -1)
        dist, state = vmap(lambda p, xi, si: functional_call(policy, p, (xi, si)))(params, x, state)
        if bandit:
            action = torch.argmax(dist - torch.log(-torch.log(action_noise[:, :, t])), dim=-1)  # Gumbel-max
            chosen = tasks.gather(1, action)
            reward = (reward_noise[:, :, t] < chosen).to(dtype)
            one_hot = F.one_hot(action, tasks.shape[-1]).to(dtype)
            obs = torch.cat([one_hot, reward[..., None]], -1)
            prev_feat = torch.cat([one_hot, one_hot * reward[..., None]], -1)
        else:
            mean, log_std = dist.chunk(2, dim=-1)
            action = mean + log_std.exp() * action_noise[:, :, t]
            position = position + action.clamp(-NAV2D_MAX_ACTION, NAV2D_MAX_ACTION)
            reward = -torch.linalg.vector_norm(position - tasks[:, None], dim=-1)
            obs, prev_feat = position, action
        prev_reward, older_reward = reward, prev_reward
        xs.append(x)
        acts.append(action)
        rews.append(reward)
    return torch.stack(xs, 2), torch.stack(acts, 2), torch.stack(rews, 2)


def slice_noise(noise: TrialNoise, tasks: slice) -> TrialNoise:
    return noise[0][tasks], None if noise[1] is None else noise[1][tasks]


# ------------------------------------------------------------------------- the trainer
class InContextRL:
    """Trains an :class:`InContextPolicy` on whole trials (twin of the JAX ``InContextRL``).

    Args:
        policy: the policy (its ``augmented_dim`` must match the task family's).
        distribution: Nav2D goals or Bernoulli bandits.
        config: the objective, trial length, discount, baseline and trials per task.
        outer_lr: Adam's step size.
        inner_lr: the step size of the inner step of the ``"both"`` objective.
        num_inner_steps: the number of inner steps of the ``"both"`` objective.
        max_grad_norm: the meta-gradient's global norm is clipped to this before Adam's step (``None``: no clip).
        shards: the split of each meta-batch over ``torch.distributed`` ranks
            (``TaskShards.from_process_group()``; default: one process holding every task).
    """

    def __init__(self, policy: InContextPolicy, distribution: TaskDistribution, config: TrialConfig,
                 outer_lr: float = 1e-3, inner_lr: float = 0.1, num_inner_steps: int = 1,
                 max_grad_norm: float | None = 1.0, shards: TaskShards | None = None) -> None:
        if not isinstance(distribution, (Nav2DGoals, BernoulliBandits)):
            raise ValueError(f"in-context training covers nav2d and bandit, not {distribution.name!r}")
        if config.objective == "maml":
            raise ValueError("InContextRL trains the 'incontext' and 'both' objectives; 'maml' is MAMLRL's")
        expected = augmented_obs_dim(distribution.obs_dim, distribution.action_dim, distribution.discrete)
        if policy.augmented_dim != expected or policy.discrete != distribution.discrete:
            raise ValueError(f"policy input width {policy.augmented_dim} does not fit {distribution.name!r} "
                             f"(augmented observation width {expected})")
        self.policy, self.distribution, self.config = policy, distribution, config
        self.inner_lr, self.num_inner_steps, self.max_grad_norm = inner_lr, num_inner_steps, max_grad_norm
        self.optimizer = torch.optim.Adam(policy.parameters(), lr=outer_lr)
        self.dtype = policy.encoder.weight.dtype
        self.shards = shards or TaskShards()

    def _params(self) -> Params:
        return {name: p.detach() for name, p in self.policy.named_parameters()}

    def _stack(self, params: Params, k: int) -> Params:
        return {name: p.expand(k, *p.shape) for name, p in params.items()}

    def advantages(self, params: Params, x: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        """Advantages of ``K`` tasks' trials, each task's hidden states from its own stacked ``params``."""
        return self._advantages_of(self._hidden(params, x), x, rewards)

    @torch.no_grad()
    def _hidden(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        """The SSM's states over ``K`` tasks' trials ``x (K, M, L, X)``, ``(K, M, L, S)``."""
        return vmap(lambda p, xi: functional_call(self.policy, p, (xi,), {"hidden_only": True}))(params, x)

    @torch.no_grad()
    def _advantages_of(self, hidden: torch.Tensor, x: torch.Tensor, rewards: torch.Tensor) -> torch.Tensor:
        k, m = rewards.shape[:2]
        flat = lambda a: a.reshape(k * m, *a.shape[2:])  # noqa: E731
        adv = trial_advantages(flat(hidden), flat(x), flat(rewards), self.config.discount, self.config.baseline)
        return adv.reshape(k, m, -1)

    def _batch_advantages(self, params: Params, x: torch.Tensor, rewards: torch.Tensor, n: int) -> tuple:
        """This rank's trials (``params``, ``x``, ``rewards`` of its own tasks, stacked per task): every rank's
        rewards ``(n, M, L)``, and this rank's advantages, normalised over the trials of all ``n`` tasks."""
        mine = self.shards.mine(n)
        hidden, every_x, every_reward = (self.shards.gather(t, n) for t in (self._hidden(params, x), x, rewards))
        return every_reward, self._advantages_of(hidden, every_x, every_reward)[mine]

    def iteration(self, tasks: list[Task], generator: torch.Generator) -> dict[str, float]:
        """One meta-iteration on ``tasks``: rollouts, advantages, loss, clipped Adam step.

        Under ``torch.distributed`` (``shards``) each rank rolls out and differentiates its own tasks; the
        advantages are normalised over every rank's trials and the gradients summed, so every rank takes
        the same step and N ranks compute what one process does, to rounding.
        """
        cfg, shards, n = self.config, self.shards, len(tasks)
        if n < shards.world_size:
            raise ValueError(f"in-context meta-iteration: {n} tasks over {shards.world_size} ranks; each rank needs "
                             "at least one task (raise the meta-batch or lower --nproc_per_node)")
        mine = shards.mine(n)
        n_mine = mine.stop - mine.start
        task_t = task_tensor(self.distribution, tasks, self.dtype)[mine]
        length = cfg.episodes * self.distribution.horizon
        params = self._params()
        stacked = self._stack(params, n_mine)
        noise = slice_noise(trial_noise(self.distribution, generator, n, cfg.trials_per_task, length, self.dtype), mine)
        x, actions, rewards = trial_rollout(self.policy, stacked, self.distribution, task_t, noise,
                                            cfg.trials_per_task, cfg.episodes)
        every_reward, adv = self._batch_advantages(stacked, x, rewards, n)
        pre = (x, actions, adv)
        post_return = torch.zeros((), dtype=self.dtype)
        live = dict(self.policy.named_parameters())
        if cfg.objective == "incontext":
            loss = incontext_objective(self.policy, live, *pre, cfg.entropy)
        else:
            noise = slice_noise(trial_noise(self.distribution, generator, n, cfg.trials_per_task, length,
                                            self.dtype), mine)
            adapted = vmap(lambda *a: adapt(self.policy, params, *a, self.inner_lr, self.num_inner_steps))(*pre)
            adapted = {name: p.detach() for name, p in adapted.items()}
            q_x, q_actions, q_rewards = trial_rollout(self.policy, adapted, self.distribution, task_t, noise,
                                                      cfg.trials_per_task, cfg.episodes)
            every_q_reward, q_adv = self._batch_advantages(adapted, q_x, q_rewards, n)
            loss = combined_objective(self.policy, live, pre, (q_x, q_actions, q_adv), self.inner_lr,
                                      self.num_inner_steps, cfg.entropy)
            post_return = every_q_reward.sum(-1).mean()
        share = n_mine / n  # this rank's tasks' weight in the mean over all tasks
        grads = torch.autograd.grad(loss * share, list(live.values()))
        loss, *grads = shards.sum([(loss * share).detach(), *grads])
        if not (torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)):
            raise ValueError("in-context meta-iteration: the loss or gradient is NaN/Inf; the policy was not changed")
        for p, g in zip(live.values(), grads, strict=True):
            p.grad = g
        if self.max_grad_norm:
            nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": float(loss), "pre_return": float(every_reward.sum(-1).mean()),
                "post_return": float(post_return)}

    # ----------------------------------------------------------------- canonical state (resume, checkpoints)
    backend = "torch"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def canonical_weights(self) -> dict[str, np.ndarray]:
        return {name: t.detach().cpu().numpy().copy() for name, t in self.policy.state_dict().items()}

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None:
        self.policy.load_state_dict({name: torch.as_tensor(np.asarray(v)) for name, v in weights.items()})

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Adam's state in the canonical layout of ``shared.learner`` (zeros before the first step)."""
        return canonical_adam_state(self.optimizer, dict(self.policy.named_parameters()))

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Set Adam's state from the canonical layout, exactly; ``ValueError`` naming what is missing or wrong."""
        load_canonical_adam_state(self.optimizer, dict(self.policy.named_parameters()), state)

    def evaluate(self, tasks: list[Task], generator: torch.Generator, trials: int = 1, episodes: int | None = None,
                 adapt_steps: int = 0) -> dict[str, np.ndarray]:
        """Per-step ``rewards`` and ``actions`` ``(K, trials, L, ...)`` of trials from the meta-parameters,
        and ``adapted_rewards`` after ``adapt_steps`` inner steps on them (the same when 0)."""
        episodes = self.config.episodes if episodes is None else episodes
        task_t = task_tensor(self.distribution, tasks, self.dtype)
        params = self._params()
        stacked = self._stack(params, len(tasks))
        length = episodes * self.distribution.horizon
        noise = trial_noise(self.distribution, generator, len(tasks), trials, length, self.dtype)
        x, actions, rewards = trial_rollout(self.policy, stacked, self.distribution, task_t, noise, trials, episodes)
        post = rewards
        if adapt_steps:
            pre = (x, actions, self.advantages(stacked, x, rewards))
            adapted = vmap(lambda *a: adapt(self.policy, params, *a, self.inner_lr, adapt_steps))(*pre)
            adapted = {name: p.detach() for name, p in adapted.items()}
            noise = trial_noise(self.distribution, generator, len(tasks), trials, length, self.dtype)
            _, _, post = trial_rollout(self.policy, adapted, self.distribution, task_t, noise, trials, episodes)
        return {"rewards": rewards.numpy(), "actions": actions.numpy(), "adapted_rewards": post.numpy()}

