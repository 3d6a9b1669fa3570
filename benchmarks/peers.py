"""The MAML peers, each written the way its documentation shows: ``higher`` and TorchOpt.

Both run the same maths as our MetaMAML (``k`` inner SGD steps per task, mean post-adaptation
query MSE, first or second order) on our own SSM module, looping over tasks in Python:

- ``higher``: ``higher.innerloop_ctx`` with a ``torch.optim.SGD`` inner optimizer; first order
  detaches the inner gradients through ``diffopt.step(..., grad_callback=...)``, so the outer
  gradient still reaches the initial weights (``track_higher_grads=False`` would cut it).
- TorchOpt 0.7.3, its functional API: ``torchopt.sgd`` (a ``GradientTransformation``) with
  ``update(..., inplace=False)`` and ``torchopt.apply_updates(..., inplace=False)`` over parameter
  tuples fed to ``torch.func.functional_call``; ``torchopt.Adam`` for the outer step.

Each returns ``None`` when the package is not installed (the caller records that, never silently).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

Tasks = list[tuple[torch.Tensor, ...]]


def _mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return torch.mean((outputs - labels) ** 2)


def higher_meta_grad(model: nn.Module, lr: float, k: int, first_order: bool) -> Callable[[Tasks], Any] | None:
    """``tasks -> mean query loss`` that leaves the meta-gradient in ``model``'s ``.grad``; None without higher."""
    try:
        import higher
    except ImportError:
        return None
    inner = torch.optim.SGD(model.parameters(), lr=lr)
    detach = (lambda grads: [g.detach() for g in grads]) if first_order else None

    def run(tasks: Tasks) -> torch.Tensor:
        for p in model.parameters():
            p.grad = None
        total = torch.zeros(())
        for sx, sy, qx, qy in tasks:
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                for _ in range(k):
                    diffopt.step(_mse(fmodel(sx), sy), grad_callback=detach)
                loss = _mse(fmodel(qx), qy) / len(tasks)
                loss.backward()
                total = total + loss.detach().cpu()
        return total

    return run


def torchopt_meta_grad(model: nn.Module, lr: float, k: int, first_order: bool) -> Callable[[Tasks], Any] | None:
    """As :func:`higher_meta_grad`, with TorchOpt's functional optimizer; None without torchopt."""
    try:
        import torchopt
    except ImportError:
        return None
    names = [n for n, _ in model.named_parameters()]
    inner = torchopt.sgd(lr)

    def run(tasks: Tasks) -> torch.Tensor:
        params = tuple(model.parameters())
        for p in params:
            p.grad = None
        total = torch.zeros(())
        for sx, sy, qx, qy in tasks:
            fast, state = params, inner.init(params)
            for _ in range(k):
                loss = _mse(functional_call(model, dict(zip(names, fast, strict=True)), (sx,)), sy)
                grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
                updates, state = inner.update(grads, state, params=fast, inplace=False)
                fast = torchopt.apply_updates(fast, updates, inplace=False)
            query = _mse(functional_call(model, dict(zip(names, fast, strict=True)), (qx,)), qy) / len(tasks)
            query.backward()
            total = total + query.detach().cpu()
        return total

    return run


def higher_adapt(model: nn.Module, lr: float, k: int) -> Callable[[torch.Tensor, torch.Tensor], Any] | None:
    """``(x, y) -> adapted parameters`` (no higher-order graph); None without higher."""
    try:
        import higher
    except ImportError:
        return None
    inner = torch.optim.SGD(model.parameters(), lr=lr)

    def run(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        with higher.innerloop_ctx(model, inner, track_higher_grads=False) as (fmodel, diffopt):
            for _ in range(k):
                diffopt.step(_mse(fmodel(x), y))
            return [p.detach() for p in fmodel.parameters()]

    return run


def torchopt_adapt(model: nn.Module, lr: float, k: int) -> Callable[[torch.Tensor, torch.Tensor], Any] | None:
    """``(x, y) -> adapted parameters`` with ``torchopt.sgd``; None without torchopt."""
    try:
        import torchopt
    except ImportError:
        return None
    names = [n for n, _ in model.named_parameters()]
    inner = torchopt.sgd(lr)

    def run(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
        fast = tuple(p.detach().requires_grad_() for p in model.parameters())
        state = inner.init(fast)
        for _ in range(k):
            loss = _mse(functional_call(model, dict(zip(names, fast, strict=True)), (x,)), y)
            grads = torch.autograd.grad(loss, fast)
            updates, state = inner.update(grads, state, params=fast, inplace=False)
            fast = tuple(p.detach().requires_grad_() for p in torchopt.apply_updates(fast, updates, inplace=False))
        return tuple(p.detach() for p in fast)

    return run


def outer_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The outer Adam each peer's own examples use: ``torch.optim.Adam`` for higher, ``torchopt.Adam``."""
    if name == "torchopt":
        import torchopt

        return torchopt.Adam(model.parameters(), lr=lr)
    return torch.optim.Adam(model.parameters(), lr=lr)
