"""The canonical parameter layout (PyTorch ``state_dict`` names and shapes) and its Flax twin.

Canonical: flat names such as ``"B.weight"`` with Linear weights shaped ``(out, in)``.
Flax NNX: nested dicts such as ``{"B": {"kernel": ...}}`` with kernels shaped ``(in, out)``.
Both conversions are pure numpy and exact (a transpose is a copy, never arithmetic).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from shared.config import SSMConfig

Flat = dict[str, np.ndarray]


def ssm_layout(config: SSMConfig) -> dict[str, tuple[int, ...]]:
    """Canonical name -> shape of every SSM parameter."""
    s, i, o, h = config.state_dim, config.input_dim, config.output_dim, config.hidden_dim
    return {
        "nu_log": (s,),
        "B.weight": (s, i),
        "B.bias": (s,),
        "W1.weight": (h, s),
        "W1.bias": (h,),
        "W2.weight": (o, h),
        "W2.bias": (o,),
        "D.weight": (o, i),
        "D.bias": (o,),
    }


def check_layout(tensors: Mapping[str, Any], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise ``ValueError`` listing every missing key, extra key and wrong shape at once."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    wrong = sorted(
        f"{k}: expected {tuple(expected[k])}, got {tuple(np.shape(tensors[k]))}"
        for k in set(expected) & set(tensors)
        if tuple(np.shape(tensors[k])) != tuple(expected[k])
    )
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append(f"missing keys {missing}")
        if extra:
            parts.append(f"unexpected keys {extra}")
        if wrong:
            parts.append("wrong shapes [" + "; ".join(wrong) + "]")
        raise ValueError("parameters do not match the expected layout: " + ", ".join(parts))


def torch_to_flax(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Canonical flat dict -> nested Flax dict (``weight (out, in)`` -> ``kernel (in, out)``)."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *path, leaf = name.split(".")
        value = np.asarray(value)
        if leaf == "weight":
            if value.ndim != 2:
                raise ValueError(f"{name}: a Linear weight must be 2-D (out, in), got shape {value.shape}")
            leaf, value = "kernel", np.ascontiguousarray(value.T)
        node = nested
        for key in path:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"{name}: '{key}' is both a parameter and a module")
        node[leaf] = value
    return nested


def canonical_name(flax_path: Sequence[str]) -> str:
    """A Flax parameter path such as ``("B", "kernel")`` -> its canonical name ``"B.weight"``."""
    *prefix, leaf = (str(key) for key in flax_path)
    return ".".join([*prefix, "weight" if leaf == "kernel" else leaf])


def flax_to_torch(nested: Mapping[str, Any]) -> Flat:
    """Nested Flax dict -> canonical flat dict (``kernel (in, out)`` -> ``weight (out, in)``)."""
    flat: Flat = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, Mapping):
                walk(value, f"{prefix}{key}.")
                continue
            value = np.asarray(value)
            if key == "kernel":
                if value.ndim != 2:
                    raise ValueError(f"{prefix}kernel must be 2-D (in, out), got shape {value.shape}")
                key, value = "weight", np.ascontiguousarray(value.T)
            flat[f"{prefix}{key}"] = value

    walk(nested, "")
    return flat
