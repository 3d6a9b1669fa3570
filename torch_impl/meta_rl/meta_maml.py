"""MetaMAML: second-order MAML over any ``nn.Module`` (ARCHITECTURE.md section 3).

Every forward pass goes through ``torch.func.functional_call`` with an explicit parameter dict,
inner gradients use ``torch.autograd.grad(create_graph=not first_order)``, and there is one code
path for first and second order. ``autograd.grad`` cannot run under ``vmap``, so tasks are looped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from shared.config import MetaConfig
from shared.validation import check_tasks

Params = dict[str, torch.Tensor]
LossFn = Callable[[Any, Any], torch.Tensor]


def mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error, the default MetaMAML loss."""
    return F.mse_loss(outputs, labels)


class MetaMAML:
    """Model-agnostic meta-learning with an Adam outer step.

    Args:
        model: any ``nn.Module``; parameters with ``requires_grad=False`` are neither adapted
            nor meta-trained, and buffers are passed through unchanged.
        inner_lr: SGD step size of the inner (adaptation) loop.
        outer_lr: Adam learning rate of the outer (meta) step.
        num_inner_steps: inner SGD steps per task (>= 1).
        first_order: drop the second-order terms (FOMAML).
        loss_fn: ``loss_fn(outputs, labels) -> scalar``; labels may be a tuple.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        num_inner_steps: int = 1,
        *,
        first_order: bool = False,
        loss_fn: LossFn = mse,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(outputs, labels), got {type(loss_fn).__name__}")
        self.config = MetaConfig(inner_lr, outer_lr, num_inner_steps, first_order)
        self.model = model
        self.loss_fn = loss_fn
        if not self.trainable_parameters():
            raise ValueError("model has no parameters with requires_grad=True; expected at least one to meta-train")
        self.optimizer = torch.optim.Adam(self.trainable_parameters().values(), lr=outer_lr)

    @property
    def inner_lr(self) -> float:
        return self.config.inner_lr

    @property
    def outer_lr(self) -> float:
        return self.config.outer_lr

    @property
    def num_inner_steps(self) -> int:
        return self.config.num_inner_steps

    @property
    def first_order(self) -> bool:
        return self.config.first_order

    def trainable_parameters(self) -> Params:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    # ------------------------------------------------------------ public API
    def adapt(self, task_data: Any, task_labels: Any, *, params: Params | None = None) -> Params:
        """Run the inner loop on one task; returns every parameter keyed like ``named_parameters()``.

        The result (detached) works with ``functional_call(model, params, x)``; frozen
        parameters are included unchanged. ``params`` (a dict like the result) starts the inner
        loop somewhere other than the model's own parameters, e.g. for a further adaptation step.
        """
        self._check_data("task_data", task_data)
        self._check_data("task_labels", task_labels)
        start = self.trainable_parameters() if params is None else params
        missing = sorted(set(self.trainable_parameters()) - set(start))
        if missing:
            raise ValueError(f"params lacks trainable parameters {missing}")
        start = {name: start[name].detach().requires_grad_() for name in self.trainable_parameters()}
        adapted = self._inner_loop(start, task_data, task_labels, "task 0 support", create_graph=False)
        result = {name: p.detach() for name, p in self.model.named_parameters()}
        result.update({name: p.detach() for name, p in adapted.items()})
        return result

    def meta_gradient(self, tasks: Sequence[tuple]) -> Params:
        """The meta-gradient (mean over tasks of the post-adaptation query loss), without stepping."""
        return self._meta_gradient(tasks)[0]

    def value_and_meta_gradient(self, tasks: Sequence[tuple]) -> tuple[torch.Tensor, Params]:
        """``(loss, grads)``: the mean post-adaptation query loss (a detached 0-d tensor) and the
        meta-gradient dict keyed like the trainable parameters. Nothing is changed."""
        grads, loss = self._meta_gradient(tasks)
        return loss, grads

    def apply_meta_gradient(self, grads: Params) -> None:
        """One Adam step (``self.optimizer``) with ``grads`` as the gradients of the trainable parameters.

        Refuses non-finite gradients, and a step whose resulting parameters are not finite (or that
        overflows the parameters' dtype): parameters and optimizer state are restored and
        ``ValueError`` is raised, so the model is left as it was.
        """
        params = self.trainable_parameters()
        if not isinstance(grads, dict):
            raise TypeError(f"grads must be a dict keyed like the trainable parameters, got {type(grads).__name__}")
        if set(grads) != set(params):
            raise ValueError(f"grads must have exactly the trainable parameters' keys {sorted(params)}, "
                             f"got {sorted(grads)}")
        for name, p in params.items():
            g = grads[name]
            if not isinstance(g, torch.Tensor) or g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                got = (f"{tuple(g.shape)} {g.dtype} on {g.device}" if isinstance(g, torch.Tensor)
                       else type(g).__name__)
                raise ValueError(f"grads[{name!r}] must be a tensor of shape {tuple(p.shape)}, dtype {p.dtype} "
                                 f"on {p.device}, got {got}")
        if not all(bool(torch.isfinite(g).all()) for g in grads.values()):
            raise ValueError("apply_meta_gradient: the meta-gradient contains NaN/Inf; the model was not changed")
        saved_params = {name: p.detach().clone() for name, p in params.items()}
        saved_state = {p: {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}
                       for p, state in self.optimizer.state.items()}
        for name, p in params.items():
            p.grad = grads[name].detach()
        try:
            self.optimizer.step()
            failure = None if all(bool(torch.isfinite(p).all()) for p in params.values()) else "are not finite"
        except RuntimeError as err:  # e.g. "value cannot be converted to type float without overflow"
            failure = f"overflow ({err})"
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        if failure is not None:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(saved_params[name])
            self.optimizer.state.clear()
            self.optimizer.state.update(saved_state)
            raise ValueError(f"apply_meta_gradient: the step's resulting parameters {failure} "
                             f"(outer_lr={self.outer_lr!r} too large?); the model was not changed")

    def meta_update(self, tasks: Sequence[tuple]) -> float:
        """One outer Adam step; returns the mean query loss after adaptation.

        Exactly ``value_and_meta_gradient`` then ``apply_meta_gradient``. A non-finite loss,
        meta-gradient or resulting parameter raises ``ValueError`` and leaves the model unchanged.
        """
        loss, grads = self.value_and_meta_gradient(tasks)
        if not bool(torch.isfinite(loss)):
            raise ValueError("meta_update: the query loss is NaN/Inf; the model was not changed")
        self.apply_meta_gradient(grads)
        return float(loss)

    # ------------------------------------------------------------ internals
    def _meta_gradient(self, tasks: Sequence[tuple]) -> tuple[Params, torch.Tensor]:
        tasks = check_tasks(tasks)
        for i, task in enumerate(tasks):
            for part, value in zip(("support_x", "support_y", "query_x", "query_y"), task, strict=True):
                self._check_data(f"task {i} {part}", value)
        params = self.trainable_parameters()
        total = {name: torch.zeros_like(p) for name, p in params.items()}
        total_loss = torch.zeros((), dtype=next(iter(params.values())).dtype)
        for i, (support_x, support_y, query_x, query_y) in enumerate(tasks):
            adapted = self._inner_loop(params, support_x, support_y, f"task {i} support",
                                       create_graph=not self.first_order)
            query_loss = self._loss(adapted, query_x, query_y, f"task {i} query") / len(tasks)
            grads = torch.autograd.grad(query_loss, list(params.values()), allow_unused=True)
            for (name, _p), g in zip(params.items(), grads, strict=True):
                if g is not None:
                    total[name] = total[name] + g
            total_loss = total_loss + query_loss.detach().cpu()
        return total, total_loss

    def _inner_loop(self, params: Params, data: Any, labels: Any, where: str, create_graph: bool) -> Params:
        """SGD steps; ``create_graph`` keeps the graph for second-order meta-gradients."""
        for _ in range(self.num_inner_steps):
            loss = self._loss(params, data, labels, where)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
            params = {
                name: p if g is None else p - self.inner_lr * g
                for (name, p), g in zip(params.items(), grads, strict=True)
            }
        return params

    def _loss(self, params: Params, data: Any, labels: Any, where: str) -> torch.Tensor:
        fixed = {name: p for name, p in self.model.named_parameters() if not p.requires_grad}
        fixed.update(dict(self.model.named_buffers()))
        args = data if isinstance(data, tuple) else (data,)
        try:
            outputs = functional_call(self.model, {**fixed, **params}, args)
        except RuntimeError as err:
            shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
            raise ValueError(f"model forward failed on {where} input of shape(s) {shapes}: {err}") from err
        loss = self.loss_fn(outputs, labels)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            got = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor, got {got}")
        return loss

    def _check_data(self, name: str, value: Any) -> None:
        if isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                self._check_data(f"{name}[{i}]", item)
            return
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (or a tuple of them), got {type(value).__name__}")
        reference = next(iter(self.trainable_parameters().values()))
        if value.device != reference.device:
            raise ValueError(f"{name} must be on device {reference.device} (the model's), got {value.device}")
        if value.is_floating_point():
            if value.dtype != reference.dtype:
                raise TypeError(f"{name} must have dtype {reference.dtype} (the model's), got {value.dtype}")
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} contains NaN or Inf; expected finite values")
