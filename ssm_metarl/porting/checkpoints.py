"""Save a checked pair, load it back, and load a user's real torch weights.

:func:`save_pair` writes ``torch.safetensors`` (the torch ``state_dict``), ``flax.safetensors`` (the
port's variables by normalised path) and ``manifest.json`` (which torch module pairs with which Flax
module under which rule, every tensor's shape and dtype). :func:`load_pair` loads both sides, checks
that today's pairing is the one in the manifest, and that the two files still map onto each other exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch
from flax import nnx

from shared.porting import Plan
from shared.porting.pairing import Overrides
from ssm_metarl.porting.precision import dtype_name, numpy_to_torch
from ssm_metarl.porting.trees import flax_index, load_into_flax, load_into_torch, plan_for, torch_tree

FORMAT = 1


def _manifest(plan: Plan, torch_model: torch.nn.Module, flax_model: nnx.Module, torch_tensors: dict[str, np.ndarray],
              flax_tensors: dict[str, np.ndarray]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "torch_class": type(torch_model).__qualname__,
        "flax_class": type(flax_model).__qualname__,
        "pairs": [{"torch": p.torch.path, "flax": p.flax.path, "rule": p.rule.name} for p in plan.pairs],
        "torch_tensors": {k: [list(v.shape), dtype_name(v.dtype)] for k, v in sorted(torch_tensors.items())},
        "flax_tensors": {k: [list(v.shape), dtype_name(v.dtype)] for k, v in sorted(flax_tensors.items())},
    }


def _write(path: Path, tensors: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def save_pair(torch_model: torch.nn.Module, flax_model: nnx.Module, directory: str | os.PathLike, *,
              overrides: Overrides = None) -> Path:
    """Write both models and the mapping manifest into ``directory`` (created); returns it."""
    plan = plan_for(torch_model, flax_model, overrides)
    torch_tensors = torch_tree(torch_model).tensors
    flax_tensors = dict(flax_index(flax_model).tree.tensors)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "torch.safetensors", torch_tensors)
    _write(directory / "flax.safetensors", flax_tensors)
    manifest = _manifest(plan, torch_model, flax_model, torch_tensors, flax_tensors)
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return directory


def load_pair(torch_model: torch.nn.Module, flax_model: nnx.Module, directory: str | os.PathLike, *,
              overrides: Overrides = None) -> Plan:
    """Load a pair saved by :func:`save_pair` into freshly built models; returns the pairing.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` when the models or the pairing differ
    from the manifest, or when the saved torch weights no longer map exactly onto the saved Flax ones.
    Nothing is written into either model unless every check passes.
    """
    directory = Path(directory)
    paths = {name: directory / name for name in ("manifest.json", "torch.safetensors", "flax.safetensors")}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"not a saved pair (save_pair writes manifest.json, torch.safetensors, "
                                f"flax.safetensors); missing {missing}")
    manifest = json.loads(paths["manifest.json"].read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{paths['manifest.json']}: format {manifest.get('format')!r}, expected {FORMAT}")
    plan = plan_for(torch_model, flax_model, overrides)
    torch_tensors = safetensors.numpy.load_file(str(paths["torch.safetensors"]))
    flax_tensors = safetensors.numpy.load_file(str(paths["flax.safetensors"]))
    expected = _manifest(plan, torch_model, flax_model, torch_tree(torch_model).tensors,
                         dict(flax_index(flax_model).tree.tensors))
    for key, what in (("pairs", "pairing"), ("torch_tensors", "torch tensors"), ("flax_tensors", "flax tensors")):
        if manifest[key] != expected[key]:
            saved, now = manifest[key], expected[key]
            if isinstance(saved, dict):
                diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))[:5]
            else:
                diff = [p for p in saved if p not in now][:5] + [p for p in now if p not in saved][:5]
            raise ValueError(f"{directory}: the saved {what} differ from these models' ({type(torch_model).__name__}, "
                             f"{type(flax_model).__name__}; saved {manifest['torch_class']}, "
                             f"{manifest['flax_class']}): first differences {diff}")
    mapped = plan.to_flax(torch_tensors)
    off = [k for k, v in mapped.items() if not np.array_equal(np.asarray(v), flax_tensors[k])]
    if off:
        raise ValueError(f"{directory}: torch.safetensors and flax.safetensors do not map onto each other exactly "
                         f"(under the manifest's pairing) at {off[:5]}: one file was changed after save_pair")
    load_into_torch(torch_model, torch_tensors)
    load_into_flax(flax_model, flax_tensors)
    return plan


def load_torch_checkpoint(torch_model: torch.nn.Module, path: str | os.PathLike) -> list[str]:
    """Load a user's real weights (``.safetensors``, or ``.pt``/``.pth``/``.bin`` via ``torch.load(weights_only=True)``,
    a ``state_dict`` or a dict holding one under ``state_dict``/``model``) into ``torch_model``, strictly.

    Floating tensors are cast to the model's dtype (a float32 checkpoint into a float64 model loses
    nothing). Returns notes on casts. Raises ``ValueError`` listing missing, unexpected and misshapen keys.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--torch-checkpoint: no file {path}")
    if path.suffix == ".safetensors":
        state = {k: numpy_to_torch(v) for k, v in safetensors.numpy.load_file(str(path)).items()}
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a pickle with code, a corrupt file: say which
            raise ValueError(f"cannot read torch checkpoint {path} with torch.load(weights_only=True): {err}") from err
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a state_dict (names -> tensors), got {type(state).__name__}")
    own = torch_model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    misshapen = [f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
                 for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or misshapen:
        raise ValueError(f"{path} does not fit {type(torch_model).__name__}: missing {missing[:8]}, unexpected "
                         f"{unexpected[:8]}, shapes differ {misshapen[:8]}")
    notes = []
    with torch.no_grad():
        for name, value in state.items():
            if value.dtype != own[name].dtype:
                notes.append(f"{name}: {dtype_name(value.dtype)} -> {dtype_name(own[name].dtype)}")
            own[name].copy_(value.to(own[name].dtype))
    return notes
