"""Test-time adaptation: the ``Adapter`` (ARCHITECTURE.md section 4), PyTorch.

The Adapter updates a deployed module's weights online from a loss on test-time data, with the
guards that the TTA literature (TENT, EATA, CoTTA, SAR) shows are needed: parameter selection,
gradient clipping, a trust region around the source weights, an EMA teacher, resets, and skipping
any step whose batch, loss, gradient or result is not finite (nothing changes, buffers included).
``jax_impl/adaptation/test_time_adaptation.py`` is its line-by-line twin.

One step is a chain of small pieces, each a function below, in the order the JAX twin chains
them with optax: the loss and its gradient, :func:`clip_by_global_norm`, the optimizer step
(:func:`build_optimizer`), :func:`project_to_trust_region`, and, once the result is known to be
finite, :func:`ema_update` of the teacher; a step that fails a check is rolled back
(:class:`Rollback`), so that parameters, optimizer state and buffers are exactly as before.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from shared import adaptation_messages as msg
from shared.adaptation import AdaptationConfig, History, empty_info, select_parameters

LossOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Any], LossOutput]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the categorical distributions ``softmax(logits)`` over the last axis."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


# ---------------------------------------------------------------- the step, in small pieces
def build_optimizer(config: AdaptationConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The torch optimizer of ``config`` over ``params`` (the selected parameters only).

    ``Adam(weight_decay)`` is coupled L2 (decay added to the gradient before the moments);
    ``AdamW`` decays the weights directly; ``SGD`` adds the decay, then momentum.
    """
    c = config
    if c.optimizer == "sgd":
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
    if c.optimizer == "adam":
        return torch.optim.Adam(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)
    return torch.optim.AdamW(params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)


def clip_by_global_norm(grads: list[torch.Tensor], norm: torch.Tensor, max_norm: float | None) -> list[torch.Tensor]:
    """``grads`` scaled so that their global L2 ``norm`` is at most ``max_norm`` (None: unchanged);
    ``optax.clip_by_global_norm``'s rule, so both backends round alike."""
    if max_norm is None or norm < max_norm:
        return grads
    return [g / norm * max_norm for g in grads]


@torch.no_grad()
def project_to_trust_region(params: list[torch.Tensor], source: list[torch.Tensor], radius: float | None) -> None:
    """Move ``params`` (in place) onto the ball of L2 ``radius`` around ``source`` if they left it."""
    if radius is None:
        return
    deltas = [p - s for p, s in zip(params, source, strict=True)]
    distance = global_norm(deltas)
    if distance > radius:
        for p, s, d in zip(params, source, deltas, strict=True):
            p.copy_(s + d * (radius / distance))


@torch.no_grad()
def ema_update(teacher: Mapping[str, torch.Tensor], current: Mapping[str, torch.Tensor], decay: float) -> None:
    """``teacher = decay * teacher + (1 - decay) * current`` (in place) for every floating entry, the
    running statistics of BatchNorm included; integer entries (counters) are copied."""
    for name, t in teacher.items():
        if t.is_floating_point():
            t.copy_(t * decay + (1.0 - decay) * current[name])
        else:
            t.copy_(current[name])


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The L2 norm of all ``tensors`` taken together (0-d)."""
    return torch.sqrt(sum((t * t).sum() for t in tensors))


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one host sync)."""
    return bool(torch.isfinite(torch.cat([t.reshape(-1) for t in tensors])).all()) if tensors else True


class Rollback:
    """A snapshot of the selected parameters, the optimizer state and the module's buffers, taken
    before a step; :meth:`restore` puts all three back exactly (the step is then as if never tried)."""

    def __init__(self, params: list[torch.Tensor], optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
        self.params = [(p, p.detach().clone()) for p in params]
        self.optimizer = optimizer
        self.state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                      for p, state in optimizer.state.items()}
        self.buffers = [(b, b.clone()) for b in model.buffers()]

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in (*self.params, *self.buffers):
            tensor.copy_(saved)
        for p, _ in self.params:
            if p in self.state:
                self.optimizer.state[p] = self.state[p]
            else:
                self.optimizer.state.pop(p, None)


class Adapter:
    """Adapts ``model``'s selected parameters in place.

    Args:
        model: the deployed ``nn.Module``; it is updated in place after every committed step.
        config: an :class:`AdaptationConfig`.

    ``loss_fn(model, batch)`` returns a scalar loss, or ``(loss, logits)`` when
    ``config.entropy_weight > 0``: the mean entropy of ``logits`` is then added with that weight.
    With ``config.ema_decay``, ``teacher`` (every parameter and buffer, by ``state_dict`` name) and
    ``teacher_model`` (a module holding them) follow the model as an exponential moving average.
    """

    def __init__(self, model: nn.Module, config: AdaptationConfig) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(msg.wrong_model("torch.nn.Module", type(model).__name__))
        if not isinstance(config, AdaptationConfig):
            raise TypeError(msg.wrong_config(type(config).__name__))
        self.model, self.config = model, config
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.names = select_parameters(trainable, config)
        self.params = [model.get_parameter(n) for n in self.names]
        self.source = {n: t.detach().clone() for n, t in model.state_dict().items()}
        self.history = History(config.history_size)
        self._cuda_devices = sorted({t.device.index or 0 for t in model.state_dict().values() if t.is_cuda})
        self._drift, self._drift_key = 0.0, None
        self._start()

    # ------------------------------------------------------------ public API
    def update_step(self, loss_fn: LossFn, batch: Any) -> dict[str, Any]:
        """Up to ``steps_per_call`` optimizer steps on ``loss_fn(model, batch)``.

        Returns ``info``: ``updated`` (any step taken), ``steps`` (steps taken), ``loss`` and
        ``entropy`` (of the last step tried), ``grad_norm`` (before clipping), ``drift`` (L2
        distance of the selected parameters from the source) and ``skipped`` (None, or why).

        A step is skipped, and parameters, optimizer state, buffers (BatchNorm statistics) and
        teacher stay exactly as they were, when the batch holds NaN/Inf (``"non-finite batch"``:
        no forward is run), the loss or gradient is not finite (``"non-finite loss"``,
        ``"non-finite gradient"``), or the step would leave a non-finite parameter or optimizer
        state (``"non-finite update"``, e.g. a huge ``lr``). After a committed step the buffers
        the forward updated (train-mode BatchNorm, as in TENT) are kept.

        Raises:
            TypeError: ``loss_fn`` is not callable, or returns no floating tensor; ``batch`` holds
                a JAX array.
            ValueError: the loss is not a scalar, or does not depend on the selected parameters.
        """
        if not callable(loss_fn):
            raise TypeError(msg.loss_fn_not_callable(type(loss_fn).__name__))
        check_batch(batch)
        info = empty_info(self.drift())
        if not self.config.enabled:
            info["skipped"] = msg.DISABLED
            return info
        if not batch_is_finite(batch):
            info["skipped"] = msg.NON_FINITE_BATCH
        for _ in range(self.config.steps_per_call if info["skipped"] is None else 0):
            rollback = Rollback(self.params, self.optimizer, self.model)
            try:
                loss, ent, norm, result_finite = self._step(loss_fn, batch)
            except BaseException:
                rollback.restore()  # the forward may have updated the buffers before failing
                raise
            info["loss"], info["grad_norm"] = loss, norm
            info["entropy"] = ent if self.config.entropy_weight > 0 else None
            info["skipped"] = msg.skip_reason(loss, norm, result_finite)
            if info["skipped"] is not None:
                rollback.restore()
                break
            self._commit()
            info["drift"] = self.drift()
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
        # recompute only when a parameter was written: the version counter counts in-place writes
        # (ours or the user's), the data pointer catches ``p.data = ...``
        key = tuple(v for p in self.params for v in (p._version, p.data_ptr()))
        if key != self._drift_key:
            with torch.no_grad():
                self._drift = float(global_norm([p - self.source[n] for n, p in zip(self.names, self.params,
                                                                                     strict=True)]))
            self._drift_key = key
        return self._drift

    def reset(self) -> None:
        """Restore the source parameters, buffers, optimizer state and EMA teacher exactly."""
        with torch.no_grad():
            self.model.load_state_dict(self.source)
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
    def teacher(self) -> dict[str, torch.Tensor] | None:
        """The EMA teacher's state: every parameter and buffer by ``state_dict`` name (None without
        ``ema_decay``); the tensors are ``teacher_model``'s own."""
        return None if self.teacher_model is None else self.teacher_model.state_dict()

    # ------------------------------------------------------------ internals
    def _start(self) -> None:
        self.optimizer = build_optimizer(self.config, self.params)
        self.teacher_model = copy.deepcopy(self.model) if self.config.ema_decay is not None else None
        self.update_count = 0

    def _step(self, loss_fn: LossFn, batch: Any) -> tuple[float, float, float, bool]:
        """One step on the live model: loss and gradient, clip, optimizer step, trust region.

        Returns ``(loss, entropy or NaN, gradient norm, result finite)``; the caller commits the
        step or rolls it back. No optimizer step is taken when the loss or gradient is not finite.
        """
        c = self.config
        with seeded(c.seed + self.update_count, self._cuda_devices):
            loss, ent, grads = self._loss_and_grads(loss_fn, batch)
        norm = global_norm(grads)
        report = (float(loss), float("nan") if ent is None else float(ent), float(norm))
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            return (*report, False)
        grads = clip_by_global_norm(grads, norm, c.grad_clip_norm)
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        try:
            self.optimizer.step()
        except RuntimeError as error:  # a scalar such as lr * bias correction overflows the dtype
            if "overflow" not in str(error):
                raise
            return (*report, False)
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        project_to_trust_region(self.params, [self.source[n] for n in self.names], c.trust_region)
        state = [v for p in self.params for v in self.optimizer.state[p].values()
                 if isinstance(v, torch.Tensor) and v.is_floating_point()]
        return (*report, all_finite([*self.params, *state]))

    def _commit(self) -> None:
        """Keep the step: the EMA teacher follows the new state (buffers included); count it."""
        if self.teacher_model is not None:
            ema_update(self.teacher_model.state_dict(), self.model.state_dict(), self.config.ema_decay)
        self.update_count += 1

    def _loss_and_grads(self, loss_fn: LossFn, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, list]:
        """``(loss + entropy_weight * entropy, entropy, gradients of the selected parameters)``."""
        loss, ent = self._split_loss(loss_fn(self.model, batch))
        total = loss if ent is None else loss + self.config.entropy_weight * ent
        if not total.requires_grad:
            raise ValueError(msg.loss_does_not_depend(self.names))
        grads = torch.autograd.grad(total, self.params, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError(msg.loss_does_not_depend(self.names))
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        return total.detach(), None if ent is None else ent.detach(), grads

    def _split_loss(self, out: LossOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.config.entropy_weight > 0:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(msg.logits_missing())
            if not _is_float_array(out[1]):
                raise TypeError(msg.logits_not_floating("torch.Tensor", _describe(out[1])))
            loss, ent = out[0], entropy(out[1])
        else:
            loss, ent = (out[0] if isinstance(out, tuple) else out), None
        if not _is_float_array(loss):
            raise TypeError(msg.loss_not_floating("torch.Tensor", _describe(loss)))
        if loss.dim() != 0:
            raise ValueError(msg.loss_not_scalar(loss.shape))
        return loss, ent


@contextlib.contextmanager
def seeded(seed: int, cuda_devices: list[int]) -> Iterator[None]:
    """Run the block under ``seed`` on the CPU generator (and on ``cuda_devices``), restoring the
    previous generator states afterwards. Unlike ``torch.manual_seed`` it leaves the other devices'
    generators alone (and does not initialise CUDA lazily on every call)."""
    with torch.random.fork_rng(devices=cuda_devices):
        torch.default_generator.manual_seed(seed)
        for index in cuda_devices:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def check_batch(batch: Any, where: str = "batch") -> None:
    """A JAX array anywhere in ``batch`` (tuples, lists, dicts) is a ``TypeError``, named by its place."""
    if type(batch).__module__.startswith(("jax", "jaxlib")):
        raise TypeError(msg.wrong_batch_leaf("a torch.Tensor or numpy array", _type_name(batch), where))
    if isinstance(batch, Mapping):
        for key, value in batch.items():
            check_batch(value, f"{where}[{key!r}]")
    elif isinstance(batch, (tuple, list)):
        for index, value in enumerate(batch):
            check_batch(value, f"{where}[{index}]")


def batch_is_finite(batch: Any) -> bool:
    """No NaN/Inf in any floating tensor or numpy array (or float) of ``batch`` (tuples, lists, dicts)."""
    if isinstance(batch, torch.Tensor):
        return not (batch.is_floating_point() or batch.is_complex()) or bool(torch.isfinite(batch).all())
    if isinstance(batch, (np.ndarray, np.generic, float, complex)):
        array = np.asarray(batch)
        return not np.issubdtype(array.dtype, np.inexact) or bool(np.isfinite(array).all())
    if isinstance(batch, Mapping):
        return all(batch_is_finite(v) for v in batch.values())
    if isinstance(batch, (tuple, list)):
        return all(batch_is_finite(v) for v in batch)
    return True


def _is_float_array(x: Any) -> bool:
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _type_name(x: Any) -> str:
    """A JAX array is ``jax.Array`` (not its implementation class); other types by their own name."""
    kind = type(x)
    return "jax.Array" if kind.__module__.startswith(("jax", "jaxlib")) else kind.__qualname__


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return msg.describe("torch.Tensor", str(value.dtype).removeprefix("torch."), value.shape)
    return _type_name(value)
