"""Dtypes, the bit-exact numpy bridge for half precision, and devices for a port's comparison.

numpy has no bfloat16, so ``tensor.numpy()`` fails on a torch bfloat16 tensor ("Got unsupported
ScalarType BFloat16"). The bridge reinterprets the 16 bits (``torch.int16`` <-> ``ml_dtypes.bfloat16``),
which is exact both ways; JAX takes ``ml_dtypes`` arrays as they are.
"""

from __future__ import annotations

from typing import Any

import jax
import ml_dtypes
import numpy as np
import torch

FLOATING = ("float64", "float32", "bfloat16", "float16")
TORCH_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
                "float16": torch.float16}
NUMPY_DTYPES = {"float64": np.dtype(np.float64), "float32": np.dtype(np.float32),
                "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
# Machine epsilon per format: the rounding level a difference is measured against.
EPS = {name: float(ml_dtypes.finfo(dtype).eps) for name, dtype in NUMPY_DTYPES.items()}


def dtype_name(dtype: Any) -> str:
    """A torch dtype, numpy/ml_dtypes dtype or string -> ``"float32"``, ``"bfloat16"``, ..."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).removeprefix("torch.")
    return np.dtype(dtype).name


def is_floating(array: Any) -> bool:
    """numpy (ml_dtypes included), JAX or torch array with a floating dtype."""
    if isinstance(array, torch.Tensor):
        return array.is_floating_point()
    return dtype_name(array.dtype) in FLOATING or np.issubdtype(np.dtype(array.dtype), np.floating)


def torch_to_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A torch tensor -> a numpy copy, bit for bit (bfloat16 through ``ml_dtypes``)."""
    tensor = tensor.detach().cpu()
    if tensor.dtype == torch.bfloat16:
        return tensor.contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return tensor.numpy().copy()


def numpy_to_torch(array: Any, device: torch.device | str | None = None) -> torch.Tensor:
    """A numpy (or ``ml_dtypes``, or JAX) array -> a torch tensor, bit for bit."""
    array = np.array(array, copy=True)
    if array.dtype == ml_dtypes.bfloat16:
        tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(array)
    return tensor if device is None else tensor.to(device)


def resolve_device(device: str) -> tuple[torch.device, jax.Device]:
    """``"auto"`` (the accelerator when both frameworks see one, else the CPU), ``"cpu"`` or ``"cuda"``/``"gpu"``.

    Returns the torch device and the JAX device the comparison runs on. Raises ``ValueError`` when an
    accelerator is asked for and either framework has none.
    """
    if device not in ("auto", "cpu", "cuda", "gpu"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    jax_gpus = [d for d in jax.devices() if d.platform == "gpu"] if jax.default_backend() == "gpu" else []
    torch_gpu = torch.cuda.is_available()
    if device == "cpu" or (device == "auto" and not (torch_gpu and jax_gpus)):
        return torch.device("cpu"), jax.devices("cpu")[0]
    if not torch_gpu or not jax_gpus:
        raise ValueError(f"device {device!r} asked, but torch sees {'a' if torch_gpu else 'no'} CUDA device and "
                         f"JAX {'a' if jax_gpus else 'no'} GPU (jax.devices(): {jax.devices()})")
    return torch.device("cuda", 0), jax_gpus[0]
