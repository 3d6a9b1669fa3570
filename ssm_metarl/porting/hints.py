"""Hints for the classic causes of a port's divergence, checked against the two modules involved.

tanh-approximate GELU (numerically), LayerNorm/RMSNorm/GroupNorm epsilon, an untransposed square Linear
weight, x64 off or a float32 module in a float64 port, an error at float32 rounding level in a float64
run, a layer computing in a lower precision than its inputs, TF32 / low matmul precision on GPU, 'SAME'
against explicit padding, BatchNorm's momentum convention (0.1 torch, 0.9 Flax) and its biased variance,
active dropout, Embedding ``padding_idx`` (gradients), attention mask polarity (by negating the mask),
RoPE half-split against interleaved, flatten order after a conv, ``count_include_pad``.
``rec``/``twin`` are ``divergence.Record``s: the torch and Flax module with their recorded input and output.
"""

from __future__ import annotations

import inspect
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


# --------------------------------------------------------------------------- more known causes
ROPE_WORDS = ("rope", "rotary", "rotate_half", "freqs_cis", "apply_rotary")


def _source(obj: Any) -> str:
    try:
        return inspect.getsource(type(obj)).lower()
    except (OSError, TypeError):
        return ""


def extra_module_hints(rec: Record, twin: Record, train: bool) -> list[str]:
    """GroupNorm epsilon/groups, active dropout, RoPE layout and lower-precision layers, for a module whose
    input matches and output differs."""
    t, f, hints = rec.module, twin.module, []
    if isinstance(t, torch.nn.GroupNorm) and isinstance(f, nnx.GroupNorm):
        if t.eps != f.epsilon:
            hints.append(f"GroupNorm epsilon: torch eps={t.eps:g}, flax epsilon={f.epsilon:g} (flax's default is "
                         f"1e-6): build the flax GroupNorm with epsilon={t.eps:g}")
        if f.num_groups is not None and t.num_groups != f.num_groups:
            hints.append(f"GroupNorm groups: torch num_groups={t.num_groups}, flax num_groups={f.num_groups}")
    if train and isinstance(t, torch.nn.modules.dropout._DropoutNd) and t.p > 0:
        hints.append(f"active dropout (p={t.p:g}) in train mode: the frameworks draw different masks; compare in "
                     "eval mode (train=False) or with p=0")
    if any(word in _source(t) or word in _source(f) for word in ROPE_WORDS):
        hints.append("RoPE layout: torch code (HF Llama's rotate_half) rotates the two HALVES of each head "
                     "(x[..., :d/2], x[..., d/2:]); GPT-J/Meta-style code rotates INTERLEAVED pairs (x[..., 0::2], "
                     "x[..., 1::2]). Both sides must use the same split (or permute the q/k weights' head dims)")
    hints.extend(lower_precision_hints(rec, twin))
    return hints


def lower_precision_hints(rec: Record, twin: Record) -> list[str]:
    """A layer computing in a lower precision than its inputs (dtype attributes, outputs, parameters)."""
    hints = []
    for side, record in (("torch", rec), ("flax", twin)):
        if record is None or record.inputs is None or record.output is None:
            continue
        x_dtype, y_dtype = np.dtype(record.inputs.dtype), np.dtype(record.output.dtype)
        if x_dtype.kind == "f" and y_dtype.kind == "f" and y_dtype.itemsize < x_dtype.itemsize:
            hints.append(f"lower precision: the {side} module takes {x_dtype} and returns {y_dtype}")
    declared = getattr(twin.module, "dtype", None) if twin is not None else None
    if declared is not None and twin.inputs is not None and np.dtype(twin.inputs.dtype).kind == "f":
        try:
            if np.dtype(declared).itemsize < np.dtype(twin.inputs.dtype).itemsize:
                hints.append(f"lower precision: the flax module is built with dtype={np.dtype(declared)} and "
                             f"computes in it although its inputs are {twin.inputs.dtype}")
        except TypeError:
            pass
    if rec is not None and rec.inputs is not None and np.dtype(rec.inputs.dtype).kind == "f":
        own = {p.dtype for p in rec.module.parameters(recurse=False) if p.is_floating_point()}
        small = [d for d in own if d.itemsize < np.dtype(rec.inputs.dtype).itemsize]
        if small:
            hints.append(f"lower precision: the torch module holds {small[0]} parameters for "
                         f"{rec.inputs.dtype} inputs")
    return hints


def rounding_hint(dtype: str, rel: float) -> list[str]:
    """The error sits at the rounding level of a lower precision than the run's: name it."""
    if dtype == "float64" and 1e-9 < rel < 1e-5:
        return [f"the error (rel {rel:.1e}) sits at float32 rounding level (float32 eps 1.2e-07) in a float64 run: "
                "one side computes this layer in float32 (a fused kernel's internal dtype, a module built with "
                "dtype=float32, a float32 constant or buffer, x64 off for part of the code, or torch.autocast)"]
    if dtype == "float32" and 3e-4 < rel < 3e-2:
        return [f"the error (rel {rel:.1e}) sits at bfloat16/TF32 rounding level in a float32 run: one side computes "
                "this layer in lower precision (TF32 matmuls, jax_default_matmul_precision, a bf16 kernel)"]
    return []


def pooling_hints(culprit: Record, torch_value: np.ndarray, flax_value: np.ndarray) -> list[str]:
    """An average pool whose padding is counted on one side only (``count_include_pad``)."""
    t = culprit.module
    if not isinstance(t, (torch.nn.AvgPool1d, torch.nn.AvgPool2d, torch.nn.AvgPool3d)) or culprit.inputs is None:
        return []
    pool = {torch.nn.AvgPool1d: torch.nn.functional.avg_pool1d, torch.nn.AvgPool2d: torch.nn.functional.avg_pool2d,
            torch.nn.AvgPool3d: torch.nn.functional.avg_pool3d}[type(t)]
    x = torch.from_numpy(culprit.inputs.astype(np.float64))
    other = pool(x, t.kernel_size, t.stride, t.padding, t.ceil_mode, not t.count_include_pad).numpy()
    flax_cf = np.moveaxis(flax_value, -1, 1) if flax_value.shape != other.shape and flax_value.ndim >= 3 else flax_value
    if flax_cf.shape == other.shape and _close(flax_cf, other):
        return [f"count_include_pad: torch's {type(t).__name__} has count_include_pad={t.count_include_pad}, the port "
                f"averages as if count_include_pad={not t.count_include_pad} (flax's avg_pool takes "
                "count_include_pad=...; its padded border cells count by default)"]
    return []


def flatten_hints(previous: Record | None, torch_in: np.ndarray, flax_in: np.ndarray) -> list[str]:
    """Flattening a conv's output: torch flattens (C, H, W), a channels-last port (H, W, C)."""
    if previous is None or previous.output is None or previous.output.ndim < 3:
        return []
    out = previous.output  # torch layout (B, C, *spatial): the shape the flattened input came from
    if torch_in.ndim != 2 or out.shape[0] != torch_in.shape[0] or np.prod(out.shape[1:]) != torch_in.shape[1]:
        return []
    channels_last = np.moveaxis(torch_in.reshape(out.shape), 1, -1).reshape(out.shape[0], -1)
    if _close(flax_in, channels_last) and not _close(flax_in, torch_in):
        return [f"flatten order after a conv: torch flattens {previous.path!r}'s output as (C, H, W), the port as "
                "(H, W, C) (channels last): move channels first before flattening (x.transpose(0, 3, 1, 2)"
                ".reshape(B, -1)) or permute the next Linear's kernel rows"]
    return []


def gradient_hints(module: torch.nn.Module, flax_grads: dict[str, np.ndarray],
                   torch_grads: dict[str, np.ndarray]) -> list[str]:
    """Known causes of a parameter-gradient difference in one module (Embedding ``padding_idx``)."""
    hints = []
    if isinstance(module, torch.nn.Embedding) and module.padding_idx is not None:
        for name, t in torch_grads.items():
            f = flax_grads[name]
            if t.shape != f.shape or t.ndim != 2:
                continue
            per_row = np.max(np.abs(f.astype(np.float64) - t.astype(np.float64)), axis=1)
            pad = module.padding_idx % t.shape[0]
            if not np.any(t[pad]) and np.any(f[pad]) and int(np.argmax(per_row)) == pad:
                hints.append(f"Embedding padding_idx={module.padding_idx}: torch gives the padding row zero gradient "
                             "(it never trains); the port's nnx.Embed does not. Stop it in the port: "
                             "e = embed(ids); e = jnp.where((ids == padding_idx)[..., None], "
                             "jax.lax.stop_gradient(e), e)")
    return hints


def dropout_notes(torch_model: torch.nn.Module, flax_model: nnx.Module, train: bool) -> list[str]:
    """Dropout active in train mode makes every row random: say so before anyone reads the numbers."""
    if not train:
        return []
    torch_drop = [n for n, m in torch_model.named_modules()
                  if isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0]
    flax_drop = [".".join(map(str, p)) for p, m in nnx.iter_graph(flax_model)
                 if isinstance(m, nnx.Dropout) and m.rate > 0 and not m.deterministic]
    if not torch_drop and not flax_drop:
        return []
    return [f"active dropout in train mode (torch {torch_drop or 'none'}, flax {flax_drop or 'none'}): the two "
            "frameworks draw different masks, so rows differ by design; compare with train=False (eval) or p=0"]


def mask_polarity_hint(pair: Any, inputs: Any, torch_result: dict[str, Any], tolerance: float) -> str | None:
    """If negating one boolean input on the Flax side makes the forward agree: the mask's meaning is flipped."""
    from shared.compare import compare_trees
    from ssm_metarl.porting.io import tree_map
    from ssm_metarl.porting.precision import torch_to_numpy

    named = inputs.named()
    masks = [i for i, (_, v) in enumerate(named) if v.dtype == np.bool_]
    expected = tree_map(torch_to_numpy, torch_result["output"])
    for index in masks:
        counter = iter(range(len(named)))
        flipped = inputs.map(lambda a, index=index, counter=counter: ~a if next(counter) == index else a)
        result, _ = pair.jit_forward(pair.flax_params, pair.to_jax(flipped), pair.train)
        try:
            agrees = compare_trees(tree_map(np.asarray, result["output"]), expected).passes(tolerance)
        except ValueError:
            agrees = False
        if agrees:
            return (f"attention mask polarity: with the boolean input {named[index][0]} negated on the flax side the "
                    "outputs agree. torch's key_padding_mask/attn_mask True means 'ignore this key'; Flax's "
                    "mask True means 'attend': pass ~mask to one side")
    return None
