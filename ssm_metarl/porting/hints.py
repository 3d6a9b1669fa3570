"""Hints for the classic causes of a port's divergence, checked against the two modules involved.

tanh-approximate GELU (numerically), LayerNorm/RMSNorm epsilon, an untransposed square Linear weight,
x64 off or a float32 module in a float64 port, TF32 / low matmul precision on GPU, 'SAME' against
explicit padding, BatchNorm's momentum convention (0.1 torch, 0.9 Flax) and its biased variance.
``rec``/``twin`` are ``divergence.Record``s: the torch and Flax module with their recorded input and output.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import torch
from flax import nnx
from jax import lax

Record = Any


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    scale = float(np.max(np.abs(b), initial=0.0)) or 1.0
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0)) <= 1e-5 * scale


def activation_hints(x: np.ndarray | None, torch_value: np.ndarray, flax_value: np.ndarray) -> list[str]:
    """Does the port apply tanh-GELU where torch applies exact GELU to the same ``x``?"""
    if x is None or x.shape != torch_value.shape:
        return []
    t = torch.from_numpy(x.astype(np.float64))
    exact = torch.nn.functional.gelu(t).numpy()
    tanh = torch.nn.functional.gelu(t, approximate="tanh").numpy()
    if _close(torch_value, exact) and _close(flax_value, tanh) and not _close(flax_value, exact):
        return ["GELU: the port uses the tanh approximation (jax.nn.gelu's default approximate=True); torch's "
                "nn.GELU()/F.gelu is exact (erf): use jax.nn.gelu(x, approximate=False)"]
    if _close(torch_value, tanh) and _close(flax_value, exact) and not _close(flax_value, tanh):
        return ["GELU: torch uses approximate='tanh' but the port the exact GELU: use jax.nn.gelu(x, approximate=True)"]
    return []


def module_hints(rec: Record, twin: Record, inputs: tuple[np.ndarray, np.ndarray] | None) -> list[str]:
    t, f, hints = rec.module, twin.module, []
    if isinstance(t, torch.nn.LayerNorm) and isinstance(f, nnx.LayerNorm) and t.eps != f.epsilon:
        hints.append(f"LayerNorm epsilon: torch eps={t.eps:g}, flax epsilon={f.epsilon:g} (flax's default is 1e-6): "
                     f"build the flax LayerNorm with epsilon={t.eps:g}")
    if isinstance(t, torch.nn.RMSNorm) and isinstance(f, nnx.RMSNorm):
        eps = t.eps if t.eps is not None else float(torch.finfo(t.weight.dtype).eps)
        if eps != f.epsilon:
            hints.append(f"RMSNorm epsilon: torch {eps:g}, flax {f.epsilon:g}: build the flax RMSNorm with "
                         f"epsilon={eps:g}")
    if isinstance(t, torch.nn.modules.batchnorm._BatchNorm) and isinstance(f, nnx.BatchNorm):
        hints.extend(_batch_norm_hints(t, f))
    if isinstance(t, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)) and isinstance(f, nnx.Conv):
        hints.extend(_conv_hints(t, f, rec.inputs))
    if isinstance(t, torch.nn.Linear) and inputs is not None and t.in_features == t.out_features:
        x = inputs[0].astype(np.float64)
        w = t.weight.detach().double().numpy()
        b = 0.0 if t.bias is None else t.bias.detach().double().numpy()
        if twin.output is not None and _close(twin.output, x @ w + b):
            hints.append("an untransposed weight: the flax output equals x @ W + b with torch's W (out, in); "
                         "a Linear kernel must be W.T (in, out)")
    return hints


def _batch_norm_hints(t: torch.nn.Module, f: nnx.BatchNorm) -> list[str]:
    hints = []
    if t.momentum is not None and abs(f.momentum - (1.0 - t.momentum)) > 1e-12:
        hints.append(f"BatchNorm momentum convention: torch momentum={t.momentum:g} weighs the NEW batch, flax "
                     f"momentum weighs the OLD statistics; flax momentum should be {1.0 - t.momentum:g}, "
                     f"got {f.momentum:g}")
    if t.eps != f.epsilon:
        hints.append(f"BatchNorm epsilon: torch {t.eps:g}, flax {f.epsilon:g}")
    if type(f) is nnx.BatchNorm:
        hints.append("stock nnx.BatchNorm updates the running variance with the biased batch variance (torch: "
                     "unbiased, n/(n-1)) and by default uses E[x^2]-E[x]^2; ssm_metarl.porting.TorchBatchNorm "
                     "matches torch")
    return hints


def _torch_pads(t: torch.nn.Module) -> list[tuple[int, int]]:
    if t.padding == "valid":
        return [(0, 0)] * len(t.kernel_size)
    if t.padding == "same":
        totals = [d * (k - 1) for d, k in zip(t.dilation, t.kernel_size, strict=True)]
        return [(total // 2, total - total // 2) for total in totals]
    return [(p, p) for p in t.padding]


def _flax_pads(f: nnx.Conv, spatial: tuple[int, ...]) -> list[tuple[int, int]] | None:
    padding = f.padding
    n = len(spatial)
    strides = f.strides if isinstance(f.strides, (tuple, list)) else (f.strides or 1,) * n
    dilation = f.kernel_dilation if isinstance(f.kernel_dilation, (tuple, list)) else (f.kernel_dilation or 1,) * n
    if isinstance(padding, str):
        if padding not in ("SAME", "VALID"):
            return None
        window = [(k - 1) * d + 1 for k, d in zip(f.kernel_size, dilation, strict=True)]
        return [tuple(p) for p in lax.padtype_to_pads(spatial, window, strides, padding)]
    if isinstance(padding, int):
        return [(padding, padding)] * n
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def _conv_hints(t: torch.nn.Module, f: nnx.Conv, torch_input: np.ndarray | None) -> list[str]:
    if torch_input is None:
        return []
    spatial = tuple(torch_input.shape[2:])
    torch_pads, flax_pads = _torch_pads(t), _flax_pads(f, spatial)
    hints = []
    if flax_pads is not None and [tuple(p) for p in flax_pads] != torch_pads:
        hints.append(f"padding: torch pads {torch_pads} (padding={t.padding!r}), flax pads {flax_pads} "
                     f"(padding={f.padding!r}); 'SAME' with stride > 1 or an even kernel pads asymmetrically: "
                     f"give flax explicit padding={torch_pads}")
    strides = f.strides if isinstance(f.strides, (tuple, list)) else (f.strides or 1,) * len(spatial)
    if tuple(strides) != tuple(t.stride):
        hints.append(f"strides: torch {t.stride}, flax {tuple(strides)}")
    return hints


def precision_hints(rec: Record, twin: Record, torch_model: torch.nn.Module) -> list[str]:
    hints = []
    if rec.output is not None and twin.output is not None and rec.output.dtype != twin.output.dtype:
        hints.append(f"precision: torch computes this module in {rec.output.dtype}, flax in {twin.output.dtype} "
                     "(x64 off: jax.config.update('jax_enable_x64', True) at start-up, or a flax module built "
                     "with dtype=float32)")
    on_cuda = any(p.is_cuda for p in torch_model.parameters())
    if on_cuda and (torch.backends.cuda.matmul.allow_tf32 or torch.get_float32_matmul_precision() != "highest"):
        hints.append("TF32 is on in torch (torch.backends.cuda.matmul.allow_tf32 / set_float32_matmul_precision): "
                     "turn it off for parity")
    precision = jax.config.jax_default_matmul_precision
    if jax.default_backend() != "cpu" and precision not in ("highest", "float32"):
        hints.append(f"jax_default_matmul_precision is {precision!r}: on GPU/TPU float32 matmuls may use TF32/bf16 "
                     "passes; set it to 'highest'")
    return hints
