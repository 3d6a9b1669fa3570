r"""Override tables: one row pairs a whole family of torch paths with Flax paths (pure Python).

Like jax-ml/bonsai's ``params.py``: a pattern over torch paths (module or tensor paths), the Flax
target built from the pattern's captures, and optionally a named rule::

    overrides = regex_table([
        (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj", r"layers.\1.attn.\2", "head_linear"),
        (r"model\.layers\.(\d+)\.self_attn\.o_proj", r"layers.\1.attn.o", "head_linear"),
        (r"model\.embed_tokens", "embedder"),
    ])
    copy_torch_to_flax(torch_model, flax_model, overrides=overrides)

``glob_table`` takes ``*`` (one path segment) instead, and fills the target's ``*`` in order.
The first matching row wins; a path no row matches pairs as usual (by path, then automatically).
Rules by name: :data:`NAMED` (``linear``, ``head_linear``, ``transpose``, ``conv``, ...) or a ``Rule``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from shared.porting import attention, recurrent, rules
from shared.porting.rules import Rule

NAMED: dict[str, Rule] = {
    "linear": rules.LINEAR, "conv": rules.CONV, "conv_transpose": rules.CONV_TRANSPOSE,
    "linear_general": rules.LINEAR_GENERAL, "head_linear": rules.LINEAR_GENERAL, "norm": rules.NORM,
    "norm_by_structure": rules.NORM_BY_STRUCTURE, "plus_one_scale": rules.PLUS_ONE_SCALE,
    "embedding": rules.EMBEDDING, "batch_norm": rules.BATCH_NORM, "gru": recurrent.GRU, "lstm": recurrent.LSTM,
    "multihead_attention": attention.MULTIHEAD_ATTENTION, "ssm": rules.SSM, "identity": rules.IDENTITY,
    "copy": rules.IDENTITY, "transpose": rules.TRANSPOSE,
}
"""Rules by name, for override tables."""

Row = tuple[str, str] | tuple[str, str, str | Rule]
Target = str | tuple[str, Rule]


def _rule(row: Sequence) -> Rule | None:
    if len(row) == 2:
        return None
    if len(row) != 3:
        raise TypeError(f"an override row is (pattern, target) or (pattern, target, rule), got {row!r}")
    named = row[2]
    if isinstance(named, Rule):
        return named
    if named not in NAMED:
        raise ValueError(f"unknown rule name {named!r} in override row {row!r}; known: {sorted(NAMED)}")
    return NAMED[named]


def regex_table(rows: Sequence[Row]) -> Callable[[str], Target | None]:
    """Overrides from ``(regex, target[, rule])`` rows: a regex fully matching a torch path; the target
    may use ``\\1``-style groups. Returns the callable form of ``overrides``."""
    compiled = []
    for row in rows:
        if not isinstance(row, (tuple, list)) or len(row) < 2:
            raise TypeError(f"an override row is (pattern, target) or (pattern, target, rule), got {row!r}")
        try:
            compiled.append((re.compile(row[0]), row[1], _rule(row)))
        except re.error as err:
            raise ValueError(f"override pattern {row[0]!r} is not a regular expression: {err}") from None

    def lookup(path: str) -> Target | None:
        for pattern, target, rule in compiled:
            match = pattern.fullmatch(path)
            if match is not None:
                flax_path = match.expand(target)
                return flax_path if rule is None else (flax_path, rule)
        return None

    lookup.rows = tuple(rows)  # type: ignore[attr-defined]
    return lookup


def glob_table(rows: Sequence[Row]) -> Callable[[str], Target | None]:
    """Overrides from ``(glob, target[, rule])`` rows: ``*`` matches one path segment and fills the
    target's ``*`` in order; ``**`` matches any number of segments (``"model.**"`` -> ``"**"``)."""
    converted = []
    for row in rows:
        if not isinstance(row, (tuple, list)) or len(row) < 2:
            raise TypeError(f"an override row is (pattern, target) or (pattern, target, rule), got {row!r}")
        pattern, target = row[0], row[1]
        regex = "".join("(.*)" if part == "**" else "([^.]+)" if part == "*" else re.escape(part)
                        for part in re.split(r"(\*\*|\*)", pattern))
        replacement = _numbered(target)
        converted.append((regex, replacement, *row[2:]))
    return regex_table(converted)


def _numbered(target: str) -> str:
    """``"layers.*.attn"`` -> ``"layers.\\1.attn"``: each ``*``/``**`` becomes the next group."""
    parts = re.split(r"(\*\*|\*)", target)
    out, group = [], 0
    for part in parts:
        if part in ("*", "**"):
            group += 1
            out.append(f"\\{group}")
        else:
            out.append(part.replace("\\", "\\\\"))
    return "".join(out)
