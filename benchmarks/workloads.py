"""Benchmark workloads: for each case, one zero-argument callable per contender, same maths and sizes.

Contenders: our PyTorch API (eager), ``torch.compile`` where valid, our JAX API (``jit``), a
hand-written floor in each framework (the minimal code for the same maths, written here), and
``higher`` for MAML when it is installed. Every contender starts from the same weights.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
import torch.nn.functional as F
from flax import nnx

from jax_impl.adaptation import Adapter as JaxAdapter
from jax_impl.core.params import from_canonical
from jax_impl.core.ssm import SSM as JaxSSM
from jax_impl.meta_rl.meta_maml import MetaMAML as JaxMAML
from shared.adaptation import AdaptationConfig
from torch_impl.adaptation import Adapter as TorchAdapter
from torch_impl.core.ssm import SSM as TorchSSM
from torch_impl.meta_rl.meta_maml import MetaMAML as TorchMAML

Contenders = dict[str, Callable[[], Any]]


@dataclasses.dataclass(frozen=True)
class Dims:
    state: int = 32
    input: int = 8
    output: int = 4
    hidden: int = 64
    batch: int = 16
    seq: int = 16


def twins(d: Dims, device: str = "cpu", seed: int = 0) -> tuple[TorchSSM, JaxSSM, dict[str, np.ndarray]]:
    torch.manual_seed(seed)
    t = TorchSSM(d.state, d.input, d.output, d.hidden, device)
    weights = {k: v.detach().cpu().numpy().copy() for k, v in t.state_dict().items()}
    j = JaxSSM(d.state, d.input, d.output, d.hidden, "gpu" if device == "cuda" else "cpu")
    from_canonical(j, weights)
    return t, j, weights


# ------------------------------------------------------------------ hand-written floors
def torch_floor_scan(p: dict[str, torch.Tensor], xs: torch.Tensor) -> torch.Tensor:
    """The SSM over ``xs (B, T, I)`` from a zero state, written out with plain tensor ops."""
    rate = torch.exp(p["nu_log"])
    decay, gain = torch.exp(-rate), torch.sqrt(-torch.expm1(-2 * rate))
    u = gain * (xs @ p["B.weight"].T + p["B.bias"])
    h = torch.zeros(xs.shape[0], decay.shape[0], dtype=xs.dtype, device=xs.device)
    hs = []
    for t in range(xs.shape[1]):
        h = decay * h + u[:, t]
        hs.append(h)
    hs = torch.stack(hs, 1)
    return F.gelu(hs @ p["W1.weight"].T + p["W1.bias"]) @ p["W2.weight"].T + p["W2.bias"] + xs @ p["D.weight"].T + p[
        "D.bias"]


def torch_floor_step(p: dict[str, torch.Tensor], x: torch.Tensor, h: torch.Tensor) -> tuple:
    rate = torch.exp(p["nu_log"])
    h = torch.exp(-rate) * h + torch.sqrt(-torch.expm1(-2 * rate)) * (x @ p["B.weight"].T + p["B.bias"])
    y = F.gelu(h @ p["W1.weight"].T + p["W1.bias"]) @ p["W2.weight"].T + p["W2.bias"] + x @ p["D.weight"].T + p[
        "D.bias"]
    return y, h


def jax_floor_scan(p: dict[str, jax.Array], xs: jax.Array, parallel: bool = False) -> jax.Array:
    rate = jnp.exp(p["nu_log"])
    decay, gain = jnp.exp(-rate), jnp.sqrt(-jnp.expm1(-2 * rate))
    u = gain * (xs @ p["B.weight"].T + p["B.bias"])
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
    return (jax.nn.gelu(hs @ p["W1.weight"].T + p["W1.bias"], approximate=False) @ p["W2.weight"].T + p["W2.bias"]
            + xs @ p["D.weight"].T + p["D.bias"])


def jax_floor_step(p: dict[str, jax.Array], x: jax.Array, h: jax.Array) -> tuple:
    rate = jnp.exp(p["nu_log"])
    h = jnp.exp(-rate) * h + jnp.sqrt(-jnp.expm1(-2 * rate)) * (x @ p["B.weight"].T + p["B.bias"])
    y = (jax.nn.gelu(h @ p["W1.weight"].T + p["W1.bias"], approximate=False) @ p["W2.weight"].T + p["W2.bias"]
         + x @ p["D.weight"].T + p["D.bias"])
    return y, h


def torch_params(weights: dict[str, np.ndarray], device: str = "cpu") -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, device=device, requires_grad=True) for k, v in weights.items()}


def jax_params(weights: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    return {k: jnp.asarray(v) for k, v in weights.items()}


# ------------------------------------------------------------------ cases
def ssm_step(d: Dims, device: str, compile_torch: bool) -> Contenders:
    t, j, w = twins(d, device)
    rng = np.random.default_rng(0)
    x, h = rng.normal(size=(d.batch, d.input)).astype("float32"), rng.normal(size=(d.batch, d.state)).astype("float32")
    tx, th = torch.tensor(x, device=device), torch.tensor(h, device=device)
    jx, jh = jnp.asarray(x), jnp.asarray(h)
    tp = {k: v.detach() for k, v in torch_params(w, device).items()}
    jp = jax_params(w)
    graphdef, state = nnx.split(j)
    jit_step = jax.jit(lambda s, x, h: nnx.merge(graphdef, s).step(x, h))
    floor = jax.jit(jax_floor_step)
    out = {
        "torch eager": lambda: t.step(tx, th),
        "torch floor": lambda: torch_floor_step(tp, tx, th),
        "jax eager": lambda: j.step(jx, jh),
        "jax jit": lambda: jit_step(state, jx, jh),
        "jax floor": lambda: floor(jp, jx, jh),
    }
    if compile_torch:
        compiled = torch.compile(lambda x, h: torch_floor_step(tp, x, h))
        out["torch.compile floor"] = lambda: compiled(tx, th)
    with torch.no_grad():
        return {k: _no_grad(v) if k.startswith("torch") else v for k, v in out.items()}


def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return fn()

    return run


def sequence_forward(d: Dims, length: int, device: str, compile_torch: bool) -> Contenders:
    t, j, w = twins(d, device)
    xs = np.random.default_rng(0).normal(size=(d.batch, length, d.input)).astype("float32")
    txs, jxs = torch.tensor(xs, device=device), jnp.asarray(xs)
    tp = {k: v.detach() for k, v in torch_params(w, device).items()}
    jp = jax_params(w)
    graphdef, state = nnx.split(j)
    scans = {mode: jax.jit(lambda s, x, mode=mode: nnx.merge(graphdef, s).scan(x, mode=mode)[0])
             for mode in ("sequential", "parallel")}
    floor_seq = jax.jit(lambda p, x: jax_floor_scan(p, x, parallel=False))
    floor_par = jax.jit(lambda p, x: jax_floor_scan(p, x, parallel=True))
    out = {
        "torch eager sequential": _no_grad(lambda: t.scan(txs, mode="sequential")[0]),
        "torch eager parallel": _no_grad(lambda: t.scan(txs, mode="parallel")[0]),
        "torch floor sequential": _no_grad(lambda: torch_floor_scan(tp, txs)),
        "jax jit sequential": lambda: scans["sequential"](state, jxs),
        "jax jit parallel": lambda: scans["parallel"](state, jxs),
        "jax floor sequential": lambda: floor_seq(jp, jxs),
        "jax floor parallel": lambda: floor_par(jp, jxs),
    }
    if compile_torch and length <= 1024:
        compiled = torch.compile(lambda x: t.scan(x, mode="parallel")[0])
        out["torch.compile parallel"] = _no_grad(lambda: compiled(txs))
    return out


def _tasks(d: Dims, n: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    shapes = [(d.batch, d.seq, d.input), (d.batch, d.seq, d.output)] * 2
    return [tuple(rng.normal(size=s).astype("float32") for s in shapes) for _ in range(n)]


def _torch_inner(p: dict, x: torch.Tensor, y: torch.Tensor, lr: float, k: int, create_graph: bool) -> dict:
    for _ in range(k):
        loss = torch.mean((torch_floor_scan(p, x) - y) ** 2)
        grads = torch.autograd.grad(loss, list(p.values()), create_graph=create_graph)
        p = {n: v - lr * g for (n, v), g in zip(p.items(), grads, strict=True)}
    return p


def _jax_inner(p: dict, x: jax.Array, y: jax.Array, lr: float, k: int, first_order: bool) -> dict:
    for _ in range(k):
        g = jax.grad(lambda q: jnp.mean((jax_floor_scan(q, x) - y) ** 2))(p)
        if first_order:
            g = jax.lax.stop_gradient(g)
        p = jax.tree.map(lambda a, b: a - lr * b, p, g)
    return p


def adapt(d: Dims, k: int, device: str) -> Contenders:
    t, j, w = twins(d, device)
    sx, sy, _, _ = _tasks(d, 1)[0]
    tsx, tsy = torch.tensor(sx, device=device), torch.tensor(sy, device=device)
    t_maml, j_maml = TorchMAML(t, 0.01, num_inner_steps=k), JaxMAML(j, 0.01, num_inner_steps=k)
    tp = torch_params(w, device)
    jp = jax_params(w)
    floor = jax.jit(lambda p, x, y: _jax_inner(p, x, y, 0.01, k, True))
    jsx, jsy = jnp.asarray(sx), jnp.asarray(sy)
    return {
        "torch eager": lambda: t_maml.adapt(tsx, tsy),
        "torch floor": lambda: {n: v.detach() for n, v in _torch_inner(tp, tsx, tsy, 0.01, k, False).items()},
        "jax jit": lambda: j_maml.adapt(sx, sy),
        "jax floor": lambda: floor(jp, jsx, jsy),
    }


def meta_update(d: Dims, meta_batch: int, first_order: bool, device: str) -> tuple[Contenders, float]:
    """Contenders and the FLOPs of one meta-update (XLA's count for the JAX floor's compiled step)."""
    t, j, w = twins(d, device)
    tasks = _tasks(d, meta_batch)
    t_tasks = [tuple(torch.tensor(a, device=device) for a in task) for task in tasks]
    t_maml = TorchMAML(t, 0.01, 0.001, first_order=first_order)
    j_maml = JaxMAML(j, 0.01, 0.001, first_order=first_order)

    tp = torch_params(w, device)
    t_opt = torch.optim.Adam(tp.values(), lr=0.001)

    def torch_floor() -> float:
        total = 0.0
        grads = [torch.zeros_like(v) for v in tp.values()]
        for sx, sy, qx, qy in t_tasks:
            adapted = _torch_inner(tp, sx, sy, 0.01, 1, not first_order)
            loss = torch.mean((torch_floor_scan(adapted, qx) - qy) ** 2) / meta_batch
            for acc, g in zip(grads, torch.autograd.grad(loss, list(tp.values())), strict=True):
                acc += g
            total += float(loss.detach())
        for v, g in zip(tp.values(), grads, strict=True):
            v.grad = g
        t_opt.step()
        return total

    optimizer = optax.adam(0.001)
    jp = jax_params(w)
    stacked = tuple(jnp.asarray(np.stack(part)) for part in zip(*tasks, strict=True))

    def floor_step(p: dict, opt_state: Any, batch: tuple) -> tuple:
        def meta_loss(q: dict) -> jax.Array:
            def one(sx: jax.Array, sy: jax.Array, qx: jax.Array, qy: jax.Array) -> jax.Array:
                adapted = _jax_inner(q, sx, sy, 0.01, 1, first_order)
                return jnp.mean((jax_floor_scan(adapted, qx) - qy) ** 2)

            return jnp.mean(jax.vmap(one)(*batch))

        loss, g = jax.value_and_grad(meta_loss)(p)
        updates, opt_state = optimizer.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    compiled = jax.jit(floor_step)
    state = {"p": jp, "opt": optimizer.init(jp)}

    def jax_floor() -> jax.Array:
        state["p"], state["opt"], loss = compiled(state["p"], state["opt"], stacked)
        return loss

    cost = compiled.lower(jp, state["opt"], stacked).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    contenders = {
        "torch eager": lambda: t_maml.meta_update(t_tasks),
        "torch floor": torch_floor,
        "jax jit": lambda: j_maml.meta_update(tasks),
        "jax floor": jax_floor,
    }
    higher_step = higher_meta_update(d, w, t_tasks, first_order, device)
    if higher_step is not None:
        contenders["higher"] = higher_step
    return contenders, float(cost.get("flops", float("nan")))


def higher_meta_update(d: Dims, weights: dict, t_tasks: list, first_order: bool, device: str) -> Callable | None:
    """The peer: ``higher.innerloop_ctx`` over the same SSM module, Adam outer step; None if not installed."""
    try:
        import higher
    except ImportError:
        return None
    model = TorchSSM(d.state, d.input, d.output, d.hidden, device)
    model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
    outer = torch.optim.Adam(model.parameters(), lr=0.001)
    inner = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> float:
        outer.zero_grad()
        total = 0.0
        for sx, sy, qx, qy in t_tasks:
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False,
                                      track_higher_grads=not first_order) as (fmodel, diffopt):
                diffopt.step(torch.mean((fmodel(sx) - sy) ** 2))
                loss = torch.mean((fmodel(qx) - qy) ** 2) / len(t_tasks)
                loss.backward()
                total += float(loss.detach())
        outer.step()
        return total

    return step


def adapter_step(d: Dims, device: str) -> Contenders:
    t, j, w = twins(d, device)
    x, y, _, _ = _tasks(d, 1)[0]
    tx, ty = torch.tensor(x, device=device), torch.tensor(y, device=device)
    config = AdaptationConfig(optimizer="adam", lr=1e-3, grad_clip_norm=1.0, trust_region=10.0)
    t_adapter, j_adapter = TorchAdapter(t, config), JaxAdapter(j, config)

    def mse(model: Any, batch: tuple) -> Any:
        return ((model(batch[0]) - batch[1]) ** 2).mean()

    tp = torch_params(w, device)
    t_opt = torch.optim.Adam(tp.values(), lr=1e-3)

    def torch_floor() -> None:
        loss = torch.mean((torch_floor_scan(tp, tx) - ty) ** 2)
        grads = torch.autograd.grad(loss, list(tp.values()))
        for v, g in zip(tp.values(), grads, strict=True):
            v.grad = g
        torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.0)
        t_opt.step()

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    jp = jax_params(w)
    state = {"p": jp, "opt": optimizer.init(jp)}
    jx, jy = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def floor_step(p: dict, opt_state: Any) -> tuple:
        g = jax.grad(lambda q: jnp.mean((jax_floor_scan(q, jx) - jy) ** 2))(p)
        updates, opt_state = optimizer.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state

    def jax_floor() -> Any:
        state["p"], state["opt"] = floor_step(state["p"], state["opt"])
        return state["p"]

    return {
        "torch eager": lambda: t_adapter.update_step(mse, (tx, ty)),
        "torch floor": torch_floor,
        "jax jit": lambda: j_adapter.update_step(mse, (x, y)),
        "jax floor": jax_floor,
    }


def rl_iteration(tasks: int = 20, episodes: int = 20) -> Contenders:
    """One Nav2D MAML-RL meta-iteration (pre and post adaptation), in each path we ship."""
    from shared.env_runner import MetaEnvironment
    from ssm_metarl.rl_loop import meta_iteration
    from ssm_metarl.train import TrainConfig, initial_weights, make_learner

    out = {}
    for backend in ("torch", "jax"):
        config = TrainConfig(backend=backend, meta_batch=tasks, episodes=episodes)
        meta_env = MetaEnvironment("nav2d", seed=0)
        learner = make_learner(config, meta_env.distribution, initial_weights(config, meta_env.distribution))
        out[f"{backend} (numpy envs)"] = lambda learner=learner, meta_env=meta_env: meta_iteration(
            learner, meta_env, tasks, episodes)
        if backend == "jax":
            from jax_impl.meta_rl.native import NativeMAMLRL

            native = NativeMAMLRL(learner, meta_env.distribution, episodes)
            keys = iter(jax.random.split(jax.random.key(0), 10_000))
            out["jax native (jit rollouts)"] = lambda native=native, meta_env=meta_env, keys=keys: native.iteration(
                meta_env.sample_tasks(tasks), next(keys))
    return out


def maml_memory_jax(d: Dims, k: int, meta_batch: int = 4) -> float:
    """Bytes of temporaries XLA allocates for one second-order meta-gradient with ``k`` inner steps."""
    _, j, _ = twins(d)
    maml = JaxMAML(j, 0.01, num_inner_steps=k)
    params, rest = nnx.state(j, nnx.Param), maml._rest()
    batch = maml._stack(_tasks(d, meta_batch))
    compiled = jax.jit(jax.grad(maml.meta_loss)).lower(params, rest, batch).compile()
    return float(compiled.memory_analysis().temp_size_in_bytes)


def maml_memory_torch(d: Dims, k: int, meta_batch: int = 4) -> float:
    """Peak resident memory growth (bytes) of one second-order meta-gradient; run it in a fresh process."""
    import resource

    t, _, _ = twins(d)
    maml = TorchMAML(t, 0.01, num_inner_steps=k)
    tasks = [tuple(torch.tensor(a) for a in task) for task in _tasks(d, meta_batch)]
    maml.meta_gradient(tasks[:1])  # warm-up allocations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maml.meta_gradient(tasks)
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024.0


__all__ = ["Dims", "adapt", "adapter_step", "math", "meta_update", "rl_iteration", "sequence_forward", "ssm_step"]
