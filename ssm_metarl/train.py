"""``ssm-metarl train`` and ``ssm-metarl evaluate``: MAML-RL with an SSM policy, end to end.

A run directory holds ``config.toml`` (the resolved configuration), ``metrics.json`` and
``metrics.csv`` (per iteration), ``evaluation.json`` (held-out returns after 0..3 inner steps and
after test-time adaptation with the Adapter), ``checkpoint.safetensors`` and two PNG plots.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shared.adaptation import AdaptationConfig
from shared.config import from_dict, require_positive_int
from shared.env_runner import MetaEnvironment, get_distribution
from shared.env_runner.tasks import TaskDistribution
from shared.weights import check_weights, load_weights, save_weights
from ssm_metarl import checkpoint, plots, rundir, scaleout
from ssm_metarl.compile_time import BAR_FORMAT, jax_compile_seconds
from ssm_metarl.config_file import check_keys, dumps_toml, read_toml
from ssm_metarl.progress import progress as bar
from ssm_metarl.rl_loop import batches, evaluate, meta_iteration, rollout
from ssm_metarl.runinfo import RETURN_MEANING, run_info

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
        if self.backend not in ("torch", "jax"):
            raise ValueError(f"backend must be 'torch' or 'jax', got {self.backend!r}")
        if not isinstance(self.task, str):
            raise ValueError(f"task must be one of {sorted(DECAY_RING)}, got {self.task!r}")
        get_distribution(self.task)
        default_min, default_max = DECAY_RING.get(self.task, (0.9, 0.999))
        object.__setattr__(self, "r_min", default_min if self.r_min is None else self.r_min)
        object.__setattr__(self, "r_max", default_max if self.r_max is None else self.r_max)
        for name in ("iterations", "seed", "meta_batch", "episodes", "state_dim", "hidden_dim", "eval_tasks",
                     "eval_episodes"):
            value = getattr(self, name)
            low = 0 if name in ("iterations", "seed") else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("inner_lr", "outer_lr", "init_log_std", "r_min", "r_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("inner_lr", "outer_lr"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not 0.0 < self.r_min <= self.r_max < 1.0:
            raise ValueError(f"the decay ring needs 0 < r_min <= r_max < 1, got r_min={self.r_min}, r_max={self.r_max}")
        if not isinstance(self.native, bool):
            raise ValueError(f"native must be true or false, got {self.native!r}")


FILE_KEYS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed"] + ["seeds"]


def check_seeds(seeds: list[int]) -> None:
    """Seeds name independent runs: a non-empty list of distinct integers >= 0."""
    if not isinstance(seeds, list) or not seeds:
        raise ValueError(f"--seeds (seeds in a config file) must be a non-empty list of integers, got {seeds!r}")
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"--seeds (seeds in a config file) must be integers >= 0, got {seed!r}")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"--seeds (seeds in a config file) must be distinct; {repeated} given more than once "
                         "(a repeated seed repeats the same run and would fake a standard error)")


def resolve_configs(file_values: dict[str, Any], flag_values: dict[str, Any],
                    source: str = "config file") -> list[TrainConfig]:
    """One :class:`TrainConfig` per seed from a config file's values overridden by the flags given."""
    check_keys(file_values, FILE_KEYS, source)
    values = {**file_values, **flag_values}
    seeds = values.pop("seeds", [0])
    check_seeds(seeds)
    return [TrainConfig(**values, seed=seed) for seed in seeds]


def read_run_configs(path: Path) -> list[TrainConfig]:
    return resolve_configs(read_toml(path), {}, str(path))


def write_config(path: Path, configs: list[TrainConfig], final: Path) -> None:
    """The full resolved configuration, in the config-file format (``train --config`` repeats the run).

    ``final`` is where the file will be once the run is complete (named in its header).
    """
    values = report_config(configs[0])
    del values["seed"]
    values["seeds"] = [c.seed for c in configs]
    path.write_text(dumps_toml(values, final))


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


def train(config: TrainConfig, output: Path, *, overwrite: bool = False, resume: bool = False,
          checkpoint_every: int = 10, on_iteration: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Meta-train, evaluate, and write the run to ``output`` (see :func:`run`); returns the evaluation report."""
    return run([config], output, overwrite=overwrite, resume=resume, checkpoint_every=checkpoint_every,
               on_iteration=on_iteration)[0]


def run(configs: list[TrainConfig], output: Path, *, overwrite: bool = False, resume: bool = False,
        checkpoint_every: int = 10, on_iteration: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Train one run per config (one seed each) into ``output``; several seeds go to ``output/seed_<k>``.

    The run is written into the staging directory ``.<output>.partial`` (with a resumable checkpoint
    every ``checkpoint_every`` iterations and on Ctrl-C) and renamed to ``output`` once complete, so
    ``output`` never mixes two runs. ``resume=True`` continues an interrupted run from its staging
    directory with the configuration saved there (``configs`` is then ignored and may be empty).
    """
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
    scaleout.check_backend(ranks, [c.backend for c in configs])
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


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: a resumable checkpoint was saved after ``iteration`` meta-iterations."""

    def __init__(self, iteration: int, checkpoint: Path) -> None:
        super().__init__(f"interrupted after {iteration} meta-iterations; resumable checkpoint {checkpoint}")
        self.iteration, self.checkpoint = iteration, checkpoint


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[list[bool]]:
    """The first Ctrl-C asks the loop to stop after the current iteration (and save); a second stops at once."""
    stop = [False]
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: Any) -> None:
        if stop[0]:
            raise KeyboardInterrupt
        stop[0] = True
        print("\nCtrl-C: stopping after this meta-iteration to save a resumable checkpoint "
              "(press Ctrl-C again to stop at once)", file=sys.stderr)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)


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


class TrainingSession:
    """One seed's training in ``directory``: started fresh or from its resumable checkpoint.

    ``step()`` runs one meta-iteration; ``save_state(k)`` writes the resumable checkpoint after ``k``
    iterations; ``loop`` trains to ``config.iterations``; ``finish`` evaluates and writes the reports.
    """

    def __init__(self, config: TrainConfig, directory: Path, ranks: scaleout.Ranks | None = None) -> None:
        self.config, self.directory = config, directory
        self.writes = ranks is None or ranks.writes  # under torchrun only rank 0 writes
        self.distribution = get_distribution(config.task)
        self.resume_path = directory / checkpoint.RESUME_FILE
        state = checkpoint.load(self.resume_path) if self.resume_path.is_file() else None
        if state is not None and state.config != dataclasses.asdict(config):
            raise ValueError(f"{str(self.resume_path)!r} was written for another configuration: {state.config}")
        if state is not None:
            check_weights(state.params, expected_layout(config, self.distribution),
                          f"resume checkpoint {str(self.resume_path)!r}")
        weights = state.params if state else initial_weights(config, self.distribution)
        self.learner = make_learner(config, self.distribution, weights)
        self.meta_env = MetaEnvironment(self.distribution, seed=config.seed)
        self.metrics: list[dict[str, Any]] = list(state.metrics) if state else []
        if state is not None:
            checkpoint.restore_optimizer_and_rng(state, self.learner, config.backend, self.meta_env.rng)
        self.start = state.iteration if state else 0
        self.resumed_after_training = state is not None and state.iteration == config.iterations
        if ranks is None:
            self.step = _iteration_fn(config, self.learner, self.meta_env, self.distribution, self.start)
        else:  # this rank's slice of the tasks (ssm_metarl/scaleout.py)
            self.step = ranks.iteration_fn(self.learner, self.meta_env, config.meta_batch, config.episodes)

    def save_state(self, iteration: int) -> None:
        if not self.writes:
            return
        checkpoint.save(self.resume_path, checkpoint.capture(
            self.learner, self.config.backend, canonical_weights(self.learner), iteration, self.meta_env.rng,
            self.metrics, dataclasses.asdict(self.config)))

    def loop(self, checkpoint_every: int, on_iteration: Callable[[int], None] | None = None) -> float | None:
        """Train to the end; returns the JAX compilation seconds (None for PyTorch).

        Raises :class:`TrainingInterrupted` after saving, on the first Ctrl-C.
        """
        config = self.config
        compile_before = jax_compile_seconds() if config.backend == "jax" else 0.0
        progress = bar(range(self.start, config.iterations), desc=f"{config.task} ({config.backend})", unit="it",
                        initial=self.start, total=config.iterations, bar_format=BAR_FORMAT, disable=not self.writes)
        with deferred_interrupt() as stop:
            for iteration in progress:
                started = time.perf_counter()
                result = self.step()
                self.metrics.append({"iteration": iteration, **result, "seconds": time.perf_counter() - started})
                progress.set_postfix(pre=f"{result['pre_return']:.1f}", post=f"{result['post_return']:.1f}")
                if on_iteration is not None:
                    on_iteration(iteration)
                done = iteration + 1
                if stop[0]:
                    self.save_state(done)
                    progress.close()
                    raise TrainingInterrupted(done, self.resume_path)
                if done % checkpoint_every == 0 and done < config.iterations:
                    self.save_state(done)
        progress.close()
        if not self.resumed_after_training:
            self.save_state(config.iterations)  # an interrupt during evaluation resumes here
        return jax_compile_seconds() - compile_before if config.backend == "jax" else None

    def finish(self, compile_seconds: float | None, final: Path) -> dict[str, Any]:
        """Write metrics and checkpoint, evaluate on the held-out tasks, plot; ``evaluation.json`` last."""
        config, directory, metrics = self.config, self.directory, self.metrics
        train_seconds = float(sum(m["seconds"] for m in metrics))
        print(compile_line(config, compile_seconds, train_seconds))
        info = run_info(config.backend)
        write_metrics(directory, metrics, config, info, compile_seconds)
        save_checkpoint(directory / "checkpoint.safetensors", self.learner, config)
        report = run_evaluation(self.learner, config, self.distribution)
        report = {"run": info, "config": report_config(config), "return": RETURN_MEANING.get(config.task, ""),
                  **report, "train_seconds": train_seconds}
        if compile_seconds is not None:
            report["compile_seconds"] = compile_seconds
        plots.learning_curve(metrics, report_config(config), directory / "learning_curve.png")
        plots.adaptation(report, report_config(config), config.backend, directory / "adaptation.png")
        write_json(directory / "evaluation.json", report)  # last: its presence marks the run complete
        self.resume_path.unlink(missing_ok=True)
        print_report(report, self.distribution, final)
        return report


def compile_line(config: TrainConfig, compile_seconds: float | None, train_seconds: float) -> str:
    if compile_seconds is None:
        return f"training took {train_seconds:.1f} s; PyTorch runs eagerly here (no torch.compile), so no compile time"
    return (f"training took {train_seconds:.1f} s, of which {compile_seconds:.1f} s were JAX compilation "
            f"(tracing + XLA, during the first iterations)")


def report_config(config: TrainConfig) -> dict[str, Any]:
    """The config as reports show it: without fields that mean nothing for this run."""
    values = dataclasses.asdict(config)
    if config.backend != "jax" or config.task not in NATIVE_TASKS:
        del values["native"]  # only the JAX backend has native rollouts, and only for these tasks
    return values


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a partly written report is never left behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def write_metrics(directory: Path, metrics: list[dict[str, Any]], config: TrainConfig, info: dict[str, Any],
                  compile_seconds: float | None) -> None:
    """``metrics.json`` (with the run's provenance) and ``metrics.csv`` (one row per iteration)."""
    report = {"run": info, "config": report_config(config),
              "return": "pre_return/post_return: mean return of the iteration's training batch before/after "
                        "one inner step; " + RETURN_MEANING.get(config.task, ""),
              "iterations": metrics}
    if compile_seconds is not None:
        report["compile_seconds"] = compile_seconds
    write_json(directory / "metrics.json", report)
    columns = ["iteration", "pre_return", "post_return", "loss", "seconds"]
    with open(directory / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(metrics)


def _iteration_fn(config: TrainConfig, learner: Any, meta_env: MetaEnvironment, distribution: TaskDistribution,
                  start: int = 0) -> Callable[[], dict[str, float]]:
    """One meta-iteration per call; ``start`` iterations were done before (the JAX keys skip theirs)."""
    if config.backend == "jax" and config.native and config.task in NATIVE_TASKS:
        import jax

        from jax_impl.meta_rl.native import NativeMAMLRL

        native = NativeMAMLRL(learner, distribution, config.episodes)
        keys = iter(list(jax.random.split(jax.random.key(config.seed), max(config.iterations, 1)))[start:])
        return lambda: native.iteration(meta_env.sample_tasks(config.meta_batch), next(keys))
    return lambda: meta_iteration(learner, meta_env, config.meta_batch, config.episodes)


def save_checkpoint(path: Path, learner: Any, config: TrainConfig) -> None:
    save_weights(path, canonical_weights(learner), {"train": dataclasses.asdict(config)})


def expected_layout(config: TrainConfig, distribution: TaskDistribution) -> dict[str, tuple[tuple[int, ...], str]]:
    """Canonical name -> (shape, dtype) of the policy a checkpoint with this config must hold."""
    import torch

    with torch.random.fork_rng():  # building the reference policy must not reseed the caller's generator
        weights = initial_weights(config, distribution)
    return {name: (value.shape, value.dtype.name) for name, value in weights.items()}


def load_checkpoint(path: Path, backend: str | None = None) -> tuple[Any, TrainConfig, TaskDistribution]:
    """A learner built from a train checkpoint; ``ValueError`` naming every bad tensor (same in both backends)."""
    tensors, meta = load_weights(path)
    if "train" not in meta:
        raise ValueError(f"{str(path)!r} is a weight file but not an ssm-metarl train checkpoint (no 'train' config)")
    config = from_dict(TrainConfig, meta["train"])
    if backend is not None:
        config = dataclasses.replace(config, backend=backend)
    distribution = get_distribution(config.task)
    check_weights(tensors, expected_layout(config, distribution), f"checkpoint {str(path)!r}")
    return make_learner(config, distribution, tensors), config, distribution


def evaluate_checkpoint(path: Path, backend: str | None, output: Path | None) -> dict[str, Any]:
    """Re-run the held-out evaluation; writes ``evaluation_<backend>.json`` and ``adaptation_<backend>.png``.

    The training run's own ``evaluation.json`` and ``adaptation.png`` are never touched.
    """
    target = output or path.parent
    rundir.check_writable_dir(target, "--output" if output is not None else "the checkpoint's directory")
    learner, config, distribution = load_checkpoint(path, backend)
    print(f"evaluating {path} with the {config.backend} backend "
          f"({config.eval_tasks} held-out tasks, {config.eval_episodes} episodes each)")
    report = run_evaluation(learner, config, distribution)
    report = {"run": run_info(config.backend), "config": report_config(config), "checkpoint": str(path),
              "return": RETURN_MEANING.get(config.task, ""), **report}
    target.mkdir(parents=True, exist_ok=True)
    plots.adaptation(report, report_config(config), config.backend, target / f"adaptation_{config.backend}.png")
    write_json(target / f"evaluation_{config.backend}.json", report)
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
    print(f"results: {output}")


def summarize_seeds(output: Path, seeds: list[int]) -> dict[str, Any]:
    """Mean over seeds of each seed's held-out means, written to ``summary.json`` and ``summary.md``."""
    reports = [json.loads((output / f"seed_{s}" / "evaluation.json").read_text()) for s in seeds]
    keys = ["after_0_steps", "after_1_steps", "after_2_steps", "after_3_steps", "after_adapter"]
    summary = {key: summarize([r[key]["mean"] for r in reports]) for key in keys}
    summary["seeds"] = seeds
    summary = {"run": reports[0].get("run"), "config": {k: v for k, v in reports[0]["config"].items() if k != "seed"},
               "return": reports[0].get("return"), **summary}
    write_json(output / "summary.json", summary)
    lines = ["| after | mean return over seeds | s.e. over seeds |", "|---|---|---|"]
    lines += [f"| {key.replace('after_', '').replace('_', ' ')} | {summary[key]['mean']:.2f} | "
              f"{summary[key]['se']:.2f} |" for key in keys]
    (output / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"\nover seeds {seeds}:\n" + "\n".join(lines))
    return summary
