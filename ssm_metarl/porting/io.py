"""The porting kit's I/O contract: the inputs of one call (positional and keyword pytrees of arrays),
the outputs (any pytree: an array, a tuple, a dict), and the step mode with a carried state.

- :class:`Inputs`: ``args`` and ``kwargs`` of numpy arrays (float in the models' dtype, integer token
  ids or positions, boolean masks), nested in tuples, lists or dicts;
- :class:`StepMode`: both models carry a state through the T steps of the inputs' time axis; every
  step's output and the final state are compared. Each side has its own calling convention:
  ``"x_state"`` is ``model(*args, state, **kwargs) -> (output, state)`` (torch's ``nn.LSTM``),
  ``"state_x"`` is ``model(state, *args, **kwargs) -> (state, output)`` (Flax's cells);
- :func:`check_inputs` and :func:`diagnose`: clear errors naming the model, the argument and the shape
  the failing layer expects, instead of a bare matmul error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch

from ssm_metarl.porting.precision import dtype_name, is_floating

CONVENTIONS = ("x_state", "state_x")


class InputSpecError(ValueError):
    """The inputs do not fit a model: names the model, the argument and what it expects."""


# --------------------------------------------------------------------------- pytrees
def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    """Apply ``fn`` to every leaf of nested dicts, lists and tuples (named tuples kept); ``None`` stays."""
    if tree is None:
        return None
    if isinstance(tree, Mapping):
        return {k: tree_map(fn, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(tree_map(fn, v) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(tree_map(fn, v) for v in tree)
    return fn(tree)


def named_leaves(tree: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs in ``shared.compare.flatten``'s order (mapping keys sorted); ``None`` skipped."""
    if tree is None:
        return []
    if isinstance(tree, Mapping):
        return [item for k in sorted(tree, key=str) for item in named_leaves(tree[k], f"{prefix}{k}.")]
    if isinstance(tree, (list, tuple)):
        return [item for i, v in enumerate(tree) for item in named_leaves(v, f"{prefix}{i}.")]
    return [(prefix.rstrip(".") or "<root>", tree)]


def leaves(tree: Any) -> list[Any]:
    return [leaf for _, leaf in named_leaves(tree)]


def structure(tree: Any) -> str:
    """A short description of a pytree's structure, e.g. ``tuple(array(2, 3), dict(h=array(2, 8)))``."""
    if tree is None:
        return "None"
    if isinstance(tree, Mapping):
        return "dict(" + ", ".join(f"{k}={structure(tree[k])}" for k in sorted(tree, key=str)) + ")"
    if isinstance(tree, (list, tuple)):
        return f"{type(tree).__name__}(" + ", ".join(structure(v) for v in tree) + ")"
    shape = getattr(tree, "shape", None)
    return f"array{tuple(shape)}" if shape is not None else type(tree).__name__


# --------------------------------------------------------------------------- inputs
@dataclasses.dataclass(frozen=True)
class Inputs:
    """One call's inputs: ``model(*args, **kwargs)``. Leaves are arrays (numpy, torch or JAX by stage)."""

    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, inputs: Any, kwargs: Mapping[str, Any] | None = None) -> Inputs:
        """An array (one positional input), a tuple/list (positional inputs) or :class:`Inputs`."""
        if isinstance(inputs, Inputs):
            if kwargs:
                raise TypeError("pass keyword inputs either in Inputs(kwargs=...) or as kwargs=, not both")
            return inputs
        args = tuple(inputs) if isinstance(inputs, (tuple, list)) else () if inputs is None else (inputs,)
        return cls(args, dict(kwargs or {}))

    def map(self, fn: Callable[[Any], Any]) -> Inputs:
        return Inputs(tuple(tree_map(fn, a) for a in self.args), {k: tree_map(fn, v) for k, v in self.kwargs.items()})

    def named(self) -> list[tuple[str, Any]]:
        """Every leaf with its argument name: ``args[0]``, ``kwargs['mask']``, ``args[1].h``."""
        out = []
        for i, a in enumerate(self.args):
            out += [(f"args[{i}]" + ("" if p == "<root>" else f".{p}"), leaf) for p, leaf in named_leaves(a)]
        for k in sorted(self.kwargs):
            out += [(f"kwargs[{k!r}]" + ("" if p == "<root>" else f".{p}"), leaf)
                    for p, leaf in named_leaves(self.kwargs[k])]
        return out

    def as_tree(self) -> dict[str, Any]:
        return {"args": self.args, "kwargs": dict(self.kwargs)}

    def at_step(self, t: int, axis: int) -> Inputs:
        return self.map(lambda a: a[(slice(None),) * axis + (t,)])

    def steps(self, axis: int) -> int:
        """T, the length of every leaf's time ``axis`` (they must agree)."""
        lengths = {name: np.shape(leaf)[axis] if np.ndim(leaf) > axis else None for name, leaf in self.named()}
        bad = {name: np.shape(leaf) for name, leaf in self.named() if lengths[name] is None}
        if bad or not lengths:
            raise InputSpecError(f"step mode needs every input to have a time axis {axis}; got shapes {bad or 'none'}")
        if len(set(lengths.values())) != 1:
            raise InputSpecError(f"step mode: inputs disagree on the number of steps (axis {axis}): {lengths}")
        return next(iter(lengths.values()))


@dataclasses.dataclass(frozen=True)
class StepMode:
    """Run both models step by step through the inputs' ``time_axis`` from ``state`` (a numpy pytree,
    the same layout for both sides); compare every step's output and the final state.

    ``torch_convention``/``flax_convention``: ``"x_state"`` calls ``model(*args, state, **kwargs)`` and
    expects ``(output, state)``; ``"state_x"`` calls ``model(state, *args, **kwargs)`` and expects
    ``(state, output)`` (the Flax cell convention).

    ``torch_method``/``flax_method``: the method called per step (default the model's forward/``__call__``;
    e.g. ``"step"`` for a policy whose ``forward`` runs whole sequences). ``torch_state``/``flax_state``:
    when a side keeps the state in another layout, a pair ``(to_side, to_common)`` of functions on that
    framework's arrays (``to_side`` maps ``state``'s layout to the side's, ``to_common`` back; they must
    be differentiable), e.g. torch ``nn.LSTM``'s ``(h, c)`` of shape ``(1, B, H)`` against a Flax
    carry ``(c, h)`` of shape ``(B, H)``.
    """

    state: Any
    time_axis: int = 1
    torch_convention: str = "x_state"
    flax_convention: str = "state_x"
    torch_method: str | None = None
    flax_method: str | None = None
    torch_state: tuple[Callable[[Any], Any], Callable[[Any], Any]] | None = None
    flax_state: tuple[Callable[[Any], Any], Callable[[Any], Any]] | None = None

    def __post_init__(self) -> None:
        for side in ("torch_state", "flax_state"):
            value = getattr(self, side)
            if value is not None and not (isinstance(value, tuple) and len(value) == 2 and all(map(callable, value))):
                raise TypeError(f"StepMode.{side} must be a pair (to_side, to_common) of functions, got {value!r}")
        for side in ("torch_convention", "flax_convention"):
            if getattr(self, side) not in CONVENTIONS:
                raise ValueError(f"StepMode.{side} must be one of {CONVENTIONS}, got {getattr(self, side)!r}")
        if not isinstance(self.time_axis, int) or self.time_axis < 0:
            raise ValueError(f"StepMode.time_axis must be a non-negative int, got {self.time_axis!r}")


def side_state(state: Any, layout: tuple[Callable[[Any], Any], Callable[[Any], Any]] | None, to_side: bool) -> Any:
    """``state`` mapped to a side's layout (``to_side``) or back to the common one; unchanged without a layout."""
    if layout is None:
        return state
    return layout[0](state) if to_side else layout[1](state)


def step_inputs(inputs: Inputs, state: Any, convention: str) -> Inputs:
    """The inputs of one step call with ``state`` placed by ``convention``."""
    if convention == "x_state":
        return Inputs((*inputs.args, state), inputs.kwargs)
    return Inputs((state, *inputs.args), inputs.kwargs)


def step_result(result: Any, convention: str, model: str) -> tuple[Any, Any]:
    """``(output, state)`` from a step call's result under ``convention``."""
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        expected = "(output, state)" if convention == "x_state" else "(state, output)"
        raise TypeError(f"step mode: {model} must return a pair {expected} ({convention!r} convention), "
                        f"got {structure(result)}")
    return (result[0], result[1]) if convention == "x_state" else (result[1], result[0])


def check_inputs(inputs: Inputs, dtype: str, what: str = "inputs") -> None:
    """Every leaf a numpy array; floating leaves in the models' ``dtype`` and finite; a non-empty batch axis."""
    if not inputs.args and not inputs.kwargs:
        raise InputSpecError(f"{what}: no inputs given; expected at least one array")
    for name, value in inputs.named():
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{what} {name} must be a numpy array, got {type(value).__name__}")
        if is_floating(value):
            if dtype_name(value.dtype) != dtype:
                raise TypeError(f"{what} {name} must have dtype {dtype} (the models'), got {value.dtype}")
            if not np.isfinite(value.astype(np.float64)).all():
                raise ValueError(f"{what} {name} contains NaN or Inf; expected finite values")
        elif not (np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):
            raise TypeError(f"{what} {name} must be a floating, integer or boolean array, got {value.dtype}")
        if value.ndim == 0 or value.shape[0] == 0:
            raise ValueError(f"{what} {name} must have a non-empty leading (batch) axis, got shape {value.shape}")


def check_signature(fn: Callable[..., Any], inputs: Inputs, model: str) -> None:
    """The inputs bind to ``fn``'s parameters, or an ``InputSpecError`` naming the model and the argument."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind(*inputs.args, **inputs.kwargs)
    except TypeError as err:
        params = ", ".join(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}"
                           for p in signature.parameters.values())
        raise InputSpecError(f"{model}({params}) does not take these inputs "
                             f"({', '.join(n for n, _ in inputs.named()) or 'none'}): {err}") from None


@contextlib.contextmanager
def torch_method(model: torch.nn.Module, method: str | None) -> Iterator[None]:
    """Within the block, calling ``model`` (``functional_call`` included) runs ``model.<method>``."""
    if method is None or method == "forward":
        yield
        return
    bound = getattr(model, method, None)
    if not callable(bound):
        raise TypeError(f"the torch model {type(model).__name__} has no method {method!r}")
    model.forward = bound
    try:
        yield
    finally:
        del model.forward


# --------------------------------------------------------------------------- diagnosis
def expectation(module: torch.nn.Module) -> str | None:
    """What a torch layer expects of its input, in words with a shape; ``None`` for unknown layers."""
    nn = torch.nn
    if isinstance(module, nn.Embedding):
        return f"integer ids in [0, {module.num_embeddings})"
    if isinstance(module, nn.Linear):
        return f"shape (..., {module.in_features})"
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                           nn.ConvTranspose3d)):
        spatial = ", ".join("L H W".split()[-len(module.kernel_size):]) if len(module.kernel_size) > 1 else "L"
        return f"shape (batch, {module.in_channels}, {spatial}) (channels first)"
    if isinstance(module, nn.RNNBase):
        batch_time = "(batch, time" if module.batch_first else "(time, batch"
        return f"shape {batch_time}, {module.input_size})"
    if isinstance(module, (nn.RNNCellBase,)):
        return f"shape (batch, {module.input_size})"
    if isinstance(module, nn.LayerNorm):
        return f"shape (..., {', '.join(map(str, module.normalized_shape))})"
    if isinstance(module, nn.MultiheadAttention):
        return f"query of shape (..., {module.embed_dim})"
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return f"shape (batch, {module.num_features}, ...)"
    return None


def diagnose(model: torch.nn.Module, call: Callable[[], Any], inputs: Inputs, name: str) -> Any:
    """Run ``call`` (a forward of ``model`` on ``inputs``); on failure raise an :class:`InputSpecError`
    naming ``name``, the innermost torch layer that failed, what it expects, and which argument fed it."""
    stack: list[tuple[str, torch.nn.Module, Any]] = []
    failed: list[tuple[str, torch.nn.Module, Any]] = []
    handles = []

    def pre(path: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            stack.append((path, module, args))
        return hook

    def post(module: torch.nn.Module, args: tuple, output: Any) -> None:
        if stack:
            stack.pop()

    for path, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre(path)))
        handles.append(module.register_forward_hook(post))
    try:
        return call()
    except InputSpecError:
        raise
    except Exception as err:  # re-raised with the diagnosis
        failed = list(stack)
        raise InputSpecError(_diagnosis(name, failed, inputs, err)) from err
    finally:
        for handle in handles:
            handle.remove()


def _diagnosis(name: str, failed: list[tuple[str, torch.nn.Module, Any]], inputs: Inputs, err: Exception) -> str:
    shapes = ", ".join(f"{n} {tuple(np.shape(v))} {dtype_name(v.dtype)}" for n, v in inputs.named())
    text = f"the {name} failed on the inputs ({shapes}): {type(err).__name__}: {str(err).splitlines()[0]}"
    for path, module, args in reversed(failed):
        wants = expectation(module)
        if wants is None:
            continue
        first = next((a for a in leaves(args) if isinstance(a, torch.Tensor)), None)
        got = f"got shape {tuple(first.shape)} {dtype_name(first.dtype)}" if first is not None else "got no tensor"
        fed = [n for n, v in inputs.named() if first is not None and tuple(np.shape(v)) == tuple(first.shape)]
        source = f" (from argument {fed[0]})" if fed else ""
        return f"{text}\n  layer {path or '<root>'!r} ({type(module).__name__}) expects {wants}, {got}{source}"
    return text
