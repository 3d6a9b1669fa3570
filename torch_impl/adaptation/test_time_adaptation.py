"""Test-time adaptation: the ``Adapter`` (ARCHITECTURE.md section 4), PyTorch.

The Adapter updates a deployed module's weights online from a loss on test-time data, with the
guards that the TTA literature (TENT, EATA, CoTTA, SAR) shows are needed: parameter selection,
gradient clipping, a trust region around the source weights, an EMA teacher, resets, and skipping
any step whose batch, loss, gradient or result is not finite (nothing changes, buffers included).
``jax_impl/adaptation/test_time_adaptation.py`` is its line-by-line twin.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.adaptation import AdaptationConfig, History, select_parameters

LossOutput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Any], LossOutput]


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean entropy (nats) of the categorical distributions ``softmax(logits)`` over the last axis."""
    log_p = torch.log_softmax(logits, dim=-1)
    return -(log_p.exp() * log_p).sum(-1).mean()


def global_norm(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.sqrt(sum((t * t).sum() for t in tensors))


class Adapter:
    """Adapts ``model``'s selected parameters in place.

    Args:
        model: the deployed ``nn.Module``.
        config: an :class:`AdaptationConfig`.

    ``loss_fn(model, batch)`` returns a scalar loss, or ``(loss, logits)`` when
    ``config.entropy_weight > 0``: the mean entropy of ``logits`` is then added with that weight.
    """

    def __init__(self, model: nn.Module, config: AdaptationConfig) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(config, AdaptationConfig):
            raise TypeError(f"config must be an AdaptationConfig, got {type(config).__name__}")
        self.model, self.config = model, config
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        self.names = select_parameters(trainable, config)
        self.params = [model.get_parameter(n) for n in self.names]
        self._cuda_devices = sorted({t.device.index or 0 for t in model.state_dict().values() if t.is_cuda})
        self._drift, self._drift_key = 0.0, None
        self.source = {n: t.detach().clone() for n, t in model.state_dict().items()}
        self.history = History(config.history_size)
        self._start()

    # ------------------------------------------------------------ public API
    def update_step(self, loss_fn: LossFn, batch: Any) -> dict[str, Any]:
        """Up to ``steps_per_call`` optimizer steps on ``loss_fn(model, batch)``.

        Returns ``info``: ``updated`` (any step taken), ``steps`` (steps taken), ``loss`` and
        ``entropy`` (of the last step tried), ``grad_norm`` (before clipping), ``drift`` (L2
        distance of the selected parameters from the source) and ``skipped`` (None, or why).

        A step is skipped, and parameters, optimizer state and buffers (BatchNorm statistics)
        stay exactly as they were, when the batch holds NaN/Inf (``"non-finite batch"``: no
        forward is run), the loss or gradient is not finite (``"non-finite loss"``,
        ``"non-finite gradient"``), or the step would leave a non-finite parameter or optimizer
        state (``"non-finite update"``, e.g. a huge ``lr``). After a committed step the
        buffers the forward updated (train-mode BatchNorm, as in TENT) are kept.

        Raises:
            TypeError: ``loss_fn`` is not callable, or returns no floating tensor; ``batch`` holds
                a JAX array.
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
        if not batch_is_finite(batch):
            info["skipped"] = "non-finite batch"
            self.observe(**info)
            return info
        for _ in range(self.config.steps_per_call):
            buffers = self._snapshot_buffers()
            try:
                loss, ent, grads = self._loss_and_grads(loss_fn, batch)
                norm = global_norm(grads)
                info["loss"], info["entropy"] = float(loss), None if ent is None else float(ent)
                info["grad_norm"] = float(norm)
                if not torch.isfinite(loss):
                    info["skipped"] = "non-finite loss"
                elif not torch.isfinite(norm):
                    info["skipped"] = "non-finite gradient"
                elif not self._apply(grads, norm):
                    info["skipped"] = "non-finite update"
            except BaseException:
                self._restore_buffers(buffers)  # the forward may have updated them before failing
                raise
            if info["skipped"] is not None:
                self._restore_buffers(buffers)
                break
            info["steps"] += 1
            info["updated"] = True
            info["drift"] = self.drift()
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
                deltas = [p - self.source[n] for n, p in zip(self.names, self.params, strict=True)]
                self._drift = float(global_norm(deltas))
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

    # ------------------------------------------------------------ internals
    def _start(self) -> None:
        c = self.config
        if c.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(self.params, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay)
        elif c.optimizer == "adam":
            self.optimizer = torch.optim.Adam(self.params, lr=c.lr, betas=c.betas, eps=c.eps,
                                              weight_decay=c.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, betas=c.betas, eps=c.eps,
                                               weight_decay=c.weight_decay)
        self.teacher = copy.deepcopy(self.model) if c.ema_decay is not None else None
        self.update_count = 0

    def _snapshot_buffers(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(b, b.clone()) for b in self.model.buffers()]

    @staticmethod
    @torch.no_grad()
    def _restore_buffers(saved: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        for buffer, copy_ in saved:
            buffer.copy_(copy_)

    def _loss_and_grads(self, loss_fn: LossFn, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, list]:
        with seeded(self.config.seed + self.update_count, self._cuda_devices):
            out = loss_fn(self.model, batch)
        loss, ent = self._split_loss(out)
        total = loss if ent is None else loss + self.config.entropy_weight * ent
        if not total.requires_grad:
            raise ValueError(self._no_dependence())
        grads = torch.autograd.grad(total, self.params, allow_unused=True)
        if all(g is None for g in grads):
            raise ValueError(self._no_dependence())
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        return total.detach(), None if ent is None else ent.detach(), grads

    def _no_dependence(self) -> str:
        return (f"loss_fn's loss does not depend on the selected parameters {self.names} (computed under "
                "torch.no_grad(), detached, or from other parameters only?): there is nothing to adapt")

    def _split_loss(self, out: LossOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.config.entropy_weight > 0:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError("entropy_weight > 0 needs loss_fn to return (loss, logits)")
            if not isinstance(out[1], torch.Tensor) or not out[1].is_floating_point():
                raise TypeError(f"loss_fn's logits must be a floating torch.Tensor, got {_describe(out[1])}")
            loss, ent = out[0], entropy(out[1])
        else:
            loss, ent = (out[0] if isinstance(out, tuple) else out), None
        if not isinstance(loss, torch.Tensor) or not loss.is_floating_point():
            raise TypeError("loss_fn must return a floating 0-d torch.Tensor (or (loss, logits)), "
                            f"got {_describe(loss)}")
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar (0-d) loss, got shape {tuple(loss.shape)}")
        return loss, ent

    @torch.no_grad()
    def _apply(self, grads: list[torch.Tensor], norm: torch.Tensor) -> bool:
        """One optimizer step, trust region and EMA; returns False, with parameters and optimizer
        state restored, if the result is not finite."""
        c = self.config
        if c.grad_clip_norm is not None and norm >= c.grad_clip_norm:  # optax.clip_by_global_norm's rule
            grads = [g / norm * c.grad_clip_norm for g in grads]
        saved_params = [p.clone() for p in self.params]
        saved_state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                       for p, state in self.optimizer.state.items()}
        try:
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
            try:
                self.optimizer.step()
            except RuntimeError as error:  # a scalar such as lr * bias correction overflows the dtype
                if "overflow" not in str(error):
                    raise
                finite = False
            else:
                if c.trust_region is not None:
                    deltas = [p - self.source[n] for n, p in zip(self.names, self.params, strict=True)]
                    distance = global_norm(deltas)
                    if distance > c.trust_region:
                        for n, p, d in zip(self.names, self.params, deltas, strict=True):
                            p.copy_(self.source[n] + d * (c.trust_region / distance))
                finite = all_finite([*self.params, *(v for p in self.params
                                                      for v in self.optimizer.state[p].values()
                                                      if isinstance(v, torch.Tensor) and v.is_floating_point())])
        except BaseException:
            self._restore_step(saved_params, saved_state)
            raise
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            self._restore_step(saved_params, saved_state)
            return False
        if self.teacher is not None:
            current = self.model.state_dict()
            for name, t in self.teacher.state_dict().items():
                if t.is_floating_point():
                    t.mul_(c.ema_decay).add_(current[name], alpha=1.0 - c.ema_decay)
                else:  # integer buffers (counters) are copied, not averaged
                    t.copy_(current[name])
        self.update_count += 1
        return True

    @torch.no_grad()
    def _restore_step(self, params: list[torch.Tensor], state: dict) -> None:
        for p, saved in zip(self.params, params, strict=True):
            p.copy_(saved)
        for p in self.params:
            if p in state:
                self.optimizer.state[p] = state[p]
            else:
                self.optimizer.state.pop(p, None)


def all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite (one host sync)."""
    return bool(torch.isfinite(torch.cat([t.reshape(-1) for t in tensors])).all()) if tensors else True


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
        raise TypeError(f"expected a torch.Tensor or numpy array, got {type(batch).__module__}."
                        f"{type(batch).__qualname__} ({where})")
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


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__
