"""Resumable training state in one safetensors file: parameters, Adam state, RNG states, iteration, metrics.

Tensors (all numpy, named so that the file depends neither on the backend nor on how many worker
processes trained):

- ``param.<name>``: the policy's canonical parameters (PyTorch ``state_dict`` names and layout);
- ``adam.step``, ``adam.exp_avg.<name>``, ``adam.exp_avg_sq.<name>``: the outer Adam state in the
  canonical layout of ``shared.learner`` (both backends read and write it, so a run started in one
  resumes in the other);
- ``rng.torch``: ``torch.get_rng_state()``.

The JSON metadata holds the iteration count, the metrics so far, the numpy ``Generator`` state of
the task/episode/noise sampler and the run's config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from shared.learner import ADAM_MOMENTS, ADAM_STEP
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


def capture(learner: Any, iteration: int, numpy_rng: np.random.Generator, metrics: list[dict[str, Any]],
            config: dict[str, Any]) -> TrainingState:
    """Snapshot a run between two meta-iterations (any ``shared.learner.MetaRLLearner``)."""
    import torch

    return TrainingState(iteration, learner.canonical_weights(), learner.optimizer_state(),
                         numpy_rng.bit_generator.state, torch.get_rng_state().numpy().copy(),
                         [dict(m) for m in metrics], dict(config))


def restore_optimizer_and_rng(state: TrainingState, learner: Any, numpy_rng: np.random.Generator) -> None:
    """Put ``state``'s optimizer and RNG states back (the parameters go in when the learner is built)."""
    import torch

    learner.load_optimizer_state(state.optimizer)
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
    """Read a resume file; a corrupt or truncated one gets ``shared.weights``' validator error."""
    tensors, meta = load_weights(path)
    if "resume" not in meta or "train" not in meta:
        raise ValueError(f"{str(path)!r} is not an ssm-metarl resume checkpoint (no 'resume' state)")
    if "rng.torch" not in tensors:
        raise ValueError(f"{str(path)!r} is not a complete ssm-metarl resume checkpoint (no 'rng.torch' state)")
    resume = meta["resume"]
    params = {k[len("param."):]: v for k, v in tensors.items() if k.startswith("param.")}
    moments = tuple(f"{key}." for key in ADAM_MOMENTS)
    optimizer = {k: v for k, v in tensors.items() if k == ADAM_STEP or k.startswith(moments)}
    return TrainingState(int(resume["iteration"]), params, optimizer, resume["numpy_rng"], tensors["rng.torch"],
                         list(resume["metrics"]), dict(meta["train"]))
