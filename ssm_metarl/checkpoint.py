"""Resumable training state in one safetensors file: parameters, optimizer state, RNG states, iteration, metrics.

Tensors (all numpy, named so that the file does not depend on how many worker processes trained):

- ``param.<name>``: the policy's canonical parameters (PyTorch ``state_dict`` names and layout);
- ``optim.<key>.<name>`` (torch: ``torch.optim.Adam`` state per parameter name, e.g. ``exp_avg``) or
  ``optax.<path>`` (JAX: each leaf of the optax state by its tree path);
- ``rng.torch``: ``torch.get_rng_state()``.

The JSON metadata holds the iteration count, the metrics so far, the numpy ``Generator`` state of
the task/episode sampler and the run's config. The JAX-native path's keys are split from the seed
one per iteration, so the iteration count restores them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from shared.weights import load_weights, save_weights

RESUME_FILE = "resume.safetensors"


@dataclasses.dataclass
class TrainingState:
    """Everything needed to continue a run after ``iteration`` completed meta-iterations."""

    iteration: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    numpy_rng: dict[str, Any]
    torch_rng: np.ndarray
    metrics: list[dict[str, Any]]
    config: dict[str, Any]


def _torch_optimizer_state(learner: Any) -> dict[str, np.ndarray]:
    optimizer = learner.maml.optimizer
    names = {id(p): name for name, p in learner.policy.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = optimizer.state_dict()["state"]
    out = {}
    for index, param in enumerate(params):
        for key, value in state.get(index, {}).items():
            out[f"optim.{key}.{names[id(param)]}"] = value.detach().cpu().numpy().copy()
    return out


def _restore_torch_optimizer(learner: Any, tensors: dict[str, np.ndarray]) -> None:
    import torch

    optimizer = learner.maml.optimizer
    names = {id(p): name for name, p in learner.policy.named_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, torch.Tensor]] = {}
    for index, param in enumerate(params):
        suffix = f".{names[id(param)]}"
        entries = {key[len("optim."):-len(suffix)]: value for key, value in tensors.items()
                   if key.startswith("optim.") and key.endswith(suffix)
                   and "." not in key[len("optim."):-len(suffix)]}
        if entries:
            state[index] = {key: torch.from_numpy(value.copy()) for key, value in entries.items()}
    saved = optimizer.state_dict()
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


def _jax_optimizer_state(learner: Any) -> dict[str, np.ndarray]:
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(learner.maml.opt_state)[0]
    return {f"optax{jax.tree_util.keystr(path)}": np.asarray(leaf).copy() for path, leaf in leaves}


def _restore_jax_optimizer(learner: Any, tensors: dict[str, np.ndarray]) -> None:
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten_with_path(learner.maml.opt_state)
    names = [f"optax{jax.tree_util.keystr(path)}" for path, _ in leaves]
    missing = sorted(set(names) - set(tensors))
    if missing:
        raise ValueError(f"the resume checkpoint has no optimizer state for {missing[:3]}...; "
                         f"it was written by another backend or optimizer")
    values = [jnp.asarray(tensors[name], dtype=leaf.dtype) for name, (_, leaf) in zip(names, leaves, strict=True)]
    learner.maml.opt_state = jax.tree_util.tree_unflatten(treedef, values)


def capture(learner: Any, backend: str, params: dict[str, np.ndarray], iteration: int,
            numpy_rng: np.random.Generator, metrics: list[dict[str, Any]], config: dict[str, Any]) -> TrainingState:
    """Snapshot a run between two meta-iterations (``params``: the canonical policy weights)."""
    import torch

    optimizer = _torch_optimizer_state(learner) if backend == "torch" else _jax_optimizer_state(learner)
    return TrainingState(iteration, params, optimizer, numpy_rng.bit_generator.state,
                         torch.get_rng_state().numpy().copy(), [dict(m) for m in metrics], dict(config))


def restore_optimizer_and_rng(state: TrainingState, learner: Any, backend: str,
                              numpy_rng: np.random.Generator) -> None:
    """Put ``state``'s optimizer and RNG states back (the parameters go in when the learner is built)."""
    import torch

    if backend == "torch":
        _restore_torch_optimizer(learner, state.optimizer)
    else:
        _restore_jax_optimizer(learner, state.optimizer)
    numpy_rng.bit_generator.state = state.numpy_rng
    torch.set_rng_state(torch.from_numpy(state.torch_rng.copy()))


def save(path: Path, state: TrainingState) -> None:
    """Write ``state`` atomically (temporary file, then rename)."""
    tensors = {f"param.{k}": v for k, v in state.params.items()}
    tensors.update(state.optimizer)
    tensors["rng.torch"] = state.torch_rng
    meta = {"resume": {"iteration": state.iteration, "numpy_rng": state.numpy_rng, "metrics": state.metrics},
            "train": state.config}
    save_weights(path, tensors, meta)


def load(path: Path) -> TrainingState:
    tensors, meta = load_weights(path)
    if "resume" not in meta or "train" not in meta:
        raise ValueError(f"{str(path)!r} is not an ssm-metarl resume checkpoint (no 'resume' state)")
    resume = meta["resume"]
    params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    optimizer = {k: v for k, v in tensors.items() if k.startswith(("optim.", "optax"))}
    return TrainingState(int(resume["iteration"]), params, optimizer, resume["numpy_rng"], tensors["rng.torch"],
                         list(resume["metrics"]), dict(meta["train"]))
