"""Benchmark workloads: for each case, one zero-argument callable per contender, same maths and sizes.

Contenders (names and roles in ``benchmarks/names.py``): our PyTorch API in each mode (loop, vmap,
compiled), the PyTorch floors (``torch.func`` ``grad`` + ``vmap``, eager and under
``torch.compile``), the plain autograd loop as a reference, our JAX API (``jit``), the JAX floor in
both weight layouts, and the peers ``higher`` and TorchOpt. Every contender starts from the same
weights and gets its own copy of the model. A contender that cannot run here is a string saying why;
the runner records it as a row with that note (never silently dropped).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from flax import nnx

from benchmarks import floors, names, peers
from jax_impl.adaptation import Adapter as JaxAdapter
from jax_impl.core.params import from_canonical
from jax_impl.core.ssm import SSM as JaxSSM
from jax_impl.meta_rl.meta_maml import MetaMAML as JaxMAML
from shared.adaptation import AdaptationConfig
from torch_impl.adaptation import Adapter as TorchAdapter
from torch_impl.core.ssm import SSM as TorchSSM
from torch_impl.meta_rl.meta_maml import MetaMAML as TorchMAML

Contenders = dict[str, Callable[[], Any] | str]
INNER_LR, OUTER_LR = 0.01, 0.001
# Our torch MetaMAML in each mode: the constructor's keyword options.
TORCH_MODES = {
    names.TORCH_LOOP.name: {"vectorize": False, "compile": False},
    names.TORCH_VMAP.name: {"vectorize": True, "compile": False},
    names.TORCH_COMPILED.name: {"vectorize": True, "compile": True},
}


@dataclasses.dataclass(frozen=True)
class Dims:
    """SSM sizes (``state``, ``input``, ``output``, ``hidden``); each task is ``batch`` sequences of ``seq`` steps."""

    state: int = 32
    input: int = 8
    output: int = 4
    hidden: int = 64
    batch: int = 16
    seq: int = 16


def twins(d: Dims, device: str = "cpu", seed: int = 0,
          dtype: str = "float32") -> tuple[TorchSSM, JaxSSM, dict[str, np.ndarray]]:
    """A torch SSM, its JAX twin with the same weights, and the weights (canonical numpy)."""
    torch.manual_seed(seed)
    t = TorchSSM(d.state, d.input, d.output, d.hidden, device, dtype=getattr(torch, dtype))
    weights = {k: v.detach().cpu().numpy().copy() for k, v in t.state_dict().items()}
    j = JaxSSM(d.state, d.input, d.output, d.hidden, "gpu" if device == "cuda" else "cpu", dtype=getattr(jnp, dtype))
    from_canonical(j, weights)
    return t, j, weights


def torch_model(d: Dims, weights: dict[str, np.ndarray], device: str = "cpu") -> TorchSSM:
    """A fresh torch SSM holding ``weights`` (each contender steps its own copy)."""
    dtype = getattr(torch, str(next(iter(weights.values())).dtype))
    model = TorchSSM(d.state, d.input, d.output, d.hidden, device, dtype=dtype)
    model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
    return model


def _tasks(d: Dims, n: int, seed: int = 0, dtype: str = "float32") -> list[tuple[np.ndarray, ...]]:
    """``n`` tasks ``(support_x, support_y, query_x, query_y)`` of seeded normal data."""
    rng = np.random.default_rng(seed)
    shapes = [(d.batch, d.seq, d.input), (d.batch, d.seq, d.output)] * 2
    return [tuple(rng.normal(size=s).astype(dtype) for s in shapes) for _ in range(n)]


make_tasks = _tasks


def ours_torch(model: TorchSSM, mode: dict[str, bool], **kwargs: Any) -> TorchMAML:
    """Our torch MetaMAML in one mode (``vectorize``/``compile``, the constructor's keyword options)."""
    return TorchMAML(model, **kwargs, **mode)


def fresh_compile() -> None:
    """Forget compiled code, so each case compiles its own shapes (cold) and no cache limit is reached."""
    torch.compiler.reset()


def _no_grad(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with torch.no_grad():
            return fn()

    return run


# ------------------------------------------------------------------ forward passes
def ssm_step(d: Dims, device: str, skip_compiled: str | None = None) -> Contenders:
    t, j, w = twins(d, device)
    rng = np.random.default_rng(0)
    x, h = rng.normal(size=(d.batch, d.input)).astype("float32"), rng.normal(size=(d.batch, d.state)).astype("float32")
    tx, th = torch.tensor(x, device=device), torch.tensor(h, device=device)
    jx, jh = jnp.asarray(x), jnp.asarray(h)
    tp = floors.torch_params(w, device)
    jp = floors.jax_params(w)
    graphdef, state = nnx.split(j)
    jit_step = jax.jit(lambda s, x, h: nnx.merge(graphdef, s).step(x, h))
    floor = jax.jit(floors.jax_step)
    out: Contenders = {
        "torch eager": _no_grad(lambda: t.step(tx, th)),
        "torch floor": _no_grad(lambda: floors.torch_step(tp, tx, th)),
        "jax eager": lambda: j.step(jx, jh),
        "jax jit": lambda: jit_step(state, jx, jh),
        "jax floor": lambda: floor(jp, jx, jh),
    }
    if skip_compiled:
        out["torch floor compiled"] = f"not run: {skip_compiled}"
    else:
        fresh_compile()
        compiled = torch.compile(lambda x, h: floors.torch_step(tp, x, h), dynamic=False)
        out["torch floor compiled"] = _no_grad(lambda: compiled(tx, th))
    return out


def sequence_forward(d: Dims, length: int, device: str, skip_compiled: str | None = None) -> Contenders:
    t, j, w = twins(d, device)
    xs = np.random.default_rng(0).normal(size=(d.batch, length, d.input)).astype("float32")
    txs, jxs = torch.tensor(xs, device=device), jnp.asarray(xs)
    tp = floors.torch_params(w, device)
    jp = floors.jax_params(w)
    graphdef, state = nnx.split(j)
    scans = {mode: jax.jit(lambda s, x, mode=mode: nnx.merge(graphdef, s).scan(x, mode=mode)[0])
             for mode in ("sequential", "parallel")}
    floor_seq = jax.jit(lambda p, x: floors.jax_scan(p, x, parallel=False))
    floor_par = jax.jit(lambda p, x: floors.jax_scan(p, x, parallel=True))
    out: Contenders = {
        "torch eager sequential": _no_grad(lambda: t.scan(txs, mode="sequential")[0]),
        "torch eager parallel": _no_grad(lambda: t.scan(txs, mode="parallel")[0]),
        "torch floor sequential": _no_grad(lambda: floors.torch_scan(tp, txs)),
        "jax jit sequential": lambda: scans["sequential"](state, jxs),
        "jax jit parallel": lambda: scans["parallel"](state, jxs),
        "jax floor sequential": lambda: floor_seq(jp, jxs),
        "jax floor parallel": lambda: floor_par(jp, jxs),
    }
    if skip_compiled:
        out["torch compiled parallel"] = f"not run: {skip_compiled}"
    else:
        fresh_compile()
        compiled = torch.compile(lambda x: t.scan(x, mode="parallel")[0], dynamic=False)
        out["torch compiled parallel"] = _no_grad(lambda: compiled(txs))
    return out


# ------------------------------------------------------------------ MAML
def _torch_floor_step(grad_fn: Callable, weights: dict, stacked: tuple, device: str) -> Callable[[], Any]:
    """A floor's meta-step: ``grad_fn`` (``torch.func``) then fused ``torch.optim.Adam``, the fastest outer step."""
    p = floors.torch_params(weights, device)
    opt = torch.optim.Adam(p.values(), lr=OUTER_LR, fused=True)

    def step() -> torch.Tensor:
        grads, loss = grad_fn(p, *stacked)
        for n, v in p.items():
            v.grad = grads[n]
        opt.step()
        return loss

    return step


def _peer_step(name: str, d: Dims, weights: dict, t_tasks: list, k: int, first_order: bool,
               device: str) -> Callable[[], Any] | str:
    model = torch_model(d, weights, device)
    meta_grad = getattr(peers, f"{name}_meta_grad")(model, INNER_LR, k, first_order)
    if meta_grad is None:
        return f"not run: {name} is not installed (pip install -e '.[bench]')"
    outer = peers.outer_optimizer(name, model, OUTER_LR)

    def step() -> torch.Tensor:
        loss = meta_grad(t_tasks)
        outer.step()
        return loss

    return step


def meta_update(d: Dims, meta_batch: int, first_order: bool, device: str, skip_compiled: str | None = None,
                k: int = 1) -> tuple[Contenders, Callable[[], float]]:
    """Contenders of one meta-update (inner steps, query loss, meta-gradient, Adam step), and its FLOPs.

    The FLOPs come as a function, XLA's count for the JAX floor's compiled step: call it after timing
    (compiling ahead for the count would hide the floor's compile time from its first call).
    """
    _, j, w = twins(d, device)
    tasks = _tasks(d, meta_batch)
    t_tasks = [tuple(torch.tensor(a, device=device) for a in task) for task in tasks]
    t_stacked = tuple(torch.stack(part) for part in zip(*t_tasks, strict=True))
    if not skip_compiled:
        fresh_compile()
    out = _our_torch_modes(d, w, device, skip_compiled, lambda maml: maml.meta_update(t_tasks),
                           outer_lr=OUTER_LR, num_inner_steps=k, first_order=first_order)
    grad_fn = floors.torch_func_meta_grad(INNER_LR, k, first_order)
    out[names.FLOOR_EAGER.name] = _torch_floor_step(grad_fn, w, t_stacked, device)
    out[names.FLOOR_COMPILED.name] = (f"not run: {skip_compiled}" if skip_compiled else
                                      _torch_floor_step(torch.compile(grad_fn, dynamic=False), w, t_stacked, device))

    ref_params = floors.torch_params(w, device, requires_grad=True)
    ref_opt = torch.optim.Adam(ref_params.values(), lr=OUTER_LR)

    def reference() -> torch.Tensor:
        grads, loss = floors.torch_autograd_meta_grad(ref_params, t_tasks, INNER_LR, k, first_order)
        for n, v in ref_params.items():
            v.grad = grads[n]
        ref_opt.step()
        return loss

    out[names.AUTOGRAD.name] = reference
    for peer in (names.HIGHER, names.TORCHOPT):
        out[peer.name] = _peer_step(peer.name, d, w, t_tasks, k, first_order, device)

    j_maml = JaxMAML(j, INNER_LR, OUTER_LR, num_inner_steps=k, first_order=first_order)
    out[names.JAX_OURS.name] = lambda: j_maml.meta_update(tasks)
    stacked = tuple(jnp.asarray(np.stack(part)) for part in zip(*tasks, strict=True))
    flops: Callable[[], float] = lambda: float("nan")  # noqa: E731
    for contender, layout in ((names.JAX_FLOOR_OUT_IN, "out_in"), (names.JAX_FLOOR_IN_OUT, "in_out")):
        step, cost = _jax_floor_step(floors.jax_params(w, layout), stacked, k, first_order, layout)
        out[contender.name] = step
        if layout == "out_in":
            flops = cost
    return out, flops


def _jax_floor_step(params: dict, stacked: tuple, k: int, first_order: bool,
                    layout: str) -> tuple[Callable[[], jax.Array], Callable[[], float]]:
    optimizer = optax.adam(OUTER_LR)
    meta_loss = floors.jax_meta_loss(INNER_LR, k, first_order, layout)

    def floor_step(p: dict, opt_state: Any, batch: tuple) -> tuple:
        loss, g = jax.value_and_grad(meta_loss)(p, batch)
        updates, opt_state = optimizer.update(g, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    compiled = jax.jit(floor_step)
    state = {"p": params, "opt": optimizer.init(params)}

    def step() -> jax.Array:
        state["p"], state["opt"], loss = compiled(state["p"], state["opt"], stacked)
        return loss

    def flops() -> float:
        cost = compiled.lower(params, optimizer.init(params), stacked).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float((cost or {}).get("flops", float("nan")))

    return step, flops


def _our_torch_modes(d: Dims, w: Any, device: str, skip_compiled: str | None, call: Callable[[Any], Any],
                     **options: Any) -> Contenders:
    """Our torch MetaMAML in each mode (``inner_lr=INNER_LR`` plus ``options``), ``call(maml)`` timed; a compiled
    mode that is not run gets a row saying why."""
    out: Contenders = {}
    for name, mode in TORCH_MODES.items():
        if mode["compile"] and skip_compiled:
            out[name] = f"not run: {skip_compiled}"
            continue
        maml = ours_torch(torch_model(d, w, device), mode, inner_lr=INNER_LR, **options)
        out[name] = lambda maml=maml: call(maml)
    return out


def adapt(d: Dims, k: int, device: str, skip_compiled: str | None = None) -> Contenders:
    """``k`` inner SGD steps on one task's support set (no meta-gradient), every contender."""
    _, j, w = twins(d, device)
    sx, sy, _, _ = _tasks(d, 1)[0]
    tsx, tsy = torch.tensor(sx, device=device), torch.tensor(sy, device=device)
    if not skip_compiled:
        fresh_compile()
    out = _our_torch_modes(d, w, device, skip_compiled, lambda maml: maml.adapt(tsx, tsy), num_inner_steps=k)
    inner = floors.torch_func_inner(INNER_LR, k, first_order=False)
    tp = floors.torch_params(w, device)
    out[names.FLOOR_EAGER.name] = lambda: inner(tp, tsx, tsy)
    if skip_compiled:
        out[names.FLOOR_COMPILED.name] = f"not run: {skip_compiled}"
    else:
        compiled = torch.compile(inner, dynamic=False)
        out[names.FLOOR_COMPILED.name] = lambda: compiled(tp, tsx, tsy)
    ref = floors.torch_params(w, device, requires_grad=True)
    out[names.AUTOGRAD.name] = lambda: {
        n: v.detach() for n, v in floors.torch_autograd_inner(ref, tsx, tsy, INNER_LR, k, False).items()}
    for peer in (names.HIGHER, names.TORCHOPT):
        run = getattr(peers, f"{peer.name}_adapt")(torch_model(d, w, device), INNER_LR, k)
        out[peer.name] = (f"not run: {peer.name} is not installed (pip install -e '.[bench]')" if run is None
                          else (lambda run=run: run(tsx, tsy)))
    j_maml = JaxMAML(j, INNER_LR, num_inner_steps=k)
    out[names.JAX_OURS.name] = lambda: j_maml.adapt(sx, sy)
    jsx, jsy = jnp.asarray(sx), jnp.asarray(sy)
    for contender, layout in ((names.JAX_FLOOR_OUT_IN, "out_in"), (names.JAX_FLOOR_IN_OUT, "in_out")):
        fn = jax.jit(lambda p, x, y, layout=layout: floors.jax_inner(p, x, y, INNER_LR, k, True, layout))
        jp = floors.jax_params(w, layout)
        out[contender.name] = lambda fn=fn, jp=jp: fn(jp, jsx, jsy)
    return out


# ------------------------------------------------------------------ adapter, RL, memory
def adapter_step(d: Dims, device: str) -> Contenders:
    t, j, w = twins(d, device)
    x, y, _, _ = _tasks(d, 1)[0]
    tx, ty = torch.tensor(x, device=device), torch.tensor(y, device=device)
    config = AdaptationConfig(optimizer="adam", lr=1e-3, grad_clip_norm=1.0, trust_region=10.0)
    t_adapter, j_adapter = TorchAdapter(t, config), JaxAdapter(j, config)

    def mse(model: Any, batch: tuple) -> Any:
        return ((model(batch[0]) - batch[1]) ** 2).mean()

    tp = floors.torch_params(w, device, requires_grad=True)
    t_opt = torch.optim.Adam(tp.values(), lr=1e-3)

    def torch_floor() -> None:
        grads = torch.autograd.grad(floors.torch_mse(tp, tx, ty), list(tp.values()))
        for v, g in zip(tp.values(), grads, strict=True):
            v.grad = g
        torch.nn.utils.clip_grad_norm_(list(tp.values()), 1.0)
        t_opt.step()

    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    jp = floors.jax_params(w)
    state = {"p": jp, "opt": optimizer.init(jp)}
    jx, jy = jnp.asarray(x), jnp.asarray(y)

    @jax.jit
    def floor_step(p: dict, opt_state: Any) -> tuple:
        g = jax.grad(lambda q: jnp.mean((floors.jax_scan(q, jx) - jy) ** 2))(p)
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


def rl_learners(tasks: int, episodes: int) -> dict[str, Any]:
    """Each backend's MAML-RL learner on Nav2D with the run's default weights, and its task sampler."""
    from shared.env_runner import MetaEnvironment
    from ssm_metarl.train import TrainConfig, initial_weights, make_learner

    out = {}
    for backend in ("torch", "jax"):
        config = TrainConfig(backend=backend, meta_batch=tasks, episodes=episodes)
        meta_env = MetaEnvironment("nav2d", seed=0)
        out[backend] = (make_learner(config, meta_env.distribution, initial_weights(config, meta_env.distribution)),
                        meta_env)
    return out


def rl_iteration(tasks: int = 20, episodes: int = 20, torch_compile: bool = True) -> Contenders:
    """One Nav2D MAML-RL meta-iteration in each rollout path of each backend (runner vs runner, native vs native).

    ``runner``: numpy environments through the runner, ``adapt_tasks`` and the guarded meta-update;
    ``native``: the dynamics in the framework (``jax.jit`` / ``torch.compile``; ``torch_compile=False``
    adds the eager torch form instead), the noise drawn from numpy as in training.
    """
    from shared.native_noise import draw_noise
    from ssm_metarl.rl_loop import meta_iteration

    out: Contenders = {}
    for backend, (learner, meta_env) in rl_learners(tasks, episodes).items():
        out[f"{backend} runner"] = lambda learner=learner, meta_env=meta_env: meta_iteration(
            learner, meta_env, tasks, episodes)
        compiled = backend == "jax" or torch_compile
        native = learner.native(meta_env.distribution, episodes, **({} if backend == "jax" else
                                                                   {"compile": torch_compile}))
        name = f"{backend} native ({'jit' if backend == 'jax' else 'torch.compile' if compiled else 'eager'})"
        out[name] = lambda native=native, meta_env=meta_env: native.iteration(
            meta_env.sample_tasks(tasks), draw_noise(meta_env.distribution, meta_env.rng, tasks, episodes))
    return out


def rl_compile_seconds(tasks: int = 20, episodes: int = 20,
                       backends: tuple[str, ...] = ("torch", "jax")) -> dict[str, float]:
    """Seconds each native path spends compiling in its first meta-iteration (fresh learners)."""
    from shared.native_noise import draw_noise
    from ssm_metarl.compile_time import compile_seconds

    out = {}
    for backend, (learner, meta_env) in rl_learners(tasks, episodes).items():
        if backend not in backends:
            continue
        native = learner.native(meta_env.distribution, episodes, **({"compile": True} if backend == "torch" else {}))
        before = compile_seconds(backend)
        native.iteration(meta_env.sample_tasks(tasks), draw_noise(meta_env.distribution, meta_env.rng, tasks,
                                                                  episodes))
        out[f"{backend} native"] = compile_seconds(backend) - before
    return out


def maml_memory_jax(d: Dims, k: int, meta_batch: int = 4) -> float:
    """Bytes of temporaries XLA allocates for one second-order meta-gradient with ``k`` inner steps.

    Measured on the JAX floor (``(in, out)`` kernels, the layout our JAX MetaMAML uses): XLA's own
    buffer assignment for the compiled gradient, independent of how our API is organised.
    """
    _, _, w = twins(d)
    params = floors.jax_params(w, "in_out")
    batch = tuple(jnp.asarray(np.stack(part)) for part in zip(*_tasks(d, meta_batch), strict=True))
    grad = jax.jit(jax.grad(floors.jax_meta_loss(INNER_LR, k, False, "in_out")))
    return float(grad.lower(params, batch).compile().memory_analysis().temp_size_in_bytes)


def maml_memory_torch(d: Dims, k: int, meta_batch: int = 4) -> float:
    """Peak resident memory growth (bytes) of one second-order meta-gradient (our default mode).

    Run it in a fresh process (``ru_maxrss`` only grows).
    """
    import resource

    t, _, _ = twins(d)
    maml = TorchMAML(t, INNER_LR, num_inner_steps=k)
    tasks = [tuple(torch.tensor(a) for a in task) for task in _tasks(d, meta_batch)]
    maml.meta_gradient(tasks[:1])  # warm-up allocations
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    maml.meta_gradient(tasks)
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024.0


__all__ = ["Dims", "adapt", "adapter_step", "make_tasks", "meta_update", "ours_torch", "rl_iteration",
           "sequence_forward", "ssm_step", "torch_model", "twins"]
