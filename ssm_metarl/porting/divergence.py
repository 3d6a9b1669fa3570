"""Find the first layer where a Flax port's forward pass departs from its PyTorch original.

Both models run the same input once. torch: a forward hook on every module records its first
input and output. Flax: every module of a merged copy is swapped, for that one call, to a subclass
whose ``__call__`` records the same (values inside ``nnx.scan``/``jit`` are tracers and are skipped;
``nnx.capture`` cannot be used, it breaks ``nnx.RNN``'s scan carry). Modules pair by (normalised)
path, outputs are compared in torch's completion order (children before parents) at the outputs
tolerance; channels-first torch activations are matched against channels-last Flax ones.

The first module whose output differs is reported with its max abs and normwise relative error.
If its input already differs, the difference entered before it: in a torch-only module run in
between (``nn.GELU`` where the port calls ``jax.nn.gelu``) or in plain code. Hints name the
classic causes when they fit: tanh-approximate GELU, LayerNorm epsilon, an untransposed weight,
x64 off or TF32 on, 'SAME' against explicit padding, BatchNorm's momentum convention.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import torch
from flax import nnx
from torch.func import functional_call

from shared.compare import compare_leaf
from shared.porting import Plan
from shared.porting.rules import IDENTITY
from ssm_metarl.porting.hints import (
    activation_hints,
    extra_module_hints,
    flatten_hints,
    lower_precision_hints,
    module_hints,
    pooling_hints,
    precision_hints,
    rounding_hint,
)
from ssm_metarl.porting.io import Inputs, torch_method
from ssm_metarl.porting.precision import numpy_to_torch, torch_to_numpy
from ssm_metarl.porting.trees import flax_index, plan_for


@dataclasses.dataclass
class Record:
    path: str
    type_name: str
    inputs: np.ndarray | None
    output: np.ndarray | None
    module: Any


@dataclasses.dataclass(frozen=True)
class Divergence:
    """The first module whose output differs beyond ``tolerance`` (normwise relative error)."""

    module: str
    module_type: str
    max_abs: float
    rel: float
    tolerance: float
    input_matches: bool
    last_match: str | None
    hints: tuple[str, ...]

    def describe(self) -> str:
        where = (f"first divergent module: {self.module!r} ({self.module_type}), max abs {self.max_abs:.2e}, "
                 f"rel {self.rel:.2e} (tolerance {self.tolerance:.0e})")
        if not self.input_matches:
            where += (f"; its input already differs, so the difference enters after {self.last_match!r} "
                      "(the last module whose output matched), in code that is not a paired module")
        lines = [where] + [f"  hint: {hint}" for hint in self.hints]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _first_array(value: Any) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        return torch_to_numpy(value)
    if isinstance(value, jax.core.Tracer):
        return None
    if isinstance(value, (jax.Array, np.ndarray)):
        return np.asarray(value)
    if isinstance(value, dict):
        value = [value[k] for k in sorted(value, key=str)]
    if isinstance(value, (tuple, list)):
        for item in value:
            found = _first_array(item)
            if found is not None:
                return found
    return None


def record_torch(model: torch.nn.Module, x: Inputs | torch.Tensor, train: bool, method: str | None = None
                 ) -> tuple[list[Record], dict[str, np.ndarray]]:
    """First call of every module, in completion order, and the buffers after the forward (updated
    copies: the model is unchanged)."""
    x = Inputs.of(x)
    records: dict[str, Record] = {}
    handles = []

    def hook_for(path: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            if path not in records:
                records[path] = Record(path, type(module).__name__, _first_array(args), _first_array(output), module)
        return hook

    for path, module in model.named_modules():
        handles.append(module.register_forward_hook(hook_for(path)))
    was_training = model.training
    try:
        model.train(train)
        params = dict(model.named_parameters())
        buffers = {k: v.clone() for k, v in model.named_buffers()}
        with torch.no_grad(), torch_method(model, method):
            functional_call(model, (params, buffers), tuple(x.args), dict(x.kwargs))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return list(records.values()), {k: torch_to_numpy(v) for k, v in buffers.items()}


def _recording_class(cls: type, sink: Callable[[Any, Any, Any], None]) -> type:
    def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
        output = cls.__call__(self, *args, **kwargs)
        sink(self, args, output)
        return output

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})


def record_flax(model: nnx.Module, x: Inputs | Any, train: bool, method: str | None = None
                ) -> tuple[list[Record], dict[str, np.ndarray]]:
    """First concrete call of every module of a copy of ``model``, and the copy's variables after the
    forward (``model`` itself is not changed)."""
    graphdef, state = nnx.split(model)
    copy = nnx.merge(graphdef, state)
    copy.train() if train else copy.eval()
    index = flax_index(copy)
    name_of = {}
    for name, module in index.modules.items():
        name_of.setdefault(id(module), name)
    for path, node in nnx.iter_graph(copy):
        if isinstance(node, nnx.Module) and id(node) not in name_of:
            name_of[id(node)] = ".".join(str(p) for p in path)
    records: dict[str, Record] = {}

    def sink(module: Any, args: tuple, output: Any) -> None:
        name = name_of.get(id(module))
        array = _first_array(output)
        if name is not None and name not in records and array is not None:
            records[name] = Record(name, type(module).__name__, _first_array(args), array, module)

    swapped = []
    try:
        for _, node in nnx.iter_graph(copy):
            if isinstance(node, nnx.Module) and callable(node):
                original = type(node)
                node.__class__ = _recording_class(original, sink)
                swapped.append((node, original))
        x = Inputs.of(x)
        (getattr(copy, method) if method else copy)(*x.args, **x.kwargs)
    finally:
        for node, original in swapped:
            node.__class__ = original
    return list(records.values()), dict(flax_index(copy).tree.tensors)


def _aligned(torch_value: np.ndarray | None, flax_value: np.ndarray | None) -> tuple[np.ndarray, np.ndarray] | None:
    """The two activations in one layout (torch channels-first moved last when that makes them match)."""
    if torch_value is None or flax_value is None:
        return None
    if torch_value.shape != flax_value.shape and torch_value.squeeze().shape == flax_value.squeeze().shape:
        torch_value = torch_value.reshape(flax_value.shape)  # a one-step sequence (B, 1, H) against a cell's (B, H)
    if torch_value.shape == flax_value.shape:
        return torch_value, flax_value
    if torch_value.ndim >= 3:
        moved = np.moveaxis(torch_value, 1, -1)
        if moved.shape == flax_value.shape:
            return moved, flax_value
    if torch_value.size == flax_value.size and torch_value.shape[:2] == flax_value.shape[:2]:
        return torch_value, flax_value.reshape(torch_value.shape)  # head-shaped (b, t, N, H) vs (b, t, N*H)
    return None


def find_divergence(torch_model: torch.nn.Module, flax_model: nnx.Module, inputs: Inputs | Any, *, tolerance: float,
                    train: bool = True, plan: Plan | None = None, flax_inputs: Inputs | None = None,
                    device: torch.device | None = None, torch_method: str | None = None,
                    flax_method: str | None = None) -> Divergence | None:
    """Run both models on ``inputs`` (an array, a tuple of positional arrays or an :class:`Inputs`; numpy)
    and return the first divergent module, or ``None`` if every paired module's output agrees within
    ``tolerance``. ``flax_inputs``: the Flax side's call when it differs (the step mode's conventions);
    ``device``: where ``torch_model`` lives; ``torch_method``/``flax_method``: call that method instead of
    the forward (a policy's ``step``)."""
    plan = plan if plan is not None else plan_for(torch_model, flax_model)
    inputs = Inputs.of(inputs)
    torch_inputs = inputs.map(lambda a: numpy_to_torch(a, device))
    torch_records, torch_after = record_torch(torch_model, torch_inputs, train, torch_method)
    flax_list, flax_after = record_flax(flax_model, flax_inputs if flax_inputs is not None else inputs, train,
                                        flax_method)
    flax_records = {r.path: r for r in flax_list}
    floating = [p.dtype for p in torch_model.parameters() if p.is_floating_point()]
    run_dtype = str(floating[0]).removeprefix("torch.") if floating else "float32"
    flax_path = {pair.torch.path: pair.flax.path for pair in plan.pairs if pair.rule is not IDENTITY}
    last_match: Record | None = None
    between: list[Record] = []
    for rec in torch_records:
        twin = flax_records.get(flax_path.get(rec.path, rec.path))
        if twin is None:
            between.append(rec)
            continue
        outputs = _aligned(rec.output, twin.output)
        if outputs is None:
            shapes = (None if rec.output is None else rec.output.shape,
                      None if twin.output is None else twin.output.shape)
            return Divergence(rec.path, rec.type_name, float("inf"), float("inf"), tolerance, True,
                              last_match.path if last_match else None,
                              (f"output shapes differ: torch {shapes[0]}, flax {shapes[1]}",
                               *module_hints(rec, twin, None)))
        diff = compare_leaf(rec.path, outputs[1], outputs[0])
        if diff.passes(tolerance):
            last_match, between = rec, []
            continue
        inputs_pair = _aligned(rec.inputs, twin.inputs)
        input_diff = None if inputs_pair is None else compare_leaf(rec.path, inputs_pair[1], inputs_pair[0])
        if input_diff is None or input_diff.passes(tolerance):
            hints = (module_hints(rec, twin, inputs_pair) + extra_module_hints(rec, twin, train)
                     + precision_hints(rec, twin, torch_model) + rounding_hint(run_dtype, diff.rel))
            return Divergence(rec.path, rec.type_name, diff.max_abs, diff.rel, tolerance, True,
                              last_match.path if last_match else None, tuple(hints))
        # The input already differs: blame the torch-only module run just before, if its output is that input.
        reference = last_match.output if last_match is not None else None
        for culprit in reversed(between):
            pair = _aligned(culprit.output, twin.inputs)
            if pair is not None:
                culprit_diff = compare_leaf(culprit.path, pair[1], pair[0])
                hints = (activation_hints(culprit.inputs, pair[0], pair[1]) + pooling_hints(culprit, pair[0], pair[1])
                         + lower_precision_hints(culprit, None) + precision_hints(rec, twin, torch_model)
                         + rounding_hint(run_dtype, culprit_diff.rel))
                return Divergence(culprit.path, culprit.type_name, culprit_diff.max_abs, culprit_diff.rel, tolerance,
                                  True, last_match.path if last_match else None, tuple(hints))
        hints = []
        if reference is not None and inputs_pair is not None and reference.shape == inputs_pair[0].shape:
            hints = activation_hints(reference, inputs_pair[0], inputs_pair[1])
        if inputs_pair is not None:
            hints += flatten_hints(last_match, inputs_pair[0], inputs_pair[1])
        hints += rounding_hint(run_dtype, input_diff.rel)
        return Divergence(rec.path, rec.type_name, input_diff.max_abs, input_diff.rel, tolerance, False,
                          last_match.path if last_match else None,
                          tuple(hints + precision_hints(rec, twin, torch_model)))
    return _statistics_divergence(torch_model, flax_model, plan, torch_after, flax_after, tolerance,
                                  {r.path: r for r in torch_records}, flax_records, flax_path)


def _statistics_divergence(torch_model: torch.nn.Module, flax_model: nnx.Module, plan: Plan,
                           torch_after: dict[str, np.ndarray], flax_after: dict[str, np.ndarray], tolerance: float,
                           torch_records: dict[str, Record], flax_records: dict[str, Record],
                           flax_path: dict[str, str]) -> Divergence | None:
    """Every output agrees: do the buffers updated by the forward (BatchNorm running statistics)?"""
    if not torch_after:
        return None
    torch_state = {name: torch_to_numpy(t) for name, t in torch_model.state_dict().items()}
    mapped = plan.to_torch(flax_after, torch_fill={**torch_state, **torch_after})
    for name, value in torch_after.items():
        if name not in mapped or not np.issubdtype(value.dtype, np.floating):
            continue
        diff = compare_leaf(name, mapped[name], value)
        if diff.passes(tolerance):
            continue
        module_path = name.rpartition(".")[0]
        rec = torch_records.get(module_path)
        twin = flax_records.get(flax_path.get(module_path, module_path))
        hints = module_hints(rec, twin, None) if rec is not None and twin is not None else []
        return Divergence(f"{module_path} ({name.rpartition('.')[2]} after the forward)",
                          type(torch_model.get_submodule(module_path)).__name__, diff.max_abs, diff.rel, tolerance,
                          True, None, tuple(hints))
    return None
