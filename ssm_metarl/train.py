"""``ssm-metarl train`` and ``ssm-metarl evaluate``: MAML-RL with an SSM policy, end to end.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.json`` and
``metrics.csv`` (per iteration), ``evaluation.json`` (held-out returns after 0..3 inner steps and
after test-time adaptation with the Adapter), ``checkpoint.safetensors`` and two PNG plots.

The job is split by concern: ``train_config`` (the fields, config files, and the learner they
build: the one place a backend is picked), ``train_session`` (one seed's loop, resume),
``train_evaluation`` (held-out evaluation) and ``train_reports`` (what is written). This module
runs the seeds into a run directory and re-exports the public names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.config import require_positive_int
from ssm_metarl import rundir, scaleout
from ssm_metarl.config_file import read_toml
from ssm_metarl.train_config import (
    DECAY_RING,
    FILE_KEYS,
    NATIVE_TASKS,
    TrainConfig,
    check_seeds,
    default_rollouts,
    expected_layout,
    initial_weights,
    learner_class,
    make_learner,
    read_run_configs,
    report_config,
    resolve_configs,
    write_config,
)
from ssm_metarl.train_evaluation import adapter_returns, evaluate_checkpoint, load_checkpoint, run_evaluation
from ssm_metarl.train_reports import save_checkpoint, summarize, summarize_seeds, write_json, write_metrics
from ssm_metarl.train_session import TrainingInterrupted, TrainingSession, deferred_interrupt, iteration_fn

__all__ = ["DECAY_RING", "FILE_KEYS", "NATIVE_TASKS", "TrainConfig", "TrainingInterrupted", "TrainingSession",
           "adapter_returns", "check_seeds", "default_rollouts", "deferred_interrupt", "evaluate_checkpoint",
           "expected_layout", "initial_weights", "iteration_fn", "learner_class", "load_checkpoint",
           "make_learner", "read_run_configs", "read_toml", "report_config", "resolve_configs", "run",
           "run_evaluation", "save_checkpoint", "summarize", "summarize_seeds", "train", "write_config",
           "write_json", "write_metrics"]


def train(config: TrainConfig, output: Path, *, overwrite: bool = False, resume: bool = False,
          checkpoint_every: int = 10, on_iteration: Callable[[int], None] | None = None,
          backend: str | None = None) -> dict[str, Any]:
    """Meta-train, evaluate, and write the run to ``output`` (see :func:`run`); returns the evaluation report."""
    return run([config], output, overwrite=overwrite, resume=resume, checkpoint_every=checkpoint_every,
               on_iteration=on_iteration, backend=backend)[0]


def run(configs: list[TrainConfig], output: Path, *, overwrite: bool = False, resume: bool = False,
        checkpoint_every: int = 10, on_iteration: Callable[[int], None] | None = None,
        backend: str | None = None) -> list[dict[str, Any]]:
    """Train one run per config (one seed each) into ``output``; several seeds go to ``output/seed_<k>``.

    The run is written into the staging directory ``.<output>.partial`` (with a resumable checkpoint
    every ``checkpoint_every`` iterations and on Ctrl-C) and renamed to ``output`` once complete, so
    ``output`` never mixes two runs. ``resume=True`` continues an interrupted run from its staging
    directory with the configuration saved there (``configs`` is then ignored and may be empty);
    ``backend`` then continues it in that backend (the saved state is backend-neutral).
    """
    if backend is not None and not resume:
        raise ValueError("backend= overrides the saved configuration of a resumed run; pass it with resume=True")
    require_positive_int("checkpoint_every", checkpoint_every)
    ranks = scaleout.connect()  # under torchrun: tasks sharded over the ranks, only rank 0 writes
    writes = ranks is None or ranks.writes
    if writes:
        staging = rundir.start(output, overwrite=overwrite, resume=resume)
        if not resume:
            check_seeds([c.seed for c in configs])
            write_config(staging / "config.toml", configs, output / "config.toml")
    if ranks is not None:
        ranks.wait()
        staging = rundir.staging_dir(output)
    if resume:
        configs = read_run_configs(staging / "config.toml")
        if backend is not None and backend != configs[0].backend:
            configs = [dataclasses.replace(c, backend=backend) for c in configs]
            if writes:  # the run continues in ``backend``: its config says so (metrics record each iteration's)
                write_config(staging / "config.toml", configs, output / "config.toml")
    scaleout.check_backend(ranks, [c.backend for c in configs],
                           [c.rollouts if c.objective == "maml" else None for c in configs])
    many = len(configs) > 1
    reports = []
    for config in configs:
        name = f"seed_{config.seed}"
        directory, final = (staging / name, output / name) if many else (staging, output)
        reports.append(_train_one(config, directory, final, many, checkpoint_every, on_iteration, ranks))
    if not writes:
        return reports
    if many:
        summarize_seeds(staging, [c.seed for c in configs])
    rundir.finish(staging, output)
    print(f"run written to {output}")
    return reports


def _train_one(config: TrainConfig, directory: Path, final: Path, many: bool, checkpoint_every: int,
               on_iteration: Callable[[int], None] | None, ranks: scaleout.Ranks | None = None) -> dict[str, Any]:
    """One seed's run, written to ``directory`` (which becomes ``final`` when the whole run is complete)."""
    if (directory / "evaluation.json").is_file():  # finished before an interrupt: keep it
        return json.loads((directory / "evaluation.json").read_text())
    if ranks is None or ranks.writes:
        directory.mkdir(parents=True, exist_ok=True)
        if many:
            write_config(directory / "config.toml", [config], final / "config.toml")
    session = TrainingSession(config, directory, ranks)
    compile_seconds = session.loop(checkpoint_every, on_iteration)
    if ranks is not None and not ranks.writes:  # rank 0 alone evaluates and writes; wait for it
        ranks.wait()
        return {}
    report = session.finish(compile_seconds, final)
    if ranks is not None:
        ranks.wait()
    return report


