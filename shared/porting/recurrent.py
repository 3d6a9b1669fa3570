"""Weight rules for torch's ``nn.GRU`` and ``nn.LSTM``, any number of layers and directions (pure numpy).

torch packs every layer ``k`` and direction into four tensors: ``weight_ih_l{k}`` (G*H, I_k),
``weight_hh_l{k}`` (G*H, H), ``bias_ih_l{k}``, ``bias_hh_l{k}`` (G*H,), with ``_reverse`` appended
for the backward direction (G = 3 gates (r, z, n) for GRU, 4 gates (i, f, g, o) for LSTM).

The Flax side holds one cell per layer and direction, each with a packed ``dense_i`` (I -> G*H) and
``dense_h`` (H -> G*H), both with a bias (``ssm_metarl.porting.torch_compatible_gru_cell`` /
``torch_compatible_lstm_cell``). The cells sit at these paths, relative to the layer (Flax paths
normalised: ``nnx.RNN``'s ``cell`` and ``nnx.Sequential``'s ``layers`` dropped):

    one layer, one direction     ``dense_i.kernel`` ...            (``nnx.RNN(cell)``)
    one layer, both directions   ``forward_rnn.dense_i.kernel``, ``backward_rnn.…``  (``nnx.Bidirectional``)
    L layers                     ``{k}.dense_i.kernel`` or ``{k}.forward_rnn.…``  (``torch_compatible_rnn``)

Each weight is a transpose and each bias a copy: exact both ways.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from shared.porting.rules import Rule, RuleError, Shapes, Tensors, register_rule

TORCH_NAME = re.compile(r"(weight|bias)_(ih|hh)_l(\d+)(_reverse)?")
FLAX_PREFIX = re.compile(r"(?:(\d+)\.)?(?:(forward_rnn|backward_rnn)\.)?(dense_[ih])\.(kernel|bias)")
GATES = {"gru": 3, "lstm": 4}
TWIN = {"gru": "torch_compatible_gru_cell", "lstm": "torch_compatible_lstm_cell"}
Cell = tuple[int, bool]  # (layer, reverse)


def _torch_cells(names: object, kind: str) -> dict[Cell, set[str]]:
    cells: dict[Cell, set[str]] = {}
    for name in names:
        match = TORCH_NAME.fullmatch(name)
        if match is None:
            hint = " (an LSTM with proj_size has no Flax twin)" if name.startswith("weight_hr") else ""
            raise RuleError(f"nn.{kind.upper()} tensor {name!r} is not weight/bias_ih/hh_l<k>[_reverse]{hint}")
        kind_, which, layer, reverse = match.groups()
        cells.setdefault((int(layer), reverse is not None), set()).add(f"{kind_}_{which}")
    return cells


def _flax_cells(names: object) -> dict[Cell, str]:
    """(layer, reverse) -> the cell's prefix in the flax unit."""
    cells: dict[Cell, str] = {}
    for name in names:
        match = FLAX_PREFIX.fullmatch(name)
        if match is None:
            raise RuleError(f"flax variable {name!r} is not <layer>.[forward_rnn|backward_rnn.]dense_i/h.kernel/bias")
        layer, direction, _, _ = match.groups()
        prefix = "".join(f"{p}." for p in (layer, direction) if p)
        cells[(int(layer or 0), direction == "backward_rnn")] = prefix
    return cells


def _describe(cells: object) -> str:
    return ", ".join(f"layer {layer}{' reverse' if reverse else ''}" for layer, reverse in sorted(cells)) or "none"


def recurrent_rule(kind: str) -> Rule:
    """The rule for ``nn.GRU`` (``kind="gru"``) or ``nn.LSTM`` (``"lstm"``)."""
    gates = GATES[kind]

    def suffix(cell: Cell) -> str:
        return f"_l{cell[0]}" + ("_reverse" if cell[1] else "")

    def to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
        torch_cells = _torch_cells(tensors, kind)
        flax_cells = _flax_cells(shapes)
        if set(torch_cells) != set(flax_cells):
            raise RuleError(
                f"the torch nn.{kind.upper()} holds {_describe(torch_cells)}; the flax side holds cells for "
                f"{_describe(flax_cells)}. Build the port with ssm_metarl.porting.torch_compatible_rnn({kind!r}, "
                "in_features, hidden, num_layers=..., bidirectional=...), which holds one cell per layer and direction"
            )
        out: Tensors = {}
        for cell, held in sorted(torch_cells.items()):
            prefix = flax_cells[cell]
            if {"bias_ih", "bias_hh"} - held:
                raise RuleError(f"nn.{kind.upper()} without biases (bias=False) has no twin here (the flax cell's "
                                f"dense_i has a bias); missing {sorted({'bias_ih', 'bias_hh'} - held)}")
            if f"{prefix}dense_h.bias" not in shapes:
                raise RuleError(
                    f"this flax cell's dense_h has no bias, so torch's bias_hh (the hidden bias"
                    f"{', inside r * (W_hn h + b_hn)' if kind == 'gru' else ''}) has no place in it; "
                    f"build the cell with ssm_metarl.porting.{TWIN[kind]} (dense_h with a bias)")
            if f"{prefix}dense_i.bias" not in shapes:
                raise RuleError(f"this flax cell's dense_i has no bias, so torch's bias_ih has no place in it; "
                                f"build the cell with ssm_metarl.porting.{TWIN[kind]}")
            s = suffix(cell)
            for which in ("i", "h"):
                weight = np.asarray(tensors[f"weight_{which}h{s}"])
                if weight.ndim != 2 or weight.shape[0] % gates:
                    raise RuleError(f"weight_{which}h{s} must be ({gates}*hidden, features), got {weight.shape}")
                out[f"{prefix}dense_{which}.kernel"] = np.ascontiguousarray(weight.T)
                out[f"{prefix}dense_{which}.bias"] = np.array(tensors[f"bias_{which}h{s}"], copy=True)
        return out

    def to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
        flax_cells = _flax_cells(tensors)
        out: Tensors = {}
        for cell, prefix in sorted(flax_cells.items()):
            s = suffix(cell)
            for which in ("i", "h"):
                for name, torch_name in (("kernel", f"weight_{which}h{s}"), ("bias", f"bias_{which}h{s}")):
                    key = f"{prefix}dense_{which}.{name}"
                    if key not in tensors:
                        raise RuleError(f"the flax cell {prefix or '<cell>'!r} has no {key!r}; "
                                        f"torch needs {torch_name}")
                    value = np.asarray(tensors[key])
                    out[torch_name] = np.ascontiguousarray(value.T) if name == "kernel" else np.array(value, copy=True)
        return out

    return Rule(kind, to_flax, to_torch)


GRU = recurrent_rule("gru")
LSTM = recurrent_rule("lstm")

for _flax in ("GRUCell", "TorchRNN", "Bidirectional"):
    register_rule("GRU", _flax, GRU)
for _flax in ("OptimizedLSTMCell", "TorchRNN", "Bidirectional"):
    register_rule("LSTM", _flax, LSTM)
