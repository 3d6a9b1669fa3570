"""MetaMAML: second-order MAML over any ``nn.Module`` on ``torch.func`` (ARCHITECTURE.md section 3).

A twin of ``jax_impl/meta_rl/meta_maml.py``: the same public names, signatures and section order;
read them side by side. The maths is defined once, as pure functions of ``(params, rest, ...)``:

- :meth:`MetaMAML.loss`: ``loss_fn(model(data), labels)`` through ``torch.func.functional_call``;
- :meth:`MetaMAML.inner_loop` ``params -> params``: SGD steps whose gradients come from
  ``torch.func.grad`` (first order: the inner gradients detached);
- :meth:`MetaMAML.task_query_loss`: the query loss at one task's adapted parameters;
- :meth:`MetaMAML.meta_loss`: the mean over tasks; the meta-gradient is ``torch.func.grad_and_value``
  of it;
- :meth:`MetaMAML.adam_step` and :meth:`MetaMAML.meta_step`: the outer Adam step (torch.optim.Adam's
  arithmetic, out of place) and "meta-gradient then Adam", ``(params, opt_state) -> (params, opt_state)``.

``meta_update`` runs ``meta_step`` plus one "all finite" report (inputs, meta-gradient, resulting
parameters) as one step, compiled as one graph under ``compile=True``; the new parameters and Adam
state are written back only when the report says every check holds, so a refused step leaves the
model and the optimizer state bit-identical. How the tasks are batched is an explicit option, never a
silent fallback: ``vectorize=True`` maps ``task_query_loss`` over a stacked task axis with
``torch.func.vmap``, ``vectorize=False`` loops over the tasks in Python. Buffers (e.g. BatchNorm running
statistics) are carried functionally: every forward gets fresh copies, which it may update, and the
copies are dropped, so MetaMAML never writes them back. MetaMAML binds to the model's trainable
parameters at construction, as a torch optimizer does.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from shared import messages
from shared.config import MetaConfig
from torch_impl import _private
from torch_impl.core.norms import PrimitiveNorms
from torch_impl.meta_rl import checks

Params = dict[str, torch.Tensor]
OptState = dict[str, Any]  # {"step": 0-d tensor, "exp_avg": Params, "exp_avg_sq": Params}
LossFn = Callable[[Any, Any], torch.Tensor]
Task = tuple[Any, Any, Any, Any]

# The number of compiled steps kept per MetaMAML (least recently used is dropped).
COMPILED_CACHE_SIZE = 8
# torch.optim.Adam's defaults, which optax.adam(b1=0.9, b2=0.999, eps=1e-8) matches (eps outside the root).
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def mse(outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean squared error, the default MetaMAML loss; ``outputs`` and ``labels`` must have the same shape."""
    if not isinstance(outputs, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(messages.mse_not_arrays(checks.ARRAY, checks.type_name(outputs), checks.type_name(labels)))
    if outputs.shape != labels.shape:
        raise ValueError(messages.mse_shapes(outputs.shape, labels.shape))
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
        compile: ``torch.compile`` the step (default ``False``). Compiling costs seconds
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
            raise TypeError(messages.not_a_module("torch.nn.Module", checks.type_name(model)))
        if not callable(loss_fn):
            raise TypeError(messages.loss_fn_not_callable(checks.type_name(loss_fn)))
        for name, value in (("vectorize", vectorize), ("compile", compile)):
            if not isinstance(value, bool):
                raise TypeError(messages.option_not_bool(name, checks.type_name(value)))
        self.config = MetaConfig(inner_lr, outer_lr, num_inner_steps, first_order)
        self.model = model
        self.loss_fn = loss_fn
        self.vectorize = vectorize
        self.compile = compile
        params = self.trainable_parameters()
        if not params:
            raise ValueError(messages.no_parameters("parameters with requires_grad=True"))
        self._param_names, self._param_list = list(params), list(params.values())
        # The Adam state lives in a torch.optim.Adam (its state_dict is the checkpoint format); the step
        # itself is adam_step, so that it can run inside the compiled graph.
        self.optimizer = torch.optim.Adam(self._param_list, lr=outer_lr, betas=ADAM_BETAS, eps=ADAM_EPS)
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

    @property
    def opt_state(self) -> OptState:
        """The Adam state as :meth:`adam_step` takes it (read from ``self.optimizer``; zeros before the first step)."""
        return self._opt_state()[0]

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
            raise TypeError(messages.loss_not_scalar(checks.type_name(loss)))
        if loss.dim() != 0:
            raise ValueError(messages.loss_not_scalar(f"shape {tuple(loss.shape)}"))
        return loss

    def inner_loop(self, params: Params, rest: Params, data: Any, labels: Any) -> Params:
        """Pure: ``num_inner_steps`` SGD steps on one task."""
        for _ in range(self.num_inner_steps):
            grads = torch.func.grad(self.loss)(params, rest, data, labels)
            if self.first_order:
                grads = {name: g.detach() for name, g in grads.items()}
            params = {name: p - self.inner_lr * grads[name] for name, p in params.items()}
        return params

    def task_query_loss(self, params: Params, rest: Params, task: Task) -> torch.Tensor:
        """Pure: the query loss of one ``(support_x, support_y, query_x, query_y)`` task after adaptation."""
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

    def meta_step(self, params: Params, opt_state: OptState, rest: Params,
                  tasks: Any) -> tuple[Params, OptState, torch.Tensor, Params]:
        """Pure: meta-gradient and one Adam step; returns ``(params, opt_state, loss, grads)``."""
        grads, loss = torch.func.grad_and_value(self.meta_loss)(params, rest, tasks)
        params, opt_state = self.adam_step(params, opt_state, grads)
        return params, opt_state, loss, grads

    def adam_step(self, params: Params, opt_state: OptState, grads: Params) -> tuple[Params, OptState]:
        """Pure: one Adam step, ``torch.optim.Adam``'s arithmetic out of place (bias corrections in float64)."""
        beta1, beta2 = ADAM_BETAS
        step = opt_state["step"] + 1
        count = step.to(torch.float64)
        step_size = self.outer_lr / (1 - beta1**count)
        correction2_sqrt = torch.sqrt(1 - beta2**count)
        names = list(params)
        new_params, exp_avg, exp_avg_sq = _private.adam_arithmetic(
            [params[n] for n in names], [grads[n] for n in names], [opt_state["exp_avg"][n] for n in names],
            [opt_state["exp_avg_sq"][n] for n in names], step_size, correction2_sqrt, ADAM_BETAS, ADAM_EPS)
        return (dict(zip(names, new_params, strict=True)),
                {"step": step, "exp_avg": dict(zip(names, exp_avg, strict=True)),
                 "exp_avg_sq": dict(zip(names, exp_avg_sq, strict=True))})

    # ------------------------------------------------------------ public API
    def adapt(self, task_data: Any, task_labels: Any, *, params: Params | None = None) -> Params:
        """Run the inner loop on one task; returns every parameter keyed like ``named_parameters()``.

        The result (detached) works with ``functional_call(model, params, x)``; frozen
        parameters are included unchanged. ``params`` (a dict like the result) starts the inner
        loop somewhere other than the model's own parameters, e.g. for a further adaptation step.
        Runs eagerly (one task: nothing to vectorise).
        """
        reference = self._param_list[0]
        checks.check_finite(checks.check_pair("adapt", ("task_data", "task_labels"), task_data, task_labels,
                                              reference))
        own = self.trainable_parameters()
        start = own if params is None else params
        missing = sorted(set(own) - set(start))
        if missing:
            raise ValueError(messages.missing_params(missing))
        start = {name: start[name].detach() for name in own}
        adapted = self._run("adapt", lambda: self.inner_loop(start, self.rest(), task_data, task_labels),
                            lambda err: None)
        result = {name: p.detach() for name, p in self.model.named_parameters()}
        result.update({name: p.detach() for name, p in adapted.items()})
        return result

    def value_and_meta_gradient(self, tasks: Sequence[tuple]) -> tuple[torch.Tensor, Params]:
        """``(loss, grads)``: the mean post-adaptation query loss (a detached 0-d tensor) and the
        meta-gradient dict keyed like the trainable parameters. Nothing is changed;
        :meth:`apply_meta_gradient` takes ``grads`` (e.g. after averaging them over workers)."""
        checked, params, rest, batch = self._inputs(tasks)
        step = self._step(self._guarded_value_and_grad, batch)
        loss, grads, inputs_finite = self._run("meta-gradient", lambda: step(params, rest, batch),
                                               lambda err: self._diagnose(checked, err))
        if not bool(inputs_finite):
            checks.name_non_finite(checked, self._param_list[0])
        return loss.detach(), grads

    def meta_gradient(self, tasks: Sequence[tuple]) -> Params:
        """The meta-gradient (mean over tasks of the post-adaptation query loss), without stepping."""
        return self.value_and_meta_gradient(tasks)[1]

    def apply_meta_gradient(self, grads: Params) -> None:
        """One outer Adam step with ``grads`` (a dict keyed like the trainable parameters).

        Refuses non-finite gradients and a step whose resulting parameters are not finite: then
        ``ValueError`` is raised and the parameters and the Adam state stay bit-identical.
        """
        checks.check_grads(grads, self.trainable_parameters())
        opt_state, steps = self._opt_state()
        new_params, new_state, flags = self._guarded_apply(self._params(), opt_state, grads)
        self._commit(new_params, new_state, steps, flags.tolist(), "apply_meta_gradient")

    def meta_update(self, tasks: Sequence[tuple]) -> float:
        """One outer Adam step; returns the mean query loss after adaptation.

        In effect ``apply_meta_gradient(value_and_meta_gradient(tasks)[1])``, run as one step (one
        compiled graph under ``compile=True``). A non-finite input, loss or meta-gradient, or a step
        that would make the parameters non-finite, raises ``ValueError`` and leaves the parameters
        and the Adam state bit-identical.
        """
        checked, params, rest, batch = self._inputs(tasks)
        opt_state, steps = self._opt_state()
        step = self._step(self._guarded_meta_step, batch)
        new_params, new_state, report = self._run("meta_update", lambda: step(params, opt_state, rest, batch),
                                                  lambda err: self._diagnose(checked, err))
        loss, inputs_finite, *flags = report.tolist()  # one host sync: the loss and the checks
        if not inputs_finite:
            checks.name_non_finite(checked, self._param_list[0])
        if not math.isfinite(loss):
            raise ValueError(messages.loss_not_finite("meta_update"))
        self._commit(new_params, new_state, steps, flags, "meta_update")
        return loss

    def _commit(self, params: Params, opt_state: OptState, steps: list[torch.Tensor], flags: Sequence,
                where: str) -> None:
        """Write ``params`` and the Adam state if ``flags`` = (gradients finite, result finite), else raise."""
        grads_finite, result_finite = (bool(f) for f in flags)
        if not grads_finite:
            raise ValueError(messages.grads_not_finite(where))
        if not result_finite:
            raise ValueError(messages.step_not_finite(where, self.outer_lr))
        _private.copy_into(self._param_list, [params[name] for name in self._param_names])
        new_steps = _private.add_scalar(steps, 1.0)  # torch.optim.Adam keeps one count per parameter
        state, exp_avg, exp_avg_sq = self.optimizer.state, opt_state["exp_avg"], opt_state["exp_avg_sq"]
        for name, p, step in zip(self._param_names, self._param_list, new_steps, strict=True):
            state[p] = {"step": step, "exp_avg": exp_avg[name], "exp_avg_sq": exp_avg_sq[name]}

    # ---------------------------------------- the guarded steps: the maths plus finiteness flags
    def _guarded_value_and_grad(self, params: Params, rest: Params, tasks: Any) -> tuple:
        """``(loss, grads, inputs finite)``, the flag computed with the gradient (no extra sync)."""
        grads, loss = torch.func.grad_and_value(self.meta_loss)(params, rest, tasks)
        return loss, grads, _private.all_finite_flag(_leaves(tasks))

    def _guarded_apply(self, params: Params, opt_state: OptState, grads: Params) -> tuple:
        """``adam_step`` plus flags: (every gradient entry finite, every resulting parameter finite)."""
        new, opt_state = self.adam_step(params, opt_state, grads)
        flags = [_private.all_finite_flag(list(grads.values())), _private.all_finite_flag(list(new.values()))]
        return new, opt_state, torch.stack(flags)

    def _guarded_meta_step(self, params: Params, opt_state: OptState, rest: Params, tasks: Any) -> tuple:
        """``meta_step``; returns new params and Adam state and one report tensor:
        (loss, inputs finite, gradients finite, resulting parameters finite)."""
        new, opt_state, loss, grads = self.meta_step(params, opt_state, rest, tasks)
        flags = [_private.all_finite_flag(_leaves(tasks)), _private.all_finite_flag(list(grads.values())),
                 _private.all_finite_flag(list(new.values()))]
        loss = loss.detach()
        return new, opt_state, torch.stack([loss, *(f.to(loss.dtype) for f in flags)])

    # ------------------------------------------------------------ state
    def _params(self) -> Params:
        return {name: p.detach() for name, p in zip(self._param_names, self._param_list, strict=True)}

    def _opt_state(self) -> tuple[OptState, list[torch.Tensor]]:
        """The Adam state (zeros before the first step) and the per-parameter step counts."""
        state = self.optimizer.state
        if self._param_list[0] not in state:
            zeros = {name: torch.zeros_like(p, memory_format=torch.preserve_format)
                     for name, p in zip(self._param_names, self._param_list, strict=True)}
            steps = [torch.tensor(0.0) for _ in self._param_list]
            return {"step": steps[0], "exp_avg": zeros, "exp_avg_sq": dict(zeros)}, steps
        per_param = [state[p] for p in self._param_list]
        return ({"step": per_param[0]["step"],
                 "exp_avg": {name: s["exp_avg"] for name, s in zip(self._param_names, per_param, strict=True)},
                 "exp_avg_sq": {name: s["exp_avg_sq"] for name, s in zip(self._param_names, per_param, strict=True)}},
                [s["step"] for s in per_param])

    # ------------------------------------------------------------ running the maths
    def _inputs(self, tasks: Sequence[tuple]) -> tuple[list[Task], Params, Params, Any]:
        """Checked tasks, the parameters, ``rest`` and the batch as the pure functions take them."""
        checked = checks.check_tasks(tasks, self._param_list[0], self.vectorize)
        params, rest = self._params(), self.rest()
        if not self.vectorize:
            return checked, params, rest, checked
        rest = {name: t.expand(len(checked), *t.shape) if name in self._buffer_names else t
                for name, t in rest.items()}
        return checked, params, rest, _stack(checked)

    def _step(self, step: Callable, batch: Any) -> Callable:
        """``step`` itself, or under ``compile=True`` its compiled form for this batch's signature
        (compiled on first use, LRU-bounded; each signature compiles its own copy of the code, so
        it never meets dynamo's recompile limit). ``step`` is looked up on ``type(self)``, so a
        subclass's own maths is what gets compiled."""
        if not self.compile:
            return step
        key = (step.__name__, checks.signature(batch), self.model.training, self.vectorize, self._param_list[0].dtype)
        compiled = self._compiled.get(key)
        if compiled is None:
            method = _private.fresh_code(getattr(type(self), step.__name__), step.__name__)
            compiled = torch.compile(method.__get__(self), fullgraph=True, dynamic=False)
            self._compiled[key] = compiled
            while len(self._compiled) > COMPILED_CACHE_SIZE:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(key)
        return compiled

    def _run(self, what: str, compute: Callable[[], Any], diagnose: Callable[[Exception], str | None]) -> Any:
        """Run ``compute``; a failure inside the model becomes a ValueError that names the option to use."""
        try:
            return compute()
        except (TypeError, ValueError):
            raise
        except Exception as err:  # RuntimeError from vmap, dynamo's Unsupported, ...
            message = diagnose(err)
            raise ValueError(message or messages.forward_failed(what, err)) from err

    def _diagnose(self, tasks: list[Task], err: Exception) -> str | None:
        """After a failure in the chosen mode: does the plain eager loop run one task? Then name the option
        to turn off. If the eager loop raises ``TypeError``/``ValueError`` (a clear message about the
        input, e.g. label shapes), that error is raised instead."""
        if not (self.vectorize or self.compile):
            return None
        try:
            torch.func.grad(self.task_query_loss)(self._params(), self.rest(), tasks[0])
        except (TypeError, ValueError):
            raise
        except Exception:  # the eager loop fails too: the model itself is at fault
            return None
        flags = [name for name, value in (("vectorize", self.vectorize), ("compile", self.compile)) if value]
        return messages.mode_failed("meta-gradient", flags, err)


def _leaves(tree: Any) -> list[torch.Tensor]:
    """The tensors of a task tree (tuples and lists of tensors), in order."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    return [leaf for item in tree for leaf in _leaves(item)]


def _stack(tasks: list[Any]) -> Any:
    """A list of equally shaped task trees -> one tree whose tensors have a leading task axis."""
    first = tasks[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(tasks)
    return tuple(_stack([task[i] for task in tasks]) for i in range(len(first)))
