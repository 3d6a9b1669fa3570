"""Test-time adaptation: the ``Adapter`` (ARCHITECTURE.md section 4), JAX.

The line-by-line twin of ``torch_impl/adaptation/test_time_adaptation.py``. Parameters, the other
module state (BatchNorm statistics) and the optax state are held functionally; one ``jit``-compiled
step computes the forward (carrying the mutable state through), the gradient, the clipped and
masked optax update, the trust-region projection and the EMA teacher, plus the checks that the
batch, loss, gradient and result are finite; Python commits the step only when all hold.

Compiled steps are cached under :func:`shared.adaptation.function_key` of the loss function (its
code and captured values, so a new ``lambda`` per call reuses the step) in a bounded LRU cache.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Callable, Hashable, Iterator
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.interpreters import partial_eval

from jax_impl.core.params import SplitCache
from shared.adaptation import AdaptationConfig, History, function_key, select_parameters
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
    ``config.entropy_weight > 0``. It is traced by ``jax.jit`` once per distinct function (see
    :func:`shared.adaptation.function_key`); at most ``cache_size`` compiled steps are kept, the
    least recently used dropped first. ``compilations`` counts the steps built so far.
    """

    cache_size: int = 16

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
        self._compiled: collections.OrderedDict[Hashable, Callable] = collections.OrderedDict()
        self.compilations = 0
        self._split = SplitCache(model)
        self._drift_params: nnx.State | None = None
        self._start()

    # ------------------------------------------------------------ public API
    def update_step(self, loss_fn: LossFn, batch: Any) -> dict[str, Any]:
        """Up to ``steps_per_call`` optimizer steps on ``loss_fn(model, batch)``.

        Returns the same ``info`` as the torch Adapter, and skips a step on the same grounds
        (``"non-finite batch"``, ``"non-finite loss"``, ``"non-finite gradient"``,
        ``"non-finite update"``), leaving parameters, optimizer state and the other module state
        (BatchNorm statistics) exactly as they were. A committed step writes back the state the
        forward updated (train-mode BatchNorm statistics, as in TENT).

        Raises:
            TypeError: ``loss_fn`` is not callable or returns no floating JAX array (a Python
                float, say); ``batch`` holds something other than jax/numpy arrays and numbers
                (a ``torch.Tensor``, say).
            ValueError: the loss is not a scalar, or does not depend on the selected parameters.
        """
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(model, batch), got {type(loss_fn).__name__}")
        check_batch(batch)
        info: dict[str, Any] = {"updated": False, "steps": 0, "loss": None, "entropy": None,
                                "grad_norm": None, "drift": self.drift(), "skipped": None}
        if not self.config.enabled:
            info["skipped"] = "disabled"
            return info
        step = self._compiled_step(loss_fn, batch)
        for _ in range(self.config.steps_per_call):
            params, rest = self._split.get()
            out = step(params, self.opt_state, self.teacher, rest, batch)
            loss, ent, norm, drift, batch_finite, result_finite = (float(v) for v in np.asarray(out.report))
            if not batch_finite:
                info["skipped"] = "non-finite batch"
                break
            info["loss"], info["grad_norm"] = loss, norm
            info["entropy"] = ent if self.config.entropy_weight > 0 else None
            if not np.isfinite(loss):
                info["skipped"] = "non-finite loss"
            elif not np.isfinite(norm):
                info["skipped"] = "non-finite gradient"
            elif not result_finite:
                info["skipped"] = "non-finite update"
            if info["skipped"] is not None:
                break
            if jax.tree.leaves(rest):
                nnx.update(self.model, out.rest)  # BatchNorm statistics and other non-Param state
            self._split.commit(out.params)
            self.opt_state, self.teacher = out.opt_state, out.teacher
            self.update_count += 1
            self._drift, self._drift_params = drift, out.params
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

    def _compiled_step(self, loss_fn: LossFn, batch: Any) -> Callable[..., StepOutput]:
        """The jitted step for ``loss_fn`` from the LRU cache, built (and checked) on a miss."""
        key = function_key(loss_fn)
        step = self._compiled.get(key)
        if step is not None:
            self._compiled.move_to_end(key)
            return step
        params, rest = self._split.get()
        self._check_dependence(loss_fn, params, rest, batch)  # raises before anything is cached
        step = jax.jit(lambda *args: self._step(loss_fn, *args))
        self._compiled[key] = step
        self.compilations += 1
        while len(self._compiled) > self.cache_size:
            self._compiled.popitem(last=False)
        return step

    def _check_dependence(self, loss_fn: LossFn, params: nnx.State, rest: nnx.State, batch: Any) -> None:
        """Trace the loss once (abstractly) and refuse one that no selected parameter reaches."""
        def total(p: nnx.State, r: nnx.State, b: Any) -> jax.Array:
            return self._total_loss(loss_fn, p, r, b)[0]

        closed = jax.make_jaxpr(total)(params, rest, batch)
        _, used = partial_eval.dce_jaxpr(closed.jaxpr, [True])
        selected = jax.tree.leaves(self.mask)
        if not any(u and m for u, m in zip(used[:len(selected)], selected, strict=True)):
            raise ValueError(f"loss_fn's loss does not depend on the selected parameters {self.names} "
                             "(a constant, or computed from other parameters only?): there is nothing to adapt")

    def _total_loss(self, loss_fn: LossFn, params: nnx.State, rest: nnx.State,
                    batch: Any) -> tuple[jax.Array, tuple[jax.Array | None, nnx.State]]:
        """``(loss + entropy_weight * entropy, (entropy, updated rest))`` on a fresh copy of the
        module, so that train-mode BatchNorm updates its statistics in the current trace."""
        model = nnx.merge(self.graphdef, params, jax.tree.map(lambda x: x, rest))
        loss, ent = self._split_loss(loss_fn(model, batch))
        total = loss if ent is None else loss + self.config.entropy_weight * ent
        return total, (ent, nnx.state(model, nnx.Not(nnx.Param)))

    def _step(self, loss_fn: LossFn, params: nnx.State, opt_state: Any, teacher: Any, rest: nnx.State,
              batch: Any) -> StepOutput:
        c = self.config
        (loss, (ent, new_rest)), grads = jax.value_and_grad(
            lambda p: self._total_loss(loss_fn, p, rest, batch), has_aux=True)(params)
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
        scalars = (loss, jnp.nan if ent is None else ent, norm, self._distance(params), all_finite(batch),
                   all_finite((params, opt_state, teacher)))
        dtype = jnp.result_type(*(x for x in scalars if isinstance(x, jax.Array) and x.dtype != jnp.bool_))
        report = jnp.stack([jnp.asarray(x, dtype) for x in scalars])  # one transfer for all six (widening is exact)
        return StepOutput(params, opt_state, teacher, new_rest, report)

    def _split_loss(self, out: LossOutput) -> tuple[jax.Array, jax.Array | None]:
        if self.config.entropy_weight > 0:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError("entropy_weight > 0 needs loss_fn to return (loss, logits)")
            if not _is_float_array(out[1]):
                raise TypeError(f"loss_fn's logits must be a floating JAX array, got {_describe(out[1])}")
            loss, ent = out[0], entropy(out[1])
        else:
            loss, ent = (out[0] if isinstance(out, tuple) else out), None
        if not _is_float_array(loss):
            raise TypeError(f"loss_fn must return a floating 0-d JAX array (or (loss, logits)), got {_describe(loss)}")
        if jnp.ndim(loss) != 0:
            raise ValueError(f"loss_fn must return a scalar (0-d) loss, got shape {jnp.shape(loss)}")
        return loss, ent


class StepOutput(NamedTuple):
    """What the compiled step returns: the candidate state, and ``report``, the scalars that decide
    its commit: (loss, entropy or NaN, gradient norm, drift, batch finite, result finite)."""

    params: nnx.State
    opt_state: Any
    teacher: Any
    rest: nnx.State
    report: jax.Array


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating leaf of ``tree`` is free of NaN/Inf (traced; True for no such leaf)."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


def check_batch(batch: Any) -> None:
    """Every leaf of ``batch`` must be a jax or numpy array or a Python number, else ``TypeError``."""
    allowed = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)
    if all(isinstance(leaf, allowed) for leaf in jax.tree.leaves(batch)):
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if not isinstance(leaf, allowed):
            raise TypeError(f"expected a jax or numpy array, got {_type_name(leaf)} "
                            f"(batch{jax.tree_util.keystr(path)})")


def _is_float_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)


def _type_name(x: Any) -> str:
    kind = type(x)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__.startswith("torch") else kind.__qualname__


def _describe(value: Any) -> str:
    if isinstance(value, (jax.Array, np.ndarray)):
        return f"a {type(value).__name__} of dtype {value.dtype}"
    return _type_name(value)
