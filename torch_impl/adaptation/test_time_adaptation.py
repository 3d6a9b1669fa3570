"""Test-time adaptation: the ``Adapter`` (ARCHITECTURE.md section 4), PyTorch.

The Adapter updates a deployed module's weights online from a loss on test-time data, with the
guards that the TTA literature (TENT, EATA, CoTTA, SAR) shows are needed: parameter selection,
gradient clipping, a trust region around the source weights, an EMA teacher, resets, and skipping
any step whose loss or gradient is not finite. ``jax_impl/adaptation/test_time_adaptation.py``
is its line-by-line twin.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

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
        self.source = {n: t.detach().clone() for n, t in model.state_dict().items()}
        self.history = History(config.history_size)
        self._start()

    # ------------------------------------------------------------ public API
    def update_step(self, loss_fn: LossFn, batch: Any) -> dict[str, Any]:
        """Up to ``steps_per_call`` optimizer steps on ``loss_fn(model, batch)``.

        Returns ``info``: ``updated`` (any step taken), ``steps`` (steps taken), ``loss`` and
        ``entropy`` (of the last step tried), ``grad_norm`` (before clipping), ``drift`` (L2
        distance of the selected parameters from the source) and ``skipped`` (None, or why).
        A step whose loss or gradient is not finite is skipped: parameters and optimizer state
        stay exactly as they were.
        """
        info: dict[str, Any] = {"updated": False, "steps": 0, "loss": None, "entropy": None,
                                "grad_norm": None, "drift": self.drift(), "skipped": None}
        if not self.config.enabled:
            info["skipped"] = "disabled"
            return info
        for _ in range(self.config.steps_per_call):
            loss, ent, grads = self._loss_and_grads(loss_fn, batch)
            info["loss"], info["entropy"] = float(loss), None if ent is None else float(ent)
            norm = global_norm(grads)
            info["grad_norm"] = float(norm)
            if not torch.isfinite(loss):
                info["skipped"] = "non-finite loss"
                break
            if not torch.isfinite(norm):
                info["skipped"] = "non-finite gradient"
                break
            self._apply(grads, norm)
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
        with torch.no_grad():
            return float(global_norm([p - self.source[n] for n, p in zip(self.names, self.params, strict=True)]))

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

    def _loss_and_grads(self, loss_fn: LossFn, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, list]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + self.update_count)
            out = loss_fn(self.model, batch)
        loss, ent = self._split_loss(out)
        total = loss if ent is None else loss + self.config.entropy_weight * ent
        grads = torch.autograd.grad(total, self.params, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(self.params, grads, strict=True)]
        return total.detach(), None if ent is None else ent.detach(), grads

    def _split_loss(self, out: LossOutput) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.config.entropy_weight > 0:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError("entropy_weight > 0 needs loss_fn to return (loss, logits)")
            loss, ent = out[0], entropy(out[1])
        else:
            loss, ent = (out[0] if isinstance(out, tuple) else out), None
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor (or (loss, logits)), got {type(loss).__name__}")
        return loss, ent

    @torch.no_grad()
    def _apply(self, grads: list[torch.Tensor], norm: torch.Tensor) -> None:
        c = self.config
        if c.grad_clip_norm is not None and norm >= c.grad_clip_norm:  # optax.clip_by_global_norm's rule
            grads = [g / norm * c.grad_clip_norm for g in grads]
        for p, g in zip(self.params, grads, strict=True):
            p.grad = g
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if c.trust_region is not None:
            deltas = [p - self.source[n] for n, p in zip(self.names, self.params, strict=True)]
            distance = global_norm(deltas)
            if distance > c.trust_region:
                for n, p, d in zip(self.names, self.params, deltas, strict=True):
                    p.copy_(self.source[n] + d * (c.trust_region / distance))
        if self.teacher is not None:
            current = self.model.state_dict()
            for name, t in self.teacher.state_dict().items():
                if t.is_floating_point():
                    t.mul_(c.ema_decay).add_(current[name], alpha=1.0 - c.ema_decay)
                else:  # integer buffers (counters) are copied, not averaged
                    t.copy_(current[name])
        self.update_count += 1
