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
