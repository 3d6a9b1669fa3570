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

The maths is written here with ``torch.func.functional_call`` + ``torch.autograd.grad`` and with
``nnx.split``/``nnx.merge`` + ``jax.grad``, independent of the MetaMAML classes. Buffers (BatchNorm
statistics) are carried functionally: fresh copies go into every forward and the updates are dropped,
so neither model's statistics change. When a forward or gradient row fails, the report carries the
first divergent layer (``parity_tests.porting.divergence``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx
from torch.func import functional_call

from parity_tests.matrix import MUST_DIFFER, TOLERANCES, Row, row
from parity_tests.porting.divergence import Divergence, find_divergence
from parity_tests.porting.trees import flax_index, load_into_flax, plan_for, state_to_flat, torch_tree
from shared.compare import compare_trees
from shared.porting import Plan
from shared.porting.pairing import Overrides

ROW_GROUPS = ("weights", "forward", "gradients", "adapted", "meta_gradient", "adam")
LossPair = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[[jax.Array, jax.Array], jax.Array]]
Loss = str | LossPair


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


def _losses(loss: Loss) -> LossPair:
    if loss == "mse":
        def torch_mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            return torch.mean((outputs - labels) ** 2)

        def jax_mse(outputs: jax.Array, labels: jax.Array) -> jax.Array:
            return jnp.mean((outputs - labels) ** 2)

        return torch_mse, jax_mse
    if isinstance(loss, tuple) and len(loss) == 2 and all(callable(f) for f in loss):
        return loss
    raise TypeError(f"loss must be 'mse' or a pair (torch_loss, jax_loss) of callables (outputs, labels) -> scalar, "
                    f"got {loss!r}")


class _Pair:
    """Both models as pure functions of their parameters, and conversion of Flax trees to torch names."""

    def __init__(self, torch_model: torch.nn.Module, flax_model: nnx.Module, plan: Plan, loss: LossPair,
                 inner_lr: float) -> None:
        self.torch_model, self.flax_model, self.plan, self.inner_lr = torch_model, flax_model, plan, inner_lr
        self.torch_loss, self.jax_loss = loss
        self.param_names = [n for n, _ in torch_model.named_parameters()]
        self.torch_params = {n: p.detach().clone() for n, p in torch_model.named_parameters()}
        self.torch_buffers = {n: b.detach().clone() for n, b in torch_model.named_buffers()}
        self.torch_current = torch_tree(torch_model).tensors
        self.index = flax_index(flax_model)
        self.flax_current = dict(self.index.tree.tensors)
        torch_only = {pair.torch.key(n) for pair in plan.pairs for n in pair.rule.torch_only}
        state_names = set(self.torch_current)
        self.buffer_names = sorted(n for n in self.torch_buffers if n in state_names and n not in torch_only)
        self.graphdefs, self.rest = {}, {}
        for train in (True, False):
            flax_model.train() if train else flax_model.eval()
            self.graphdefs[train], self.flax_params, self.rest[train] = nnx.split(flax_model, nnx.Param, ...)
        flax_model.train() if torch_model.training else flax_model.eval()
        # Compiled once per pair: eager JAX re-traces nnx.merge and every scan on each call (30x slower).
        self.jit_forward = jax.jit(self.jax_forward, static_argnums=2)
        self.jit_grad = jax.jit(jax.grad(self.jax_task_loss))
        # One task's query loss after adaptation, compiled once and called per task (tasks share shapes):
        # half the compile time of differentiating the mean over an unrolled list of tasks.
        self.jit_task_meta = jax.jit(jax.value_and_grad(self.jax_query_loss), static_argnums=5)

    # ---------------------------------------------------------------- torch
    def torch_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, train: bool = True
                      ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        buffers = {k: v.clone() for k, v in self.torch_buffers.items()}
        was_training = self.torch_model.training
        try:
            self.torch_model.train(train)
            out = functional_call(self.torch_model, (params, buffers), (x,))
        finally:
            self.torch_model.train(was_training)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"the torch model must return one tensor, got {type(out).__name__}")
        return out, buffers

    def torch_task_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.torch_loss(self.torch_forward(params, x)[0], y)

    def torch_grad(self, loss: torch.Tensor, params: dict[str, torch.Tensor], create_graph: bool
                   ) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)]

    def torch_adapt(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, steps: int,
                    create_graph: bool) -> dict[str, torch.Tensor]:
        for _ in range(steps):
            grads = self.torch_grad(self.torch_task_loss(params, x, y), params, create_graph)
            params = {n: p - self.inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        return params

    def torch_leaves(self, params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        source = self.torch_params if params is None else params
        return {n: p.detach().clone().requires_grad_(True) for n, p in source.items()}

    def torch_meta(self, params: dict[str, torch.Tensor], tasks: Sequence[tuple[torch.Tensor, ...]], steps: int,
                   first_order: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        losses = [self.torch_task_loss(self.torch_adapt(params, sx, sy, steps, not first_order), qx, qy)
                  for sx, sy, qx, qy in tasks]
        meta_loss = torch.stack(losses).mean()
        return meta_loss.detach(), self.torch_grad(meta_loss, params, create_graph=False)

    # ---------------------------------------------------------------- jax
    def jax_forward(self, params: nnx.State, x: Any, train: bool = True) -> tuple[jax.Array, nnx.State]:
        # Fresh copies of the non-parameter state (BatchNorm statistics, RNG counters) made inside the
        # current trace: NNX refuses to update a variable created at another trace level.
        rest = jax.tree.map(jnp.array, self.rest[train])
        module = nnx.merge(self.graphdefs[train], params, rest)
        out = module(x)
        if not isinstance(out, jax.Array):
            raise TypeError(f"the flax model must return one array, got {type(out).__name__}")
        return out, nnx.state(module, nnx.BatchStat)

    def jax_task_loss(self, params: nnx.State, x: Any, y: Any) -> jax.Array:
        return self.jax_loss(self.jax_forward(params, x)[0], y)

    def jax_adapt(self, params: nnx.State, x: Any, y: Any, steps: int, first_order: bool = False,
                  grad: Callable | None = None) -> nnx.State:
        grad = grad or jax.grad(self.jax_task_loss)
        for _ in range(steps):
            grads = grad(params, x, y)
            if first_order:
                grads = jax.lax.stop_gradient(grads)
            params = jax.tree.map(lambda p, g: p - self.inner_lr * g, params, grads)
        return params

    def jax_query_loss(self, params: nnx.State, sx: Any, sy: Any, qx: Any, qy: Any, steps: int) -> jax.Array:
        """One task's query loss after ``steps`` inner steps (second order: differentiable throughout)."""
        return self.jax_task_loss(self.jax_adapt(params, sx, sy, steps), qx, qy)

    def jax_meta(self, params: nnx.State, tasks: Sequence[tuple[Any, ...]], steps: int) -> tuple[jax.Array, nnx.State]:
        """The mean query loss over tasks and its second-order gradient."""
        results = [self.jit_task_meta(params, *task, steps) for task in tasks]
        mean = jnp.mean(jnp.stack([loss for loss, _ in results]))
        return mean, jax.tree.map(lambda *g: sum(g) / len(g), *(grads for _, grads in results))

    # ---------------------------------------------------------------- names
    def in_torch_names(self, flax_values: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Flax values (an ``nnx.State`` or normalised flat dict, possibly a subset) -> torch ``names``."""
        flat = flax_values if isinstance(flax_values, dict) else state_to_flat(flax_values, self.index)
        full = {**self.flax_current, **{k: np.asarray(v) for k, v in flat.items()}}
        mapped = self.plan.to_torch(full, torch_fill=self.torch_current)
        return {n: mapped[n] for n in names}

    def torch_named(self, values: Sequence[torch.Tensor] | dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        items = values.items() if isinstance(values, dict) else zip(self.param_names, values, strict=True)
        return {n: v.detach().cpu().numpy() for n, v in items}


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
    loss_pair = _losses(loss)
    plan = plan_for(torch_model, flax_model, overrides)
    torch_state = torch_tree(torch_model).tensors
    if transfer:
        load_into_flax(flax_model, plan.to_flax(torch_state))
    pair = _Pair(torch_model, flax_model, plan, loss_pair, inner_lr)
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


def _torch_loss_grads(pair: _Pair, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    params = pair.torch_leaves()
    return pair.torch_grad(pair.torch_task_loss(params, x, y), params, create_graph=False)


def _weight_rows(pair: _Pair, torch_state: dict[str, np.ndarray], dtype: str) -> list[Row]:
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


def _forward_rows(pair: _Pair, inputs: np.ndarray, x: torch.Tensor, dtype: str) -> list[Row]:
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


def _meta_rows(pair: _Pair, tasks: list[tuple[np.ndarray, ...]], dtype: str, steps: int = 2) -> list[Row]:
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


def _adam_row(pair: _Pair, tasks: list[tuple[np.ndarray, ...]], dtype: str, steps: int, lr: float,
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
