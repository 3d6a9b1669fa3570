"""MetaMAML in JAX: the same constructor, methods and semantics as ``torch_impl/meta_rl/meta_maml.py``.

The maths is defined once, as pure functions of ``(params, rest, data)`` (``inner_loop``,
``task_query_loss``, ``meta_loss``, ``meta_step``): the inner loop is ``params -> params``, the
meta-gradient is ``jax.grad`` of the mean query loss, first order is ``lax.stop_gradient`` on the
inner gradients, and tasks are ``vmap``ped as a stacked batch. Parameters are the model's
``nnx.Param`` variables; every other variable (``rest``: BatchNorm statistics, frozen weights) is
passed in and never written back, like torch buffers under ``functional_call`` and
``requires_grad=False``. A forward that updates non-Param state (BatchNorm in train mode) updates
fresh copies inside the trace, which are then dropped. The inner loop adapts the parameters with
their 2-D arrays transposed (``_flip``: the same maths, in the form XLA's CPU dots run fastest).

Per call, the public methods only read the model's arrays, check and stack the tasks (one
``np.stack`` per leaf), and run one compiled step on flat lists of arrays (the fast path of
``jit``'s dispatch); the new parameters are written back into the same variables. MetaMAML binds
to the model's variables at construction, as a torch optimizer binds to its parameters: change
their values (``nnx.update``), not the variable objects.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.core.ssm import check_finite, type_name
from shared.config import MetaConfig
from shared.validation import check_tasks

Params = nnx.State
LossFn = Callable[[Any, Any], jax.Array]
PARTS = ("support_x", "support_y", "query_x", "query_y")


def mse(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error, the default MetaMAML loss; ``outputs`` and ``labels`` must have one shape."""
    if not isinstance(labels, (jax.Array, np.ndarray)) or jnp.shape(outputs) != jnp.shape(labels):
        got = tuple(labels.shape) if hasattr(labels, "shape") else type_name(labels)
        raise ValueError(
            f"mse: outputs have shape {tuple(jnp.shape(outputs))} and labels {got}; expected labels of exactly "
            "the outputs' shape (no broadcasting)"
        )
    return jnp.mean((outputs - labels) ** 2)


class MetaMAML:
    """Model-agnostic meta-learning with an ``optax.adam`` outer step.

    Args:
        model: any ``nnx.Module``; only its ``nnx.Param`` variables are adapted and meta-trained.
        inner_lr: inner SGD step size, as in ``torch_impl.MetaMAML``.
        outer_lr: learning rate of the outer ``optax.adam`` step.
        num_inner_steps: inner SGD steps per task.
        first_order: drop the second-order term (``lax.stop_gradient`` on the inner gradients).
        loss_fn: ``loss_fn(outputs, labels) -> scalar``; default mean squared error.
    """

    def __init__(
        self,
        model: nnx.Module,
        inner_lr: float = 0.01,
        outer_lr: float = 0.001,
        num_inner_steps: int = 1,
        *,
        first_order: bool = False,
        loss_fn: LossFn = mse,
    ) -> None:
        if not isinstance(model, nnx.Module):
            raise TypeError(f"model must be a flax.nnx.Module, got {type_name(model)}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(outputs, labels), got {type_name(loss_fn)}")
        self.config = MetaConfig(inner_lr, outer_lr, num_inner_steps, first_order)
        self.model = model
        self.loss_fn = loss_fn
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        if not jax.tree.leaves(params):
            raise ValueError("model has no nnx.Param variables; expected at least one to meta-train")
        self.dtype = jax.tree.leaves(params)[0].dtype
        self._params_def, self._rest_def = jax.tree.structure(params), jax.tree.structure(rest)
        self._param_vars, self._rest_vars = _live_variables(model, params), _live_variables(model, rest)
        # optax.adam puts eps outside the square root (eps_root=0), exactly as torch.optim.Adam does.
        self.optimizer = optax.adam(outer_lr, b1=0.9, b2=0.999, eps=1e-8)
        opt_state = self.optimizer.init(params)
        self._opt_def = jax.tree.structure(opt_state)
        self._opt_leaves = jax.tree.leaves(opt_state)
        self._adapt = jax.jit(self.inner_loop)
        self._value_and_grad = jax.jit(self._flat_value_and_grad)
        self._apply = jax.jit(self._flat_apply)
        self._meta_step = jax.jit(self._flat_meta_step)

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
    def opt_state(self) -> optax.OptState:
        """The ``optax.adam`` state (assignable, e.g. from a checkpoint)."""
        return jax.tree.unflatten(self._opt_def, self._opt_leaves)

    @opt_state.setter
    def opt_state(self, value: optax.OptState) -> None:
        leaves, treedef = jax.tree.flatten(value)
        if treedef != self._opt_def:
            raise ValueError(f"opt_state must have the structure of optimizer.init(params), got {treedef}")
        for new, old in zip(leaves, self._opt_leaves, strict=True):
            if jnp.shape(new) != old.shape or jnp.result_type(new) != old.dtype:
                raise ValueError(f"opt_state leaves must keep shape and dtype {old.shape} {old.dtype}, got "
                                 f"{jnp.shape(new)} {jnp.result_type(new)}")
        self._opt_leaves = [jnp.asarray(leaf) for leaf in leaves]

    def trainable_parameters(self) -> Params:
        return nnx.state(self.model, nnx.Param)

    # ------------------------------------------------------------ public API
    def adapt(self, task_data: Any, task_labels: Any, *, params: Params | None = None) -> Params:
        """Run the inner loop on one task; returns the adapted ``nnx.State`` of parameters.

        Use it with ``nnx.merge(maml.graphdef, params, rest)`` or ``nnx.update(model, params)``.
        ``params`` (a state like the result) starts the inner loop somewhere other than the
        model's own parameters, e.g. for a further adaptation step.
        """
        data = _to_jax(self._as_array("task_data", task_data))
        labels = _to_jax(self._as_array("task_labels", task_labels))
        _check_batch_sizes("task_data", data, "task_labels", labels)
        own = self._params() if params is None else params
        return self._adapt(own, self._rest(), data, labels)

    def value_and_meta_gradient(self, tasks: Sequence[tuple]) -> tuple[jax.Array, Params]:
        """``(loss, grads)``: the mean post-adaptation query loss (0-d array) and its meta-gradient.

        Nothing is changed; :meth:`apply_meta_gradient` takes ``grads`` (e.g. after averaging them
        over workers) and does the outer step.
        """
        batch = self._stack(tasks)
        loss, grads, inputs_finite = self._value_and_grad(self._read(self._param_vars), self._read(self._rest_vars),
                                                          batch)
        if not bool(inputs_finite):
            self._raise_non_finite(tasks)
        return loss, jax.tree.unflatten(self._params_def, grads)

    def meta_gradient(self, tasks: Sequence[tuple]) -> Params:
        """The meta-gradient (mean over tasks of the post-adaptation query loss), without stepping."""
        return self.value_and_meta_gradient(tasks)[1]

    def apply_meta_gradient(self, grads: Params) -> None:
        """One outer Adam step with ``grads`` (an ``nnx.State`` shaped like the parameters).

        Refuses non-finite gradients and a step whose resulting parameters are not finite: then
        ``ValueError`` is raised and the parameters and ``opt_state`` stay as they were.
        """
        leaves = self._check_grads(grads)
        new_params, opt_leaves, flags = self._apply(self._read(self._param_vars), self._opt_leaves, leaves)
        self._commit(new_params, opt_leaves, np.asarray(flags), "apply_meta_gradient")

    def meta_update(self, tasks: Sequence[tuple]) -> float:
        """One outer Adam step; returns the mean query loss after adaptation.

        In effect ``apply_meta_gradient(value_and_meta_gradient(tasks)[1])``, run as one compiled
        call. A non-finite loss or meta-gradient, or a step that would make the parameters
        non-finite, raises ``ValueError`` and leaves the parameters and ``opt_state`` unchanged.
        """
        batch = self._stack(tasks)
        new_params, opt_leaves, report = self._meta_step(
            self._read(self._param_vars), self._opt_leaves, self._read(self._rest_vars), batch)
        loss, inputs_finite, *flags = np.asarray(report)  # one transfer: the loss and the checks
        if not inputs_finite:
            self._raise_non_finite(tasks)
        if not np.isfinite(loss):
            raise ValueError("meta_update: the query loss is NaN/Inf; the model was not changed")
        self._commit(new_params, opt_leaves, flags, "meta_update")
        return float(loss)

    def _commit(self, params: list, opt_leaves: list, flags: Sequence, where: str) -> None:
        """Write ``params`` and the optimizer state if ``flags`` = (gradients finite, result finite), else raise."""
        grads_finite, result_finite = (bool(f) for f in flags)
        if not grads_finite:
            raise ValueError(f"{where}: the meta-gradient contains NaN/Inf; the model was not changed")
        if not result_finite:
            raise ValueError(
                f"{where}: the Adam step would make the parameters NaN/Inf (outer_lr={self.outer_lr} too large?); "
                "the model was not changed"
            )
        for variable, value in zip(self._param_vars, params, strict=True):
            variable.set_raw_value(value)
        self._opt_leaves = opt_leaves

    # ------------------------------------------------------ pure functions (jit-able, reusable)
    def _loss(self, params: Params, rest: nnx.State, data: Any, labels: Any) -> jax.Array:
        args = data if isinstance(data, tuple) else (data,)
        try:
            # copy=True: fresh variables at this trace level, so a forward that updates non-Param state
            # (BatchNorm statistics in train mode) updates the copies, which are then dropped
            outputs = nnx.merge(self.graphdef, params, rest, copy=True)(*args)
        except TypeError as err:
            shapes = [tuple(a.shape) for a in args]
            raise ValueError(f"model forward failed on input of shape(s) {shapes}: {err}") from err
        loss = self.loss_fn(outputs, labels)
        if jnp.ndim(loss) != 0:
            raise ValueError(f"loss_fn must return a scalar, got shape {jnp.shape(loss)}")
        return loss

    def inner_loop(self, params: Params, rest: nnx.State, data: Any, labels: Any) -> Params:
        """Pure: ``num_inner_steps`` SGD steps on one task."""
        return _flip(self._inner_loop_flipped(_flip(params), rest, data, labels))

    def task_query_loss(self, params: Params, rest: nnx.State, task: tuple) -> jax.Array:
        """Pure: the query loss of one ``(support_x, support_y, query_x, query_y)`` task after adaptation."""
        support_x, support_y, query_x, query_y = task
        adapted = self._inner_loop_flipped(_flip(params), rest, support_x, support_y)
        return self._loss(_flip(adapted), rest, query_x, query_y)

    def _inner_loop_flipped(self, flipped: Params, rest: nnx.State, data: Any, labels: Any) -> Params:
        """The inner loop on parameters whose 2-D arrays are transposed (see ``_flip``): the same maths."""
        for _ in range(self.num_inner_steps):
            grads = jax.grad(lambda p: self._loss(_flip(p), rest, data, labels))(flipped)
            if self.first_order:
                grads = jax.lax.stop_gradient(grads)
            flipped = jax.tree.map(lambda p, g: p - self.inner_lr * g, flipped, grads)
        return flipped

    def meta_loss(self, params: Params, rest: nnx.State, tasks: tuple) -> jax.Array:
        """Pure: the mean post-adaptation query loss over a stacked task batch."""
        losses = jax.vmap(self.task_query_loss, in_axes=(None, None, 0))(params, rest, tasks)
        return jnp.mean(losses)

    def meta_step(
        self, params: Params, opt_state: optax.OptState, rest: nnx.State, tasks: tuple
    ) -> tuple[Params, optax.OptState, jax.Array, Params]:
        """Pure: meta-gradient and one optax step; returns (params, opt_state, loss, grads)."""
        loss, grads = jax.value_and_grad(self.meta_loss)(params, rest, tasks)
        params, opt_state = self.adam_step(params, opt_state, grads)
        return params, opt_state, loss, grads

    def adam_step(self, params: Params, opt_state: optax.OptState, grads: Params) -> tuple[Params, optax.OptState]:
        """Pure: one ``optax.adam`` step."""
        updates, opt_state = self.optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # ---------------------------------------- the compiled steps: flat lists of arrays in and out
    def _flat_value_and_grad(self, params: list, rest: list, tasks: tuple) -> tuple:
        params, rest = jax.tree.unflatten(self._params_def, params), jax.tree.unflatten(self._rest_def, rest)
        loss, grads = jax.value_and_grad(self.meta_loss)(params, rest, tasks)
        return loss, jax.tree.leaves(grads), _all_finite(tasks)

    def _flat_apply(self, params: list, opt_leaves: list, grads: list) -> tuple:
        """``adam_step`` plus flags: (every gradient entry finite, every resulting parameter finite)."""
        state = jax.tree.unflatten(self._params_def, params)
        new, opt_state = self.adam_step(state, jax.tree.unflatten(self._opt_def, opt_leaves),
                                        jax.tree.unflatten(self._params_def, grads))
        new = jax.tree.leaves(new)
        return new, jax.tree.leaves(opt_state), jnp.stack([_all_finite(grads), _all_finite(new)])

    def _flat_meta_step(self, params: list, opt_leaves: list, rest: list, tasks: tuple) -> tuple:
        """``meta_step``; returns new params and optimizer leaves and one report array:
        (loss, inputs finite, gradients finite, resulting parameters finite)."""
        new, opt_state, loss, grads = self.meta_step(
            jax.tree.unflatten(self._params_def, params), jax.tree.unflatten(self._opt_def, opt_leaves),
            jax.tree.unflatten(self._rest_def, rest), tasks)
        new = jax.tree.leaves(new)
        flags = [_all_finite(tasks), _all_finite(grads), _all_finite(new)]
        return new, jax.tree.leaves(opt_state), jnp.stack([loss, *(f.astype(loss.dtype) for f in flags)])

    # ------------------------------------------------------------ state
    @staticmethod
    def _read(variables: list[nnx.Variable]) -> list:
        return [variable.get_raw_value() for variable in variables]

    def _params(self) -> Params:
        """The model's parameters as an ``nnx.State`` (new variables holding the current arrays)."""
        return jax.tree.unflatten(self._params_def, self._read(self._param_vars))

    def _rest(self) -> nnx.State:
        """The model's non-Param variables as an ``nnx.State``."""
        return jax.tree.unflatten(self._rest_def, self._read(self._rest_vars))

    def _param_dtype(self) -> jnp.dtype:
        return self.dtype

    # ------------------------------------------------------------ checks
    def _check_grads(self, grads: Any) -> list:
        """``grads`` must be a tree of arrays with the parameters' structure, shapes and dtypes."""
        leaves, treedef = jax.tree.flatten(grads)
        if treedef != self._params_def:
            raise ValueError(
                "grads must be an nnx.State with the structure of the model's parameters (as returned by "
                f"meta_gradient), got {type_name(grads)} with structure {treedef}"
            )
        params = self._read(self._param_vars)
        for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), params, strict=True):
            name = jax.tree_util.keystr(path)
            if not isinstance(g, (jax.Array, np.ndarray)):
                raise TypeError(f"grads{name}: expected a jax or numpy array, got {type_name(g)}")
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"grads{name} must have shape {p.shape} and dtype {p.dtype}, got {g.shape} {g.dtype}")
        return leaves

    def _as_array(self, name: str, value: Any, finite: bool = True) -> Any:
        if isinstance(value, (tuple, list)):
            return tuple(self._as_array(f"{name}[{i}]", item, finite) for i, item in enumerate(value))
        if not isinstance(value, (jax.Array, np.ndarray)):
            raise TypeError(f"{name}: expected a jax or numpy array (or a tuple of them), got {type_name(value)}")
        if jnp.issubdtype(value.dtype, jnp.floating):
            if value.dtype != self.dtype:
                raise TypeError(f"{name} must have dtype {self.dtype} (the model's), got {value.dtype}")
            if finite:
                check_finite(name, value)
        return value

    def _check_task(self, index: int, task: tuple) -> tuple:
        """Types, dtypes and batch sizes of one task, with messages naming the task and part (slow path)."""
        task = tuple(self._as_array(f"task {index} {part}", value, finite=False)
                     for part, value in zip(PARTS, task, strict=True))
        _check_batch_sizes(f"task {index} support_x", task[0], f"task {index} support_y", task[1])
        _check_batch_sizes(f"task {index} query_x", task[2], f"task {index} query_y", task[3])
        return task

    def _stack(self, tasks: Sequence[tuple]) -> tuple:
        """A list of tasks -> one tuple of arrays with a leading task axis, for ``vmap``.

        Checks types, dtypes, batch sizes and equal shapes here; finiteness is checked inside the
        compiled step (a flag), and the failing task is named on the host only when it fails.
        """
        checked = check_tasks(tasks)
        flat, treedef = jax.tree.flatten(checked[0])
        shapes = [np.shape(leaf) for leaf in flat]
        columns = [[leaf] for leaf in flat]
        all_numpy = self._fast_ok(flat)
        if all_numpy is None:  # something to report: let the slow path name it
            self._check_task(0, checked[0])
        self._check_task_sizes(0, checked[0], flat, treedef)
        for i, task in enumerate(checked[1:], start=1):
            leaves, other = jax.tree.flatten(task)
            ok = self._fast_ok(leaves)
            if ok is None:
                self._check_task(i, task)
            if other != treedef or [np.shape(leaf) for leaf in leaves] != shapes:
                theirs = jax.tree.map(np.shape, self._check_task(i, task))
                raise ValueError(
                    "all tasks must have the same structure and shapes to be vmapped: task 0 has "
                    f"{jax.tree.map(np.shape, self._check_task(0, checked[0]))}, task {i} has {theirs}"
                )
            all_numpy = all_numpy and ok
            for column, leaf in zip(columns, leaves, strict=True):
                column.append(leaf)
        if all_numpy:  # stacked on the host: one transfer per leaf with the compiled call
            stacked = [column[0][None] if len(column) == 1 else np.stack(column) for column in columns]
        else:
            stacked = _stack_on_device(columns)
        return jax.tree.unflatten(treedef, stacked)

    def _fast_ok(self, leaves: list) -> bool | None:
        """True if every leaf is a numpy array of an accepted dtype, False if some are jax arrays, None if
        a leaf is not accepted at all (the caller then runs the slow check that names it)."""
        numpy = True
        for leaf in leaves:
            if type(leaf) is np.ndarray:
                pass
            elif isinstance(leaf, jax.Array):
                numpy = False
            else:
                return None
            if leaf.dtype != self.dtype and leaf.dtype.kind not in "iub":
                return None
        return numpy

    def _check_task_sizes(self, index: int, task: tuple, leaves: list, treedef: Any) -> None:
        """Batch sizes agree within the task (shapes are then equal across tasks, so one task suffices)."""
        if len(treedef.children()) != 4 or any(np.ndim(leaf) == 0 for leaf in leaves):
            self._check_task(index, task)
            return
        support = [np.shape(leaf)[0] for leaf in jax.tree.leaves(task[:2])]
        query = [np.shape(leaf)[0] for leaf in jax.tree.leaves(task[2:])]
        if len(set(support)) != 1 or len(set(query)) != 1 or support[0] == 0 or query[0] == 0:
            self._check_task(index, task)

    def _raise_non_finite(self, tasks: Sequence[tuple]) -> None:
        for i, task in enumerate(check_tasks(tasks)):
            for part, value in zip(PARTS, task, strict=True):
                self._as_array(f"task {i} {part}", value)
        raise ValueError("tasks contain NaN or Inf; expected finite values")  # pragma: no cover - found above


def _check_batch_sizes(data_name: str, data: Any, labels_name: str, labels: Any) -> None:
    """Every array of ``data`` and ``labels`` has one leading (batch) size, at least 1."""
    sizes = {}
    for name, tree in ((data_name, data), (labels_name, labels)):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            label = name + jax.tree_util.keystr(path)
            if np.ndim(leaf) == 0:
                raise ValueError(f"{label} must have a leading batch axis, got a 0-d array")
            sizes[label] = np.shape(leaf)[0]
    if len(set(sizes.values())) != 1:
        listed = ", ".join(f"{name} {size}" for name, size in sizes.items())
        raise ValueError(f"data and labels must have the same leading (batch) size, got {listed}")
    if next(iter(sizes.values())) == 0:
        raise ValueError(f"{data_name}: expected at least one sample, got a batch of size 0")


def _live_variables(model: nnx.Module, state: nnx.State) -> list[nnx.Variable]:
    """The model's own variables, in the order of ``jax.tree.leaves(state)``."""
    live = {path: node for path, node in nnx.iter_graph(model) if isinstance(node, nnx.Variable)}
    variables = [live[path] for path, _ in nnx.to_flat_state(state)]
    leaves = jax.tree.leaves(state)
    if len(leaves) != len(variables) or any(v.get_raw_value() is not a for v, a in zip(variables, leaves, strict=True)):
        raise ValueError("MetaMAML supports models whose variables each hold one array")
    return variables


@jax.jit
def _stack_on_device(columns: list[list[Any]]) -> list[jax.Array]:
    return [jnp.stack(column) for column in columns]


def _flip(params: Params) -> Params:
    """Every 2-D array transposed (an involution). The inner loop adapts flipped parameters: a Flax
    kernel ``(in, out)`` becomes PyTorch's ``(out, in)``, used as ``x @ w.T``, and XLA's CPU dots
    run the per-task weights and their gradients in that form up to 1.3x faster (measured on the
    first-order meta-step at 16-32 tasks). The maths is the same; only the formulation differs."""
    return jax.tree.map(lambda a: a.T if a.ndim == 2 else a, params)


def _all_finite(tree: Any) -> jax.Array:
    """One boolean: every floating entry of ``tree`` is finite."""
    flags = [jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def _to_jax(tree: Any) -> Any:
    return jax.tree.map(jnp.asarray, tree)
