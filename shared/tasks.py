"""Synthetic sequence-regression tasks (numpy only), used by the demo and the tests."""

from __future__ import annotations

import dataclasses

import numpy as np

Task = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class SinusoidTasks:
    """Sinusoids ``y = A sin(x + phase)`` with ``A ~ U[0.1, 5]``, ``phase ~ U[0, pi]``, fed step by step.

    A task is ``(support_x, support_y, query_x, query_y)``; each array is ``(shots, seq_len, 1)``,
    with ``x`` sorted inside a sequence, so the SSM sees the curve left to right.
    """

    seq_len: int = 16
    shots: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, float(np.pi))
    x_range: tuple[float, float] = (-5.0, 5.0)
    dtype: str = "float32"

    def _batch(self, rng: np.random.Generator, amplitude: float, phase: float) -> tuple[np.ndarray, np.ndarray]:
        x = np.sort(rng.uniform(*self.x_range, size=(self.shots, self.seq_len, 1)), axis=1)
        return x.astype(self.dtype), (amplitude * np.sin(x + phase)).astype(self.dtype)

    def sample(self, n_tasks: int, rng: np.random.Generator) -> list[Task]:
        tasks = []
        for _ in range(n_tasks):
            amplitude, phase = rng.uniform(*self.amplitude), rng.uniform(*self.phase)
            tasks.append((*self._batch(rng, amplitude, phase), *self._batch(rng, amplitude, phase)))
        return tasks

    def held_out(self, n_tasks: int = 20, seed: int = 12345) -> list[Task]:
        """A fixed test set: the same tasks every call."""
        return self.sample(n_tasks, np.random.default_rng(seed))
