"""Held-out evaluation of a trained policy: returns after 0..3 inner steps and after test-time adaptation.

Written once for both backends through the learner protocol (``shared.learner``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from shared.adaptation import AdaptationConfig
from shared.env_runner import MetaEnvironment, get_distribution
from shared.env_runner.tasks import TaskDistribution
from shared.weights import check_weights, load_weights
from ssm_metarl import plots, rundir
from ssm_metarl.rl_loop import batches, evaluate, rollout
from ssm_metarl.runinfo import RETURN_MEANING, run_info
from ssm_metarl.train_config import TrainConfig, expected_layout, make_learner, report_config, saved_config
from ssm_metarl.train_reports import print_report, summarize, write_json


def adapter_returns(learner: Any, meta_env: MetaEnvironment, tasks: list, episodes: int,
                    adapter_config: AdaptationConfig, steps: int = 3) -> list[float]:
    """Mean return per task after ``steps`` Adapter updates, each on fresh rollouts; restores after each task."""
    adapter = learner.adapter(adapter_config)
    out = []
    for task in tasks:
        with adapter.context():
            for _ in range(steps):
                (eps,) = rollout(learner, meta_env, [task], [learner.meta_params()], episodes)
                learner.adapter_step(adapter, batches(learner, [eps])[0])
            (eps,) = rollout(learner, meta_env, [task], [learner.meta_params()], episodes)
            out.append(float(eps.returns.mean()))
    return out


def run_evaluation(learner: Any, config: TrainConfig, distribution: TaskDistribution,
                   adapter_config: AdaptationConfig | None = None) -> dict[str, Any]:
    """Held-out returns after 0..3 inner steps and after 3 Adapter steps (mean and s.e. over tasks)."""
    meta_env = MetaEnvironment(distribution, seed=config.seed + 10_000)
    tasks = distribution.held_out(config.eval_tasks)
    per_step = evaluate(learner, meta_env, tasks, config.eval_episodes, steps=3)
    adapter_config = adapter_config or AdaptationConfig(optimizer="sgd", lr=config.inner_lr)
    adapted = adapter_returns(learner, meta_env, tasks, config.eval_episodes, adapter_config)
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


def load_checkpoint(path: Path, backend: str | None = None) -> tuple[Any, TrainConfig, TaskDistribution]:
    """A learner built from a train checkpoint; ``ValueError`` naming every bad tensor (same in both backends)."""
    tensors, meta = load_weights(path)
    if "train" not in meta:
        raise ValueError(f"{str(path)!r} is a weight file but not an ssm-metarl train checkpoint (no 'train' config)")
    config = saved_config(meta["train"])
    if backend is not None:
        config = dataclasses.replace(config, backend=backend)
    distribution = get_distribution(config.task)
    check_weights(tensors, expected_layout(config, distribution), f"checkpoint {str(path)!r}")
    return make_learner(config, distribution, tensors), config, distribution


def evaluate_checkpoint(path: Path, backend: str | None, output: Path | None) -> dict[str, Any]:
    """Re-run the held-out evaluation; writes ``evaluation_<backend>.json`` and ``adaptation_<backend>.png``
    (for an in-context checkpoint: the returns of each episode of a trial, after 0-3 inner steps, and for
    bandits the regret, as ``ssm-metarl train`` reports them; no adaptation plot).

    The training run's own ``evaluation.json`` and ``adaptation.png`` are never touched.
    """
    target = output or path.parent
    rundir.check_writable_dir(target, "--output" if output is not None else "the checkpoint's directory")
    learner, config, distribution = load_checkpoint(path, backend)
    print(f"evaluating {path} with the {config.backend} backend "
          f"({config.eval_tasks} held-out tasks, {config.eval_episodes} episodes each)")
    maml = config.objective == "maml"
    if maml:
        report = run_evaluation(learner, config, distribution)
    else:
        from ssm_metarl import incontext
        report = incontext.evaluation(learner, config, distribution)
    report = {"run": run_info(config.backend), "config": report_config(config), "checkpoint": str(path),
              "return": RETURN_MEANING.get(config.task, ""), **report}
    target.mkdir(parents=True, exist_ok=True)
    if maml:
        plots.adaptation(report, report_config(config), config.backend, target / f"adaptation_{config.backend}.png")
    write_json(target / f"evaluation_{config.backend}.json", report)
    if maml:
        print_report(report, distribution, target)
    else:
        incontext.print_evaluation(report, config, target)
    return report
