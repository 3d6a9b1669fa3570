"""Both models of a port as pure functions of their parameters: forward, loss, SGD inner loop and the
MAML meta-gradient, written with ``torch.func.functional_call`` + ``torch.autograd.grad`` and with
``nnx.split``/``nnx.merge`` + ``jax.grad`` (independent of the MetaMAML classes).

A forward takes :class:`~ssm_metarl.porting.io.Inputs` (positional and keyword pytrees) and returns a
result ``{"output": <the model's output pytree>}``; in step mode the models are called once per step
with a carried state and the result is ``{"output": <every step's output, stacked on the time axis>,
"state": <the final state>}``. The loss sees ``result["output"]`` only.

Buffers (BatchNorm statistics) are carried functionally: fresh copies go into every forward and the
updates come back beside the output, so neither model's statistics change. Flax trees convert to
torch ``state_dict`` names through the pairing plan (gradients map like parameters: every rule is a
linear re-layout).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch.func import functional_call

from shared.porting import Plan
from ssm_metarl.porting.io import (
    Inputs,
    StepMode,
    leaves,
    side_state,
    step_inputs,
    step_result,
    structure,
    torch_method,
    tree_map,
)
from ssm_metarl.porting.precision import numpy_to_torch, torch_to_numpy
from ssm_metarl.porting.trees import flax_index, state_to_flat, torch_tree

LossPair = tuple[Callable[[Any, Any], torch.Tensor], Callable[[Any, Any], jax.Array]]
Loss = str | LossPair


def _torch_mse(outputs: Any, labels: Any) -> torch.Tensor:
    terms = [torch.mean((o - y) ** 2) for o, y in zip(leaves(outputs), leaves(labels), strict=True)
             if o.is_floating_point()]
    return torch.stack(terms).sum()


def _jax_mse(outputs: Any, labels: Any) -> jax.Array:
    terms = [jnp.mean((o - y) ** 2) for o, y in zip(leaves(outputs), leaves(labels), strict=True)
             if jnp.issubdtype(o.dtype, jnp.floating)]
    return jnp.sum(jnp.stack(terms))


def losses(loss: Loss) -> LossPair:
    """``"mse"``: the sum over the output's floating leaves of the mean squared error against the labels'
    matching leaf; or ``(torch_loss, jax_loss)``, each ``(outputs, labels) -> scalar``."""
    if loss == "mse":
        return _torch_mse, _jax_mse
    if isinstance(loss, tuple) and len(loss) == 2 and all(callable(f) for f in loss):
        return loss
    raise TypeError(f"loss must be 'mse' or a pair (torch_loss, jax_loss) of callables (outputs, labels) -> scalar, "
                    f"got {loss!r}")


def _stack(per_step: list[Any], axis: int, stack: Callable[..., Any]) -> Any:
    first = per_step[0]
    flat = [leaves(tree) for tree in per_step]
    stacked = iter([stack([step[i] for step in flat], axis) for i in range(len(flat[0]))])
    return tree_map(lambda _: next(stacked), first)


def _check_arrays(tree: Any, kind: type | tuple[type, ...], name: str) -> None:
    bad = [type(leaf).__name__ for leaf in leaves(tree) if not isinstance(leaf, kind)]
    if bad:
        raise TypeError(f"the {name} must return arrays in tuples, lists or dicts (None allowed); got a leaf of "
                        f"type {bad[0]} in {structure(tree)}")


class ModelPair:
    """Both models as pure functions of their parameters, and conversion of Flax trees to torch names."""

    def __init__(self, torch_model: torch.nn.Module, flax_model: nnx.Module, plan: Plan, loss: LossPair,
                 inner_lr: float, *, train: bool = True, step: StepMode | None = None,
                 device: torch.device | None = None, jax_device: jax.Device | None = None,
                 math_attention: bool = False) -> None:
        self.device = device or torch.device("cpu")
        self.jax_device = jax_device
        if self.device.type != "cpu":  # a copy on the device; the user's model stays where it is
            torch_model = copy.deepcopy(torch_model).to(self.device)
        self.torch_model, self.flax_model, self.plan, self.inner_lr = torch_model, flax_model, plan, inner_lr
        self.train, self.step, self.math_attention = train, step, math_attention
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
        was_training = torch_model.training
        for mode in (True, False):
            flax_model.train() if mode else flax_model.eval()
            self.graphdefs[mode], self.flax_params, self.rest[mode] = nnx.split(flax_model, nnx.Param, ...)
        flax_model.train() if was_training else flax_model.eval()
        if jax_device is not None:
            self.flax_params = jax.device_put(self.flax_params, jax_device)
        # Compiled once per pair: eager JAX re-traces nnx.merge and every scan on each call (30x slower).
        self.jit_forward = jax.jit(self.jax_forward, static_argnums=2)
        self.jit_grad = jax.jit(jax.grad(self.jax_task_loss))
        # One task's query loss after adaptation, compiled once and called per task (tasks share shapes):
        # half the compile time of differentiating the mean over an unrolled list of tasks.
        self.jit_task_meta = jax.jit(jax.value_and_grad(self.jax_query_loss), static_argnums=5)

    # ---------------------------------------------------------------- conversions
    def to_torch(self, tree: Any) -> Any:
        """numpy leaves (an :class:`Inputs`, labels or a state) -> torch tensors on the pair's device."""
        if isinstance(tree, Inputs):
            return tree.map(lambda a: numpy_to_torch(a, self.device))
        return tree_map(lambda a: numpy_to_torch(a, self.device), tree)

    def to_jax(self, tree: Any) -> Any:
        """numpy leaves -> the JAX call's argument: ``Inputs`` become ``{"args", "kwargs"}`` (+ ``"state"``)."""
        if isinstance(tree, Inputs):
            tree = tree.as_tree()
            if self.step is not None:
                tree["state"] = self.step.state
        tree = tree_map(jnp.asarray, tree)
        return tree if self.jax_device is None else jax.device_put(tree, self.jax_device)

    # ---------------------------------------------------------------- torch
    def _torch_call(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], inputs: Inputs) -> Any:
        method = self.step.torch_method if self.step is not None else None
        with torch_method(self.torch_model, method):
            if self.math_attention:
                from torch.nn.attention import SDPBackend, sdpa_kernel

                with sdpa_kernel(SDPBackend.MATH):
                    return functional_call(self.torch_model, (params, buffers), tuple(inputs.args),
                                           dict(inputs.kwargs))
            return functional_call(self.torch_model, (params, buffers), tuple(inputs.args), dict(inputs.kwargs))

    def torch_forward(self, params: dict[str, torch.Tensor], inputs: Inputs, train: bool | None = None
                      ) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """``inputs`` as torch tensors -> (result, the buffers after the forward)."""
        buffers = {k: v.clone() for k, v in self.torch_buffers.items()}
        was_training = self.torch_model.training
        try:
            self.torch_model.train(self.train if train is None else train)
            if self.step is None:
                out = self._torch_call(params, buffers, inputs)
                _check_arrays(out, torch.Tensor, "torch model")
                return {"output": out}, buffers
            step = self.step
            state = side_state(self.to_torch(step.state), step.torch_state, to_side=True)
            outputs = []
            for t in range(inputs.steps(step.time_axis)):
                result = self._torch_call(params, buffers, step_inputs(inputs.at_step(t, step.time_axis), state,
                                                                       step.torch_convention))
                out, state = step_result(result, step.torch_convention, "the torch model")
                _check_arrays((out, state), torch.Tensor, "torch model")
                outputs.append(out)
            final = side_state(state, step.torch_state, to_side=False)
            return {"output": _stack(outputs, step.time_axis, torch.stack), "state": final}, buffers
        finally:
            self.torch_model.train(was_training)

    def torch_task_loss(self, params: dict[str, torch.Tensor], x: Inputs, y: Any) -> torch.Tensor:
        return self.torch_loss(self.torch_forward(params, x)[0]["output"], y)

    def torch_grad(self, loss: torch.Tensor, params: dict[str, torch.Tensor], create_graph: bool
                   ) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params.values(), grads, strict=True)]

    def torch_adapt(self, params: dict[str, torch.Tensor], x: Inputs, y: Any, steps: int,
                    create_graph: bool) -> dict[str, torch.Tensor]:
        for _ in range(steps):
            grads = self.torch_grad(self.torch_task_loss(params, x, y), params, create_graph)
            params = {n: p - self.inner_lr * g for (n, p), g in zip(params.items(), grads, strict=True)}
        return params

    def torch_leaves(self, params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        source = self.torch_params if params is None else params
        return {n: p.detach().clone().requires_grad_(True) for n, p in source.items()}

    def torch_meta(self, params: dict[str, torch.Tensor], tasks: Sequence[tuple[Any, ...]], steps: int,
                   first_order: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        losses = [self.torch_task_loss(self.torch_adapt(params, sx, sy, steps, not first_order), qx, qy)
                  for sx, sy, qx, qy in tasks]
        meta_loss = torch.stack(losses).mean()
        return meta_loss.detach(), self.torch_grad(meta_loss, params, create_graph=False)

    # ---------------------------------------------------------------- jax
    def jax_forward(self, params: nnx.State, x: dict[str, Any], train: bool = True) -> tuple[dict[str, Any], nnx.State]:
        """``x`` from :meth:`to_jax` -> (result, the BatchStat state after the forward)."""
        # Fresh copies of the non-parameter state (BatchNorm statistics, RNG counters) made inside the
        # current trace: NNX refuses to update a variable created at another trace level.
        rest = jax.tree.map(jnp.array, self.rest[train])
        module = nnx.merge(self.graphdefs[train], params, rest)
        inputs = Inputs(tuple(x["args"]), x["kwargs"])
        if self.step is None:
            out = module(*inputs.args, **inputs.kwargs)
            _check_arrays(out, jax.Array, "flax model")
            return {"output": out}, nnx.state(module, nnx.BatchStat)
        step = self.step
        state = side_state(x["state"], step.flax_state, to_side=True)
        call_step = getattr(module, step.flax_method) if step.flax_method else module
        outputs = []
        for t in range(inputs.steps(step.time_axis)):
            call = step_inputs(inputs.at_step(t, step.time_axis), state, step.flax_convention)
            out, state = step_result(call_step(*call.args, **call.kwargs), step.flax_convention, "the flax model")
            _check_arrays((out, state), jax.Array, "flax model")
            outputs.append(out)
        final = side_state(state, step.flax_state, to_side=False)
        return {"output": _stack(outputs, step.time_axis, jnp.stack), "state": final}, nnx.state(module, nnx.BatchStat)

    def jax_task_loss(self, params: nnx.State, x: dict[str, Any], y: Any) -> jax.Array:
        return self.jax_loss(self.jax_forward(params, x, self.train)[0]["output"], y)

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
        return {n: torch_to_numpy(v) for n, v in items}
