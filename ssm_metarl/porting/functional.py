"""Both models of a port as pure functions of their parameters: forward, loss, SGD inner loop and the
MAML meta-gradient, written with ``torch.func.functional_call`` + ``torch.autograd.grad`` and with
``nnx.split``/``nnx.merge`` + ``jax.grad`` (independent of the MetaMAML classes).

Buffers (BatchNorm statistics) are carried functionally: fresh copies go into every forward and the
updates come back beside the output, so neither model's statistics change. Flax trees convert to
torch ``state_dict`` names through the pairing plan (gradients map like parameters: every rule is a
linear re-layout).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch.func import functional_call

from shared.porting import Plan
from ssm_metarl.porting.trees import flax_index, state_to_flat, torch_tree

LossPair = tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], Callable[[jax.Array, jax.Array], jax.Array]]
Loss = str | LossPair


def losses(loss: Loss) -> LossPair:
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


class ModelPair:
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
