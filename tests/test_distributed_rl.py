"""MAML-RL sharded by task: per-task rollouts are split-invariant, and `torchrun` training on 2 ranks
gives the same numbers as the same loop on 1 worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from parity_tests.distributed import ROOT, free_port
from shared.compare import compare_trees
from shared.env_runner import MetaEnvironment
from shared.env_runner.per_task import rollout_per_task
from shared.weights import load_weights
from ssm_metarl import checkpoint, cli, rundir, scaleout, train


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


CONFIG = {"task": "nav2d", "rollouts": "runner", "iterations": 6, "meta_batch": 3, "episodes": 2, "eval_tasks": 2,
          "eval_episodes": 2}


def one_worker_run() -> tuple[list[dict], dict[str, np.ndarray]]:
    """The sharded loop on one worker, in this process (what `torchrun --nproc_per_node 1` runs)."""
    config = train.TrainConfig(**CONFIG)
    distribution = MetaEnvironment(config.task).distribution
    learner = train.make_learner(config, distribution, train.initial_weights(config, distribution))
    meta_env = MetaEnvironment(distribution, seed=config.seed)
    worker = scaleout.SingleWorker(learner.maml)
    metrics = [scaleout.sharded_meta_iteration(learner, worker, meta_env, config.meta_batch, config.episodes)
               for _ in range(config.iterations)]
    return metrics, learner.canonical_weights()


def torchrun(nproc: int, *args: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
               str(free_port()), "-m", "ssm_metarl.cli", "train", *args]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "SSM_METARL_SYNC_CHECK_EVERY": "1"})


def flags() -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in CONFIG.items()]


def compare_with_one_worker(output: Path) -> None:
    metrics = json.loads((output / "metrics.json").read_text())["iterations"]
    weights, _ = load_weights(output / "checkpoint.safetensors")
    reference_metrics, reference_weights = one_worker_run()
    keys = ("pre_return", "post_return", "loss")
    comparison = compare_trees(
        {"metrics": {k: np.array([m[k] for m in metrics]) for k in keys}, "weights": weights},
        {"metrics": {k: np.array([m[k] for m in reference_metrics]) for k in keys}, "weights": reference_weights})
    assert comparison.passes(1e-5), comparison.report(1e-5)  # float32 policy: the fp32 contract row


def test_torchrun_train_on_two_ranks_equals_one_worker(tmp_path: Path) -> None:
    proc = torchrun(2, *flags(), "--output", str(tmp_path / "run"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert out.count("held-out nav2d") == 1, out[-4000:]  # only rank 0 evaluates and reports
    compare_with_one_worker(tmp_path / "run")
    assert (tmp_path / "run" / "evaluation.json").exists()


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc (Linux)")
def test_crash_on_two_ranks_then_resume_on_one(tmp_path: Path) -> None:
    """Kill a worker of a 2-rank run after a resumable checkpoint; resume on 1 rank == an uninterrupted run."""
    output = tmp_path / "run"
    resume_file = rundir.staging_dir(output) / checkpoint.RESUME_FILE
    proc = torchrun(2, *flags(), "--checkpoint-every", "1", "--output", str(output))
    deadline = time.monotonic() + 240
    while not resume_file.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[0][-4000:]
    workers = children(proc.pid)  # torchrun starts each worker in a session of its own
    assert len(workers) == 2, workers
    os.kill(workers[-1], signal.SIGKILL)  # a worker crashes; torchrun's agent stops the other and fails
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-4000:]
    assert not output.exists()  # the run never completed
    state = checkpoint.load(resume_file)
    assert 1 <= state.iteration < CONFIG["iterations"], state.iteration
    resumed = torchrun(1, "--resume", str(rundir.staging_dir(output)))
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-4000:]
    compare_with_one_worker(output)


INCONTEXT = ["--backend", "torch", "--task", "bandit", "--objective", "both", "--trial-episodes", "1",
             "--iterations", "2", "--meta-batch", "3", "--episodes", "2", "--state-dim", "4", "--hidden-dim", "8",
             "--eval-tasks", "2"]


def test_torchrun_incontext_training_on_two_ranks_equals_one_process(tmp_path: Path) -> None:
    """The in-context objectives under torchrun: 3 tasks over 2 ranks (2 + 1), advantages normalised over
    every rank's trials, the inner step's adapted weights gathered: the same run as one process."""
    proc = torchrun(2, *INCONTEXT, "--output", str(tmp_path / "two"))
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    assert out.count("held-out bandit") == 1, out[-4000:]  # only rank 0 evaluates and reports
    assert cli.main(["train", *INCONTEXT, "--output", str(tmp_path / "one")]) == 0
    runs = []
    for name in ("two", "one"):
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())["iterations"]
        weights, _ = load_weights(tmp_path / name / "checkpoint.safetensors")
        runs.append({"metrics": {k: np.array([m[k] for m in metrics]) for k in ("pre_return", "post_return", "loss")},
                     "weights": weights})
    comparison = compare_trees(*runs)
    assert comparison.passes(1e-5), comparison.report(1e-5)  # float32 policy: the fp32 contract row


def test_task_shards_of_one_process_hold_every_task_and_refuse_a_bad_place() -> None:
    import torch

    from torch_impl.meta_rl.distributed import TaskShards

    one = TaskShards()
    x = torch.arange(6.0).reshape(3, 2)
    assert one.mine(3) == slice(0, 3) and one.gather(x, 3) is x and one.sum([x])[0] is x
    assert TaskShards(1, 2).mine(5) == slice(3, 5)
    with pytest.raises(ValueError, match="rank must be"):
        TaskShards(2, 2)
    with pytest.raises(ValueError, match="initialised process group"):
        TaskShards.from_process_group()


def test_an_incontext_meta_batch_smaller_than_the_ranks_is_refused_before_any_compute() -> None:
    import torch

    from shared.incontext import TrialConfig
    from torch_impl.meta_rl import incontext as torch_ic
    from torch_impl.meta_rl.distributed import TaskShards

    dist = MetaEnvironment("bandit").distribution
    policy = torch_ic.InContextPolicy(dist.obs_dim, dist.action_dim, dist.discrete, 4, 8, "cpu")
    trainer = torch_ic.InContextRL(policy, dist, TrialConfig(episodes=1), shards=TaskShards(0, 4))
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    with pytest.raises(ValueError, match="2 tasks over 4 ranks; each rank needs at least one task"):
        trainer.iteration(dist.sample(2, np.random.default_rng(0)), torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in policy.state_dict().items())
