"""``train --config FILE``: read a TOML run configuration, and write the resolved one every run leaves behind.

The file holds the fields of :class:`ssm_metarl.train.TrainConfig` (``iterations``, ``meta_batch``,
...), except that ``seeds`` (a list) stands for ``seed``. Where to write (``--output``,
``--overwrite``, ``--resume``) is not part of it: a config file says what is computed, not where.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HEADER = ("# ssm-metarl train: the full resolved configuration of this run.\n"
          "# Repeat it exactly with: ssm-metarl train --config {path} --output NEW_DIR\n")


def read_toml(path: Path) -> dict[str, Any]:
    """The top-level table of a TOML file; ``ValueError`` naming the file for a syntax error."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file {str(path)!r} does not exist") from None
    except OSError as err:
        raise ValueError(f"cannot read config file {str(path)!r}: {err}") from err
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"config file {str(path)!r} is not valid TOML: {err}") from err


def check_keys(values: Mapping[str, Any], known: list[str], source: str) -> None:
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {unknown}; expected a subset of {sorted(known)}")


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{key} must be finite to be written to a config file, got {value!r}")
        return repr(value)  # the shortest text that reads back as exactly this float
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(key, v) for v in value) + "]"
    raise TypeError(f"{key}: cannot write a {type(value).__name__} to TOML")


def dumps_toml(values: Mapping[str, Any], path: Path | None = None) -> str:
    """Flat ``values`` (no None) as TOML text that :func:`tomllib.loads` reads back exactly."""
    header = HEADER.format(path=path if path is not None else "config.toml")
    return header + "".join(f"{key} = {_toml_value(key, value)}\n" for key, value in values.items())
