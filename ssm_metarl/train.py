"""``ssm-metarl train`` and ``ssm-metarl evaluate``: MAML-RL with an SSM policy, end to end.

Writes ``metrics.json`` (per iteration), ``evaluation.json`` (held-out returns after 0..3 inner
steps and after test-time adaptation with the Adapter), ``checkpoint.safetensors`` and PNG plots.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shared.adaptation import AdaptationConfig
from shared.config import from_dict
from shared.env_runner import MetaEnvironment, get_distribution
from shared.env_runner.tasks import TaskDistribution
from shared.weights import load_weights, save_weights
from ssm_metarl import scaleout
from ssm_metarl.rl_loop import batches, evaluate, meta_iteration, rollout

NATIVE_TASKS = ("nav2d", "bandit")
# Markov tasks want a short memory (the current observation matters); bandits need a long one.
DECAY_RING = {"nav2d": (0.01, 0.5), "cartpole": (0.01, 0.5), "pendulum": (0.01, 0.5), "bandit": (0.9, 0.999)}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in the checkpoint."""

    backend: str = "torch"
    task: str = "nav2d"
    iterations: int = 150
    meta_batch: int = 20
    episodes: int = 20
    state_dim: int = 16
    hidden_dim: int = 32
    inner_lr: float = 0.1
    outer_lr: float = 3e-3
    init_log_std: float = 0.0  # Gaussian policies: initial log standard deviation
    r_min: float | None = None  # the SSM's decays start in [r_min, r_max] (its memory); None: the task's
    r_max: float | None = None
    seed: int = 0
    eval_tasks: int = 40
    eval_episodes: int = 20
    native: bool = True  # JAX only: the jit-compiled rollouts where the task family has them

    def __post_init__(self) -> None:
        default_min, default_max = DECAY_RING.get(self.task, (0.9, 0.999))
        object.__setattr__(self, "r_min", default_min if self.r_min is None else self.r_min)
        object.__setattr__(self, "r_max", default_max if self.r_max is None else self.r_max)
        if self.backend not in ("torch", "jax"):
            raise ValueError(f"backend must be 'torch' or 'jax', got {self.backend!r}")
        get_distribution(self.task)
        for name in ("iterations", "meta_batch", "episodes", "state_dim", "hidden_dim", "eval_tasks", "eval_episodes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < (0 if name == "iterations" else 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


def initial_weights(config: TrainConfig, distribution: TaskDistribution) -> dict[str, np.ndarray]:
    """Seeded initial policy weights, made in PyTorch so both backends start from the same point."""
    import torch

    from torch_impl.meta_rl.maml_rl import SSMPolicy

    torch.manual_seed(config.seed)
    policy = SSMPolicy(distribution.obs_dim, distribution.action_dim, distribution.discrete, config.state_dim,
                       config.hidden_dim, "cpu", init_log_std=config.init_log_std, r_min=config.r_min,
                       r_max=config.r_max)
    return {name: t.detach().numpy().copy() for name, t in policy.state_dict().items()}


def make_learner(config: TrainConfig, distribution: TaskDistribution, weights: dict[str, np.ndarray]) -> Any:
    args = (distribution.obs_dim, distribution.action_dim, distribution.discrete, config.state_dim, config.hidden_dim)
    ring = {"r_min": config.r_min, "r_max": config.r_max}
    if config.backend == "torch":
        import torch

        from torch_impl.meta_rl.maml_rl import MAMLRL, SSMPolicy

        policy = SSMPolicy(*args, "cpu", **ring)
        policy.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
        return MAMLRL(policy, config.inner_lr, config.outer_lr)
    from jax_impl.core.params import from_canonical
    from jax_impl.meta_rl.maml_rl import MAMLRL, SSMPolicy

    policy = SSMPolicy(*args, "cpu", **ring)
    from_canonical(policy, weights)
    return MAMLRL(policy, config.inner_lr, config.outer_lr)


def canonical_weights(learner: Any) -> dict[str, np.ndarray]:
    params = learner.meta_params()
    if isinstance(params, dict) and all(hasattr(v, "detach") for v in params.values()):
        return {k: v.detach().numpy().copy() for k, v in params.items()}
    from jax_impl.core.params import to_canonical

    return to_canonical(params)


def adapter_returns(learner: Any, backend: str, meta_env: MetaEnvironment, tasks: list, episodes: int,
                    adapter_config: AdaptationConfig, steps: int = 3) -> list[float]:
    """Mean return per task after ``steps`` Adapter updates, each on fresh rollouts; restores after each task."""
    if backend == "torch":
        from torch_impl.adaptation import Adapter
        from torch_impl.meta_rl.maml_rl import adapter_loss
        convert = learner.to_tensors
    else:
        from jax_impl.adaptation import Adapter
        from jax_impl.meta_rl.maml_rl import adapter_loss
        convert = learner.to_arrays
    adapter = Adapter(learner.policy, adapter_config)
    out = []
    for task in tasks:
        with adapter.context():
            for _ in range(steps):
                (eps,) = rollout(learner, meta_env, [task], [learner.meta_params()], episodes)
                adapter.update_step(adapter_loss, convert(batches(learner, [eps])[0]))
            (eps,) = rollout(learner, meta_env, [task], [learner.meta_params()], episodes)
            out.append(float(eps.returns.mean()))
    return out


def summarize(values: list[float]) -> dict[str, float]:
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "se": float(se), "n": len(values)}


def run_evaluation(learner: Any, config: TrainConfig, distribution: TaskDistribution,
                   adapter_config: AdaptationConfig | None = None) -> dict[str, Any]:
    """Held-out returns after 0..3 inner steps and after 3 Adapter steps (mean and s.e. over tasks)."""
    meta_env = MetaEnvironment(distribution, seed=config.seed + 10_000)
    tasks = distribution.held_out(config.eval_tasks)
    per_step = evaluate(learner, meta_env, tasks, config.eval_episodes, steps=3)
    adapter_config = adapter_config or AdaptationConfig(optimizer="sgd", lr=config.inner_lr)
    adapted = adapter_returns(learner, config.backend, meta_env, tasks, config.eval_episodes, adapter_config)
    report = {f"after_{k}_steps": summarize(v) for k, v in per_step.items()}
    report["after_adapter"] = summarize(adapted)
    report["adapter_config"] = adapter_config.to_dict()
    if distribution.name == "bandit":
        best = distribution.horizon * np.array([max(t["means"]) for t in tasks])
        report["regret"] = {key: summarize(list(best - np.array(values)))
                            for key, values in [*(((f"after_{k}_steps"), v) for k, v in per_step.items()),
                                                ("after_adapter", adapted)]}
        report["random_policy_regret"] = float(np.mean(best - distribution.horizon * np.array(
            [np.mean(t["means"]) for t in tasks])))
    return report


def train(config: TrainConfig, output: Path) -> dict[str, Any]:
    """Meta-train, evaluate, and write everything under ``output``."""
    distribution = get_distribution(config.task)
    learner = make_learner(config, distribution, initial_weights(config, distribution))
    meta_env = MetaEnvironment(distribution, seed=config.seed)
    ranks = scaleout.join(config.backend, learner)  # under torchrun: tasks sharded over the ranks
    if ranks is None:
        step = _iteration_fn(config, learner, meta_env, distribution)
    else:
        step = ranks.iteration_fn(learner, meta_env, config.meta_batch, config.episodes)
    if ranks is None or ranks.writes:
        output.mkdir(parents=True, exist_ok=True)
    metrics = []
    progress = tqdm(range(config.iterations), desc=f"{config.task} ({config.backend})", unit="it",
                    disable=ranks is not None and not ranks.writes)
    for iteration in progress:
        start = time.perf_counter()
        result = step()
        metrics.append({"iteration": iteration, **result, "seconds": time.perf_counter() - start})
        progress.set_postfix(pre=f"{result['pre_return']:.1f}", post=f"{result['post_return']:.1f}")
    if ranks is not None and not ranks.writes:  # only rank 0 writes outputs and evaluates
        ranks.finish()
        return {}
    (output / "metrics.json").write_text(json.dumps(metrics, indent=1))
    save_checkpoint(output / "checkpoint.safetensors", learner, config)
    report = run_evaluation(learner, config, distribution)
    report["config"] = dataclasses.asdict(config)
    report["train_seconds"] = float(sum(m["seconds"] for m in metrics))
    (output / "evaluation.json").write_text(json.dumps(report, indent=2))
    plot(metrics, report, output)
    print_report(report, distribution, output)
    if ranks is not None:
        ranks.finish()
    return report


def _iteration_fn(config: TrainConfig, learner: Any, meta_env: MetaEnvironment, distribution: TaskDistribution):
    if config.backend == "jax" and config.native and config.task in NATIVE_TASKS:
        import jax

        from jax_impl.meta_rl.native import NativeMAMLRL

        native = NativeMAMLRL(learner, distribution, config.episodes)
        keys = iter(jax.random.split(jax.random.key(config.seed), max(config.iterations, 1)))
        return lambda: native.iteration(meta_env.sample_tasks(config.meta_batch), next(keys))
    return lambda: meta_iteration(learner, meta_env, config.meta_batch, config.episodes)


def save_checkpoint(path: Path, learner: Any, config: TrainConfig) -> None:
    save_weights(path, canonical_weights(learner), {"train": dataclasses.asdict(config)})


def load_checkpoint(path: Path, backend: str | None = None) -> tuple[Any, TrainConfig, TaskDistribution]:
    tensors, meta = load_weights(path)
    if "train" not in meta:
        raise ValueError(f"{str(path)!r} is a weight file but not an ssm-metarl train checkpoint (no 'train' config)")
    config = from_dict(TrainConfig, meta["train"])
    if backend is not None:
        config = dataclasses.replace(config, backend=backend)
    distribution = get_distribution(config.task)
    return make_learner(config, distribution, tensors), config, distribution


def evaluate_checkpoint(path: Path, backend: str | None, output: Path | None) -> dict[str, Any]:
    learner, config, distribution = load_checkpoint(path, backend)
    report = run_evaluation(learner, config, distribution)
    report["config"] = dataclasses.asdict(config)
    target = output or path.parent
    target.mkdir(parents=True, exist_ok=True)
    (target / "evaluation.json").write_text(json.dumps(report, indent=2))
    print_report(report, distribution, target)
    return report


def print_report(report: dict[str, Any], distribution: TaskDistribution, output: Path) -> None:
    n = report["after_0_steps"]["n"]
    print(f"\nheld-out {distribution.name}: mean return over {n} tasks (± s.e.)")
    for key in ("after_0_steps", "after_1_steps", "after_2_steps", "after_3_steps", "after_adapter"):
        label = key.replace("after_", "after ").replace("_steps", " inner steps").replace("adapter", "3 Adapter steps")
        print(f"  {label:<24} {report[key]['mean']:>9.2f} ± {report[key]['se']:.2f}")
    gain = report["after_1_steps"]["mean"] - report["after_0_steps"]["mean"]
    print(f"  gain after 1 step        {gain:>9.2f}")
    if "regret" in report:
        print(f"  regret before adaptation {report['regret']['after_0_steps']['mean']:>9.2f} "
              f"(a uniformly random policy: {report['random_policy_regret']:.2f})")
    print(f"results written to {output}")


def plot(metrics: list[dict], report: dict[str, Any], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    iterations = [m["iteration"] for m in metrics]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(iterations, [m["pre_return"] for m in metrics], label="before adaptation")
    ax.plot(iterations, [m["post_return"] for m in metrics], label="after 1 inner step")
    ax.set(xlabel="meta-iteration", ylabel="mean return", title="learning curve")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "learning_curve.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 4))
    steps = [0, 1, 2, 3]
    means = [report[f"after_{k}_steps"]["mean"] for k in steps]
    errors = [report[f"after_{k}_steps"]["se"] for k in steps]
    ax.errorbar(steps, means, yerr=errors, marker="o", capsize=3, label="MetaMAML inner steps")
    ax.errorbar([3], [report["after_adapter"]["mean"]], yerr=[report["after_adapter"]["se"]], marker="s",
                capsize=3, linestyle="none", label="3 Adapter steps")
    ax.set(xlabel="adaptation steps", ylabel="held-out mean return", xticks=steps, title="returns vs adaptation")
    ax.legend()
    fig.tight_layout()
    fig.savefig(output / "adaptation.png", dpi=120)
    plt.close(fig)


def summarize_seeds(output: Path, seeds: list[int]) -> dict[str, Any]:
    """Mean over seeds of each seed's held-out means, written to ``summary.json`` and ``summary.md``."""
    reports = [json.loads((output / f"seed_{s}" / "evaluation.json").read_text()) for s in seeds]
    keys = ["after_0_steps", "after_1_steps", "after_2_steps", "after_3_steps", "after_adapter"]
    summary = {key: summarize([r[key]["mean"] for r in reports]) for key in keys}
    summary["seeds"] = seeds
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["| after | mean return over seeds | s.e. over seeds |", "|---|---|---|"]
    lines += [f"| {key.replace('after_', '').replace('_', ' ')} | {summary[key]['mean']:.2f} | "
              f"{summary[key]['se']:.2f} |" for key in keys]
    (output / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"\nover seeds {seeds}:\n" + "\n".join(lines))
    return summary
