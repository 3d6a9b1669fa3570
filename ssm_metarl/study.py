"""``ssm-metarl study``: held-out return as a function of test-time compute, per adaptation mechanism.

For each checkpoint, along each axis it supports:

- ``context``: episodes of context (in-context checkpoints): the return of episode ``n + 1`` of a trial,
  having consumed ``n`` episodes of the same task in the policy's memory;
- ``inner_steps``: policy-gradient steps on the weights, 0..K, each on one batch of rollouts of the task
  (in-context checkpoints: trials; MAML checkpoints of ``ssm-metarl train``: episodes);
- ``adapter``: Adapter steps (MAML checkpoints of ``ssm-metarl train``), each on fresh rollouts.

An axis a checkpoint cannot support is skipped with a line saying why. Compute is given two ways:
environment steps consumed before the measured episode, and wall time per adaptation (per task, after
a warm-up call, so compile time is not counted). Returns are mean +- standard error over held-out
tasks (each task averaged over its trials and over the checkpoints, i.e. seeds, of one family).
The classical baselines of ``shared/baselines.py`` run on the same held-out tasks.
Outputs: ``study.json``, ``study.csv`` and ``study.png`` (every mechanism and baseline on one figure).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from shared.baselines import BANDIT_BASELINES, bandit_ucb1, nav2d_oracle, nav2d_random
from shared.weights import load_weights
from ssm_metarl.incontext import CHECKPOINT_KIND, backend_key, load_checkpoint, make_trainer

AXES = ("context", "inner_steps", "adapter")


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    backend: str = "jax"
    tasks: int = 40
    trials: int = 4
    max_inner_steps: int = 3
    max_episodes: int = 3
    adapter_steps: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.backend not in ("jax", "torch"):
            raise ValueError(f"--backend must be 'jax' or 'torch', got {self.backend!r}")
        for name in ("tasks", "trials", "max_episodes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        for name in ("max_inner_steps", "adapter_steps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be a non-negative integer, got {value!r}")


@dataclasses.dataclass
class Point:
    """One point of one curve: ``per_task`` returns ``(tasks,)`` after spending the compute given."""

    family: str
    mechanism: str
    compute: int  # inner steps, Adapter steps or episodes of context
    env_steps: int
    wall_seconds: float
    per_task: np.ndarray

    def row(self) -> dict[str, Any]:
        n = len(self.per_task)
        return {"family": self.family, "mechanism": self.mechanism, "compute": self.compute,
                "env_steps": self.env_steps, "wall_seconds_per_adaptation": self.wall_seconds,
                "return_mean": float(self.per_task.mean()),
                "return_se": float(self.per_task.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0, "tasks": n}


def checkpoint_kind(path: Path) -> str:
    """``"incontext"`` or ``"maml"`` (a checkpoint of ``ssm-metarl train``); ``ValueError`` otherwise."""
    _, meta = load_weights(path)
    if meta.get("kind") == CHECKPOINT_KIND:
        return "incontext"
    if "train" in meta:
        return "maml"
    raise ValueError(f"{str(path)!r} is neither an in-context policy checkpoint nor an ssm-metarl train checkpoint")


def _synchronised(value: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in value.items()}


_TRAINERS: dict[tuple, Any] = {}  # one compiled evaluator per (backend, sizes, trial, inner lr): seeds share it


def incontext_points(path: Path, config: StudyConfig, say: Any) -> tuple[str, list[Point]]:
    """Context and inner-step curves of one in-context checkpoint."""
    policy, spec, trial, meta = load_checkpoint(path, config.backend)
    inner_lr = float(meta.get("inner_lr", 0.1))
    cache_key = (config.backend, spec, trial, inner_lr)
    if cache_key not in _TRAINERS:
        _TRAINERS[cache_key] = make_trainer(config.backend, policy, spec, trial, 1e-3, inner_lr)
    trainer = _TRAINERS[cache_key]
    trainer.load_canonical_weights(load_weights(path)[0])
    dist = spec.distribution()
    tasks = dist.held_out(config.tasks)
    horizon, n = dist.horizon, config.trials
    points = []
    episodes = config.max_episodes
    trainer.evaluate(tasks, backend_key(config.backend, 0), trials=n, episodes=episodes)  # warm-up (compile)
    start = time.perf_counter()
    out = _synchronised(trainer.evaluate(tasks, backend_key(config.backend, config.seed), trials=n, episodes=episodes))
    per_episode_seconds = (time.perf_counter() - start) / len(tasks) / episodes
    returns = out["rewards"].reshape(len(tasks), n, episodes, horizon).sum(-1).mean(1)  # (K, E)
    for e in range(episodes):
        points.append(Point(dist.name, "episodes of context (in-context)", e, e * horizon,
                        e * per_episode_seconds, returns[:, e]))
    if trial.episodes != 1 and episodes > trial.episodes:
        say(f"  note: {path.name} was trained on trials of {trial.episodes} episodes; episodes beyond that "
            f"test how its memory extrapolates")
    for k in range(config.max_inner_steps + 1):
        trainer.evaluate(tasks, backend_key(config.backend, 0), trials=n, episodes=1, adapt_steps=k)  # warm-up
        start = time.perf_counter()
        out = _synchronised(trainer.evaluate(tasks, backend_key(config.backend, config.seed + 1 + k), trials=n,
                                             episodes=1, adapt_steps=k))
        seconds = (time.perf_counter() - start) / len(tasks)
        first = out["adapted_rewards"].reshape(len(tasks), n, horizon).sum(-1).mean(1)
        points.append(Point(dist.name, "inner gradient steps (on the in-context policy)", k,
                            n * horizon if k else 0, seconds if k else 0.0, first))
    say(f"  {path.name}: adapter axis skipped: the Adapter drives the runner-path rollouts of a plain SSM "
        f"policy, which do not build the in-context policy's trial inputs")
    return dist.name, points


def maml_points(path: Path, config: StudyConfig, say: Any) -> tuple[str, list[Point]]:
    """Inner-step and Adapter curves of one ``ssm-metarl train`` checkpoint (a MAML-trained SSM policy)."""
    from shared.adaptation import AdaptationConfig
    from shared.env_runner import MetaEnvironment
    from ssm_metarl.rl_loop import evaluate
    from ssm_metarl.train import adapter_returns
    from ssm_metarl.train import load_checkpoint as load_train

    learner, train_config, dist = load_train(path, config.backend)
    tasks = dist.held_out(config.tasks)
    episodes, horizon = config.trials, dist.horizon
    meta_env = MetaEnvironment(dist, seed=config.seed)
    evaluate(learner, meta_env, tasks[:1], episodes, steps=1)  # warm-up
    start = time.perf_counter()
    per_step = evaluate(learner, meta_env, tasks, episodes, steps=config.max_inner_steps)
    seconds = (time.perf_counter() - start) / len(tasks) / (config.max_inner_steps + 1)
    points = [Point(dist.name, "inner gradient steps (MAML)", int(k), int(k) * episodes * horizon, int(k) * seconds,
                    np.array(v)) for k, v in per_step.items()]
    say(f"  {path.name}: context axis skipped: a MAML-trained SSM policy sees no previous action, reward or "
        f"episode boundary, and its state is reset every episode")
    if config.adapter_steps:
        points.append(Point(dist.name, "Adapter steps", 0, 0, 0.0, np.array(per_step["0"])))
        adapter_config = AdaptationConfig(optimizer="sgd", lr=train_config.inner_lr)
        for steps in range(1, config.adapter_steps + 1):
            start = time.perf_counter()
            values = adapter_returns(learner, meta_env, tasks, episodes, adapter_config, steps=steps)
            seconds = (time.perf_counter() - start) / len(tasks)
            points.append(Point(dist.name, "Adapter steps", steps, steps * episodes * horizon, seconds,
                                np.array(values)))
    return dist.name, points


def baseline_points(family: str, config: StudyConfig) -> list[Point]:
    """The classical baselines on the same held-out tasks: one point each (no test-time compute axis)."""
    from ssm_metarl.incontext import family_distribution

    dist = family_distribution(family)
    tasks = dist.held_out(config.tasks)
    if family == "bandit":
        means = np.array([t["means"] for t in tasks])
        out = []
        for name, policy in {**BANDIT_BASELINES, "UCB1 (c = 0.3)": lambda m, p, t, seed: bandit_ucb1(
                m, p, t, seed, c=0.3)}.items():
            arms = policy(means, dist.pulls, config.trials, seed=config.seed)
            reward = np.take_along_axis(means[:, None, :], arms.reshape(len(tasks), -1)[:, None, :], -1)
            out.append(Point(family, f"baseline: {name}", 0, 0, 0.0, reward.reshape(arms.shape).sum(-1).mean(1)))
        return out
    goals = np.array([t["goal"] for t in tasks])
    return [Point(family, "baseline: oracle (knows the goal)", 0, 0, 0.0, nav2d_oracle(goals, dist.horizon)),
            Point(family, "baseline: random", 0, 0, 0.0,
                  nav2d_random(goals, dist.horizon, config.trials, seed=config.seed).mean(1))]


def merge_seeds(points: list[Point]) -> list[Point]:
    """Average the per-task returns of the same (family, mechanism, compute) over checkpoints (seeds)."""
    groups: dict[tuple, list[Point]] = defaultdict(list)
    for p in points:
        groups[(p.family, p.mechanism, p.compute)].append(p)
    return [dataclasses.replace(g[0], wall_seconds=float(np.mean([p.wall_seconds for p in g])),
                                per_task=np.mean([p.per_task for p in g], axis=0)) for g in groups.values()]


def run(checkpoints: list[Path], output: Path, config: StudyConfig, say: Any = print) -> dict[str, Any]:
    output.mkdir(parents=True, exist_ok=True)
    points: list[Point] = []
    families: dict[str, int] = defaultdict(int)
    skipped = []
    for path in tqdm(checkpoints, desc="study: checkpoints", unit="ckpt"):
        try:
            kind = checkpoint_kind(path)
        except (ValueError, OSError) as err:
            skipped.append(f"{path}: {err}")
            say(f"  skipped {path}: {err}")
            continue
        family, new = (incontext_points if kind == "incontext" else maml_points)(path, config, say)
        families[family] += 1
        points += new
    points = merge_seeds(points)
    for family in families:
        points += baseline_points(family, config)
    rows = [p.row() for p in points]
    report = {"config": dataclasses.asdict(config), "checkpoints": [str(p) for p in checkpoints],
              "seeds_per_family": dict(families), "skipped": skipped, "rows": rows}
    (output / "study.json").write_text(json.dumps(report, indent=1))
    with open(output / "study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["family"])
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, output / "study.png")
    (output / "study.md").write_text(markdown(rows))
    say(markdown(rows))
    say(f"study written to {output}/study.json, study.csv, study.md, study.png")
    return report


def mechanism_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per family and mechanism: the return with no test-time compute, the best return along the axis, the
    compute it took, and the return gained per 1000 environment steps and per second of wall time."""
    out = []
    for family in sorted({r["family"] for r in rows}):
        for mechanism in sorted({r["mechanism"] for r in rows if r["family"] == family}):
            if mechanism.startswith("baseline"):
                continue
            curve = sorted((r for r in rows if r["family"] == family and r["mechanism"] == mechanism),
                           key=lambda r: r["compute"])
            start, best = curve[0], max(curve, key=lambda r: r["return_mean"])
            gain = best["return_mean"] - start["return_mean"]
            steps, seconds = best["env_steps"] - start["env_steps"], best["wall_seconds_per_adaptation"]
            out.append({"family": family, "mechanism": mechanism, "return_at_zero": start["return_mean"],
                        "best_return": best["return_mean"], "best_se": best["return_se"],
                        "compute_at_best": best["compute"], "env_steps_at_best": best["env_steps"],
                        "wall_seconds_at_best": seconds,
                        "gain_per_1000_env_steps": 1000 * gain / steps if steps else 0.0,
                        "gain_per_second": gain / seconds if seconds else 0.0})
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| family | mechanism | return, no compute | best return (± s.e.) | at | env steps | wall s / "
             "adaptation | gain per 1000 env steps | gain per second |", "|---|---|---|---|---|---|---|---|---|"]
    for s in mechanism_summary(rows):
        lines.append(f"| {s['family']} | {s['mechanism']} | {s['return_at_zero']:.2f} | {s['best_return']:.2f} ± "
                     f"{s['best_se']:.2f} | {s['compute_at_best']} | {s['env_steps_at_best']} | "
                     f"{s['wall_seconds_at_best']:.4f} | {s['gain_per_1000_env_steps']:.2f} | "
                     f"{s['gain_per_second']:.1f} |")
    lines += ["", "| family | baseline | return (± s.e.) |", "|---|---|---|"]
    for r in rows:
        if r["mechanism"].startswith("baseline"):
            lines.append(f"| {r['family']} | {r['mechanism'][len('baseline: '):]} | {r['return_mean']:.2f} ± "
                         f"{r['return_se']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    families = sorted({r["family"] for r in rows})
    fig, axes = plt.subplots(len(families) or 1, 2, figsize=(11, 3.8 * max(len(families), 1)), squeeze=False)
    for row_axes, family in zip(axes, families, strict=False):
        mine = [r for r in rows if r["family"] == family]
        for ax, x_key, x_label in ((row_axes[0], "env_steps", "environment steps consumed"),
                                   (row_axes[1], "wall_seconds_per_adaptation", "wall time per adaptation (s)")):
            for i, mechanism in enumerate(sorted({r["mechanism"] for r in mine})):
                curve = sorted((r for r in mine if r["mechanism"] == mechanism), key=lambda r: r["compute"])
                if mechanism.startswith("baseline"):
                    ax.axhline(curve[0]["return_mean"], ls="--", lw=1, color=f"C{i % 10}", label=mechanism)
                    continue
                ax.errorbar([r[x_key] for r in curve], [r["return_mean"] for r in curve],
                            [r["return_se"] for r in curve], marker="o", capsize=3, color=f"C{i % 10}", label=mechanism)
            ax.set_xlabel(x_label)
            ax.set_ylabel("held-out episode return")
            ax.set_title(family)
        row_axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
