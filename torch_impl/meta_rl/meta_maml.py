"""MetaMAML: second-order MAML over any ``nn.Module`` on ``torch.func`` (ARCHITECTURE.md section 3).

The maths is defined once, as pure functions that mirror ``jax_impl/meta_rl/meta_maml.py``:

- :meth:`MetaMAML.inner_loop` ``params -> params``: SGD steps whose gradients come from
  ``torch.func.grad`` (first order: the inner gradients detached);
- :meth:`MetaMAML.task_query_loss`: the query loss at one task's adapted parameters;
- :meth:`MetaMAML.meta_loss`: the mean over tasks; the meta-gradient is ``torch.func.grad_and_value``
  of it.

Every forward goes through ``torch.func.functional_call``. How that one definition is run is an
explicit option, never a silent fallback: ``vectorize=True`` maps ``task_query_loss`` over a stacked
task axis with ``torch.func.vmap``, ``vectorize=False`` loops over the tasks in Python; ``compile=True``
runs the whole meta-gradient under ``torch.compile`` (one compiled step per task-batch signature).
Buffers (e.g. BatchNorm running statistics) are carried functionally: every forward gets fresh
copies, which it may update, and the copies are dropped, so MetaMAML never writes them back.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from shared.config import MetaConfig
from shared.validation import check_tasks
from torch_impl.core.norms import PrimitiveNorms

Params = dict[str, torch.Tensor]
LossFn = Callable[[Any, Any], torch.Tensor]
Task = tuple[Any, Any, Any, Any]

# The number of compiled meta-gradient steps kept per MetaMAML (least recently used is dropped).
COMPILED_CACHE_SIZE = 8


def mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error, the default MetaMAML loss; ``outputs`` and ``labels`` must have the same shape."""
    if not isinstance(outputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        got = f"{type(outputs).__name__} and {type(labels).__name__}"
        raise TypeError(f"the default mse loss expects model outputs and labels that are tensors, got {got}; "
                        "pass loss_fn= for tuple outputs or labels")
    if outputs.shape != labels.shape:
        raise ValueError(f"mse: model outputs have shape {tuple(outputs.shape)} but labels have shape "
                         f"{tuple(labels.shape)}; expected exactly the same shape (no broadcasting)")
    return torch.mean((outputs - labels) ** 2)


class MetaMAML:
    """Model-agnostic meta-learning with an Adam outer step.

    Args:
        model: any ``nn.Module``; parameters with ``requires_grad=False`` are neither adapted
            nor meta-trained; buffers are passed to every forward as fresh copies and never
            written back (BatchNorm in train mode normalises with batch statistics).
        inner_lr: SGD step size of the inner (adaptation) loop.
        outer_lr: Adam learning rate of the outer (meta) step.
        num_inner_steps: inner SGD steps per task (>= 1).
        first_order: drop the second-order terms (FOMAML).
        loss_fn: ``loss_fn(outputs, labels) -> scalar tensor``; labels may be a tuple.
        vectorize: ``True`` (default): ``torch.func.vmap`` over a stacked task axis; every task must
            have the same shapes and the model must be vmappable (no ``nn.GRU``/``nn.LSTM``, no
            data-dependent Python control flow; norm layers run from primitive ops, see
            ``torch_impl/core/norms.py``). ``False``: a Python loop over the same per-task function; any
            model, ragged tasks.
        compile: ``torch.compile`` the meta-gradient step (default ``False``). Compiling costs seconds
            to tens of seconds per task-batch signature (shapes, dtypes, number of tasks, structure,
            train/eval mode); each signature is compiled once and the last
            ``COMPILED_CACHE_SIZE`` are kept. The model must trace without graph breaks.
    """

    def __init__(
        self,
        model: nn.Module,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        num_inner_steps: int = 1,
        *,
        first_order: bool = False,
        loss_fn: LossFn = mse,
        vectorize: bool = True,
        compile: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(outputs, labels), got {type(loss_fn).__name__}")
        for name, value in (("vectorize", vectorize), ("compile", compile)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        self.config = MetaConfig(inner_lr, outer_lr, num_inner_steps, first_order)
        self.model = model
        self.loss_fn = loss_fn
        self.vectorize = vectorize
        self.compile = compile
        if not self.trainable_parameters():
            raise ValueError("model has no parameters with requires_grad=True; expected at least one to meta-train")
        # foreach: one dispatch per Adam operation for all parameters (the same arithmetic as the loop)
        self.optimizer = torch.optim.Adam(self.trainable_parameters().values(), lr=outer_lr, foreach=True)
        self._compiled: collections.OrderedDict[tuple, Callable] = collections.OrderedDict()
        self._buffer_names: frozenset[str] = frozenset()
        self.rest()

    @property
    def inner_lr(self) -> float:
        return self.config.inner_lr

    @property
    def outer_lr(self) -> float:
        return self.config.outer_lr

    @property
    def num_inner_steps(self) -> int:
        return self.config.num_inner_steps

    @property
    def first_order(self) -> bool:
        return self.config.first_order

    def trainable_parameters(self) -> Params:
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def rest(self) -> Params:
        """Everything the forward needs besides the trainable parameters: frozen parameters and buffers."""
        rest = {name: p.detach() for name, p in self.model.named_parameters() if not p.requires_grad}
        buffers = dict(self.model.named_buffers())
        self._buffer_names = frozenset(buffers)  # read by the traced maths, refreshed at every public call
        rest.update(buffers)
        return rest

    # ------------------------------------------------------ pure functions (the maths, defined once)
    def loss(self, params: Params, rest: Params, data: Any, labels: Any) -> torch.Tensor:
        """Pure: ``loss_fn(model(data), labels)`` with ``params`` and fresh copies of the buffers."""
        fresh = {name: t.clone() if name in self._buffer_names else t for name, t in rest.items()}
        outputs = functional_call(self.model, {**fresh, **params}, data if isinstance(data, tuple) else (data,))
        loss = self.loss_fn(outputs, labels)
        if not isinstance(loss, torch.Tensor):
            raise TypeError(f"loss_fn must return a scalar torch.Tensor, got {type(loss).__name__}")
        if loss.dim() != 0:
            raise ValueError(f"loss_fn must return a scalar tensor, got shape {tuple(loss.shape)}")
        return loss

    def inner_loop(self, params: Params, rest: Params, data: Any, labels: Any) -> Params:
        """Pure: ``num_inner_steps`` SGD steps on one task, gradients from ``torch.func.grad``."""
        for _ in range(self.num_inner_steps):
            grads = torch.func.grad(self.loss)(params, rest, data, labels)
            if self.first_order:
                grads = {name: g.detach() for name, g in grads.items()}
            params = {name: p - self.inner_lr * grads[name] for name, p in params.items()}
        return params

    def task_query_loss(self, params: Params, rest: Params, task: Task) -> torch.Tensor:
        """Pure: the query loss of one task at its adapted parameters."""
        support_x, support_y, query_x, query_y = task
        return self.loss(self.inner_loop(params, rest, support_x, support_y), rest, query_x, query_y)

    def meta_loss(self, params: Params, rest: Params, tasks: Any) -> torch.Tensor:
        """Pure: the mean post-adaptation query loss. ``tasks``: with ``vectorize``, one task tuple
        whose tensors carry a leading task axis (``rest``'s buffers too); without, a list of tasks."""
        if self.vectorize:
            in_dims = {name: 0 if name in self._buffer_names else None for name in rest}
            with PrimitiveNorms():  # vmap's second-order norm backward is wrong (torch_impl/core/norms.py)
                return torch.func.vmap(self.task_query_loss, in_dims=(None, in_dims, 0))(params, rest, tasks).mean()
        return torch.stack([self.task_query_loss(params, rest, task) for task in tasks]).mean()

    def meta_step(self, params: Params, rest: Params, tasks: Any) -> tuple[Params, torch.Tensor]:
        """Pure: ``(meta-gradient, mean query loss)``, the function that ``compile=True`` compiles."""
        return torch.func.grad_and_value(self.meta_loss)(params, rest, tasks)

    # ------------------------------------------------------------ public API
    def adapt(self, task_data: Any, task_labels: Any, *, params: Params | None = None) -> Params:
        """Run the inner loop on one task; returns every parameter keyed like ``named_parameters()``.

        The result (detached) works with ``functional_call(model, params, x)``; frozen
        parameters are included unchanged. ``params`` (a dict like the result) starts the inner
        loop somewhere other than the model's own parameters, e.g. for a further adaptation step.
        Runs eagerly (one task: nothing to vectorise).
        """
        _check_finite(self._check_pair("task", task_data, task_labels))
        own = self.trainable_parameters()
        start = own if params is None else params
        missing = sorted(set(own) - set(start))
        if missing:
            raise ValueError(f"params lacks trainable parameters {missing}")
        start = {name: start[name].detach() for name in own}
        adapted = self._run("adapt", lambda: self.inner_loop(start, self.rest(), task_data, task_labels),
                            lambda: None)
        result = {name: p.detach() for name, p in self.model.named_parameters()}
        result.update({name: p.detach() for name, p in adapted.items()})
        return result

    def meta_gradient(self, tasks: Sequence[tuple]) -> Params:
        """The meta-gradient (mean over tasks of the post-adaptation query loss), without stepping."""
        return self.value_and_meta_gradient(tasks)[1]

    def value_and_meta_gradient(self, tasks: Sequence[tuple]) -> tuple[torch.Tensor, Params]:
        """``(loss, grads)``: the mean post-adaptation query loss (a detached 0-d tensor) and the
        meta-gradient dict keyed like the trainable parameters. Nothing is changed."""
        tasks = self._check_tasks(tasks)
        params = {name: p.detach() for name, p in self.trainable_parameters().items()}
        rest = self.rest()
        if self.vectorize:
            self._check_vectorizable(tasks)
            batch = _stack(tasks)
            rest = {name: t.expand(len(tasks), *t.shape) if name in self._buffer_names else t
                    for name, t in rest.items()}
        else:
            batch = tasks
        step = self._compiled_step(batch) if self.compile else self.meta_step
        grads, loss = self._run("meta-gradient", lambda: step(params, rest, batch), lambda: self._diagnose(tasks))
        return loss.detach(), grads

    def apply_meta_gradient(self, grads: Params) -> None:
        """One Adam step (``self.optimizer``) with ``grads`` as the gradients of the trainable parameters.

        Refuses non-finite gradients, and a step whose resulting parameters are not finite (or that
        overflows the parameters' dtype): parameters and optimizer state are restored and
        ``ValueError`` is raised, so the model is left as it was.
        """
        params = self.trainable_parameters()
        if not isinstance(grads, dict):
            raise TypeError(f"grads must be a dict keyed like the trainable parameters, got {type(grads).__name__}")
        if set(grads) != set(params):
            raise ValueError(f"grads must have exactly the trainable parameters' keys {sorted(params)}, "
                             f"got {sorted(grads)}")
        for name, p in params.items():
            g = grads[name]
            if not isinstance(g, torch.Tensor) or g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                got = (f"{tuple(g.shape)} {g.dtype} on {g.device}" if isinstance(g, torch.Tensor)
                       else type(g).__name__)
                raise ValueError(f"grads[{name!r}] must be a tensor of shape {tuple(p.shape)}, dtype {p.dtype} "
                                 f"on {p.device}, got {got}")
        if not _all_finite(grads.values()):
            raise ValueError("apply_meta_gradient: the meta-gradient contains NaN/Inf; the model was not changed")
        saved_params = _copies(params.values())
        state_keys = [(p, key) for p, state in self.optimizer.state.items() for key in state]
        saved_state = _copies(self.optimizer.state[p][key] for p, key in state_keys)
        for name, p in params.items():
            p.grad = grads[name].detach()
        try:
            self.optimizer.step()
            failure = None if _all_finite(params.values()) else "are not finite"
        except RuntimeError as err:  # e.g. "value cannot be converted to type float without overflow"
            failure = f"overflow ({err})"
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        if failure is not None:
            with torch.no_grad():
                torch._foreach_copy_(list(params.values()), saved_params)
            self.optimizer.state.clear()
            for (p, key), value in zip(state_keys, saved_state, strict=True):
                self.optimizer.state[p][key] = value
            raise ValueError(f"apply_meta_gradient: the step's resulting parameters {failure} "
                             f"(outer_lr={self.outer_lr!r} too large?); the model was not changed")

    def meta_update(self, tasks: Sequence[tuple]) -> float:
        """One outer Adam step; returns the mean query loss after adaptation.

        Exactly ``value_and_meta_gradient`` then ``apply_meta_gradient``. A non-finite loss,
        meta-gradient or resulting parameter raises ``ValueError`` and leaves the model unchanged.
        """
        loss, grads = self.value_and_meta_gradient(tasks)
        if not bool(torch.isfinite(loss)):
            raise ValueError("meta_update: the query loss is NaN/Inf; the model was not changed")
        self.apply_meta_gradient(grads)
        return float(loss)

    # ------------------------------------------------------------ running the maths
    def _compiled_step(self, batch: Any) -> Callable:
        """The compiled ``meta_step`` for this batch's signature (compiled on first use, LRU-bounded).

        Each signature gets its own copy of the step's code object, so each has its own
        ``torch.compile`` cache entry and never meets dynamo's recompile limit.
        """
        key = (_signature(batch), _signature(self.rest()), _signature(self.trainable_parameters()),
               self.model.training, self.vectorize)
        step = self._compiled.get(key)
        if step is None:
            fresh = types.FunctionType(MetaMAML.meta_step.__code__.replace(), MetaMAML.meta_step.__globals__,
                                       "meta_step")
            step = torch.compile(types.MethodType(fresh, self), fullgraph=True, dynamic=False)
            self._compiled[key] = step
            while len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return step

    def _run(self, what: str, compute: Callable[[], Any], diagnose: Callable[[], str | None]) -> Any:
        """Run ``compute``; a failure inside the model becomes a ValueError that names the option to use."""
        try:
            return compute()
        except (TypeError, ValueError):
            raise
        except Exception as err:  # RuntimeError from vmap, dynamo's Unsupported, ...
            hint = diagnose()
            if hint is not None:
                raise ValueError(f"{what}: {hint}. The error was: {type(err).__name__}: {err}") from err
            raise ValueError(f"{what}: the model's forward or loss failed: {type(err).__name__}: {err}") from err

    def _diagnose(self, tasks: list[Task]) -> str | None:
        """After a failure in the chosen mode: does the plain eager loop run one task? Then name the option
        to turn off. If the eager loop raises ``TypeError``/``ValueError`` (a clear message about the
        input, e.g. label shapes), that error is raised instead."""
        if not (self.vectorize or self.compile):
            return None
        try:
            params = {name: p.detach() for name, p in self.trainable_parameters().items()}
            torch.func.grad(self.task_query_loss)(params, self.rest(), tasks[0])
        except (TypeError, ValueError):
            raise
        except Exception:  # the eager loop fails too: the model itself is at fault
            return None
        flags = [name for name, value in (("vectorize", self.vectorize), ("compile", self.compile)) if value]
        return (f"this model runs in the eager loop but not with {' and '.join(f'{n}=True' for n in flags)} "
                f"(e.g. nn.GRU/nn.LSTM under vmap, or data-dependent Python control flow); use "
                f"MetaMAML(..., {', '.join(f'{n}=False' for n in flags)})")

    # ------------------------------------------------------------ checks (the public boundary)
    def _check_vectorizable(self, tasks: list[Task]) -> None:
        first = _signature(tasks[0])
        for i, task in enumerate(tasks[1:], start=1):
            if _signature(task) != first:
                raise ValueError(
                    f"vectorize=True stacks the tasks, so all must have the same structure, shapes and dtypes: "
                    f"task 0 has {_describe(tasks[0])}, task {i} has {_describe(task)}; use "
                    "MetaMAML(..., vectorize=False) for tasks of different shapes")

    def _check_tasks(self, tasks: Sequence[tuple]) -> list[Task]:
        checked = check_tasks(tasks)
        reference = next(iter(self.trainable_parameters().values()))
        floats = []
        for i, (support_x, support_y, query_x, query_y) in enumerate(checked):
            floats += self._check_pair(f"task {i} support", support_x, support_y, reference)
            floats += self._check_pair(f"task {i} query", query_x, query_y, reference)
        _check_finite(floats)
        return checked

    def _check_pair(self, where: str, data: Any, labels: Any,
                    reference: torch.Tensor | None = None) -> list[tuple[str, torch.Tensor]]:
        """Type, dtype, device and a shared leading (batch) size; returns the floating tensors, named,
        for one finiteness check over the whole call (:func:`_check_finite`)."""
        if reference is None:
            reference = next(iter(self.trainable_parameters().values()))
        tensors = []
        for part, value in (("data", data), ("labels", labels)):
            tensors += self._check_data(f"{where} {part}", value, reference)
        sizes = {name: t.shape[0] for name, t in tensors if t.dim() > 0}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{name}: {size}" for name, size in sizes.items())
            raise ValueError(f"{where}: data and labels must have the same leading (batch) size, got {listed}")
        return [(name, t) for name, t in tensors if t.is_floating_point()]

    def _check_data(self, name: str, value: Any, reference: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        if isinstance(value, (tuple, list)):
            return [item for i, v in enumerate(value) for item in self._check_data(f"{name}[{i}]", v, reference)]
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor (or a tuple of them), got {type(value).__name__}")
        if value.device != reference.device:
            raise ValueError(f"{name} must be on device {reference.device} (the model's), got {value.device}")
        if value.is_floating_point() and value.dtype != reference.dtype:
            raise TypeError(f"{name} must have dtype {reference.dtype} (the model's), got {value.dtype}")
        return [(name, value)]


def _check_finite(named: list[tuple[str, torch.Tensor]]) -> None:
    """One host sync for every tensor of a call; the first non-finite one is named in the error."""
    if named and not _all_finite(t for _, t in named):
        bad = next(name for name, t in named if not bool(torch.isfinite(t).all()))
        raise ValueError(f"{bad} contains NaN or Inf; expected finite values")


def _all_finite(tensors: Any) -> bool:
    """One host sync for any number of tensors (``_foreach`` ops: one dispatch each, not one per tensor)."""
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return True
    maxima = torch._foreach_max(torch._foreach_abs(tensors))  # NaN propagates through max
    return bool(torch.stack(maxima).isfinite().all())


def _copies(values: Any) -> list[Any]:
    """Exact copies of a list of tensors (and non-tensors as they are), in one ``_foreach`` dispatch."""
    values = list(values)
    tensors = [v for v in values if isinstance(v, torch.Tensor)]
    copies = iter(torch._foreach_mul([t.detach() for t in tensors], 1) if tensors else [])
    return [next(copies) if isinstance(v, torch.Tensor) else v for v in values]


def _signature(tree: Any) -> Any:
    """Structure, shapes and dtypes of a tensor tree (tuples, lists, dicts of tensors)."""
    if isinstance(tree, torch.Tensor):
        return tuple(tree.shape), tree.dtype, tree.device.type
    if isinstance(tree, dict):
        return tuple((k, _signature(v)) for k, v in tree.items())
    return type(tree).__name__, tuple(_signature(v) for v in tree)


def _describe(tree: Any) -> Any:
    if isinstance(tree, torch.Tensor):
        return tuple(tree.shape)
    return tuple(_describe(v) for v in tree)


def _stack(tasks: list[Any]) -> Any:
    """A list of equally shaped task trees -> one tree whose tensors have a leading task axis."""
    first = tasks[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(tasks)
    return tuple(_stack([task[i] for task in tasks]) for i in range(len(first)))
