"""Run the parity rows on a user's own PyTorch model and its Flax NNX port (ARCHITECTURE.md sections 5 and 8).

Rows (each a ``parity_tests.matrix.Row``, at the contract's tolerances for the dtype):

- weights: the mapping torch -> flax -> torch and flax -> torch -> flax, and the flax model holding
  the torch weights, all exact;
- forward: outputs on ``inputs`` (train mode; with BatchNorm-style buffers also eval mode and the
  running statistics after one train-mode forward);
- gradients of the loss w.r.t. every parameter;
- adapted parameters after k SGD inner steps (k = 1 and 3);
- the second-order MAML meta-gradient (k = 2 inner steps), the first-order one, and the sanity
  check that they differ;
- N meta-steps with torch.optim.Adam against optax.adam (float64 only, as in the contract).

The maths (``ssm_metarl.porting.functional``) is independent of the MetaMAML classes; neither
model's parameters or statistics change. When a forward, gradient or meta row fails, the report
carries the first divergent layer (``ssm_metarl.porting.divergence``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
import torch
from flax import nnx

from parity_tests.matrix import MUST_DIFFER, TOLERANCES, Row, row
from shared.compare import compare_trees
from shared.porting.pairing import Overrides
from ssm_metarl.porting.divergence import Divergence, find_divergence
from ssm_metarl.porting.functional import Loss, ModelPair, losses
from ssm_metarl.porting.trees import load_into_flax, plan_for, state_to_flat, torch_tree

ROW_GROUPS = ("weights", "forward", "gradients", "adapted", "meta_gradient", "adam")


@dataclasses.dataclass(frozen=True)
class PortingReport:
    """The parity rows for one dtype, plus the first divergent layer when a forward/gradient row failed."""

    dtype: str
    rows: tuple[Row, ...]
    divergence: Divergence | None = None
    divergence_checked: bool = False

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def table(self) -> str:
        """The same Markdown table as ``ssm-metarl parity``, then the divergence, if any."""
        from ssm_metarl.parity import format_table

        text = format_table(list(self.rows))
        if self.divergence is not None:
            text += "\n\n" + self.divergence.describe()
        elif self.divergence_checked:
            text += ("\n\nevery paired module's forward output agrees: the difference is in the loss or the "
                     "backward pass (a custom_vjp, stop_gradient, detach, or a non-differentiable op)")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "passed": self.passed, "rows": [r.to_dict() for r in self.rows],
                "divergence": None if self.divergence is None else self.divergence.to_dict()}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _model_dtype(model: torch.nn.Module) -> str:
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        raise TypeError("the torch model's parameters must all be float32 or all float64, got "
                        f"{sorted(map(str, dtypes))}")
    return "float64" if dtypes == {torch.float64} else "float32"


def _as_torch(*arrays: np.ndarray) -> tuple[torch.Tensor, ...]:
    return tuple(torch.from_numpy(np.array(a)) for a in arrays)


def _like(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    if np.issubdtype(x.dtype, np.integer):
        return rng.integers(int(x.min()), int(x.max()) + 1, size=x.shape).astype(x.dtype)
    return rng.normal(size=x.shape).astype(x.dtype)


def _check_inputs(inputs: Any, labels: Any, dtype: str) -> None:
    for name, value in (("inputs", inputs), ("labels", labels)):
        if value is None and name == "labels":
            continue
        if not isinstance(value, np.ndarray):
            raise TypeError(f"{name} must be a numpy array, got {type(value).__name__}")
        if np.issubdtype(value.dtype, np.floating) and value.dtype.name != dtype:
            raise TypeError(f"{name} must have dtype {dtype} (the models'), got {value.dtype}")
        if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
            raise TypeError(f"{name} must be a floating or integer array, got {value.dtype}")
        if value.ndim == 0 or value.shape[0] == 0:
            raise ValueError(f"{name} must have a non-empty leading (batch) axis, got shape {value.shape}")
        if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or Inf; expected finite values")


def compare_models(
    torch_model: torch.nn.Module,
    flax_model: nnx.Module,
    inputs: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    loss: Loss = "mse",
    rows: Sequence[str] = ROW_GROUPS,
    overrides: Overrides = None,
    transfer: bool = True,
    inner_lr: float = 0.05,
    adam_steps: int = 5,
    outer_lr: float = 0.01,
    seed: int = 0,
) -> PortingReport:
    """Check a Flax NNX port against its PyTorch original on the parity rows; see the module docstring.

    Args:
        torch_model: the original; left unchanged (its mode, parameters and buffers).
        flax_model: the port. With ``transfer`` (default) the torch weights are copied into it first
            (the contract: weights are made in torch and transferred).
        inputs: one batch, ``(batch, ...)``, numpy, in the models' dtype (or integer, e.g. token ids),
            in the layout both models take.
        labels: targets shaped like the outputs; default: seeded normal noise.
        loss: ``"mse"`` or ``(torch_loss, jax_loss)``, each ``(outputs, labels) -> scalar``.
        rows: which groups of :data:`ROW_GROUPS` to run.
        overrides: explicit pairing, see ``shared.porting.plan_pairing``.
        inner_lr: the MAML inner SGD step; adam_steps, outer_lr: the Adam meta-steps (float64 only).
        seed: for the labels and the extra meta-learning tasks.

    Returns:
        A :class:`PortingReport`: ``.table()`` (the ``ssm-metarl parity`` table), ``.to_json()``.
    """
    dtype = _model_dtype(torch_model)
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise RuntimeError("float64 parity needs jax_enable_x64 (parity_tests.models.set_high_precision()) "
                           "before any JAX work")
    unknown = sorted(set(rows) - set(ROW_GROUPS))
    if unknown:
        raise ValueError(f"unknown row groups {unknown}; expected some of {list(ROW_GROUPS)}")
    _check_inputs(inputs, labels, dtype)
    loss_pair = losses(loss)
    plan = plan_for(torch_model, flax_model, overrides)
    torch_state = torch_tree(torch_model).tensors
    if transfer:
        load_into_flax(flax_model, plan.to_flax(torch_state))
    pair = ModelPair(torch_model, flax_model, plan, loss_pair, inner_lr)
    rng = np.random.default_rng(seed)
    (x,) = _as_torch(inputs)
    with torch.no_grad():
        output_shape = tuple(pair.torch_forward(pair.torch_params, x)[0].shape)
    if labels is None:
        labels = rng.normal(size=output_shape).astype(dtype)
    elif loss == "mse" and labels.shape != output_shape:
        raise ValueError(f"with the MSE loss, labels must have the outputs' shape {output_shape}, got {labels.shape}")
    y = torch.from_numpy(np.array(labels))
    out: list[Row] = []
    failed_mode: bool | None = None
    if "weights" in rows:
        out.extend(_weight_rows(pair, torch_state, dtype))
    if "forward" in rows:
        forward_rows = _forward_rows(pair, inputs, x, dtype)
        out.extend(forward_rows)
        for r in forward_rows:
            if not r.passed and failed_mode is None:
                failed_mode = "eval" not in r.quantity
    if "gradients" in rows:
        t_grads = _torch_loss_grads(pair, x, y)
        j_grads = pair.jit_grad(pair.flax_params, inputs, labels)
        out.append(row("loss gradients w.r.t. every parameter", dtype, "gradients",
                       compare_trees(pair.in_torch_names(j_grads, pair.param_names), pair.torch_named(t_grads))))
    if "adapted" in rows:
        for k in (1, 3):
            t_adapted = pair.torch_adapt(pair.torch_leaves(), x, y, k, create_graph=False)
            j_adapted = pair.jax_adapt(pair.flax_params, inputs, labels, k, grad=pair.jit_grad)
            out.append(row(f"adapted parameters, k={k}", dtype, "adapted",
                           compare_trees(pair.in_torch_names(j_adapted, pair.param_names),
                                         pair.torch_named(t_adapted))))
    tasks = [(inputs, labels, _like(rng, inputs), _like(rng, labels))]
    tasks.append(tuple(_like(rng, a) for a in tasks[0]))
    if "meta_gradient" in rows:
        out.extend(_meta_rows(pair, tasks, dtype))
    if "adam" in rows and TOLERANCES[dtype]["meta_update"] is not None:
        out.append(_adam_row(pair, tasks, dtype, adam_steps, outer_lr))
    if failed_mode is None and any(not r.passed for r in out if "weights" not in r.quantity):
        failed_mode = True
    divergence = None
    if failed_mode is not None:
        divergence = find_divergence(torch_model, flax_model, inputs, tolerance=TOLERANCES[dtype]["outputs"],
                                     train=failed_mode, plan=plan)
    return PortingReport(dtype, tuple(out), divergence, failed_mode is not None)


def _torch_loss_grads(pair: ModelPair, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    params = pair.torch_leaves()
    return pair.torch_grad(pair.torch_task_loss(params, x, y), params, create_graph=False)


def _weight_rows(pair: ModelPair, torch_state: dict[str, np.ndarray], dtype: str) -> list[Row]:
    plan = pair.plan
    flax_state = pair.flax_current
    through = plan.to_torch(plan.to_flax(torch_state), torch_fill=torch_state)
    held = plan.to_torch(flax_state, torch_fill=torch_state)
    back = plan.to_flax(plan.to_torch(flax_state, torch_fill=torch_state))
    return [
        row("weights torch -> flax -> torch (mapping)", dtype, "weights", compare_trees(through, torch_state)),
        row("weights: the flax model holds the torch weights", dtype, "weights", compare_trees(held, torch_state)),
        row("weights flax -> torch -> flax (mapping)", dtype, "weights",
            compare_trees(back, {k: flax_state[k] for k in back})),
    ]


def _forward_rows(pair: ModelPair, inputs: np.ndarray, x: torch.Tensor, dtype: str) -> list[Row]:
    with torch.no_grad():
        t_train, t_buffers = pair.torch_forward(pair.torch_params, x, train=True)
        t_eval, _ = pair.torch_forward(pair.torch_params, x, train=False)
    j_train, j_stats = pair.jit_forward(pair.flax_params, inputs, True)
    if not pair.buffer_names:
        return [row("forward", dtype, "outputs", compare_trees(np.asarray(j_train), t_train))]
    j_eval, _ = pair.jit_forward(pair.flax_params, inputs, False)
    stats = {k: np.asarray(v) for k, v in state_to_flat(j_stats, pair.index).items()}
    return [
        row("forward, train mode (batch statistics)", dtype, "outputs", compare_trees(np.asarray(j_train), t_train)),
        row("forward, eval mode (running statistics)", dtype, "outputs", compare_trees(np.asarray(j_eval), t_eval)),
        row("running statistics after one train-mode forward", dtype, "outputs",
            compare_trees(pair.in_torch_names(stats, pair.buffer_names),
                          {n: t_buffers[n].numpy() for n in pair.buffer_names})),
    ]


def _meta_rows(pair: ModelPair, tasks: list[tuple[np.ndarray, ...]], dtype: str, steps: int = 2) -> list[Row]:
    torch_tasks = [_as_torch(*task) for task in tasks]
    results = {}
    for first_order in (False, True):
        _, t_grads = pair.torch_meta(pair.torch_leaves(), torch_tasks, steps, first_order)
        if first_order:  # the mean of query-loss gradients at the adapted parameters: reuses the compiled grad
            task_grads = [pair.jit_grad(pair.jax_adapt(pair.flax_params, sx, sy, steps, grad=pair.jit_grad), qx, qy)
                          for sx, sy, qx, qy in tasks]
            j_grads = jax.tree.map(lambda *g: sum(g) / len(g), *task_grads)
        else:
            _, j_grads = pair.jax_meta(pair.flax_params, tasks, steps)
        results[first_order] = (pair.in_torch_names(j_grads, pair.param_names), pair.torch_named(t_grads))
    out = [
        row(f"meta-gradient, second order (k={steps})", dtype, "meta_gradient", compare_trees(*results[False])),
        row(f"meta-gradient, first order (k={steps})", dtype, "meta_gradient", compare_trees(*results[True])),
    ]
    for backend, index in (("jax", 0), ("torch", 1)):
        differ = compare_trees(results[False][index], results[True][index])
        out.append(Row(f"second order differs from first ({backend})", dtype, differ.max_abs, differ.rel,
                       MUST_DIFFER, differ.rel > MUST_DIFFER, differ))
    return out


def _adam_row(pair: ModelPair, tasks: list[tuple[np.ndarray, ...]], dtype: str, steps: int, lr: float,
              inner_steps: int = 2) -> Row:
    torch_tasks = [_as_torch(*task) for task in tasks]
    t_params = pair.torch_leaves()
    optimizer = torch.optim.Adam(list(t_params.values()), lr=lr)
    t_losses = []
    for _ in range(steps):
        meta_loss, grads = pair.torch_meta(t_params, torch_tasks, inner_steps, first_order=False)
        for p, g in zip(t_params.values(), grads, strict=True):
            p.grad = g
        optimizer.step()
        t_losses.append(float(meta_loss))
    tx = optax.adam(lr)
    j_params = pair.flax_params
    opt_state = tx.init(j_params)
    j_losses = []
    for _ in range(steps):
        meta_loss, grads = pair.jax_meta(j_params, tasks, inner_steps)
        updates, opt_state = tx.update(grads, opt_state, j_params)
        j_params = optax.apply_updates(j_params, updates)
        j_losses.append(float(meta_loss))
    comparison = compare_trees(
        {"params": pair.in_torch_names(j_params, pair.param_names), "losses": np.array(j_losses)},
        {"params": pair.torch_named(t_params), "losses": np.array(t_losses)},
    )
    return row(f"{steps} meta-steps, torch Adam vs optax adam (k={inner_steps})", dtype, "meta_update", comparison)
