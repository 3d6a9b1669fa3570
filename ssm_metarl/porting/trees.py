"""Read a torch model and its Flax NNX port as ``shared.porting.ModelTree``s, and copy weights between them.

Flax paths are normalised to read like torch's: ``nnx.Sequential``'s ``layers`` segment and
``nnx.RNN``'s ``cell`` segment are dropped (``seq.layers.0.kernel`` -> ``seq.0.kernel``), so the
default pairing by path works for the usual ports. Modules are listed in definition order (torch's
``named_modules``; Flax's attribute order), which automatic pairing uses.

Torch tensors that share storage (an embedding reused as the output head) are recorded as ties.
A custom torch norm (``*RMSNorm``/``*LayerNorm`` with one 1-D weight) is probed once, in float64-free
``torch.no_grad``, for its convention: ``y = x_normed * weight`` or ``x_normed * (1 + weight)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from shared.porting import ModelTree, Plan, plan_pairing
from shared.porting.custom import CustomCopy, CustomPlan, custom_plan
from shared.porting.pairing import Overrides
from ssm_metarl.porting.precision import numpy_to_torch, torch_to_numpy

# Flax containers whose own path segment torch does not have.
TRANSPARENT = ((nnx.Sequential, "layers"), (nnx.RNN, "cell"))
# Module attributes a rule may specialise on (``shared.porting.rules.Rule.specialise``).
FLAX_ATTRIBUTES = ("einsum_str", "transpose_kernel", "scale_offset", "num_heads")


def mro_names(obj: Any) -> tuple[str, ...]:
    return tuple(cls.__name__ for cls in type(obj).__mro__ if cls is not object)


def torch_tree(model: torch.nn.Module) -> ModelTree:
    """Modules and ``state_dict`` tensors (parameters and persistent buffers) as numpy copies; tied
    parameters (one ``nn.Parameter`` under two names) as ``ties``; custom norms' conventions."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(model).__name__}")
    modules = {path: mro_names(module) for path, module in model.named_modules()}
    tensors = {name: torch_to_numpy(t) for name, t in model.state_dict().items()}
    first: dict[int, str] = {}
    ties: dict[str, str] = {}
    for name, param in [*model.named_parameters(remove_duplicate=False),
                        *model.named_buffers(remove_duplicate=False)]:
        if id(param) in first and name in tensors:
            ties[name] = first[id(param)]
        first.setdefault(id(param), name)
    attributes = {path: {"scale_offset": offset} for path, module in model.named_modules()
                  if (offset := norm_scale_offset(module)) is not None}
    return ModelTree(modules, tensors, attributes, ties)


def norm_scale_offset(module: torch.nn.Module) -> float | None:
    """For a custom ``*RMSNorm``/``*LayerNorm`` holding one 1-D weight: ``o`` in ``y = x_normed * (o + weight)``
    (0 or 1), found by running it once with the weight at 0 and at 1. ``None`` for other modules or
    when the module cannot run on a ``(2, dim)`` input."""
    name = type(module).__name__
    if not (name.endswith("RMSNorm") or name.endswith("LayerNorm")) or type(module).__module__.startswith("torch."):
        return None
    params = dict(module.named_parameters(recurse=False))
    weights = [k for k, v in params.items() if k != "bias" and v.ndim == 1]
    if len(weights) != 1 or set(params) - {weights[0], "bias"}:
        return None
    weight = params[weights[0]]
    x = torch.randn(2, weight.shape[0], generator=torch.Generator().manual_seed(0), dtype=weight.dtype)
    outputs = []
    try:
        with torch.no_grad():
            for value in (0.0, 1.0):
                probe = {k: torch.full_like(v, value) if k == weights[0] else torch.zeros_like(v)
                         for k, v in params.items()}
                outputs.append(torch.func.functional_call(module, probe, (x,)).double())
    except Exception:  # a norm that needs more than one input: no probe, the plain convention is assumed
        return None
    y0, y1 = outputs
    step = y1 - y0  # x_normed
    denominator = float((step * step).sum())
    if denominator == 0.0:
        return None
    offset = float((y0 * step).sum()) / denominator
    return round(offset) if abs(offset - round(offset)) < 1e-3 else offset


@dataclasses.dataclass(frozen=True)
class FlaxIndex:
    """A Flax model's tree plus, per normalised name, its real path and ``nnx.Variable``."""

    tree: ModelTree
    paths: Mapping[str, tuple[Any, ...]]  # normalised name -> real graph path
    variables: Mapping[str, nnx.Variable]
    modules: Mapping[str, nnx.Module]
    names: Mapping[tuple[Any, ...], str]  # real graph path -> normalised name


def _is_tensor_variable(node: Any) -> bool:
    return (isinstance(node, nnx.Variable) and not isinstance(node, (nnx.RngState, nnx.Intermediate))
            and isinstance(node.get_value(), (jax.Array, np.ndarray)))


def _definition_key(path: tuple[Any, ...], nodes: Mapping[tuple[Any, ...], Any]) -> tuple[int, ...]:
    """A sort key giving definition order: each segment's position among its parent's attributes."""
    key = []
    for i, segment in enumerate(path):
        parent = nodes.get(tuple(path[:i]))
        if isinstance(segment, int):
            key.append(segment)
            continue
        names = list(vars(parent)) if hasattr(parent, "__dict__") else []
        key.append(names.index(segment) if segment in names else len(names) + (int(segment) if str(segment).isdigit()
                                                                              else 0))
    return tuple(key)


def normalise(path: tuple[Any, ...], nodes: Mapping[tuple[Any, ...], Any]) -> str:
    parts = []
    for i, segment in enumerate(path):
        parent = nodes.get(tuple(path[:i]))
        if any(isinstance(parent, kind) and segment == name for kind, name in TRANSPARENT):
            continue
        parts.append(str(segment))
    return ".".join(parts)


def flax_index(model: nnx.Module) -> FlaxIndex:
    """Walk ``model``'s graph: modules (with merged class names where a segment is dropped) and its
    ``nnx.Variable``s except RNG state and sown intermediates."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"expected a flax.nnx.Module, got {type(model).__name__}")
    nodes = {tuple(path): node for path, node in nnx.iter_graph(model)}
    modules: dict[str, tuple[str, ...]] = {}
    module_objects: dict[str, nnx.Module] = {}
    attributes: dict[str, dict[str, Any]] = {}
    tensors, paths, variables = {}, {}, {}
    for path in sorted(nodes, key=len, reverse=True):  # children first: a cell's names come before its RNN's
        node = nodes[path]
        name = normalise(path, nodes)
        if isinstance(node, nnx.Module):
            modules[name] = modules.get(name, ()) + tuple(n for n in mro_names(node) if n not in modules.get(name, ()))
            module_objects.setdefault(name, node)
            for attribute in FLAX_ATTRIBUTES:
                value = getattr(node, attribute, None)
                if isinstance(value, (str, bool, int, float)):
                    attributes.setdefault(name, {}).setdefault(attribute, value)
        elif _is_tensor_variable(node):
            tensors[name] = np.array(node.get_value())
            paths[name], variables[name] = path, node
    first_path = {}
    for path in nodes:
        first_path.setdefault(normalise(path, nodes), path)
    ordered = sorted(modules, key=lambda n: _definition_key(first_path[n], nodes) if n in first_path else ())
    modules = {n: modules[n] for n in ordered}
    return FlaxIndex(ModelTree(modules, tensors, attributes), paths, variables, module_objects,
                     {path: name for name, path in paths.items()})


def plan_for(torch_model: torch.nn.Module, flax_model: nnx.Module, overrides: Overrides | CustomCopy = None, *,
             auto: bool = True) -> Plan | CustomPlan:
    """Pair the two models' tensors (see ``shared.porting.plan_pairing``); ``overrides`` may also be a
    ``shared.porting.CustomCopy`` (the user's own copy functions, checked by the round trip)."""
    if isinstance(overrides, CustomCopy):
        return custom_plan(torch_tree(torch_model), flax_index(flax_model).tree, overrides)
    return plan_pairing(torch_tree(torch_model), flax_index(flax_model).tree, overrides, auto=auto)


def load_into_flax(flax_model: nnx.Module, tensors: Mapping[str, np.ndarray]) -> None:
    """Write ``tensors`` (normalised names) into the model's variables, exactly.

    A floating dtype must equal the variable's, except BatchNorm statistics, which flax creates in
    float32 whatever ``param_dtype``: they take the incoming dtype.
    """
    index = flax_index(flax_model)
    for name, value in tensors.items():
        variable = index.variables[name]
        current = np.asarray(variable.get_value())
        value = np.asarray(value)
        if value.shape != current.shape:
            raise ValueError(f"flax {name!r}: expected shape {current.shape}, got {value.shape}")
        if value.dtype != current.dtype and not isinstance(variable, nnx.BatchStat):
            raise TypeError(f"flax {name!r} has dtype {current.dtype}, the torch tensor {value.dtype}: "
                            "build the port in the torch model's dtype (param_dtype=..., dtype=...)")
        if value.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise RuntimeError("float64 weights need jax.config.update('jax_enable_x64', True) at start-up")
    for name, value in tensors.items():
        index.variables[name].set_value(jnp.asarray(np.array(value, copy=True)))


def load_into_torch(torch_model: torch.nn.Module, tensors: Mapping[str, np.ndarray]) -> None:
    """Copy ``tensors`` (``state_dict`` names) into the model, exactly (dtypes must match)."""
    state = torch_model.state_dict()
    for name, value in tensors.items():
        if name not in state:
            raise ValueError(f"torch model has no tensor {name!r}")
        if tuple(state[name].shape) != tuple(np.shape(value)):
            raise ValueError(f"torch {name!r}: expected shape {tuple(state[name].shape)}, got {np.shape(value)}")
        if str(state[name].dtype).removeprefix("torch.") != np.asarray(value).dtype.name:
            raise TypeError(f"torch {name!r} has dtype {state[name].dtype}, "
                            f"the flax variable {np.asarray(value).dtype}")
    with torch.no_grad():
        for name, value in tensors.items():
            state[name].copy_(numpy_to_torch(value))


def copy_torch_to_flax(torch_model: torch.nn.Module, flax_model: nnx.Module, *,
                       overrides: Overrides | CustomCopy = None, auto: bool = True) -> Plan | CustomPlan:
    """Load the torch model's weights and buffers into its Flax port, exactly; returns the pairing
    (``print(plan.describe())`` shows every pair not found by its identical path)."""
    plan = plan_for(torch_model, flax_model, overrides, auto=auto)
    load_into_flax(flax_model, plan.to_flax(torch_tree(torch_model).tensors))
    return plan


def copy_flax_to_torch(flax_model: nnx.Module, torch_model: torch.nn.Module, *,
                       overrides: Overrides | CustomCopy = None, auto: bool = True) -> Plan | CustomPlan:
    """Load the Flax port's variables into the torch model, exactly; returns the pairing. Tied torch
    tensors stay tied (they get one value)."""
    plan = plan_for(torch_model, flax_model, overrides, auto=auto)
    current = torch_tree(torch_model).tensors
    load_into_torch(torch_model, plan.to_torch(flax_index(flax_model).tree.tensors, torch_fill=current))
    return plan


def state_to_flat(state: nnx.State | Mapping[str, Any], index: FlaxIndex) -> dict[str, np.ndarray]:
    """An ``nnx.State`` (or pure dict) of the model's variables -> numpy arrays by normalised name."""
    pure = nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state
    by_path = index.names
    out: dict[str, np.ndarray] = {}

    def walk(node: Any, path: tuple[Any, ...]) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                walk(value, (*path, key))
        elif path in by_path:
            out[by_path[path]] = np.asarray(node)

    walk(pure, ())
    return out
