"""Test-time adaptation: the ``Adapter`` (ARCHITECTURE.md section 4), JAX.

The Adapter updates a deployed module's weights online from a loss on test-time data, with the
guards that the TTA literature (TENT, EATA, CoTTA, SAR) shows are needed: parameter selection,
gradient clipping, a trust region around the source weights, an EMA teacher, resets, and skipping
any step whose batch, loss, gradient or result is not finite (nothing changes, statistics included).
``torch_impl/adaptation/test_time_adaptation.py`` is its line-by-line twin.

One step is a chain of small pieces, each a function below, in the torch twin's order: the loss
and its gradient, then :func:`build_optimizer`'s optax chain (``clip_by_global_norm``, the
optimizer, masked to the selection), :func:`project_to_trust_region` and :func:`ema_update` of the
teacher. Parameters, the other module state (BatchNorm statistics), the optax state and the teacher
are held functionally, and one ``jit``-compiled step computes the candidate state with the checks
that the batch, loss, gradient and result are finite; Python commits it only when all hold, so a
failed step has nothing to roll back.

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

from jax_impl import _private
from jax_impl.core.params import SplitCache
from shared import adaptation_messages as msg
from shared.adaptation import AdaptationConfig, History, empty_info, function_key, select_parameters
from shared.layout import canonical_name

LossOutput = jax.Array | tuple[jax.Array, jax.Array]
LossFn = Callable[[nnx.Module, Any], LossOutput]


def entropy(logits: jax.Array) -> jax.Array:
    """Mean entropy (nats) of the categorical distributions ``softmax(logits)`` over the last axis."""
    log_p = jax.nn.log_softmax(logits, axis=-1)
    return -(jnp.exp(log_p) * log_p).sum(-1).mean()


# ---------------------------------------------------------------- the step, in small pieces
def build_optimizer(config: AdaptationConfig, mask: nnx.State) -> optax.GradientTransformation:
    """The optax chain that matches the torch optimizer exactly, applied to the ``mask``ed leaves only,
    with ``optax.clip_by_global_norm`` first (torch: :func:`clip_by_global_norm`).

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


def project_to_trust_region(params: nnx.State, source: nnx.State, mask: nnx.State,
                            radius: float | None) -> nnx.State:
    """``params`` moved onto the ball of L2 ``radius`` around ``source`` (over the ``mask``ed leaves)
    if they left it."""
    if radius is None:
        return params
    distance = masked_distance(params, source, mask)
    return jax.tree.map(lambda p, s: jnp.where(distance > radius, s + (p - s) * (radius / distance), p),
                        params, source)


def ema_update(teacher: Any, current: Any, decay: float) -> Any:
    """``teacher = decay * teacher + (1 - decay) * current`` for every floating leaf, the running
    statistics of BatchNorm included; integer leaves (counters, RNG keys) are copied."""
    def follow(t: jax.Array, c: jax.Array) -> jax.Array:
        return t * decay + (1.0 - decay) * c if jnp.issubdtype(jnp.result_type(t), jnp.inexact) else c

    return jax.tree.map(follow, teacher, current)


def masked_distance(params: nnx.State, source: nnx.State, mask: nnx.State) -> jax.Array:
    """The L2 distance of the ``mask``ed leaves of ``params`` from ``source`` (0-d)."""
    deltas = jax.tree.map(lambda p, s, m: p - s if m else jnp.zeros_like(p), params, source, mask)
    return optax.tree.norm(deltas)


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating leaf of ``tree`` is free of NaN/Inf (traced; True for no such leaf)."""
    checks = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(checks)) if checks else jnp.bool_(True)


class StepOutput(NamedTuple):
    """What the compiled step returns: the candidate state, and ``report``, the scalars that decide
    its commit: (loss, entropy or NaN, gradient norm, drift, batch finite, result finite)."""

    params: nnx.State
    opt_state: Any
    teacher: tuple[nnx.State, nnx.State] | None
    rest: nnx.State
    report: jax.Array


class Adapter:
    """Adapts ``model``'s selected ``nnx.Param``s.

    Args:
        model: the deployed ``nnx.Module``; it is updated in place after every committed step.
        config: an :class:`AdaptationConfig`.

    ``loss_fn(model, batch)`` returns a scalar loss, or ``(loss, logits)`` when
    ``config.entropy_weight > 0``: the mean entropy of ``logits`` is then added with that weight.
    With ``config.ema_decay``, ``teacher`` (every variable: ``nnx.Param``s and the other state, such
    as ``BatchStat``s) and ``teacher_model`` (a module holding them) follow the model as an
    exponential moving average.

    ``loss_fn`` is traced by ``jax.jit`` once per distinct function (see
    :func:`shared.adaptation.function_key`); at most ``cache_size`` compiled steps are kept, the
    least recently used dropped first. ``compilations`` counts the steps built so far.
    """

    cache_size: int = 16

    def __init__(self, model: nnx.Module, config: AdaptationConfig) -> None:
        if not isinstance(model, nnx.Module):
            raise TypeError(msg.wrong_model("flax.nnx.Module", type(model).__name__))
        if not isinstance(config, AdaptationConfig):
            raise TypeError(msg.wrong_config(type(config).__name__))
        self.model, self.config = model, config
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        names = parameter_names(params)
        self.names = select_parameters(jax.tree.leaves(names), config)
        self.mask = jax.tree.map(lambda n: n in self.names, names)
        self.source = jax.tree.map(jnp.copy, params)  # a snapshot: nnx.state is a live view
        self.source_rest = jax.tree.map(jnp.copy, rest)
        self.history = History(config.history_size)
        self.optimizer = build_optimizer(config, self.mask)
        self._compiled: collections.OrderedDict[Hashable, Callable] = collections.OrderedDict()
        self.compilations = 0
        self._split = SplitCache(model)
        self._drift_params: nnx.State | None = None
        self._start()

    # ------------------------------------------------------------ public API
    def update_step(self, loss_fn: LossFn, batch: Any) -> dict[str, Any]:
        """Up to ``steps_per_call`` optimizer steps on ``loss_fn(model, batch)``.

        Returns ``info``: ``updated`` (any step taken), ``steps`` (steps taken), ``loss`` and
        ``entropy`` (of the last step tried), ``grad_norm`` (before clipping), ``drift`` (L2
        distance of the selected parameters from the source) and ``skipped`` (None, or why).

        A step is skipped, and parameters, optimizer state, the other module state (BatchNorm
        statistics) and teacher stay exactly as they were, when the batch holds NaN/Inf
        (``"non-finite batch"``), the loss or gradient is not finite (``"non-finite loss"``,
        ``"non-finite gradient"``), or the step would leave a non-finite parameter or optimizer
        state (``"non-finite update"``, e.g. a huge ``lr``). After a committed step the state the
        forward updated (train-mode BatchNorm statistics, as in TENT) is kept.

        Raises:
            TypeError: ``loss_fn`` is not callable, or returns no floating array; ``batch`` holds
                something other than jax/numpy arrays and numbers (a ``torch.Tensor``, say).
            ValueError: the loss is not a scalar, or does not depend on the selected parameters.
        """
        if not callable(loss_fn):
            raise TypeError(msg.loss_fn_not_callable(type(loss_fn).__name__))
        check_batch(batch)
        info = empty_info(self.drift())
        if not self.config.enabled:
            info["skipped"] = msg.DISABLED
            return info
        step = self._compiled_step(loss_fn, batch)
        for _ in range(self.config.steps_per_call):
            params, rest = self._split.get()
            out = step(params, self.opt_state, self._teacher, rest, batch)
            loss, ent, norm, drift, batch_finite, result_finite = (float(v) for v in np.asarray(out.report))
            if not batch_finite:
                info["skipped"] = msg.NON_FINITE_BATCH
                break
            info["loss"], info["grad_norm"] = loss, norm
            info["entropy"] = ent if self.config.entropy_weight > 0 else None
            info["skipped"] = msg.skip_reason(loss, norm, bool(result_finite))
            if info["skipped"] is not None:
                break
            self._commit(out, drift)
            info["drift"] = self._drift  # the step's own drift: no walk over the module
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
            self._drift = float(masked_distance(self._drift_params, self.source, self.mask))
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
    def teacher(self) -> nnx.State | None:
        """The EMA teacher's state: every variable, ``nnx.Param``s and the rest (None without
        ``ema_decay``)."""
        return None if self._teacher is None else nnx.merge_state(*self._teacher)

    @property
    def teacher_model(self) -> nnx.Module | None:
        """The EMA teacher as a module (None without ``ema_decay``)."""
        return None if self._teacher is None else nnx.merge(self.graphdef, *self._teacher)

    def step_key(self) -> jax.Array:
        """``fold_in(key(seed), update_count)``: JAX randomness is explicit, so a loss that needs a
        key takes this one in its batch (torch seeds its global stream the same way per step)."""
        return jax.random.fold_in(jax.random.key(self.config.seed), self.update_count)

    # ------------------------------------------------------------ internals
    def _start(self) -> None:
        params, rest = (jax.tree.map(jnp.copy, s) for s in self._split.get())
        self.opt_state = self.optimizer.init(params)
        self._teacher = (params, rest) if self.config.ema_decay is not None else None
        self.update_count = 0

    def _step(self, loss_fn: LossFn, params: nnx.State, opt_state: Any, teacher: Any, rest: nnx.State,
              batch: Any) -> StepOutput:
        """One step, traced: loss and gradient, the optax chain (clip, optimizer), trust region, EMA
        teacher, and the finiteness checks; returns the candidate state for :meth:`_commit`."""
        c = self.config
        (loss, (ent, new_rest)), grads = jax.value_and_grad(
            lambda p: self._total_loss(loss_fn, p, rest, batch), has_aux=True)(params)
        norm = optax.tree.norm(jax.tree.map(lambda g, m: g if m else jnp.zeros_like(g), grads, self.mask))
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        params = project_to_trust_region(params, self.source, self.mask, c.trust_region)
        if teacher is not None:
            teacher = ema_update(teacher, (params, new_rest), c.ema_decay)
        scalars = (loss, jnp.nan if ent is None else ent, norm, masked_distance(params, self.source, self.mask),
                   all_finite(batch), all_finite((params, opt_state, teacher)))
        dtype = jnp.result_type(*(x for x in scalars if isinstance(x, jax.Array) and x.dtype != jnp.bool_))
        report = jnp.stack([jnp.asarray(x, dtype) for x in scalars])  # one transfer for all six (widening is exact)
        return StepOutput(params, opt_state, teacher, new_rest, report)

    def _commit(self, out: StepOutput, drift: float) -> None:
        """Keep the step: the new parameters, the state the forward updated, optimizer state, teacher."""
        if jax.tree.leaves(out.rest):
            nnx.update(self.model, out.rest)  # BatchNorm statistics and other non-Param state
        self._split.commit(out.params)
        self.opt_state, self._teacher = out.opt_state, out.teacher
        self._drift, self._drift_params = drift, out.params
        self.update_count += 1

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
        used = _private.used_inputs(closed.jaxpr, [True])
        selected = jax.tree.leaves(self.mask)
        if not any(u and m for u, m in zip(used[:len(selected)], selected, strict=True)):
            raise ValueError(msg.loss_does_not_depend(self.names))

    def _total_loss(self, loss_fn: LossFn, params: nnx.State, rest: nnx.State,
                    batch: Any) -> tuple[jax.Array, tuple[jax.Array | None, nnx.State]]:
        """``(loss + entropy_weight * entropy, (entropy, updated rest))`` on a fresh copy of the
        module, so that train-mode BatchNorm updates its statistics in the current trace."""
        model = nnx.merge(self.graphdef, params, jax.tree.map(lambda x: x, rest))
        loss, ent = self._split_loss(loss_fn(model, batch))
        total = loss if ent is None else loss + self.config.entropy_weight * ent
        return total, (ent, nnx.state(model, nnx.Not(nnx.Param)))

    def _split_loss(self, out: LossOutput) -> tuple[jax.Array, jax.Array | None]:
        if self.config.entropy_weight > 0:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(msg.logits_missing())
            if not _is_float_array(out[1]):
                raise TypeError(msg.logits_not_floating("jax.Array", _describe(out[1])))
            loss, ent = out[0], entropy(out[1])
        else:
            loss, ent = (out[0] if isinstance(out, tuple) else out), None
        if not _is_float_array(loss):
            raise TypeError(msg.loss_not_floating("jax.Array", _describe(loss)))
        if jnp.ndim(loss) != 0:
            raise ValueError(msg.loss_not_scalar(jnp.shape(loss)))
        return loss, ent


def parameter_names(params: nnx.State) -> nnx.State:
    """The same tree as ``params`` with each leaf replaced by its canonical name (``"B.weight"``)."""

    def name(path: tuple, _: Any) -> str:
        return canonical_name([getattr(k, "key", getattr(k, "idx", None)) for k in path if not hasattr(k, "name")])

    return jax.tree_util.tree_map_with_path(name, params)


def check_batch(batch: Any) -> None:
    """Every leaf of ``batch`` must be a jax or numpy array or a Python number, else ``TypeError``,
    named by its place."""
    allowed = (jax.Array, np.ndarray, np.generic, bool, int, float, complex)
    if all(isinstance(leaf, allowed) for leaf in jax.tree.leaves(batch)):
        return
    for path, leaf in jax.tree_util.tree_flatten_with_path(batch)[0]:
        if not isinstance(leaf, allowed):
            raise TypeError(msg.wrong_batch_leaf("a jax.Array or numpy array", _type_name(leaf),
                                                 f"batch{jax.tree_util.keystr(path)}"))


def _is_float_array(x: Any) -> bool:
    return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.inexact)


def _type_name(x: Any) -> str:
    """A torch tensor is ``torch.Tensor`` (its module named); other types by their own name."""
    kind = type(x)
    return f"{kind.__module__}.{kind.__qualname__}" if kind.__module__.startswith("torch") else kind.__qualname__


def _describe(value: Any) -> str:
    if isinstance(value, (jax.Array, np.ndarray)):
        kind = "jax.Array" if isinstance(value, jax.Array) else "numpy.ndarray"
        return msg.describe(kind, str(value.dtype), value.shape)
    return _type_name(value)
