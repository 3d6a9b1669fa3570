"""The Adapter's error messages and skip reasons, written once for both backends.

Each backend checks its own inputs (``torch_impl/adaptation`` and ``jax_impl/adaptation``) and builds
the message here, so the same bad input gets the same exception type and the same words in both;
only the frameworks' own names differ (``torch.nn.Module`` / ``flax.nnx.Module``, ``torch.Tensor`` /
``jax.Array``, and dtype names).
"""

from __future__ import annotations

from collections.abc import Sequence

# Why a step was skipped (``info["skipped"]``); a skipped step changes nothing.
DISABLED = "disabled"
NON_FINITE_BATCH = "non-finite batch"
NON_FINITE_LOSS = "non-finite loss"
NON_FINITE_GRADIENT = "non-finite gradient"
NON_FINITE_UPDATE = "non-finite update"


def skip_reason(loss: float, grad_norm: float, result_finite: bool) -> str | None:
    """Why a computed step must not be committed (None: commit it). ``loss`` and ``grad_norm`` are
    Python floats; ``result_finite`` says whether the new parameters and optimizer state are finite."""
    if not _finite(loss):
        return NON_FINITE_LOSS
    if not _finite(grad_norm):
        return NON_FINITE_GRADIENT
    if not result_finite:
        return NON_FINITE_UPDATE
    return None


def _finite(value: float) -> bool:
    return value - value == 0.0  # False for NaN and +-Inf


def wrong_model(module_type: str, got: str) -> str:
    """``TypeError``: the Adapter's ``model`` is not a module of its framework."""
    return f"model must be a {module_type}, got {got}"


def wrong_config(got: str) -> str:
    """``TypeError``: ``config`` is not an ``AdaptationConfig``."""
    return f"config must be an AdaptationConfig, got {got}"


def loss_fn_not_callable(got: str) -> str:
    """``TypeError``: ``loss_fn`` cannot be called."""
    return f"loss_fn must be callable as loss_fn(model, batch), got {got}"


def wrong_batch_leaf(accepted: str, got: str, where: str) -> str:
    """``TypeError``: a leaf of ``batch`` (at ``where``, e.g. ``batch[0]``) is not an array the backend takes."""
    return f"expected {accepted}, got {got} ({where})"


def loss_not_floating(array_type: str, got: str) -> str:
    """``TypeError``: ``loss_fn`` returned no floating array."""
    return f"loss_fn must return a floating 0-d {array_type} (or (loss, logits)), got {got}"


def loss_not_scalar(shape: Sequence[int]) -> str:
    """``ValueError``: ``loss_fn`` returned an array that is not 0-d."""
    return f"loss_fn must return a scalar (0-d) loss, got shape {tuple(shape)}"


def logits_missing() -> str:
    """``ValueError``: ``entropy_weight > 0`` and ``loss_fn`` returned no ``(loss, logits)`` pair."""
    return "entropy_weight > 0 needs loss_fn to return (loss, logits)"


def logits_not_floating(array_type: str, got: str) -> str:
    """``TypeError``: the logits of ``(loss, logits)`` are not a floating array."""
    return f"loss_fn's logits must be a floating {array_type}, got {got}"


def loss_does_not_depend(names: Sequence[str]) -> str:
    """``ValueError``: no selected parameter reaches the loss."""
    return (f"loss_fn's loss does not depend on the selected parameters {list(names)} (a constant, computed "
            "without gradient, or from other parameters only?): there is nothing to adapt")


def describe(kind: str, dtype: str | None = None, shape: Sequence[int] | None = None) -> str:
    """How a message names a value: ``"a jax.Array of dtype int32 and shape (3,)"``, or a type name."""
    if dtype is None:
        return kind
    return f"a {kind} of dtype {dtype} and shape {tuple(shape or ())}"
