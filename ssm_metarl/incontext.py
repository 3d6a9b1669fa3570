"""In-context training runs and checkpoints, above both backends.

:func:`train` builds an in-context policy for a task family, trains it with the ``incontext`` or
``both`` objective and returns it with its per-iteration metrics; :func:`save_checkpoint` writes
its canonical weights and everything needed to rebuild it (family, sizes, trial config) into one
safetensors file that :func:`load_checkpoint` reads back in either backend.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals, TaskDistribution
from shared.incontext import TrialConfig
from shared.weights import load_weights, save_weights

CHECKPOINT_KIND = "incontext-policy"


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """Sizes of an in-context policy (the family fixes its input and output widths)."""

    family: str = "bandit"
    state_dim: int = 32
    hidden_dim: int = 64
    init_log_std: float = -1.0

    def distribution(self) -> TaskDistribution:
        return family_distribution(self.family)


def family_distribution(family: str) -> TaskDistribution:
    if family == "bandit":
        return BernoulliBandits()
    if family == "nav2d":
        return Nav2DGoals()
    raise ValueError(f"in-context training covers the families 'bandit' and 'nav2d', got {family!r}")


def build_policy(backend: str, spec: PolicySpec, seed: int, dtype: str = "float32") -> Any:
    """A fresh in-context policy of ``backend`` (``"jax"`` or ``"torch"``)."""
    dist = spec.distribution()
    args = (dist.obs_dim, dist.action_dim, dist.discrete, spec.state_dim, spec.hidden_dim, "cpu")
    if backend == "jax":
        import jax.numpy as jnp
        from flax import nnx

        from jax_impl.meta_rl.incontext import InContextPolicy
        return InContextPolicy(*args, dtype=jnp.dtype(dtype), init_log_std=spec.init_log_std, rngs=nnx.Rngs(seed))
    if backend == "torch":
        import torch

        from torch_impl.meta_rl.incontext import InContextPolicy as TorchPolicy
        torch.manual_seed(seed)
        return TorchPolicy(*args, dtype=getattr(torch, dtype), init_log_std=spec.init_log_std)
    raise ValueError(f"backend must be 'jax' or 'torch', got {backend!r}")


def canonical_params(backend: str, policy: Any) -> dict[str, np.ndarray]:
    if backend == "jax":
        from flax import nnx

        from jax_impl.core.params import to_canonical
        return to_canonical(nnx.state(policy, nnx.Param))
    return {name: value.detach().cpu().numpy().copy() for name, value in policy.state_dict().items()}


def load_params(backend: str, policy: Any, tensors: dict[str, np.ndarray]) -> None:
    if backend == "jax":
        from jax_impl.core.params import from_canonical
        from_canonical(policy, tensors)
        return
    import torch

    policy.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()})


def save_checkpoint(path: str | Path, backend: str, policy: Any, spec: PolicySpec, config: TrialConfig,
                    inner_lr: float, extra: dict[str, Any] | None = None) -> None:
    meta = {"kind": CHECKPOINT_KIND, "policy": dataclasses.asdict(spec), "trial": config.to_dict(),
            "inner_lr": inner_lr, "backend": backend, **(extra or {})}
    weights = policy.canonical_weights() if hasattr(policy, "canonical_weights") else canonical_params(backend, policy)
    save_weights(path, weights, meta)


def load_checkpoint(path: str | Path, backend: str) -> tuple[Any, PolicySpec, TrialConfig, dict[str, Any]]:
    """``(policy, spec, trial config, metadata)`` from a file written by :func:`save_checkpoint`."""
    tensors, meta = load_weights(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{str(path)!r} is not an in-context policy checkpoint (kind {meta.get('kind')!r})")
    spec = PolicySpec(**meta["policy"])
    dtype = next(iter(tensors.values())).dtype.name
    policy = build_policy(backend, spec, seed=0, dtype=dtype)
    load_params(backend, policy, tensors)
    return policy, spec, TrialConfig.from_dict(meta["trial"]), meta


def make_trainer(backend: str, policy: Any, spec: PolicySpec, config: TrialConfig, outer_lr: float,
                 inner_lr: float, num_inner_steps: int = 1, max_grad_norm: float | None = 1.0,
                 shards: Any = None) -> Any:
    """The backend's ``InContextRL``; ``shards`` (torch only) splits each meta-batch over torchrun's ranks."""
    options = {"num_inner_steps": num_inner_steps, "max_grad_norm": max_grad_norm}
    if backend == "jax":
        from jax_impl.meta_rl.incontext import InContextRL
    else:
        from torch_impl.meta_rl.incontext import InContextRL
        options["shards"] = shards
    return InContextRL(policy, spec.distribution(), config, outer_lr=outer_lr, inner_lr=inner_lr, **options)


def backend_key(backend: str, seed: int) -> Any:
    if backend == "jax":
        import jax
        return jax.random.PRNGKey(seed)
    import torch
    return torch.Generator().manual_seed(seed)


def split_key(backend: str, key: Any) -> tuple[Any, Any]:
    if backend == "jax":
        import jax
        key, sub = jax.random.split(key)
        return key, sub
    return key, key


def train(backend: str, spec: PolicySpec, config: TrialConfig, iterations: int, seed: int = 0,
          meta_batch_size: int = 16, outer_lr: float = 3e-3, inner_lr: float = 0.1,
          max_grad_norm: float | None = 1.0, log: Callable[[dict[str, Any]], None] | None = None,
          log_every: int = 50) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Train a fresh in-context policy for ``iterations`` meta-iterations; ``(policy, trainer, metrics)``."""
    policy = build_policy(backend, spec, seed)
    trainer = make_trainer(backend, policy, spec, config, outer_lr, inner_lr, max_grad_norm=max_grad_norm)
    dist = spec.distribution()
    rng = np.random.default_rng(seed)
    key = backend_key(backend, seed)
    metrics: list[dict[str, Any]] = []
    start = time.perf_counter()
    for it in range(iterations):
        key, sub = split_key(backend, key)
        m = trainer.iteration(dist.sample(meta_batch_size, rng), sub)
        m.update(iteration=it + 1, seconds=time.perf_counter() - start)
        metrics.append(m)
        if log is not None and ((it + 1) % log_every == 0 or it + 1 == iterations):
            log(m)
    return policy, trainer, metrics


# ----------------------------------------------------------------------------- ssm-metarl train integration
def trial_config(config: Any) -> TrialConfig:
    """The :class:`TrialConfig` of a ``TrainConfig`` whose objective is ``incontext`` or ``both``."""
    return TrialConfig(config.objective, config.trial_episodes, config.trial_discount, config.trial_baseline,
                       config.episodes, config.trial_entropy)


def policy_spec(config: Any) -> PolicySpec:
    return PolicySpec(config.task, config.state_dim, config.hidden_dim, config.init_log_std)


def initial_weights(config: Any) -> dict[str, np.ndarray]:
    """Seeded initial in-context policy weights, made in PyTorch so both backends start from the same point."""
    import torch

    with torch.random.fork_rng():
        policy = build_policy("torch", policy_spec(config), config.seed)
    return canonical_params("torch", policy)


def make_learner(config: Any, weights: dict[str, np.ndarray], shards: Any = None) -> Any:
    """The configured backend's :class:`InContextRL`, holding ``weights`` (``shards``: see :func:`make_trainer`)."""
    spec = policy_spec(config)
    policy = build_policy(config.backend, spec, config.seed)
    load_params(config.backend, policy, weights)
    return make_trainer(config.backend, policy, spec, trial_config(config), config.outer_lr, config.inner_lr,
                        shards=shards)


def iteration_fn(config: Any, learner: Any, meta_env: Any) -> Callable[[], dict[str, float]]:
    """One in-context meta-iteration per call; its random key is drawn from the run's numpy generator
    (so a resumed run continues the same stream)."""
    def step() -> dict[str, float]:
        tasks = meta_env.distribution.sample(config.meta_batch, meta_env.rng)
        key = backend_key(config.backend, int(meta_env.rng.integers(2**31 - 1)))
        return learner.iteration(tasks, key)

    return step


def summarize(values: np.ndarray) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "se": float(se), "n": len(values)}


def evaluation(learner: Any, config: Any, distribution: TaskDistribution, trials: int = 4,
               inner_steps: int = 3) -> dict[str, Any]:
    """Held-out returns: each episode of a trial (no gradient step), and the first episode of a fresh trial
    after 0..``inner_steps`` inner steps on one trial (mean and s.e. over tasks)."""
    tasks = distribution.held_out(config.eval_tasks)
    horizon = distribution.horizon
    out = learner.evaluate(tasks, backend_key(config.backend, config.seed + 10_000), trials=trials)
    episodes = out["rewards"].reshape(len(tasks), trials, -1, horizon).sum(-1).mean(1)
    report: dict[str, Any] = {f"episode_{e + 1}": summarize(episodes[:, e]) for e in range(episodes.shape[1])}
    for k in range(inner_steps + 1):
        out = learner.evaluate(tasks, backend_key(config.backend, config.seed + 20_000 + k), trials=trials,
                               episodes=1, adapt_steps=k)
        report[f"after_{k}_steps"] = summarize(out["adapted_rewards"].reshape(len(tasks), trials, -1).sum(-1).mean(1))
    if distribution.name == "bandit":
        from shared.baselines import pseudo_regret

        out = learner.evaluate(tasks, backend_key(config.backend, config.seed + 30_000), trials=trials, episodes=1)
        means = np.array([t["means"] for t in tasks])
        report["regret"] = summarize(pseudo_regret(means, out["actions"].reshape(len(tasks), trials, -1)).mean(1))
    return report


def finish(session: Any, compile_seconds: float, final: Path) -> dict[str, Any]:
    """``TrainingSession.finish`` for the in-context objectives: metrics, checkpoint, held-out evaluation."""
    from ssm_metarl import plots
    from ssm_metarl.runinfo import run_info
    from ssm_metarl.train_config import report_config
    from ssm_metarl.train_reports import compile_line, write_json, write_metrics

    config, directory, metrics = session.config, session.directory, session.metrics
    train_seconds = float(sum(m["seconds"] for m in metrics))
    print(compile_line(config, compile_seconds, train_seconds))
    info = run_info(config.backend)
    write_metrics(directory, metrics, config, info, compile_seconds)
    save_checkpoint(directory / "checkpoint.safetensors", config.backend, session.learner, policy_spec(config),
                    trial_config(config), config.inner_lr, extra={"train": report_config(config)})
    report = {"run": info, "config": report_config(config), **evaluation(session.learner, config,
                                                                         session.distribution),
              "train_seconds": train_seconds, "compile_seconds": compile_seconds}
    plots.learning_curve(metrics, report_config(config), directory / "learning_curve.png")
    write_json(directory / "evaluation.json", report)  # last: its presence marks the run complete
    session.resume_path.unlink(missing_ok=True)
    print_evaluation(report, config, final)
    return report


def print_evaluation(report: dict[str, Any], config: Any, where: Path) -> None:
    """The held-out in-context returns (and regret), one line each, then where the results are."""
    print(f"\nheld-out {config.task}: in-context returns over {config.eval_tasks} tasks (± s.e.)")
    for key, value in report.items():
        if isinstance(value, dict) and "mean" in value:
            print(f"  {key:<24} {value['mean']:>9.2f} ± {value['se']:.2f}")
    print(f"results: {where}")
