"""The MAML-RL learner protocol: what the training loop needs from either backend (typing only).

``torch_impl.meta_rl.maml_rl.MAMLRL`` and ``jax_impl.meta_rl.maml_rl.MAMLRL`` implement it under the
same names, so ``ssm_metarl.train``, ``ssm_metarl.rl_loop``, ``ssm_metarl.scaleout`` and
``ssm_metarl.checkpoint`` are written once, above both. ``Params`` and ``Batch`` are the backend's
own types (a dict of tensors / an ``nnx.State``; a tuple ``(obs, (actions, advantages, mask))`` of
tensors / arrays); the loop only passes them back to the learner that made them.

The optimizer state crosses backends in one canonical layout (:data:`OPTIMIZER_KEYS`), by canonical
parameter name (PyTorch ``state_dict`` names and layout), so a run saved by one backend resumes in
the other with the same Adam moments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shared.rl import RLBatch

Params = Any  # the backend's parameter container (dict of tensors / nnx.State)
Batch = Any  # a converted RLBatch: (obs, (actions, advantages, mask)) in the backend's arrays
ActFn = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]

ADAM_STEP = "adam.step"  # the number of Adam steps taken: a 0-d int64 array
ADAM_MOMENTS = ("adam.exp_avg", "adam.exp_avg_sq")  # first and second moments: "<key>.<canonical name>"
OPTIMIZER_KEYS = (ADAM_STEP, *ADAM_MOMENTS)

ROLLOUTS = ("runner", "native")  # gymnasium environments through the runner, or dynamics in the framework


@runtime_checkable
class MetaRLLearner(Protocol):
    """A MAML-RL learner: a policy, its meta-parameters and Adam state, and the steps of a meta-iteration.

    Attributes:
        policy: the framework module being meta-trained.
        dtype_name: the numpy dtype name of its parameters (``"float32"``), for numpy batches.
        backend: ``"torch"`` or ``"jax"`` (for reports only; no caller branches on it).
    """

    policy: Any
    dtype_name: str
    backend: str

    def meta_params(self) -> Params:
        """The current meta-parameters (a detached copy: later updates do not change it)."""
        ...

    def act_fn(self, params: Sequence[Params], episodes_per_task: int) -> ActFn:
        """``act(obs, state)`` for a task-major batch where task ``i`` acts with ``params[i]``."""
        ...

    def initial_state(self, n_tasks: int, episodes_per_task: int) -> Any:
        """The policy's zero state, ``(n_tasks, episodes_per_task, state_dim)``."""
        ...

    def convert(self, batch: RLBatch) -> Batch:
        """A numpy :class:`RLBatch` in the backend's arrays, once; every method below takes either."""
        ...

    def adapt(self, batch: RLBatch | Batch, params: Params | None = None) -> Params:
        """One task's inner loop from ``params`` (default: the meta-parameters)."""
        ...

    def adapt_tasks(self, batches: Sequence[RLBatch | Batch],
                    params: Sequence[Params] | None = None) -> list[Params]:
        """Every task's inner loop as one vectorised call; per-task adapted parameters, in task order."""
        ...

    def meta_update(self, pairs: Sequence[tuple[RLBatch | Batch, RLBatch | Batch]]) -> float:
        """One guarded outer Adam step on (support, query) pairs; returns the mean query loss."""
        ...

    def canonical_weights(self) -> dict[str, np.ndarray]:
        """The policy's parameters by canonical name (PyTorch ``state_dict`` names and layout)."""
        ...

    def load_canonical_weights(self, weights: dict[str, np.ndarray]) -> None:
        """Set the policy's parameters from canonical weights (exactly; shapes are checked)."""
        ...

    def optimizer_state(self) -> dict[str, np.ndarray]:
        """Adam's state in the canonical layout: ``adam.step`` and ``adam.exp_avg.<name>``,
        ``adam.exp_avg_sq.<name>`` for every canonical parameter name."""
        ...

    def load_optimizer_state(self, state: dict[str, np.ndarray]) -> None:
        """Set Adam's state from the canonical layout (exactly); ``ValueError`` naming what is missing."""
        ...

    def native(self, distribution: Any, episodes_per_task: int) -> Any:
        """The in-graph rollout path for ``distribution`` (Nav2D, bandits): an object whose
        ``iteration(tasks, noise)`` runs one whole meta-iteration."""
        ...

    def adapter(self, config: Any) -> Any:
        """A test-time ``Adapter`` over the policy with ``config`` (an ``AdaptationConfig``)."""
        ...

    def adapter_step(self, adapter: Any, batch: RLBatch | Batch) -> Any:
        """One Adapter update on the policy-gradient loss of ``batch``."""
        ...


def check_optimizer_state(state: dict[str, np.ndarray], names: Sequence[str], where: str) -> None:
    """``state`` holds the canonical Adam layout for parameters ``names``; else ``ValueError`` naming the gaps."""
    expected = {ADAM_STEP} | {f"{key}.{name}" for key in ADAM_MOMENTS for name in names}
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"{where}: the optimizer state must have the canonical Adam layout "
                         f"({', '.join(OPTIMIZER_KEYS)} by parameter name); missing {missing[:4]}, "
                         f"unexpected {extra[:4]}")
    step = np.asarray(state[ADAM_STEP])
    if step.shape != () or step.dtype.kind not in "iu" or int(step) < 0:
        raise ValueError(f"{where}: {ADAM_STEP} must be a 0-d non-negative integer array, got {step!r}")
