"""MAML-RL sharded by task: per-task rollouts are split-invariant, and `torchrun` training on 2 ranks
gives the same numbers as the same loop on 1 worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from parity_tests.distributed import ROOT, free_port
from shared.compare import compare_trees
from shared.env_runner import MetaEnvironment
from shared.env_runner.per_task import rollout_per_task
from shared.weights import load_weights
from ssm_metarl import scaleout, train


@pytest.mark.parametrize("task", ["nav2d", "bandit", "cartpole"])
def test_per_task_rollouts_do_not_depend_on_the_split(task: str) -> None:
    meta_env = MetaEnvironment(task, seed=3)
    dist = meta_env.distribution
    tasks = meta_env.sample_tasks(5)
    seeds = [11, 12, 13, 14, 15]
    width = dist.action_dim if dist.discrete else 2 * dist.action_dim

    def act(obs: np.ndarray, state: None) -> tuple[np.ndarray, None]:  # deterministic in the observation
        return np.tanh(obs.sum(-1, keepdims=True) * np.arange(1, width + 1)), state

    whole = rollout_per_task(dist, tasks, seeds, 3, act, None)
    parts = rollout_per_task(dist, tasks[:2], seeds[:2], 3, act, None) + \
        rollout_per_task(dist, tasks[2:], seeds[2:], 3, act, None)
    for a, b in zip(whole, parts, strict=True):
        for field in ("obs", "actions", "rewards", "mask"):
            np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    other = rollout_per_task(dist, tasks, [21, 12, 13, 14, 15], 3, act, None)
    assert not np.array_equal(other[0].rewards, whole[0].rewards) or not np.array_equal(
        other[0].actions, whole[0].actions)  # the seed matters
    with pytest.raises(ValueError, match="one seed per task"):
        rollout_per_task(dist, tasks, seeds[:2], 3, act, None)


CONFIG = {"task": "nav2d", "iterations": 2, "meta_batch": 3, "episodes": 2, "eval_tasks": 2}


def one_worker_run() -> tuple[list[dict], dict[str, np.ndarray]]:
    config = train.TrainConfig(**CONFIG)
    distribution = MetaEnvironment(config.task).distribution
    learner = train.make_learner(config, distribution, train.initial_weights(config, distribution))
    meta_env = MetaEnvironment(distribution, seed=config.seed)
    worker = scaleout.SingleWorker(learner.maml)
    metrics = [scaleout.sharded_meta_iteration(learner, worker, meta_env, config.meta_batch, config.episodes)
               for _ in range(config.iterations)]
    return metrics, train.canonical_weights(learner)


def test_torchrun_train_on_two_ranks_equals_one_worker() -> None:
    out = Path(tempfile.mkdtemp(prefix="ssm_metarl_torchrun_"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "ssm_metarl.cli", "train", "--task", CONFIG["task"], "--iterations",
               str(CONFIG["iterations"]), "--meta-batch", str(CONFIG["meta_batch"]), "--episodes",
               str(CONFIG["episodes"]), "--eval-tasks", str(CONFIG["eval_tasks"]), "--output", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "SSM_METARL_SYNC_CHECK_EVERY": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.count("held-out nav2d") == 1  # only rank 0 evaluates and reports
    metrics = json.loads((out / "metrics.json").read_text())
    weights, _ = load_weights(out / "checkpoint.safetensors")
    reference_metrics, reference_weights = one_worker_run()
    keys = ("pre_return", "post_return", "loss")
    comparison = compare_trees(
        {"metrics": {k: np.array([m[k] for m in metrics]) for k in keys}, "weights": weights},
        {"metrics": {k: np.array([m[k] for m in reference_metrics]) for k in keys}, "weights": reference_weights})
    assert comparison.passes(1e-5), comparison.report(1e-5)  # float32 policy: the fp32 contract row
    assert (out / "evaluation.json").exists()
    assert torch.distributed.is_available()
