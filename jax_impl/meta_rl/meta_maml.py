"""MetaMAML in JAX: the same constructor, methods and semantics as ``torch_impl/meta_rl/meta_maml.py``.

The inner loop is a pure ``params -> params`` function, the meta-gradient is ``jax.grad`` of it,
first order is ``lax.stop_gradient`` on the inner gradients, tasks are ``vmap``ped as a stacked
batch, and the whole meta-step (meta-gradient plus ``optax.adam``) is one ``jit``-compiled call.
Parameters are the model's ``nnx.Param`` variables; any other variable (buffers, frozen
weights) is passed through unchanged, like torch buffers and ``requires_grad=False``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jax_impl.core.params import SplitCache
from jax_impl.core.ssm import check_finite
from shared.config import MetaConfig
from shared.validation import check_tasks

Params = nnx.State
LossFn = Callable[[Any, Any], jax.Array]


def mse(outputs: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean squared error, the default MetaMAML loss."""
    return jnp.mean((outputs - labels) ** 2)


class MetaMAML:
    """Model-agnostic meta-learning with an ``optax.adam`` outer step.

    Args:
        model: any ``nnx.Module``; only its ``nnx.Param`` variables are adapted and meta-trained.
        inner_lr, outer_lr, num_inner_steps, first_order, loss_fn: as in ``torch_impl.MetaMAML``.
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
            raise TypeError(f"model must be a flax.nnx.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(outputs, labels), got {type(loss_fn).__name__}")
        self.config = MetaConfig(inner_lr, outer_lr, num_inner_steps, first_order)
        self.model = model
        self.loss_fn = loss_fn
        self.graphdef, params, _ = nnx.split(model, nnx.Param, ...)
        if not jax.tree.leaves(params):
            raise ValueError("model has no nnx.Param variables; expected at least one to meta-train")
        self.dtype = jax.tree.leaves(params)[0].dtype
        self._split = SplitCache(model)
        # optax.adam puts eps outside the square root (eps_root=0), exactly as torch.optim.Adam does.
        self.optimizer = optax.adam(outer_lr, b1=0.9, b2=0.999, eps=1e-8)
        self.opt_state = self.optimizer.init(params)
        self._adapt = jax.jit(self.inner_loop)
        self._value_and_grad = jax.jit(jax.value_and_grad(self.meta_loss))
        self._apply = jax.jit(self._checked_apply)
        self._meta_step = jax.jit(self._checked_meta_step)

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
        own, rest = self._split.get()
        return self._adapt(own if params is None else params, rest, data, labels)

    def value_and_meta_gradient(self, tasks: Sequence[tuple]) -> tuple[jax.Array, Params]:
        """``(loss, grads)``: the mean post-adaptation query loss (0-d array) and its meta-gradient.

        Nothing is changed; :meth:`apply_meta_gradient` takes ``grads`` (e.g. after averaging them
        over workers) and does the outer step.
        """
        params, rest = self._split.get()
        return self._value_and_grad(params, rest, self._stack(tasks))

    def meta_gradient(self, tasks: Sequence[tuple]) -> Params:
        """The meta-gradient (mean over tasks of the post-adaptation query loss), without stepping."""
        return self.value_and_meta_gradient(tasks)[1]

    def apply_meta_gradient(self, grads: Params) -> None:
        """One outer Adam step with ``grads`` (an ``nnx.State`` shaped like the parameters).

        Refuses non-finite gradients and a step whose resulting parameters are not finite: then
        ``ValueError`` is raised and the parameters and ``opt_state`` stay as they were.
        """
        params, _ = self._split.get()
        grads = self._check_grads(grads, params)
        new_params, opt_state, flags = self._apply(params, self.opt_state, grads)
        self._commit(new_params, opt_state, np.asarray(flags), "apply_meta_gradient")

    def meta_update(self, tasks: Sequence[tuple]) -> float:
        """One outer Adam step; returns the mean query loss after adaptation.

        In effect ``apply_meta_gradient(value_and_meta_gradient(tasks)[1])``, run as one compiled
        call. A non-finite loss or meta-gradient, or a step that would make the parameters
        non-finite, raises ``ValueError`` and leaves the parameters and ``opt_state`` unchanged.
        """
        batch = self._stack(tasks)
        params, rest = self._split.get()
        new_params, opt_state, loss, flags = self._meta_step(params, self.opt_state, rest, batch)
        loss, flags = jax.device_get((loss, flags))
        if not np.isfinite(loss):
            raise ValueError("meta_update: the query loss is NaN/Inf; the model was not changed")
        self._commit(new_params, opt_state, flags, "meta_update")
        return float(loss)

    def _commit(self, params: Params, opt_state: optax.OptState, flags: np.ndarray, where: str) -> None:
        """Write ``params`` and ``opt_state`` if ``flags`` = (gradients finite, result finite), else raise."""
        grads_finite, result_finite = (bool(f) for f in flags)
        if not grads_finite:
            raise ValueError(f"{where}: the meta-gradient contains NaN/Inf; the model was not changed")
        if not result_finite:
            raise ValueError(
                f"{where}: the Adam step would make the parameters NaN/Inf (outer_lr={self.outer_lr} too large?); "
                "the model was not changed"
            )
        self._split.commit(params)
        self.opt_state = opt_state

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
        for _ in range(self.num_inner_steps):
            grads = jax.grad(self._loss)(params, rest, data, labels)
            if self.first_order:
                grads = jax.lax.stop_gradient(grads)
            params = jax.tree.map(lambda p, g: p - self.inner_lr * g, params, grads)
        return params

    def task_query_loss(self, params: Params, rest: nnx.State, task: tuple) -> jax.Array:
        """Pure: the query loss of one ``(support_x, support_y, query_x, query_y)`` task after adaptation."""
        support_x, support_y, query_x, query_y = task
        return self._loss(self.inner_loop(params, rest, support_x, support_y), rest, query_x, query_y)

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

    def _checked_apply(self, params: Params, opt_state: optax.OptState, grads: Params) -> tuple:
        """``adam_step`` plus flags: (every gradient entry finite, every resulting parameter finite)."""
        new_params, opt_state = self.adam_step(params, opt_state, grads)
        return new_params, opt_state, jnp.stack([_all_finite(grads), _all_finite(new_params)])

    def _checked_meta_step(self, params: Params, opt_state: optax.OptState, rest: nnx.State, tasks: tuple) -> tuple:
        """``meta_step`` plus the flags of ``_checked_apply``."""
        params, opt_state, loss, grads = self.meta_step(params, opt_state, rest, tasks)
        return params, opt_state, loss, jnp.stack([_all_finite(grads), _all_finite(params)])

    # ------------------------------------------------------------ checks
    def _check_grads(self, grads: Any, params: Params) -> Params:
        """``grads`` must be a tree of arrays with the parameters' structure, shapes and dtypes."""
        if jax.tree.structure(grads) != jax.tree.structure(params):
            raise ValueError(
                "grads must be an nnx.State with the structure of the model's parameters (as returned by "
                f"meta_gradient), got {type(grads).__name__} with structure {jax.tree.structure(grads)}"
            )
        for (path, g), p in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(params), strict=True):
            name = jax.tree_util.keystr(path)
            if not isinstance(g, (jax.Array, np.ndarray)):
                raise TypeError(f"grads{name} must be a jax or numpy array, got {_type_name(g)}")
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"grads{name} must have shape {p.shape} and dtype {p.dtype}, got {g.shape} {g.dtype}")
        return grads

    def _rest(self) -> nnx.State:
        return self._split.get()[1]

    def _param_dtype(self) -> jnp.dtype:
        return self.dtype

    def _as_array(self, name: str, value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return tuple(self._as_array(f"{name}[{i}]", item) for i, item in enumerate(value))
        if not isinstance(value, (jax.Array, np.ndarray)):
            raise TypeError(f"{name}: expected a jax or numpy array (or a tuple of them), got {_type_name(value)}")
        if jnp.issubdtype(value.dtype, jnp.floating):
            if value.dtype != self.dtype:
                raise TypeError(f"{name} must have dtype {self.dtype} (the model's), got {value.dtype}")
            check_finite(name, value)
        return value

    def _stack(self, tasks: Sequence[tuple]) -> tuple:
        """A list of tasks -> one tuple of arrays with a leading task axis, for ``vmap``."""
        checked = [
            tuple(self._as_array(f"task {i} {part}", value) for part, value in zip(
                ("support_x", "support_y", "query_x", "query_y"), task, strict=True))
            for i, task in enumerate(check_tasks(tasks))
        ]
        first = jax.tree.structure(checked[0])
        shapes = [jax.tree.map(np.shape, t) for t in checked]
        for i, task in enumerate(checked):
            if jax.tree.structure(task) != first or shapes[i] != shapes[0]:
                raise ValueError(
                    f"all tasks must have the same structure and shapes to be vmapped: task 0 has {shapes[0]}, "
                    f"task {i} has {shapes[i]}"
                )
        # numpy inputs are stacked on the host and moved in one transfer; jax inputs are stacked on the device
        if all(isinstance(x, np.ndarray) for x in jax.tree.leaves(checked)):
            return jax.device_put(jax.tree.map(lambda *leaves: np.stack(leaves), *checked))
        return jax.tree.map(lambda *leaves: jnp.stack(leaves), *checked)


def _type_name(value: Any) -> str:
    """``torch.Tensor`` rather than ``Tensor``: the module-qualified name of a non-builtin type."""
    kind = type(value)
    root = kind.__module__.split(".")[0]
    return kind.__qualname__ if root == "builtins" else f"{root}.{kind.__qualname__}"


def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.isfinite(leaf).all() for leaf in jax.tree.leaves(tree)]))


def _to_jax(tree: Any) -> Any:
    return jax.tree.map(jnp.asarray, tree)
