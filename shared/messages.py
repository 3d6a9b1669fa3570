"""The texts of MetaMAML's boundary errors, built once for both backends.

Each function returns the message only; the backend's check module (``torch_impl/meta_rl/checks.py``,
``jax_impl/meta_rl/checks.py``) decides when to raise it and with which exception type (the same in
both). The only words that differ between backends are the frameworks' own type names, passed in
as ``array`` (``"torch.Tensor"`` or ``"jax or numpy array"``) and ``module``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

# What a refused step says last: the guarantee that nothing was written.
UNCHANGED = "the model was not changed"


def shape(value: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(n) for n in value)


# ------------------------------------------------------------------ construction
def not_a_module(module: str, got: str) -> str:
    return f"model must be a {module}, got {got}"


def loss_fn_not_callable(got: str) -> str:
    return f"loss_fn must be callable as loss_fn(outputs, labels), got {got}"


def option_not_bool(name: str, got: str) -> str:
    return f"{name} must be a bool, got {got}"


def no_parameters(kind: str) -> str:
    return f"model has no {kind}; expected at least one to meta-train"


# ------------------------------------------------------------------ losses
def mse_not_arrays(array: str, outputs: str, labels: str) -> str:
    return (f"mse: expects model outputs and labels that are each one {array}, got {outputs} and {labels}; "
            "pass loss_fn= for tuple outputs or labels")


def mse_shapes(outputs: Sequence[int], labels: Sequence[int]) -> str:
    return (f"mse: model outputs have shape {shape(outputs)} but labels have shape {shape(labels)}; "
            "expected exactly the same shape (no broadcasting)")


def loss_not_scalar(got: str) -> str:
    return f"loss_fn must return a scalar (0-d), got {got}"


# ------------------------------------------------------------------ task data
def not_an_array(name: str, array: str, got: str) -> str:
    return f"{name} must be a {array} (or a tuple of them), got {got}"


def wrong_dtype(name: str, expected: str, got: str) -> str:
    return f"{name} must have dtype {expected} (the model's), got {got}"


def wrong_device(name: str, expected: str, got: str) -> str:
    return f"{name} must be on device {expected} (the model's), got {got}"


def no_batch_axis(name: str) -> str:
    return f"{name} must have a leading batch axis, got a 0-d array"


def batch_sizes(where: str, sizes: Mapping[str, int]) -> str:
    listed = ", ".join(f"{name}: {size}" for name, size in sizes.items())
    return f"{where}: data and labels must have the same leading (batch) size, got {listed}"


def empty_batch(name: str) -> str:
    return f"{name}: expected at least one sample, got a batch of size 0"


def not_finite(name: str) -> str:
    return f"{name} contains NaN or Inf; expected finite values"


def ragged_tasks(index: int, first: object, other: object) -> str:
    return (f"vectorize=True stacks the tasks, so all must have the same structure, shapes and dtypes: "
            f"task 0 has {first}, task {index} has {other}; use MetaMAML(..., vectorize=False) for tasks "
            "of different shapes")


def part_name(index: int, part: str) -> str:
    """``task 3 support_x``: how every message names one part of one task."""
    return f"task {index} {part}"


# The four parts of a task, as messages name them.
PARTS = ("support_x", "support_y", "query_x", "query_y")


# ------------------------------------------------------------------ gradients and steps
def grads_not_like_params(container: str, got: str) -> str:
    return f"grads must be {container} shaped like the trainable parameters (as meta_gradient returns), got {got}"


def grads_keys(expected: Sequence[str], got: Sequence[str]) -> str:
    return f"grads must have exactly the trainable parameters' keys {sorted(expected)}, got {sorted(got)}"


def grads_leaf(name: str, expected: str, got: str) -> str:
    return f"grads{name} must be an array of {expected}, got {got}"


def refused(where: str, what: str) -> str:
    return f"{where}: {what}; {UNCHANGED}"


def loss_not_finite(where: str) -> str:
    return refused(where, "the query loss is NaN/Inf")


def grads_not_finite(where: str) -> str:
    return refused(where, "the meta-gradient contains NaN/Inf")


def step_not_finite(where: str, outer_lr: float) -> str:
    return refused(where, f"the Adam step would make the parameters NaN/Inf (outer_lr={outer_lr!r} too large?)")


def missing_params(missing: Sequence[str]) -> str:
    return f"params lacks trainable parameters {sorted(missing)}"


# ------------------------------------------------------------------ running modes
def mode_failed(what: str, flags: Sequence[str], err: BaseException) -> str:
    on = " and ".join(f"{n}=True" for n in flags)
    off = ", ".join(f"{n}=False" for n in flags)
    return (f"{what}: this model runs in the eager loop but not with {on} (e.g. nn.GRU/nn.LSTM under vmap, or "
            f"data-dependent Python control flow); use MetaMAML(..., {off}). The error was: "
            f"{type(err).__name__}: {err}")


def forward_failed(what: str, err: BaseException) -> str:
    return f"{what}: the model's forward or loss failed: {type(err).__name__}: {err}"
