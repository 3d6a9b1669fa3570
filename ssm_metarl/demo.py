"""``ssm-metarl demo``: meta-train the SSM with MetaMAML on sinusoid sequence regression.

Prints the held-out query loss before and after one inner adaptation step, both for the
untrained model and for the meta-trained one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.tasks import SinusoidTasks, Task
from ssm_metarl.compile_time import BAR_FORMAT, jax_compile_seconds
from ssm_metarl.progress import progress as bar
from ssm_metarl.runinfo import run_info


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    backend: str = "torch"
    iterations: int = 500
    meta_batch: int = 8
    state_dim: int = 32
    hidden_dim: int = 32
    inner_lr: float = 0.1
    outer_lr: float = 3e-3
    num_inner_steps: int = 1
    seed: int = 0


class Learner:
    """What the demo needs from a backend: meta-train, and losses before/after adaptation."""

    meta_update: Callable[[list[Task]], float]
    losses: Callable[[Task], tuple[float, float]]


def initial_weights(config: DemoConfig) -> dict[str, np.ndarray]:
    """Canonical initial weights, made once (in PyTorch, seeded) so both backends start alike."""
    import torch

    from torch_impl import SSM

    torch.manual_seed(config.seed)
    model = SSM(config.state_dim, 1, 1, config.hidden_dim, "cpu")
    return {name: t.detach().numpy().copy() for name, t in model.state_dict().items()}


def torch_learner(config: DemoConfig) -> Learner:
    import torch
    from torch.func import functional_call

    from torch_impl import SSM, MetaMAML
    from torch_impl.meta_rl.meta_maml import mse

    model = SSM(config.state_dim, 1, 1, config.hidden_dim, "cpu")
    model.load_state_dict({name: torch.from_numpy(value) for name, value in initial_weights(config).items()})
    maml = MetaMAML(model, config.inner_lr, config.outer_lr, config.num_inner_steps)
    learner = Learner()
    learner.meta_update = lambda tasks: maml.meta_update([tuple(map(torch.from_numpy, t)) for t in tasks])

    def losses(task: Task) -> tuple[float, float]:
        sx, sy, qx, qy = map(torch.from_numpy, task)
        adapted = maml.adapt(sx, sy)
        with torch.no_grad():
            return float(mse(model(qx), qy)), float(mse(functional_call(model, adapted, (qx,)), qy))

    learner.losses = losses
    return learner


def jax_learner(config: DemoConfig) -> Learner:
    from flax import nnx

    from jax_impl import SSM, MetaMAML
    from jax_impl.core.params import from_canonical
    from jax_impl.meta_rl.meta_maml import mse

    model = SSM(config.state_dim, 1, 1, config.hidden_dim, "cpu")
    from_canonical(model, initial_weights(config))
    maml = MetaMAML(model, config.inner_lr, config.outer_lr, config.num_inner_steps)
    learner = Learner()
    learner.meta_update = maml.meta_update

    def losses(task: Task) -> tuple[float, float]:
        sx, sy, qx, qy = task
        adapted = maml.adapt(sx, sy)
        rest = nnx.split(model, nnx.Param, ...)[2]
        return float(mse(model(qx), qy)), float(mse(nnx.merge(maml.graphdef, adapted, rest)(qx), qy))

    learner.losses = losses
    return learner


def evaluate(learner: Learner, tasks: list[Task]) -> dict[str, float]:
    before, after = np.array([learner.losses(task) for task in tasks]).T
    return {"before_adaptation": float(before.mean()), "after_adaptation": float(after.mean())}


def run(config: DemoConfig, output: Path | None = None) -> dict[str, Any]:
    learner = {"torch": torch_learner, "jax": jax_learner}[config.backend](config)
    tasks = SinusoidTasks()
    held_out = tasks.held_out()
    rng = np.random.default_rng(config.seed)
    untrained = evaluate(learner, held_out)
    compile_before = jax_compile_seconds() if config.backend == "jax" else 0.0
    start = time.perf_counter()
    progress = bar(range(config.iterations), desc=f"meta-training ({config.backend})", unit="it",
                    bar_format=BAR_FORMAT)
    for _ in progress:
        loss = learner.meta_update(tasks.sample(config.meta_batch, rng))
        progress.set_postfix(query_loss=f"{loss:.3f}")
    train_seconds = time.perf_counter() - start
    compile_seconds = jax_compile_seconds() - compile_before if config.backend == "jax" else None
    trained = evaluate(learner, held_out)
    result = {"run": run_info(config.backend), "config": dataclasses.asdict(config), "untrained": untrained,
              "meta_trained": trained, "train_seconds": train_seconds}
    if config.backend == "jax":
        result["compile_seconds"] = compile_seconds
        print(f"meta-training took {train_seconds:.1f} s, of which {result['compile_seconds']:.1f} s were JAX "
              "compilation (tracing + XLA)")
    else:
        print(f"meta-training took {train_seconds:.1f} s; PyTorch runs eagerly here (no torch.compile)")
    print(f"\nheld-out query MSE over {len(held_out)} sinusoid tasks ({config.backend}):")
    print(f"{'':<14} {'before adaptation':>18} {'after adaptation':>17}")
    for name, values in (("untrained", untrained), ("meta-trained", trained)):
        print(f"{name:<14} {values['before_adaptation']:>18.4f} {values['after_adaptation']:>17.4f}")
    if output is not None:
        output.mkdir(parents=True, exist_ok=True)
        (output / "demo.json").write_text(json.dumps(result, indent=2))
    return result
