"""Hand-written floors: the minimal code for the benchmarked maths in each framework.

A floor is what a skilled user would write by hand for the same model, loss and sizes, without our
library: plain tensor ops for the SSM, and for MAML

- PyTorch: ``torch.func.grad`` for the inner and outer gradients and ``torch.func.vmap`` over a
  stacked task axis (run eagerly, or under ``torch.compile`` by the caller). The plain autograd
  loop (``torch.autograd.grad(create_graph=True)`` per task) is kept as a *reference*, not a floor.
- JAX: ``jit(value_and_grad(mean(vmap(task_query_loss))))``, in both weight layouts: PyTorch's
  ``(out, in)`` weights (``x @ W.T``) and Flax's ``(in, out)`` kernels (``x @ K``).

Parameters are dicts keyed by the PyTorch ``state_dict`` names (``nu_log``, ``B.weight``, ...);
the Flax layout uses ``B.kernel`` ``(in, out)`` in place of ``B.weight``. Inputs ``xs`` are
``(batch, time, input)``; a stacked task batch is ``(support_x, support_y, query_x, query_y)``,
each with a leading task axis. Every function is dtype-generic (float32 and float64).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn.functional as F

TorchParams = dict[str, torch.Tensor]
JaxParams = dict[str, jax.Array]
LINEARS = ("B", "W1", "W2", "D")


# ------------------------------------------------------------------ PyTorch SSM
def torch_scan(p: TorchParams, xs: torch.Tensor) -> torch.Tensor:
    """The SSM over ``xs (B, T, I)`` from a zero state, ``-> (B, T, O)``, written out with plain tensor ops."""
    rate = torch.exp(p["nu_log"])
    decay, gain = torch.exp(-rate), torch.sqrt(-torch.expm1(-2 * rate))
    u = gain * (xs @ p["B.weight"].T + p["B.bias"])
    h = torch.zeros(xs.shape[0], decay.shape[0], dtype=xs.dtype, device=xs.device)
    hs = []
    for t in range(xs.shape[1]):
        h = decay * h + u[:, t]
        hs.append(h)
    hs = torch.stack(hs, 1)
    return (F.gelu(hs @ p["W1.weight"].T + p["W1.bias"]) @ p["W2.weight"].T + p["W2.bias"]
            + xs @ p["D.weight"].T + p["D.bias"])


def torch_step(p: TorchParams, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One SSM step: ``x (B, I)``, ``h (B, S)`` -> ``(y (B, O), h' (B, S))``."""
    rate = torch.exp(p["nu_log"])
    h = torch.exp(-rate) * h + torch.sqrt(-torch.expm1(-2 * rate)) * (x @ p["B.weight"].T + p["B.bias"])
    y = (F.gelu(h @ p["W1.weight"].T + p["W1.bias"]) @ p["W2.weight"].T + p["W2.bias"]
         + x @ p["D.weight"].T + p["D.bias"])
    return y, h


def torch_mse(p: TorchParams, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.mean((torch_scan(p, x) - y) ** 2)


# ------------------------------------------------------------------ PyTorch MAML floor (torch.func)
def torch_func_inner(lr: float, k: int, first_order: bool) -> Callable[..., TorchParams]:
    """``(params, x, y) -> params`` after ``k`` SGD steps, gradients from ``torch.func.grad``."""
    grad = torch.func.grad(torch_mse)

    def inner(p: TorchParams, x: torch.Tensor, y: torch.Tensor) -> TorchParams:
        for _ in range(k):
            g = grad(p, x, y)
            if first_order:
                g = {n: v.detach() for n, v in g.items()}
            p = {n: p[n] - lr * g[n] for n in p}
        return p

    return inner


def torch_func_meta_grad(lr: float, k: int, first_order: bool) -> Callable[..., tuple[TorchParams, torch.Tensor]]:
    """``(params, (sx, sy, qx, qy) stacked over tasks) -> (meta_gradient, mean query loss)``.

    ``torch.func.grad_and_value`` of the mean over tasks of the post-adaptation query loss, with
    ``vmap`` over the leading task axis. Wrap the result in ``torch.compile`` for the compiled floor.
    """
    inner = torch_func_inner(lr, k, first_order)

    def task_query_loss(p: TorchParams, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                        qy: torch.Tensor) -> torch.Tensor:
        return torch_mse(inner(p, sx, sy), qx, qy)

    batched = torch.func.vmap(task_query_loss, in_dims=(None, 0, 0, 0, 0))

    def meta_loss(p: TorchParams, sx: torch.Tensor, sy: torch.Tensor, qx: torch.Tensor,
                  qy: torch.Tensor) -> torch.Tensor:
        return batched(p, sx, sy, qx, qy).mean()

    return torch.func.grad_and_value(meta_loss)


# ------------------------------------------------------------------ PyTorch reference: the autograd loop
def torch_autograd_inner(p: TorchParams, x: torch.Tensor, y: torch.Tensor, lr: float, k: int,
                         create_graph: bool) -> TorchParams:
    """``k`` SGD steps with ``torch.autograd.grad``; ``p`` must require grad."""
    for _ in range(k):
        grads = torch.autograd.grad(torch_mse(p, x, y), list(p.values()), create_graph=create_graph)
        p = {n: v - lr * g for (n, v), g in zip(p.items(), grads, strict=True)}
    return p


def torch_autograd_meta_grad(p: TorchParams, tasks: list[tuple[torch.Tensor, ...]], lr: float, k: int,
                             first_order: bool) -> tuple[TorchParams, torch.Tensor]:
    """The reference: a Python loop over tasks, double backward through ``autograd.grad(create_graph=True)``."""
    totals = {n: torch.zeros_like(v) for n, v in p.items()}
    total_loss = torch.zeros((), dtype=next(iter(p.values())).dtype)
    for sx, sy, qx, qy in tasks:
        adapted = torch_autograd_inner(p, sx, sy, lr, k, not first_order)
        loss = torch_mse(adapted, qx, qy) / len(tasks)
        for (n, acc), g in zip(totals.items(), torch.autograd.grad(loss, list(p.values())), strict=True):
            totals[n] = acc + g
        total_loss = total_loss + loss.detach().cpu()
    return totals, total_loss


# ------------------------------------------------------------------ JAX SSM, both layouts
def _dense(p: JaxParams, name: str, x: jax.Array, layout: str) -> jax.Array:
    if layout == "out_in":
        return x @ p[f"{name}.weight"].T + p[f"{name}.bias"]
    return x @ p[f"{name}.kernel"] + p[f"{name}.bias"]


def jax_scan(p: JaxParams, xs: jax.Array, parallel: bool = False, layout: str = "out_in") -> jax.Array:
    """The SSM over ``xs (B, T, I)`` from a zero state (``lax.scan`` or ``associative_scan``)."""
    rate = jnp.exp(p["nu_log"])
    decay, gain = jnp.exp(-rate), jnp.sqrt(-jnp.expm1(-2 * rate))
    u = gain * _dense(p, "B", xs, layout)
    if parallel:
        a = jnp.broadcast_to(decay, u.shape)

        def combine(left: tuple, right: tuple) -> tuple:
            return left[0] * right[0], right[0] * left[1] + right[1]

        _, hs = jax.lax.associative_scan(combine, (a, u), axis=1)
    else:
        def body(h: jax.Array, ut: jax.Array) -> tuple:
            h = decay * h + ut
            return h, h

        _, hs = jax.lax.scan(body, jnp.zeros((xs.shape[0], decay.shape[0]), xs.dtype), jnp.swapaxes(u, 0, 1))
        hs = jnp.swapaxes(hs, 0, 1)
    return (_dense(p, "W2", jax.nn.gelu(_dense(p, "W1", hs, layout), approximate=False), layout)
            + _dense(p, "D", xs, layout))


def jax_step(p: JaxParams, x: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
    rate = jnp.exp(p["nu_log"])
    h = jnp.exp(-rate) * h + jnp.sqrt(-jnp.expm1(-2 * rate)) * (x @ p["B.weight"].T + p["B.bias"])
    y = (jax.nn.gelu(h @ p["W1.weight"].T + p["W1.bias"], approximate=False) @ p["W2.weight"].T + p["W2.bias"]
         + x @ p["D.weight"].T + p["D.bias"])
    return y, h


def jax_inner(p: JaxParams, x: jax.Array, y: jax.Array, lr: float, k: int, first_order: bool,
              layout: str = "out_in") -> JaxParams:
    """``k`` SGD steps (``lax.stop_gradient`` on the inner gradients for first order)."""
    for _ in range(k):
        g = jax.grad(lambda q: jnp.mean((jax_scan(q, x, layout=layout) - y) ** 2))(p)
        if first_order:
            g = jax.lax.stop_gradient(g)
        p = jax.tree.map(lambda a, b: a - lr * b, p, g)
    return p


def jax_meta_loss(lr: float, k: int, first_order: bool, layout: str = "out_in") -> Callable[..., jax.Array]:
    """``(params, (sx, sy, qx, qy) stacked) -> mean post-adaptation query loss`` (``vmap`` over tasks)."""
    def meta_loss(p: JaxParams, batch: tuple) -> jax.Array:
        def one(sx: jax.Array, sy: jax.Array, qx: jax.Array, qy: jax.Array) -> jax.Array:
            adapted = jax_inner(p, sx, sy, lr, k, first_order, layout)
            return jnp.mean((jax_scan(adapted, qx, layout=layout) - qy) ** 2)

        return jnp.mean(jax.vmap(one)(*batch))

    return meta_loss


# ------------------------------------------------------------------ parameter dicts
def torch_params(weights: dict[str, np.ndarray], device: str = "cpu", requires_grad: bool = False) -> TorchParams:
    """Fresh leaf tensors (copies) from canonical numpy weights."""
    return {k: torch.tensor(v, device=device, requires_grad=requires_grad) for k, v in weights.items()}


def jax_params(weights: dict[str, np.ndarray], layout: str = "out_in") -> JaxParams:
    """JAX arrays; ``layout="in_out"`` stores each Linear weight transposed, as ``<name>.kernel``."""
    if layout not in ("out_in", "in_out"):
        raise ValueError(f"layout must be 'out_in' or 'in_out', got {layout!r}")
    out = {}
    for k, v in weights.items():
        if layout == "in_out" and k.endswith(".weight"):
            out[k.replace(".weight", ".kernel")] = jnp.asarray(np.ascontiguousarray(v.T))
        else:
            out[k] = jnp.asarray(v)
    return out


def to_canonical(p: JaxParams) -> dict[str, np.ndarray]:
    """Back to ``(out, in)`` weights keyed like the PyTorch ``state_dict`` (numpy)."""
    out = {}
    for k, v in p.items():
        if k.endswith(".kernel"):
            out[k.replace(".kernel", ".weight")] = np.asarray(v).T
        else:
            out[k] = np.asarray(v)
    return out
