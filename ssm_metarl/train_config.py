"""The configuration of ``ssm-metarl train``: the fields, their checks, config files, and the learner they build.

:func:`learner_class` is the one place a backend name becomes code: it returns that backend's
``MAMLRL`` (both implement ``shared.learner.MetaRLLearner``), and nothing after it branches on the
backend.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from shared.config import from_dict
from shared.env_runner import get_distribution
from shared.env_runner.tasks import TaskDistribution
from shared.learner import ROLLOUTS, MetaRLLearner
from ssm_metarl.config_file import check_keys, dumps_toml, read_toml

# The task families whose dynamics are written in the frameworks (torch_impl/jax_impl meta_rl/native.py).
NATIVE_TASKS = ("nav2d", "bandit")
# Markov tasks want a short memory (the current observation matters); bandits need a long one.
DECAY_RING = {"nav2d": (0.01, 0.5), "cartpole": (0.01, 0.5), "pendulum": (0.01, 0.5), "bandit": (0.9, 0.999)}
LEARNERS = {"torch": "torch_impl.meta_rl.maml_rl", "jax": "jax_impl.meta_rl.maml_rl"}


def default_rollouts(task: str) -> str:
    """``native`` where the task family has native dynamics (measured faster in both backends), else ``runner``."""
    return "native" if task in NATIVE_TASKS else "runner"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; stored in the checkpoint.

    ``rollouts``: ``"runner"`` (gymnasium environments through the backend-neutral runner) or
    ``"native"`` (the dynamics in the framework, the whole meta-iteration one compiled program; Nav2D
    and bandits only). ``None`` picks the task's default (:func:`default_rollouts`).
    """

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
    rollouts: str | None = None
    objective: str = "maml"  # "maml", "incontext" (whole-trial return, no inner step) or "both"
    trial_episodes: int = 2  # in-context objectives: episodes per trial (the state carries across them)
    trial_discount: float = 0.99
    trial_baseline: str = "state"
    trial_entropy: float = 0.0  # in-context objectives: weight of the entropy bonus in the outer loss

    def __post_init__(self) -> None:
        check_objective(self)
        if self.backend not in LEARNERS:
            raise ValueError(f"backend must be one of {sorted(LEARNERS)}, got {self.backend!r}")
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
        rollouts = default_rollouts(self.task) if self.rollouts is None else self.rollouts
        if rollouts not in ROLLOUTS:
            raise ValueError(f"rollouts must be one of {list(ROLLOUTS)}, got {rollouts!r}")
        if rollouts == "native" and self.task not in NATIVE_TASKS:
            raise ValueError(f"rollouts='native' needs dynamics written in the framework, which exist for the task "
                             f"families {list(NATIVE_TASKS)}, not {self.task!r}; use rollouts='runner' "
                             f"(--rollouts runner) for {self.task!r}")
        object.__setattr__(self, "rollouts", rollouts)


def check_objective(config: TrainConfig) -> None:
    """The in-context fields, with errors that name the command-line flag."""
    from shared.incontext import BASELINES, OBJECTIVES

    if config.objective not in OBJECTIVES:
        raise ValueError(f"--objective (objective) must be one of {list(OBJECTIVES)}, got {config.objective!r}")
    value = config.trial_episodes
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"--trial-episodes (trial_episodes) must be a positive integer, got {value!r}")
    discount = config.trial_discount
    if isinstance(discount, bool) or not isinstance(discount, (int, float)) or not 0.0 < discount <= 1.0:
        raise ValueError(f"--trial-discount (trial_discount) must be a number in (0, 1], got {discount!r}")
    if config.trial_baseline not in BASELINES:
        raise ValueError(f"--trial-baseline (trial_baseline) must be one of {list(BASELINES)}, "
                         f"got {config.trial_baseline!r}")
    weight = config.trial_entropy
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight < float("inf"):
        raise ValueError(f"--trial-entropy (trial_entropy) must be a finite number >= 0, got {weight!r}")
    if config.objective != "maml" and config.task not in NATIVE_TASKS:
        raise ValueError(f"--objective {config.objective} runs on the in-graph dynamics of {list(NATIVE_TASKS)}, "
                         f"not on task {config.task!r}")


FILE_KEYS = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "seed"] + ["seeds"]
# Fields that may change when a run resumes: the backend (the state is saved in a canonical layout).
RESUMABLE_CHANGES = ("backend",)


def saved_config(values: dict[str, Any]) -> TrainConfig:
    """The :class:`TrainConfig` a checkpoint's metadata holds; files from before the ``rollouts`` field
    (``native = true|false``, which only the JAX backend read) map onto the path they ran."""
    values = dict(values)
    if "native" in values and "rollouts" not in values:
        native = values.pop("native") and values.get("backend") == "jax" and values.get("task") in NATIVE_TASKS
        values["rollouts"] = "native" if native else "runner"
    return from_dict(TrainConfig, values)


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


def report_config(config: TrainConfig) -> dict[str, Any]:
    """The config as reports and config files show it."""
    return dataclasses.asdict(config)


def write_config(path: Path, configs: list[TrainConfig], final: Path) -> None:
    """The full resolved configuration, in the config-file format (``train --config`` repeats the run).

    ``final`` is where the file will be once the run is complete (named in its header).
    """
    values = report_config(configs[0])
    del values["seed"]
    values["seeds"] = [c.seed for c in configs]
    path.write_text(dumps_toml(values, final))


def learner_class(backend: str) -> type[MetaRLLearner]:
    """The ``MAMLRL`` class of ``backend``: the only place a backend name picks code."""
    return importlib.import_module(LEARNERS[backend]).MAMLRL


def initial_weights(config: TrainConfig, distribution: TaskDistribution) -> dict[str, np.ndarray]:
    """Seeded initial policy weights, made in PyTorch so both backends start from the same point."""
    import torch

    from torch_impl.meta_rl.maml_rl import SSMPolicy

    if config.objective != "maml":
        from ssm_metarl import incontext
        return incontext.initial_weights(config)
    torch.manual_seed(config.seed)
    policy = SSMPolicy(distribution.obs_dim, distribution.action_dim, distribution.discrete, config.state_dim,
                       config.hidden_dim, "cpu", init_log_std=config.init_log_std, r_min=config.r_min,
                       r_max=config.r_max)
    return {name: t.detach().numpy().copy() for name, t in policy.state_dict().items()}


def make_learner(config: TrainConfig, distribution: TaskDistribution, weights: dict[str, np.ndarray],
                 shards: Any = None) -> Any:
    """The configured backend's learner, holding the canonical ``weights``.

    ``shards`` (a ``torch_impl.meta_rl.distributed.TaskShards``) splits the in-context objectives' meta-batches
    over torchrun's ranks; the MAML objective is split by ``ssm_metarl.scaleout`` instead.
    """
    if config.objective != "maml":
        from ssm_metarl import incontext
        return incontext.make_learner(config, weights, shards)
    return learner_class(config.backend).build(
        distribution.obs_dim, distribution.action_dim, distribution.discrete, config.state_dim, config.hidden_dim,
        weights, inner_lr=config.inner_lr, outer_lr=config.outer_lr, r_min=config.r_min, r_max=config.r_max)


def expected_layout(config: TrainConfig, distribution: TaskDistribution) -> dict[str, tuple[tuple[int, ...], str]]:
    """Canonical name -> (shape, dtype) of the policy a checkpoint with this config must hold."""
    import torch

    with torch.random.fork_rng():  # building the reference policy must not reseed the caller's generator
        weights = initial_weights(config, distribution)
    return {name: (value.shape, value.dtype.name) for name, value in weights.items()}
