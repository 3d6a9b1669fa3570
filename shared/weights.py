"""Safetensors weight files that either backend can read, written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open
from safetensors.numpy import save_file

FORMAT = "ssm-metarl/v1"


def save_weights(path: str | os.PathLike[str], tensors: Mapping[str, np.ndarray], config: Mapping[str, object]) -> None:
    """Write canonical ``tensors`` and a JSON ``config`` to ``path`` (temporary file, then rename)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot save weights: directory {str(path.parent)!r} does not exist")
    arrays = {name: np.asarray(value, order="C") for name, value in tensors.items()}  # keeps 0-d arrays 0-d
    metadata = {"format": FORMAT, "config": json.dumps(dict(config), sort_keys=True)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(arrays, tmp, metadata=metadata)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_weights(path: str | os.PathLike[str]) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Read a file written by :func:`save_weights`; returns ``(tensors, config)``.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the problem for a
    truncated, corrupt or foreign file.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{str(path)!r} is a directory; expected a .safetensors weight file")
    if not path.is_file():
        raise FileNotFoundError(f"weight file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="np") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{str(path)!r} is not an ssm-metarl weight file: expected metadata format {FORMAT!r}, "
            f"got {metadata.get('format')!r}"
        )
    try:
        config = json.loads(metadata["config"])
    except (KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"{str(path)!r} has no valid JSON 'config' in its metadata") from err
    return tensors, config


def check_weights(tensors: Mapping[str, np.ndarray], expected: Mapping[str, tuple[tuple[int, ...], str]],
                  source: str = "checkpoint") -> None:
    """Check loaded ``tensors`` against the expected canonical layout ``name -> (shape, dtype name)``.

    Raises one ``ValueError`` naming every missing or unexpected key, wrong shape, wrong dtype and
    non-finite tensor, so that both backends refuse a bad file with the same message before any
    computation (a NaN weight would otherwise surface as a LAPACK "SVD did not converge").
    """
    from shared.layout import check_layout

    try:
        check_layout(tensors, {name: shape for name, (shape, _) in expected.items()})
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    wrong = [f"{name}: expected {dtype}, got {np.asarray(tensors[name]).dtype}"
             for name, (_, dtype) in sorted(expected.items()) if np.asarray(tensors[name]).dtype != np.dtype(dtype)]
    if wrong:
        raise ValueError(f"{source}: wrong dtypes [" + "; ".join(wrong) + "]")
    bad = [f"{name} ({int((~np.isfinite(tensors[name])).sum())} of {np.size(tensors[name])} values)"
           for name in sorted(expected) if not np.isfinite(tensors[name]).all()]
    if bad:
        raise ValueError(f"{source}: non-finite (NaN or Inf) weights in " + ", ".join(bad))
