"""Normalisation layers computed from primitive tensor ops, so that ``torch.func`` differentiates them exactly.

``torch.func.vmap``'s batching rules for the backward of the fused norm kernels are wrong in second
order (pytorch/functorch#534, open since 2022): ``grad(vmap(grad(f)))`` through ``nn.LayerNorm`` is
off by ~6e-3 relative in float64 with torch 2.13, while the plain autograd loop is exact. Written
from ``mean``, ``sub``, ``mul`` and ``rsqrt``, the same layers have only plain batching rules and are
exact under ``vmap``, ``grad`` and ``torch.compile(fullgraph=True)`` alike.

:func:`primitive_norms` is a ``torch.overrides.TorchFunctionMode`` that reroutes ``F.layer_norm``,
``F.batch_norm``, ``F.group_norm`` and ``F.instance_norm`` (and so ``nn.LayerNorm``,
``nn.BatchNorm{1,2,3}d``, ``nn.GroupNorm``, ``nn.InstanceNorm{1,2,3}d`` and any user module that calls
these functions) to the primitive twins below. Shapes follow ``torch.nn.functional``: inputs are
``(N, C, *)`` for batch, group and instance norm, ``(*, normalized_shape)`` for layer norm.

Running statistics (``running_mean``, ``running_var``) are updated the way torch's kernels update
them, in place on the tensors passed in (momentum ``m``: ``running = (1 - m) running + m batch``,
the variance unbiased, ``n / (n - 1)``), without gradient. MetaMAML hands every forward fresh copies
of the buffers, so the update stays functional: the copies are the forward's to change.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


def layer_norm(input: torch.Tensor, normalized_shape: Sequence[int], weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.layer_norm``: normalise over the last ``len(normalized_shape)`` axes (biased variance)."""
    axes = tuple(range(-len(tuple(normalized_shape)), 0))
    mean = input.mean(axes, keepdim=True)
    centred = input - mean
    var = (centred * centred).mean(axes, keepdim=True)
    return _affine(centred * torch.rsqrt(var + eps), weight, bias, channel_axis=None)


def batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
               weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
    """``F.batch_norm`` over ``(N, C, *)``: per-channel statistics over every axis but 1.

    ``training``: normalise with the batch's biased variance and, when running statistics are given,
    update them in place (the unbiased variance). Otherwise normalise with the running statistics.
    """
    axes = (0, *range(2, input.dim()))
    if training:
        mean = input.mean(axes, keepdim=True)
        centred = input - mean
        var = (centred * centred).mean(axes, keepdim=True)
        count = input.numel() // input.shape[1]
        _update_running(running_mean, running_var, mean.reshape(-1), var.reshape(-1), count, momentum)
        return _affine(centred * torch.rsqrt(var + eps), weight, bias, channel_axis=1)
    shape = (1, -1, *(1,) * (input.dim() - 2))
    normalised = (input - running_mean.reshape(shape)) * torch.rsqrt(running_var.reshape(shape) + eps)
    return _affine(normalised, weight, bias, channel_axis=1)


def instance_norm(input: torch.Tensor, running_mean: torch.Tensor | None = None,
                  running_var: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None, use_input_stats: bool = True, momentum: float = 0.1,
                  eps: float = 1e-5) -> torch.Tensor:
    """``F.instance_norm`` over ``(N, C, *)``: per-sample, per-channel statistics over the spatial axes.

    With running statistics and ``use_input_stats``, they move towards the batch mean of the
    per-instance statistics (as torch's kernel does).
    """
    if not use_input_stats:
        return batch_norm(input, running_mean, running_var, weight, bias, training=False, eps=eps)
    axes = tuple(range(2, input.dim()))
    mean = input.mean(axes, keepdim=True)
    centred = input - mean
    var = (centred * centred).mean(axes, keepdim=True)
    count = math.prod(input.shape[2:])
    _update_running(running_mean, running_var, mean.flatten(1).mean(0), var.flatten(1).mean(0), count, momentum)
    return _affine(centred * torch.rsqrt(var + eps), weight, bias, channel_axis=1)


def group_norm(input: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
               bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """``F.group_norm`` over ``(N, C, *)``: statistics per sample over each group of ``C / num_groups``
    channels and all spatial positions."""
    grouped = input.reshape(input.shape[0], num_groups, -1)
    mean = grouped.mean(-1, keepdim=True)
    centred = grouped - mean
    var = (centred * centred).mean(-1, keepdim=True)
    normalised = (centred * torch.rsqrt(var + eps)).reshape(input.shape)
    return _affine(normalised, weight, bias, channel_axis=1)


def _affine(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
            channel_axis: int | None) -> torch.Tensor:
    """``x * weight + bias``; with ``channel_axis=1`` the (C,) parameters broadcast over ``(N, C, *)``."""
    if channel_axis is not None:
        shape = (-1, *(1,) * (x.dim() - 2))
        weight = None if weight is None else weight.reshape(shape)
        bias = None if bias is None else bias.reshape(shape)
    if weight is not None:
        x = x * weight
    if bias is not None:
        x = x + bias
    return x


def _update_running(running_mean: torch.Tensor | None, running_var: torch.Tensor | None, mean: torch.Tensor,
                    var: torch.Tensor, count: int, momentum: float) -> None:
    """torch's running-statistics rule, in place and without gradient: ``running = (1 - m) running + m
    batch``, with the variance unbiased by ``count / (count - 1)``."""
    with torch.no_grad():
        if running_mean is not None:
            running_mean.copy_(momentum * mean + (1 - momentum) * running_mean)
        if running_var is not None:
            running_var.copy_(momentum * var * (count / max(count - 1, 1)) + (1 - momentum) * running_var)


# the torch.nn.functional entry points rerouted, and their primitive twins (same signatures)
PRIMITIVE_TWINS: dict[Callable[..., Any], Callable[..., torch.Tensor]] = {
    F.layer_norm: layer_norm,
    F.batch_norm: batch_norm,
    F.instance_norm: instance_norm,
    F.group_norm: group_norm,
}


class PrimitiveNorms(TorchFunctionMode):
    """Reroutes the ``torch.nn.functional`` norms to their primitive twins; every other call runs as is."""

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        twin = PRIMITIVE_TWINS.get(func)
        return (twin or func)(*args, **(kwargs or {}))


@contextlib.contextmanager
def primitive_norms(enabled: bool = True) -> Iterator[None]:
    """``with primitive_norms(): ...`` computes every ``F.*`` norm in the block from primitive ops
    (exact second derivatives under ``torch.func.vmap``); ``enabled=False`` leaves the block as is."""
    if not enabled:
        yield
        return
    with PrimitiveNorms():
        yield
