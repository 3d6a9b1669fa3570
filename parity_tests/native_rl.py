"""Parity rows for the MAML-RL main job: whole native meta-iterations and the vectorised inner loop.

- one whole native meta-iteration (rollouts, advantages, inner loop, meta-gradient, guarded Adam step),
  PyTorch against JAX, given the same numpy noise (``shared.native_noise``): the parameters after the
  step and the returns agree to 1e-9 (float64) / 1e-4 (float32), the Adam moments (meta-gradients)
  at the contract's meta-gradient tolerance (Nav2D and bandits);
- ``adapt_tasks`` (one vectorised inner loop over all tasks) against one ``adapt`` per task, in each
  backend, on recorded runner batches.

The rows use short episodes (a 20-step horizon) so the matrix stays fast; the maths is the same at
any horizon.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from parity_tests.matrix import TOLERANCES, Row, Setup, recorded_rollouts, row
from shared.compare import compare_trees
from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals
from shared.native_noise import draw_noise
from ssm_metarl.train_config import TrainConfig, initial_weights, make_learner

# A whole iteration (two rollouts, a baseline fit, second-order MAML, Adam) at the tolerances.
NATIVE_ITERATION_TOLERANCE = {"float64": 1e-9, "float32": 1e-4}
SHORT = {"nav2d": Nav2DGoals(horizon=20), "bandit": BernoulliBandits(arms=3, pulls=20)}


def twin_learners(setup: Setup, distribution: Any) -> dict[str, Any]:
    """Both backends' learners, holding the same canonical weights in ``setup.dtype``."""
    sizes = setup.sizes
    config = TrainConfig(task=distribution.name, state_dim=sizes.state_dim, hidden_dim=sizes.hidden_dim,
                         seed=sizes.seed)
    weights = {k: v.astype(setup.dtype) for k, v in initial_weights(config, distribution).items()}
    return {backend: make_learner(TrainConfig(**{**config.__dict__, "backend": backend}), distribution, weights)
            for backend in ("torch", "jax")}


def native_iterations(setup: Setup) -> list[Row]:
    """One whole native meta-iteration per task family, torch (eager form) against JAX, the same noise."""
    rows = []
    tolerance = NATIVE_ITERATION_TOLERANCE[setup.dtype]
    for task, distribution in SHORT.items():
        learners = twin_learners(setup, distribution)
        rng = np.random.default_rng(setup.sizes.seed)
        tasks = distribution.sample(setup.sizes.tasks, rng)
        noise = draw_noise(distribution, rng, setup.sizes.tasks, 2)
        results = {}
        for backend, learner in learners.items():
            native = learner.native(distribution, 2, **({"compile": False} if backend == "torch" else {}))
            metrics = native.iteration(tasks, noise)
            results[backend] = {"params": learner.canonical_weights(), "adam": learner.optimizer_state(),
                                "returns": np.array([metrics["pre_return"], metrics["post_return"]])}
        comparison = compare_trees({k: results["jax"][k] for k in ("params", "returns")},
                                   {k: results["torch"][k] for k in ("params", "returns")})
        rows.append(Row(f"native MAML-RL meta-iteration: parameters after the step, returns; same noise ({task})",
                        setup.dtype, comparison.max_abs, comparison.rel, tolerance, comparison.passes(tolerance),
                        comparison))
        # Adam's moments are (squared) meta-gradients: the contract's meta-gradient tolerance
        rows.append(row(f"native MAML-RL meta-iteration: Adam moments after the step ({task})", setup.dtype,
                        "meta_gradient", compare_trees(results["jax"]["adam"], results["torch"]["adam"])))
    return rows


def adapt_tasks_rows(setup: Setup) -> list[Row]:
    """``adapt_tasks`` (all tasks in one vectorised call) against per-task ``adapt``, in each backend."""
    rows = []
    for task in ("nav2d", "bandit"):
        _, pairs, distribution = recorded_rollouts(setup, task)
        support = [s for s, _ in pairs]
        for backend, learner in twin_learners(setup, distribution).items():
            together = learner.adapt_tasks(support)
            alone = [learner.adapt(b) for b in support]
            as_numpy = (lambda p: {k: v.detach().numpy() for k, v in p.items()}) if backend == "torch" else (
                lambda p: jax.tree.map(np.asarray, p))
            rows.append(row(f"adapt_tasks vs per-task adapt, {backend} ({task})", setup.dtype, "adapted",
                            compare_trees([as_numpy(p) for p in together], [as_numpy(p) for p in alone])))
    return rows


__all__ = ["NATIVE_ITERATION_TOLERANCE", "TOLERANCES", "adapt_tasks_rows", "native_iterations"]
