"""Test-time adaptation: the ``Adapter`` (ARCHITECTURE.md section 4), JAX.

The line-by-line twin of ``torch_impl/adaptation/test_time_adaptation.py``. Parameters and the
optax state are held functionally; one ``jit``-compiled step (per loss function) computes the
gradient, the clipped and masked optax update, the trust-region projection and the EMA teacher,
and Python commits it only when the loss and gradient are finite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.core.params import SplitCache
from shared.adaptation import AdaptationConfig, History, select_parameters
from shared.layout import canonical_name

LossOutput = jax.Array | tuple[jax.Array, jax.Array]
LossFn = Callable[[nnx.Module, Any], LossOutput]


def entropy(logits: jax.Array) -> jax.Array:
    """Mean entropy (nats) of the categorical distributions ``softmax(logits)`` over the last axis."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -(jnp.exp(log_p) * log_p).sum(-1).mean()


def parameter_names(params: nnx.State) -> nnx.State:
    """The same tree as ``params`` with each leaf replaced by its canonical name (``"B.weight"``)."""

    def name(path: tuple, _: Any) -> str:
        return canonical_name([getattr(k, "key", getattr(k, "idx", None)) for k in path if not hasattr(k, "name")])

    return jax.tree_util.tree_map_with_path(name, params)


def build_optimizer(config: AdaptationConfig, mask: nnx.State) -> optax.GradientTransformation:
    """The optax chain that matches the torch optimizer exactly, applied to the ``mask``ed leaves only.

    torch ``Adam(weight_decay)`` is coupled L2 (decay added to the gradient before the moments);
    ``AdamW`` decays the weights directly; ``SGD`` adds the decay, then momentum.
    """
    c = config
    b1, b2 = c.betas
    if c.optimizer == "sgd":
        steps = [optax.add_decayed_weights(c.weight_decay), optax.trace(decay=c.momentum)]
    elif c.optimizer == "adam":
        steps = [optax.add_decayed_weights(c.weight_decay), optax.scale_by_adam(b1, b2, c.eps)]
    else:
        steps = [optax.scale_by_adam(b1, b2, c.eps), optax.add_decayed_weights(c.weight_decay)]
    clip = [optax.clip_by_global_norm(c.grad_clip_norm)] if c.grad_clip_norm is not None else []
    inverted = jax.tree.map(lambda m: not m, mask)
    return optax.chain(
        optax.masked(optax.chain(*clip, *steps, optax.scale(-c.lr)), mask),
        optax.masked(optax.set_to_zero(), inverted),
    )


class Adapter:
    """Adapts ``model``'s selected ``nnx.Param``s.

    Args:
        model: the deployed ``nnx.Module``; it is updated in place after every committed step.
        config: an :class:`AdaptationConfig`.

    ``loss_fn(model, batch)`` returns a scalar loss, or ``(loss, logits)`` when
    ``config.entropy_weight > 0``. It is traced by ``jax.jit``, once per loss function.
    """

    def __init__(self, model: nnx.Module, config: AdaptationConfig) -> None:
        if not isinstance(model, nnx.Module):
            raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
        if not isinstance(config, AdaptationConfig):
            raise TypeError(f"config must be an AdaptationConfig, got {type(config).__name__}")
        self.model, self.config = model, config
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        names = parameter_names(params)
        self.names = select_parameters(jax.tree.leaves(names), config)
        self.mask = jax.tree.map(lambda n: n in self.names, names)
        self.source = jax.tree.map(jnp.copy, params)  # a snapshot: nnx.state is a live view
        self.source_rest = jax.tree.map(jnp.copy, rest)
        self.optimizer = build_optimizer(config, self.mask)
        self.history = History(config.history_size)
        self._compiled: dict[LossFn, Callable] = {}
        self._split = SplitCache(model)
        self._drift_params: nnx.State | None = None
        self._start()

    # ------------------------------------------------------------ public API
    def update_step(self, loss_fn: LossFn, batch: Any) -> dict[str, Any]:
        """Up to ``steps_per_call`` optimizer steps on ``loss_fn(model, batch)``.

        Returns the same ``info`` as the torch Adapter. A step whose loss or gradient is not
        finite is skipped: parameters and optimizer state stay exactly as they were.
        """
        info: dict[str, Any] = {"updated": False, "steps": 0, "loss": None, "entropy": None,
                                "grad_norm": None, "drift": self.drift(), "skipped": None}
        if not self.config.enabled:
            info["skipped"] = "disabled"
            return info
        if loss_fn not in self._compiled:
            self._compiled[loss_fn] = jax.jit(lambda *args: self._step(loss_fn, *args))
        for _ in range(self.config.steps_per_call):
            params, rest = self._split.get()
            params, opt_state, teacher, loss, ent, norm, drift = self._compiled[loss_fn](
                params, self.opt_state, self.teacher, rest, batch)
            loss, ent, norm, drift = jax.device_get((loss, ent, norm, drift))  # one transfer for all four
            info["loss"], info["entropy"] = float(loss), None if ent is None else float(ent)
            info["grad_norm"] = float(norm)
            if not np.isfinite(loss):
                info["skipped"] = "non-finite loss"
                break
            if not np.isfinite(norm):
                info["skipped"] = "non-finite gradient"
                break
            self._split.commit(params)
            self.opt_state, self.teacher = opt_state, teacher
            self.update_count += 1
            self._drift, self._drift_params = float(drift), params
            info["drift"] = self._drift
            info["steps"] += 1
            info["updated"] = True
        self.observe(**info)
        if self.config.reset == "every_n" and self.update_count >= self.config.reset_every:
            self.reset()
        return info

    def observe(self, **metrics: Any) -> None:
        """Record telemetry (loss, entropy, drift, ...) with the current update count."""
        self.history.append({"update_count": self.update_count, **metrics})

    def drift(self) -> float:
        """L2 distance of the selected parameters from the source parameters."""
        if self._split.get()[0] is not self._drift_params:  # recompute only if the parameters changed
            self._drift_params = self._split.get()[0]
            self._drift = float(self._distance(self._drift_params))
        return self._drift

    def reset(self) -> None:
        """Restore the source parameters, other variables, optimizer state and EMA teacher exactly."""
        nnx.update(self.model, jax.tree.map(jnp.copy, self.source), jax.tree.map(jnp.copy, self.source_rest))
        self._start()
        self.observe(event="reset")

    def end_episode(self) -> bool:
        """Tell the Adapter an episode ended; resets (and returns True) under ``reset='episodic'``."""
        if self.config.reset == "episodic":
            self.reset()
            return True
        return False

    @contextlib.contextmanager
    def context(self, restore: bool = True) -> Iterator[Adapter]:
        """``with adapter.context(): ...`` adapts inside the block and restores on exit if ``restore``."""
        try:
            yield self
        finally:
            if restore:
                self.reset()

    @property
    def teacher_model(self) -> nnx.Module | None:
        """The EMA teacher as a module (None without ``ema_decay``)."""
        if self.teacher is None:
            return None
        return nnx.merge(self.graphdef, self.teacher, nnx.state(self.model, nnx.Not(nnx.Param)))

    def step_key(self) -> jax.Array:
        """``fold_in(key(seed), update_count)``: JAX randomness is explicit, so a loss that needs a
        key takes this one in its batch (torch seeds its global stream the same way per step)."""
        return jax.random.fold_in(jax.random.key(self.config.seed), self.update_count)

    # ------------------------------------------------------------ internals
    def _params(self) -> nnx.State:
        return nnx.state(self.model, nnx.Param)

    def _start(self) -> None:
        params = jax.tree.map(jnp.copy, self._params())
        self.opt_state = self.optimizer.init(params)
        self.teacher = params if self.config.ema_decay is not None else None
        self.update_count = 0

    def _distance(self, params: nnx.State) -> jax.Array:
        deltas = jax.tree.map(lambda p, s, m: p - s if m else jnp.zeros_like(p), params, self.source, self.mask)
        return optax.tree.norm(deltas)

    def _step(self, loss_fn: LossFn, params: nnx.State, opt_state: Any, teacher: Any, rest: nnx.State,
              batch: Any) -> tuple:
        c = self.config

        def total_loss(p: nnx.State) -> tuple[jax.Array, jax.Array | None]:
            loss, ent = self._split_loss(loss_fn(nnx.merge(self.graphdef, p, rest), batch))
            return (loss if ent is None else loss + c.entropy_weight * ent), ent

        (loss, ent), grads = jax.value_and_grad(total_loss, has_aux=True)(params)
        norm = optax.tree.norm(jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, self.mask))
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        if c.trust_region is not None:
            distance = self._distance(params)
            params = jax.tree.map(
                lambda p, s: jnp.where(distance > c.trust_region, s + (p - s) * (c.trust_region / distance), p),
                params, self.source,
            )
        if teacher is not None:
            teacher = jax.tree.map(lambda t, p: t * c.ema_decay + (1.0 - c.ema_decay) * p, teacher, params)
        return params, opt_state, teacher, loss, ent, norm, self._distance(params)

    def _split_loss(self, out: LossOutput) -> tuple[jax.Array, jax.Array | None]:
        if self.config.entropy_weight > 0:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError("entropy_weight > 0 needs loss_fn to return (loss, logits)")
            loss, ent = out[0], entropy(out[1])
        else:
            loss, ent = (out[0] if isinstance(out, tuple) else out), None
        if jnp.ndim(loss) != 0:
            raise ValueError(f"loss_fn must return a scalar (or (loss, logits)), got shape {jnp.shape(loss)}")
        return loss, ent
