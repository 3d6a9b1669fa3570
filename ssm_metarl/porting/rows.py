"""Run the parity rows on a user's own PyTorch model and its Flax NNX port (ARCHITECTURE.md sections 5 and 8).

Rows (each a ``shared.contract.Row``, at the tolerance profile of the dtype, plus user overrides):

- weights: the mapping torch -> flax -> torch and flax -> torch -> flax, and the flax model holding
  the torch weights, all exact;
- forward: outputs on ``inputs`` (any pytree; in the mode asked, train by default; with BatchNorm-style
  buffers also eval mode and the running statistics after one train-mode forward); in step mode every
  step's output and the final state;
- gradients of the loss w.r.t. every parameter;
- adapted parameters after k SGD inner steps (k = 1 and 3);
- the second-order MAML meta-gradient (k = 2 inner steps), the first-order one, and the sanity
  check that they differ;
- N meta-steps with torch.optim.Adam against optax.adam (float64 only, as in the contract).

The maths (``ssm_metarl.porting.functional``) is independent of the MetaMAML classes; neither
model's parameters or statistics change. A failing row lists its worst leaves; a failing forward is
localised to the first divergent layer (``ssm_metarl.porting.divergence``), a failing gradient to the
first layer in backward order whose parameter gradients differ, a failing Adam row to the first step
where the trajectories split.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from shared.compare import Comparison, compare_trees
from shared.contract import MUST_DIFFER, Row, row, tolerances
from shared.porting.pairing import Overrides
from ssm_metarl.porting.divergence import Divergence, find_divergence, record_torch
from ssm_metarl.porting.functional import Loss, ModelPair, losses
from ssm_metarl.porting.hints import dropout_notes, gradient_hints, mask_polarity_hint
from ssm_metarl.porting.io import (
    Inputs,
    InputSpecError,
    StepMode,
    check_inputs,
    check_signature,
    diagnose,
    leaves,
    side_state,
    step_inputs,
    structure,
    tree_map,
)
from ssm_metarl.porting.precision import FLOATING, dtype_name, is_floating, resolve_device, torch_to_numpy
from ssm_metarl.porting.trees import load_into_flax, plan_for, state_to_flat, torch_tree

ROW_GROUPS = ("weights", "forward", "gradients", "adapted", "meta_gradient", "adam")
NO_DOUBLE_BACKWARD = "derivative for"


@dataclasses.dataclass(frozen=True)
class GradientDivergence:
    """The first module, in backward order (last layer first), whose parameter gradients differ."""

    module: str
    module_type: str
    max_abs: float
    rel: float
    tolerance: float
    parameters: tuple[str, ...]
    hints: tuple[str, ...]

    def describe(self) -> str:
        text = (f"first divergent module in the backward pass: {self.module!r} ({self.module_type}), gradients of "
                f"{', '.join(self.parameters)} differ: max abs {self.max_abs:.2e}, rel {self.rel:.2e} (tolerance "
                f"{self.tolerance:.0e}); every module after it in the forward has matching gradients")
        return "\n".join([text] + [f"  hint: {hint}" for hint in self.hints])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class PortingReport:
    """The parity rows for one dtype, plus where and why a failing row diverged."""

    dtype: str
    rows: tuple[Row, ...]
    divergence: Divergence | None = None
    divergence_checked: bool = False
    gradient_divergence: GradientDivergence | None = None
    adam_split: int | None = None
    notes: tuple[str, ...] = ()
    devices: tuple[str, str] = ("cpu", "cpu")
    worst: int = 3

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def worst_leaves(self, r: Row) -> list[str]:
        """The ``worst`` leaves of a failing row, largest normwise error first, with their paths."""
        if r.comparison is None or r.passed:
            return []
        failing = sorted((leaf for leaf in r.comparison.leaves if not leaf.passes(r.tolerance)),
                         key=lambda leaf: (leaf.nonfinite_match, -leaf.rel))
        return [f"  {leaf.name} {leaf.shape}: max abs {leaf.max_abs:.2e}, rel {leaf.rel:.2e}"
                + ("" if leaf.nonfinite_match else " (NaN/Inf positions differ)") for leaf in failing[:self.worst]]

    def table(self) -> str:
        """The same Markdown table as ``ssm-metarl parity``, then the worst leaves, divergences and notes."""
        from ssm_metarl.parity import format_table

        parts = [format_table(list(self.rows))]
        worst = [f"worst leaves of {r.quantity!r} ({r.dtype}):\n" + "\n".join(self.worst_leaves(r))
                 for r in self.rows if self.worst_leaves(r)]
        if worst:
            parts.append("\n".join(worst))
        if self.divergence is not None:
            parts.append(self.divergence.describe())
        elif self.divergence_checked:
            parts.append("every paired module's forward output agrees: the difference is in the loss or the "
                         "backward pass (a custom_vjp, stop_gradient, detach, or a non-differentiable op)")
        if self.gradient_divergence is not None:
            parts.append(self.gradient_divergence.describe())
        if self.adam_split is not None:
            parts.append(f"the Adam trajectories split at meta-step {self.adam_split} (the first step whose "
                         "parameters differ beyond the tolerance)")
        parts += [f"note: {note}" for note in self.notes]
        return "\n\n".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "passed": self.passed, "devices": {"torch": self.devices[0],
                                                                        "jax": self.devices[1]},
                "rows": [{**r.to_dict(), "worst_leaves": self.worst_leaves(r)} for r in self.rows],
                "divergence": None if self.divergence is None else self.divergence.to_dict(),
                "gradient_divergence": None if self.gradient_divergence is None
                else self.gradient_divergence.to_dict(),
                "adam_split": self.adam_split, "notes": list(self.notes)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def model_dtype(model: torch.nn.Module) -> str:
    """The one floating dtype of the torch model's parameters (float64, float32, bfloat16 or float16)."""
    dtypes = {dtype_name(p.dtype) for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in FLOATING:
        raise TypeError(f"the torch model's parameters must all have one floating dtype of {list(FLOATING)}, "
                        f"got {sorted(dtypes)}")
    return next(iter(dtypes))


def _other_task(rng: np.random.Generator, tree: Any) -> Any:
    """Fresh noise for floating leaves; integer ids, positions and masks are kept (always valid)."""
    return tree_map(lambda a: rng.normal(size=a.shape).astype(a.dtype) if is_floating(a) else a, tree)


def _tasks(rng: np.random.Generator, inputs: Inputs, labels: Any) -> list[tuple[Any, ...]]:
    first = (inputs, labels, inputs.map(lambda a: _other_task(rng, a)), _other_task(rng, labels))
    second = tuple(x.map(lambda a: _other_task(rng, a)) if isinstance(x, Inputs) else _other_task(rng, x)
                   for x in first)
    return [first, second]


def compare_models(
    torch_model: torch.nn.Module,
    flax_model: nnx.Module,
    inputs: Any,
    labels: Any = None,
    *,
    kwargs: Mapping[str, Any] | None = None,
    step: StepMode | None = None,
    train: bool | None = None,
    loss: Loss = "mse",
    rows: Sequence[str] = ROW_GROUPS,
    overrides: Overrides = None,
    transfer: bool = True,
    tolerances_override: Mapping[str, float] | None = None,
    device: str = "auto",
    inner_lr: float = 0.05,
    adam_steps: int = 5,
    outer_lr: float = 0.01,
    seed: int = 0,
    worst: int = 3,
) -> PortingReport:
    """Check a Flax NNX port against its PyTorch original on the parity rows; see the module docstring.

    Args:
        torch_model: the original; left unchanged (its mode, parameters and buffers).
        flax_model: the port. With ``transfer`` (default) the torch weights are copied into it first
            (the contract: weights are made in torch and transferred).
        inputs: one batch: an array, a tuple of positional arrays, or an :class:`Inputs`; numpy, float
            leaves in the models' dtype, integer ids/positions and boolean masks as they are. Leaves may
            be nested in tuples, lists and dicts.
        labels: targets shaped like the outputs (a pytree like the output); default: seeded normal noise.
        kwargs: keyword inputs (``{"mask": ..., "positions": ...}``), numpy.
        step: a :class:`StepMode`: both models carry a state through the inputs' time axis.
        train: the mode both models run in (``model.train()``/``.eval()``); default: the torch model's.
        loss: ``"mse"`` or ``(torch_loss, jax_loss)``, each ``(outputs, labels) -> scalar``.
        rows: which groups of :data:`ROW_GROUPS` to run.
        overrides: explicit pairing, see ``shared.porting.plan_pairing``.
        tolerances_override: ``{kind: rtol}`` on top of the dtype's profile (``shared.contract.PROFILES``),
            kinds ``outputs``, ``gradients``, ``adapted``, ``meta_gradient``, ``meta_update``.
        device: ``"auto"`` (the accelerator when both frameworks see one), ``"cpu"`` or ``"cuda"``.
        inner_lr: the MAML inner SGD step; adam_steps, outer_lr: the Adam meta-steps (float64 only).
        seed: for the labels and the extra meta-learning tasks.
        worst: how many worst leaves a failing row lists.

    Returns:
        A :class:`PortingReport`: ``.table()`` (the ``ssm-metarl parity`` table and the diagnosis), ``.to_json()``.
    """
    dtype = model_dtype(torch_model)
    profile = tolerances(dtype, tolerances_override)
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise RuntimeError("float64 parity needs jax_enable_x64 (parity_tests.models.set_high_precision()) "
                           "before any JAX work")
    unknown = sorted(set(rows) - set(ROW_GROUPS))
    if unknown:
        raise ValueError(f"unknown row groups {unknown}; expected some of {list(ROW_GROUPS)}")
    inputs = Inputs.of(inputs, kwargs)
    check_inputs(inputs, dtype)
    if step is not None:
        check_inputs(Inputs((step.state,)), dtype, "step state")
        inputs.steps(step.time_axis)
    loss_pair = losses(loss)
    torch_device, jax_device = resolve_device(device)
    plan = plan_for(torch_model, flax_model, overrides)
    torch_state = torch_tree(torch_model).tensors
    if transfer:
        load_into_flax(flax_model, plan.to_flax(torch_state))
    mode = torch_model.training if train is None else bool(train)
    pair = ModelPair(torch_model, flax_model, plan, loss_pair, inner_lr, train=mode, step=step, device=torch_device,
                     jax_device=jax_device)
    x = pair.to_torch(inputs)
    t_result = _probe(pair, torch_model, x, inputs, dtype)
    outputs = t_result["output"]
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = tree_map(lambda o: rng.normal(size=tuple(o.shape)).astype(dtype) if o.is_floating_point()
                          else torch_to_numpy(o), outputs)
    elif loss == "mse":
        _check_labels(labels, outputs)
    y = pair.to_torch(labels)
    jx = pair.to_jax(inputs)
    notes = list(dropout_notes(torch_model, flax_model, mode))
    out: list[Row] = []
    failed_forward: bool | None = None
    first_bad_step = None
    if "weights" in rows:
        out.extend(_weight_rows(pair, torch_state, dtype))
    if "forward" in rows:
        forward_rows, first_bad_step = _forward_rows(pair, jx, x, dtype, profile)
        out.extend(forward_rows)
        for r in forward_rows:
            if not r.passed and failed_forward is None:
                failed_forward = (False if "eval mode" in r.quantity else True if "train mode" in r.quantity
                                  else mode)
                hint = mask_polarity_hint(pair, inputs, t_result, profile["outputs"])
                notes += [hint] if hint else []
    gradient_divergence = None
    if "gradients" in rows:
        t_grads = pair.torch_named(_torch_loss_grads(pair, x, y))
        j_grads = pair.in_torch_names(pair.jit_grad(pair.flax_params, jx, labels), pair.param_names)
        grad_row = row("loss gradients w.r.t. every parameter", dtype, "gradients", compare_trees(j_grads, t_grads),
                       profile)
        out.append(grad_row)
        if not grad_row.passed:
            gradient_divergence = localise_gradient(pair, x, j_grads, t_grads, grad_row.tolerance)
    if "adapted" in rows:
        for k in (1, 3):
            t_adapted = pair.torch_adapt(pair.torch_leaves(), x, y, k, create_graph=False)
            j_adapted = pair.jax_adapt(pair.flax_params, jx, labels, k, grad=pair.jit_grad)
            out.append(row(f"adapted parameters, k={k}", dtype, "adapted",
                           compare_trees(pair.in_torch_names(j_adapted, pair.param_names),
                                         pair.torch_named(t_adapted)), profile))
    tasks = _tasks(rng, inputs, labels)
    adam_split = None
    second_order = [g for g in ("meta_gradient", "adam") if g in rows]
    if second_order:
        note = _double_backward(pair, tasks)
        notes += [note] if note else []
        if pair.math_attention is None:
            second_order = []
    if "meta_gradient" in second_order:
        out.extend(_meta_rows(pair, tasks, dtype, profile))
    if "adam" in second_order and profile["meta_update"] is not None:
        adam_row, adam_split = _adam_row(pair, tasks, dtype, adam_steps, outer_lr, profile)
        out.append(adam_row)
    if failed_forward is None and any(not r.passed for r in out if "weights" not in r.quantity):
        failed_forward = mode
    divergence = None
    if failed_forward is not None:
        divergence = _find(pair, inputs, profile["outputs"], failed_forward, first_bad_step)
    return PortingReport(dtype, tuple(out), divergence, failed_forward is not None, gradient_divergence, adam_split,
                         tuple(notes), (str(torch_device), str(jax_device)), worst)


def _step_calls(pair: ModelPair, inputs: Inputs, state: Any, t: int) -> tuple[Inputs, Inputs]:
    """Step ``t``'s call on each side (numpy), from ``state`` in the common layout."""
    step = pair.step
    at = inputs.at_step(t, step.time_axis)
    torch_state = tree_map(torch_to_numpy, side_state(pair.to_torch(state), step.torch_state, to_side=True))
    flax_state = tree_map(np.asarray, side_state(tree_map(jnp.asarray, state), step.flax_state, to_side=True))
    return (step_inputs(at, torch_state, step.torch_convention), step_inputs(at, flax_state, step.flax_convention))


def _probe(pair: ModelPair, user_model: torch.nn.Module, x: Inputs, inputs: Inputs, dtype: str) -> dict[str, Any]:
    """The torch forward once, with errors that name the model, the argument and the expected shape."""
    name = f"torch model {type(user_model).__name__}"
    flax_name = f"flax model {type(pair.flax_model).__name__}"
    if pair.step is None:
        check_signature(user_model.forward, inputs, name)
        check_signature(pair.flax_model.__call__, inputs, flax_name)
    else:
        torch_call, flax_call = _step_calls(pair, inputs, pair.step.state, 0)
        for model, method, call, label in ((user_model, pair.step.torch_method or "forward", torch_call, name),
                                           (pair.flax_model, pair.step.flax_method or "__call__", flax_call,
                                            flax_name)):
            if not callable(getattr(model, method, None)):
                raise TypeError(f"step mode: the {label} has no method {method!r}")
            check_signature(getattr(model, method), call, f"{label}.{method}")
    with torch.no_grad():
        try:
            result = diagnose(pair.torch_model, lambda: pair.torch_forward(pair.torch_params, x)[0], inputs, name)
        except InputSpecError as err:
            if dtype in ("bfloat16", "float16") and "not implemented for" in str(err):
                raise TypeError(f"the {name} cannot run in {dtype} on {pair.device}: {err}") from err
            raise
    try:
        jax.eval_shape(lambda p, v: pair.jax_forward(p, v, pair.train)[0], pair.flax_params, pair.to_jax(inputs))
    except (TypeError, ValueError) as err:
        shapes = ", ".join(f"{n} {tuple(v.shape)} {dtype_name(v.dtype)}" for n, v in inputs.named())
        raise InputSpecError(f"the flax model {type(pair.flax_model).__name__} failed on the inputs ({shapes}): "
                             f"{type(err).__name__}: {str(err).splitlines()[0]}") from err
    return result


def _check_labels(labels: Any, outputs: Any) -> None:
    got = [tuple(np.shape(leaf)) for leaf in leaves(labels)]
    want = [tuple(leaf.shape) for leaf in leaves(outputs)]
    if got != want:
        want_text = want[0] if len(want) == 1 else structure(outputs)
        got_text = got[0] if len(got) == 1 else structure(labels)
        raise ValueError(f"with the MSE loss, labels must have the outputs' shape {want_text}, got {got_text}")


def _torch_loss_grads(pair: ModelPair, x: Inputs, y: Any) -> list[torch.Tensor]:
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


def _numpy(tree: Any) -> Any:
    return tree_map(lambda a: torch_to_numpy(a) if isinstance(a, torch.Tensor) else np.asarray(a), tree)


def _compare_outputs(flax_tree: Any, torch_tree_: Any, what: str) -> Comparison:
    try:
        return compare_trees(_numpy(flax_tree), _numpy(torch_tree_))
    except ValueError as err:
        raise ValueError(f"{what}: the two models return different structures: torch {structure(torch_tree_)}, "
                         f"flax {structure(flax_tree)} ({err})") from None


def _forward_rows(pair: ModelPair, jx: Any, x: Inputs, dtype: str, profile: Mapping[str, Any]
                  ) -> tuple[list[Row], int | None]:
    mode = pair.train
    with torch.no_grad():
        t_run, t_buffers = pair.torch_forward(pair.torch_params, x, train=mode)
    j_run, j_stats = pair.jit_forward(pair.flax_params, jx, mode)
    name = "forward" if not pair.buffer_names else f"forward, {'train' if mode else 'eval'} mode" + (
        " (batch statistics)" if mode else " (running statistics)")
    if pair.step is None:
        out = [row(name, dtype, "outputs", _compare_outputs(j_run["output"], t_run["output"], "forward"), profile)]
        first_bad = None
    else:
        steps = np.shape(leaves(t_run["output"])[0])[pair.step.time_axis]
        axis = pair.step.time_axis
        per_step = [_compare_outputs(tree_map(lambda a, t=t: np.take(np.asarray(a), t, axis), _numpy(j_run["output"])),
                                     tree_map(lambda a, t=t: np.take(a, t, axis), _numpy(t_run["output"])), "step")
                    for t in range(steps)]
        tol = profile["outputs"]
        first_bad = next((t for t, c in enumerate(per_step) if not c.passes(tol)), None)
        out = [row(f"{name}: every step's output ({steps} steps)", dtype, "outputs",
                   _compare_outputs(j_run["output"], t_run["output"], "step outputs"), profile),
               row(f"final state after {steps} steps", dtype, "outputs",
                   _compare_outputs(j_run["state"], t_run["state"], "final state"), profile)]
    if not pair.buffer_names:
        return out, first_bad
    other, _ = pair.jit_forward(pair.flax_params, jx, not mode)
    with torch.no_grad():
        t_other, _ = pair.torch_forward(pair.torch_params, x, train=not mode)
    stats = {k: np.asarray(v) for k, v in state_to_flat(j_stats, pair.index).items()}
    other_name = "forward, eval mode (running statistics)" if mode else "forward, train mode (batch statistics)"
    out.append(row(other_name, dtype, "outputs",
                   _compare_outputs(other["output"], t_other["output"], "forward"), profile))
    if mode:
        out.append(row("running statistics after one train-mode forward", dtype, "outputs",
                       compare_trees(pair.in_torch_names(stats, pair.buffer_names),
                                     {n: torch_to_numpy(t_buffers[n]) for n in pair.buffer_names}), profile))
    return out, first_bad


def _find(pair: ModelPair, inputs: Inputs, tolerance: float, train: bool, first_bad_step: int | None
          ) -> Divergence | None:
    """The first divergent layer; in step mode, of the first step whose output differs, both models
    starting that step from torch's state (so the step itself is tested)."""
    if pair.step is None:
        return find_divergence(pair.torch_model, pair.flax_model, inputs, tolerance=tolerance, train=train,
                               plan=pair.plan, device=pair.device)
    step, t = pair.step, first_bad_step or 0
    state = step.state
    if t > 0:
        prefix = inputs.map(lambda a: a[(slice(None),) * step.time_axis + (slice(0, t),)])
        with torch.no_grad():
            state = _numpy(pair.torch_forward(pair.torch_params, pair.to_torch(prefix), train=train)[0]["state"])
    torch_call, flax_call = _step_calls(pair, inputs, state, t)
    return find_divergence(pair.torch_model, pair.flax_model, torch_call, tolerance=tolerance, train=train,
                           plan=pair.plan, device=pair.device, flax_inputs=flax_call,
                           torch_method=step.torch_method, flax_method=step.flax_method)


def localise_gradient(pair: ModelPair, x: Inputs, flax_grads: Mapping[str, np.ndarray],
                      torch_grads: Mapping[str, np.ndarray], tolerance: float) -> GradientDivergence | None:
    """Walk the modules in backward order (the reverse of the forward's completion order) and return the
    first whose own parameters' gradients differ: the backward divergence enters there."""
    with torch.no_grad():
        if pair.step is None:
            records, _ = record_torch(pair.torch_model, x, pair.train)
        else:
            call = _step_calls(pair, x.map(torch_to_numpy), pair.step.state, 0)[0]
            records, _ = record_torch(pair.torch_model, pair.to_torch(call), pair.train, pair.step.torch_method)
    order = [r.path for r in records]
    modules = dict(pair.torch_model.named_modules())
    owned: dict[str, list[str]] = {}
    for name in torch_grads:
        owned.setdefault(name.rpartition(".")[0], []).append(name)
    ranked = [p for p in reversed(order) if p in owned] + [p for p in owned if p not in order]
    for path in ranked:
        comparison = compare_trees({n: flax_grads[n] for n in owned[path]}, {n: torch_grads[n] for n in owned[path]})
        if comparison.passes(tolerance):
            continue
        bad = tuple(leaf.name for leaf in comparison.leaves if not leaf.passes(tolerance))
        module = modules[path]
        hints = gradient_hints(module, {n: flax_grads[n] for n in bad}, {n: torch_grads[n] for n in bad})
        return GradientDivergence(path or "<root>", type(module).__name__, comparison.max_abs, comparison.rel,
                                  tolerance, bad, tuple(hints))
    return None


def _double_backward(pair: ModelPair, tasks: list[tuple[Any, ...]]) -> str | None:
    """Probe one second-order step; if torch's kernel has no double backward, switch attention to the
    math SDPA backend (differentiable twice) and say so; if that fails too, skip the second-order rows."""
    task = tuple(pair.to_torch(v) for v in tasks[0])
    try:
        pair.torch_meta(pair.torch_leaves(), [task], 1, first_order=False)
        return None
    except RuntimeError as err:
        if NO_DOUBLE_BACKWARD not in str(err):
            raise
        first = str(err).splitlines()[0]
    pair.math_attention = True
    try:
        pair.torch_meta(pair.torch_leaves(), [task], 1, first_order=False)
    except RuntimeError as err:
        if NO_DOUBLE_BACKWARD not in str(err):
            raise
        pair.math_attention = None
        return (f"the second-order rows did not run: a torch kernel has no double backward ({first}), even with "
                f"attention on the math SDPA backend ({str(err).splitlines()[0]}); write that op from "
                "differentiable primitives (or use its math variant) for second-order MAML")
    return (f"torch's default attention kernel has no double backward ({first}): the second-order rows ran torch "
            "attention on the math SDPA backend (torch.nn.attention.sdpa_kernel(SDPBackend.MATH)); to train "
            "second-order MAML with this model, wrap your meta-step in that context manager")


def _meta_rows(pair: ModelPair, tasks: list[tuple[Any, ...]], dtype: str, profile: Mapping[str, Any],
               steps: int = 2) -> list[Row]:
    torch_tasks = [tuple(pair.to_torch(v) for v in task) for task in tasks]
    jax_tasks = [tuple(pair.to_jax(v) for v in task) for task in tasks]
    results = {}
    for first_order in (False, True):
        _, t_grads = pair.torch_meta(pair.torch_leaves(), torch_tasks, steps, first_order)
        if first_order:  # the mean of query-loss gradients at the adapted parameters: reuses the compiled grad
            task_grads = [pair.jit_grad(pair.jax_adapt(pair.flax_params, sx, sy, steps, grad=pair.jit_grad), qx, qy)
                          for sx, sy, qx, qy in jax_tasks]
            j_grads = jax.tree.map(lambda *g: sum(g) / len(g), *task_grads)
        else:
            _, j_grads = pair.jax_meta(pair.flax_params, jax_tasks, steps)
        results[first_order] = (pair.in_torch_names(j_grads, pair.param_names), pair.torch_named(t_grads))
    out = [
        row(f"meta-gradient, second order (k={steps})", dtype, "meta_gradient", compare_trees(*results[False]),
            profile),
        row(f"meta-gradient, first order (k={steps})", dtype, "meta_gradient", compare_trees(*results[True]),
            profile),
    ]
    for backend, index in (("jax", 0), ("torch", 1)):
        differ = compare_trees(results[False][index], results[True][index])
        out.append(Row(f"second order differs from first ({backend})", dtype, differ.max_abs, differ.rel,
                       MUST_DIFFER, differ.rel > MUST_DIFFER, differ))
    return out


def _adam_row(pair: ModelPair, tasks: list[tuple[Any, ...]], dtype: str, steps: int, lr: float,
              profile: Mapping[str, Any], inner_steps: int = 2) -> tuple[Row, int | None]:
    """N Adam meta-steps on both sides; also the first step (1-based) whose parameters differ."""
    torch_tasks = [tuple(pair.to_torch(v) for v in task) for task in tasks]
    jax_tasks = [tuple(pair.to_jax(v) for v in task) for task in tasks]
    t_params = pair.torch_leaves()
    optimizer = torch.optim.Adam(list(t_params.values()), lr=lr)
    t_losses, t_path = [], []
    for _ in range(steps):
        meta_loss, grads = pair.torch_meta(t_params, torch_tasks, inner_steps, first_order=False)
        for p, g in zip(t_params.values(), grads, strict=True):
            p.grad = g
        optimizer.step()
        t_losses.append(float(meta_loss))
        t_path.append(pair.torch_named(t_params))
    tx = optax.adam(lr)
    j_params = pair.flax_params
    opt_state = tx.init(j_params)
    j_losses, j_path = [], []
    for _ in range(steps):
        meta_loss, grads = pair.jax_meta(j_params, jax_tasks, inner_steps)
        updates, opt_state = tx.update(grads, opt_state, j_params)
        j_params = optax.apply_updates(j_params, updates)
        j_losses.append(float(meta_loss))
        j_path.append(pair.in_torch_names(j_params, pair.param_names))
    comparison = compare_trees(
        {"params": pair.in_torch_names(j_params, pair.param_names), "losses": np.array(j_losses)},
        {"params": pair.torch_named(t_params), "losses": np.array(t_losses)},
    )
    result = row(f"{steps} meta-steps, torch Adam vs optax adam (k={inner_steps})", dtype, "meta_update", comparison,
                 profile)
    split = next((i + 1 for i, (j, t) in enumerate(zip(j_path, t_path, strict=True))
                  if not compare_trees(j, t).passes(result.tolerance)), None)
    return result, split
