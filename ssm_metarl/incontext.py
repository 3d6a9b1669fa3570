"""In-context training runs and checkpoints, above both backends.

:func:`train` builds an in-context policy for a task family, trains it with the ``incontext`` or
``both`` objective and returns it with its per-iteration metrics; :func:`save_checkpoint` writes
its canonical weights and everything needed to rebuild it (family, sizes, trial config) into one
safetensors file that :func:`load_checkpoint` reads back in either backend.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals, TaskDistribution
from shared.incontext import TrialConfig
from shared.weights import load_weights, save_weights

CHECKPOINT_KIND = "incontext-policy"


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """Sizes of an in-context policy (the family fixes its input and output widths)."""

    family: str = "bandit"
    state_dim: int = 32
    hidden_dim: int = 64
    init_log_std: float = -1.0

    def distribution(self) -> TaskDistribution:
        return family_distribution(self.family)


def family_distribution(family: str) -> TaskDistribution:
    if family == "bandit":
        return BernoulliBandits()
    if family == "nav2d":
        return Nav2DGoals()
    raise ValueError(f"in-context training covers the families 'bandit' and 'nav2d', got {family!r}")


def build_policy(backend: str, spec: PolicySpec, seed: int, dtype: str = "float32") -> Any:
    """A fresh in-context policy of ``backend`` (``"jax"`` or ``"torch"``)."""
    dist = spec.distribution()
    args = (dist.obs_dim, dist.action_dim, dist.discrete, spec.state_dim, spec.hidden_dim, "cpu")
    if backend == "jax":
        import jax.numpy as jnp
        from flax import nnx

        from jax_impl.meta_rl.incontext import InContextPolicy
        return InContextPolicy(*args, dtype=jnp.dtype(dtype), init_log_std=spec.init_log_std, rngs=nnx.Rngs(seed))
    if backend == "torch":
        import torch

        from torch_impl.meta_rl.incontext import InContextPolicy as TorchPolicy
        torch.manual_seed(seed)
        return TorchPolicy(*args, dtype=getattr(torch, dtype), init_log_std=spec.init_log_std)
    raise ValueError(f"backend must be 'jax' or 'torch', got {backend!r}")


def canonical_params(backend: str, policy: Any) -> dict[str, np.ndarray]:
    if backend == "jax":
        from flax import nnx

        from jax_impl.core.params import to_canonical
        return to_canonical(nnx.state(policy, nnx.Param))
    return {name: value.detach().cpu().numpy().copy() for name, value in policy.state_dict().items()}


def load_params(backend: str, policy: Any, tensors: dict[str, np.ndarray]) -> None:
    if backend == "jax":
        from jax_impl.core.params import from_canonical
        from_canonical(policy, tensors)
        return
    import torch

    policy.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()})


def save_checkpoint(path: str | Path, backend: str, policy: Any, spec: PolicySpec, config: TrialConfig,
                    inner_lr: float, extra: dict[str, Any] | None = None) -> None:
    meta = {"kind": CHECKPOINT_KIND, "policy": dataclasses.asdict(spec), "trial": config.to_dict(),
            "inner_lr": inner_lr, "backend": backend, **(extra or {})}
    save_weights(path, canonical_params(backend, policy), meta)


def load_checkpoint(path: str | Path, backend: str) -> tuple[Any, PolicySpec, TrialConfig, dict[str, Any]]:
    """``(policy, spec, trial config, metadata)`` from a file written by :func:`save_checkpoint`."""
    tensors, meta = load_weights(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise ValueError(f"{str(path)!r} is not an in-context policy checkpoint (kind {meta.get('kind')!r})")
    spec = PolicySpec(**meta["policy"])
    dtype = next(iter(tensors.values())).dtype.name
    policy = build_policy(backend, spec, seed=0, dtype=dtype)
    load_params(backend, policy, tensors)
    return policy, spec, TrialConfig.from_dict(meta["trial"]), meta


def make_trainer(backend: str, policy: Any, spec: PolicySpec, config: TrialConfig, outer_lr: float,
                 inner_lr: float, num_inner_steps: int = 1, max_grad_norm: float | None = 1.0) -> Any:
    if backend == "jax":
        from jax_impl.meta_rl.incontext import InContextRL
    else:
        from torch_impl.meta_rl.incontext import InContextRL
    return InContextRL(policy, spec.distribution(), config, outer_lr=outer_lr, inner_lr=inner_lr,
                       num_inner_steps=num_inner_steps, max_grad_norm=max_grad_norm)


def backend_key(backend: str, seed: int) -> Any:
    if backend == "jax":
        import jax
        return jax.random.PRNGKey(seed)
    import torch
    return torch.Generator().manual_seed(seed)


def split_key(backend: str, key: Any) -> tuple[Any, Any]:
    if backend == "jax":
        import jax
        key, sub = jax.random.split(key)
        return key, sub
    return key, key


def train(backend: str, spec: PolicySpec, config: TrialConfig, iterations: int, seed: int = 0,
          meta_batch_size: int = 16, outer_lr: float = 3e-3, inner_lr: float = 0.1,
          max_grad_norm: float | None = 1.0, log: Callable[[dict[str, Any]], None] | None = None,
          log_every: int = 50) -> tuple[Any, Any, list[dict[str, Any]]]:
    """Train a fresh in-context policy for ``iterations`` meta-iterations; ``(policy, trainer, metrics)``."""
    policy = build_policy(backend, spec, seed)
    trainer = make_trainer(backend, policy, spec, config, outer_lr, inner_lr, max_grad_norm=max_grad_norm)
    dist = spec.distribution()
    rng = np.random.default_rng(seed)
    key = backend_key(backend, seed)
    metrics: list[dict[str, Any]] = []
    start = time.perf_counter()
    for it in range(iterations):
        key, sub = split_key(backend, key)
        m = trainer.iteration(dist.sample(meta_batch_size, rng), sub)
        m.update(iteration=it + 1, seconds=time.perf_counter() - start)
        metrics.append(m)
        if log is not None and ((it + 1) % log_every == 0 or it + 1 == iterations):
            log(m)
    return policy, trainer, metrics
