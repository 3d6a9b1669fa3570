"""Every private PyTorch API this package uses, in one place, each with the reason it is needed.

A torch upgrade that moves one of these breaks this module only. Public spellings are used
everywhere else (``torch.compiler.reset``, ``torch.compiler.is_compiling``, ``torch.func``).
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence

import torch


def is_functorch_wrapped(t: torch.Tensor) -> bool:
    """True for a tensor wrapped by a ``torch.func`` transform (``grad``/``vmap``). The SSM's scan picks
    its traceable formulation for these; torch has no public predicate for it."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)


def all_finite_eager(tensors: Sequence[torch.Tensor]) -> bool:
    """Every entry of every tensor finite, with one host sync. ``_foreach_abs``/``_foreach_max``: one
    dispatch each for any number of tensors (a Python loop of ``isfinite`` costs one per tensor); there
    is no public multi-tensor spelling. NaN propagates through ``max``, Inf stays Inf."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return True
    return bool(torch.stack(torch._foreach_max(torch._foreach_abs(tensors))).isfinite().all())


def all_finite_flag(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor (no host sync): every entry of every floating tensor finite. Eagerly the two
    ``_foreach`` dispatches above; under ``torch.compile`` plain ops, which inductor fuses anyway."""
    tensors = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not tensors:
        return torch.ones((), dtype=torch.bool)
    if torch.compiler.is_compiling():
        return torch.stack([torch.isfinite(t).all() for t in tensors]).all()
    return torch.stack(torch._foreach_max(torch._foreach_abs(tensors))).isfinite().all()


def copy_into(targets: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """``targets[i].copy_(values[i])`` for all ``i`` in one dispatch (``_foreach_copy_``; no public spelling)."""
    with torch.no_grad():
        torch._foreach_copy_(list(targets), list(values))


def add_scalar(tensors: Sequence[torch.Tensor], value: float) -> list[torch.Tensor]:
    """New tensors ``t + value`` for all ``t`` in one dispatch (``_foreach_add``): Adam's per-parameter step counts."""
    return list(torch._foreach_add(list(tensors), value))


def fresh_code(function: Callable, name: str) -> Callable:
    """A copy of ``function`` with its own code object. ``torch.compile`` keys its cache and its
    recompile limit on the code object, so each compiled signature gets a copy and never meets the
    limit (the public knob, ``torch._dynamo.config.recompile_limit``, is private too and global)."""
    return types.FunctionType(function.__code__.replace(), function.__globals__, name, function.__defaults__,
                              function.__closure__)


def adam_arithmetic(params: list[torch.Tensor], grads: list[torch.Tensor], exp_avg: list[torch.Tensor],
                    exp_avg_sq: list[torch.Tensor], step_size: torch.Tensor, correction2_sqrt: torch.Tensor,
                    betas: tuple[float, float], eps: float) -> tuple[list, list, list]:
    """Adam's update of every parameter, out of place: ``(params, exp_avg, exp_avg_sq)`` new lists.

    torch.optim.Adam's arithmetic (``lerp``, ``addcmul``, eps outside the root). Eagerly, with one
    dtype, it runs as ``_foreach_*`` ops (one dispatch per operation for all parameters, as
    ``torch.optim.Adam(foreach=True)``; no public multi-tensor spelling); under ``torch.compile``, and
    for mixed dtypes, as the same operations per tensor, which inductor fuses.
    """
    beta1, beta2 = betas
    dtypes = {p.dtype for p in params}
    if not torch.compiler.is_compiling() and len(dtypes) == 1:
        dtype = dtypes.pop()
        exp_avg = list(torch._foreach_lerp(exp_avg, grads, 1 - beta1))
        exp_avg_sq = list(torch._foreach_addcmul(torch._foreach_mul(exp_avg_sq, beta2), grads, grads, value=1 - beta2))
        denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(exp_avg_sq), correction2_sqrt.to(dtype)), eps)
        steps = torch._foreach_mul(torch._foreach_div(exp_avg, denom), step_size.to(dtype))
        return list(torch._foreach_sub(params, steps)), exp_avg, exp_avg_sq
    new_params, new_avg, new_avg_sq = [], [], []
    for p, g, m, v in zip(params, grads, exp_avg, exp_avg_sq, strict=True):
        m = torch.lerp(m, g, 1 - beta1)
        v = torch.addcmul(v * beta2, g, g, value=1 - beta2)
        denom = v.sqrt() / correction2_sqrt.to(p.dtype) + eps
        new_params.append(p - step_size.to(p.dtype) * (m / denom))
        new_avg.append(m)
        new_avg_sq.append(v)
    return new_params, new_avg, new_avg_sq
