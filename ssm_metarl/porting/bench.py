"""Time a user's own pair: forward, loss gradient, one SGD inner step and one second-order meta-step
(``ssm-metarl bench --torch pkg.mod:factory --flax pkg.mod:factory ...``).

Contenders: torch eager (``functional_call`` + ``autograd.grad``), ``torch.func`` (``grad`` of the
functional loss, nested for second order; PyTorch's floor without compilation), both synchronised on
CUDA, and JAX ``jit`` (``block_until_ready``). ``torch.compile`` is not a contender yet. Medians and
the interquartile range over ``reps`` calls after ``warmup`` calls;
JAX's compile time (its first call, minus one steady call) is reported apart. The conclusion per
workload compares each framework's best contender. Timings are for reading, never for a test.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import torch
from flax import nnx

from ssm_metarl.porting.functional import ModelPair, losses
from ssm_metarl.porting.io import Inputs, StepMode, check_inputs, tree_map
from ssm_metarl.porting.precision import resolve_device
from ssm_metarl.porting.rows import _double_backward, model_dtype
from ssm_metarl.porting.trees import load_into_flax, plan_for, torch_tree

WORKLOADS = ("forward", "gradient", "inner step", "meta-step (second order)")


@dataclasses.dataclass(frozen=True)
class Timing:
    workload: str
    contender: str
    median_ms: float
    iqr_ms: float
    compile_s: float | None


@dataclasses.dataclass(frozen=True)
class BenchReport:
    timings: tuple[Timing, ...]
    dtype: str
    devices: tuple[str, str]
    notes: tuple[str, ...] = ()

    def best(self, workload: str, framework: str) -> Timing:
        return min((t for t in self.timings if t.workload == workload and t.contender.startswith(framework)),
                   key=lambda t: t.median_ms)

    def table(self) -> str:
        lines = [f"dtype {self.dtype}, torch on {self.devices[0]}, jax on {self.devices[1]}", "",
                 "| workload | contender | median ms | IQR ms | compile s |", "|---|---|---|---|---|"]
        for t in self.timings:
            compiled = "-" if t.compile_s is None else f"{t.compile_s:.2f}"
            lines.append(f"| {t.workload} | {t.contender} | {t.median_ms:.3f} | {t.iqr_ms:.3f} | {compiled} |")
        lines.append("")
        for workload in WORKLOADS:
            t, j = self.best(workload, "torch"), self.best(workload, "jax")
            faster, ratio = ("jax", t.median_ms / j.median_ms) if j.median_ms < t.median_ms else (
                "torch", j.median_ms / t.median_ms)
            lines.append(f"{workload}: best torch ({t.contender}) {t.median_ms:.3f} ms, best jax ({j.contender}) "
                         f"{j.median_ms:.3f} ms: {faster} faster by {ratio:.2f}x")
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def to_dict(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "devices": {"torch": self.devices[0], "jax": self.devices[1]},
                "timings": [dataclasses.asdict(t) for t in self.timings], "notes": list(self.notes)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def _time(fn: Callable[[], Any], sync: Callable[[Any], Any], reps: int, warmup: int) -> tuple[float, float, float]:
    """(first call s, median ms, IQR ms)."""
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    for _ in range(warmup):
        sync(fn())
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        sync(fn())
        samples.append((time.perf_counter() - start) * 1e3)
    q1, median, q3 = np.percentile(samples, [25, 50, 75])
    return first, float(median), float(q3 - q1)


def _torch_func_workloads(pair: ModelPair, x: Inputs, y: Any, task: tuple[Any, ...]) -> dict[str, Callable[[], Any]]:
    """The PyTorch floor: ``torch.func.grad`` of the functional loss (second order by nesting it)."""
    params = {n: p.detach() for n, p in pair.torch_params.items()}
    grad = torch.func.grad(pair.torch_task_loss)

    def adapt(p: dict[str, torch.Tensor], a: Inputs, b: Any) -> dict[str, torch.Tensor]:
        g = grad(p, a, b)
        return {n: v - pair.inner_lr * g[n] for n, v in p.items()}

    sx, sy, qx, qy = task
    meta = torch.func.grad(lambda p: pair.torch_task_loss(adapt(p, sx, sy), qx, qy))
    return {
        "forward": lambda: pair.torch_forward(params, x)[0],
        "gradient": lambda: grad(params, x, y),
        "inner step": lambda: adapt(params, x, y),
        "meta-step (second order)": lambda: meta(params),
    }


def bench_pair(torch_model: torch.nn.Module, flax_model: nnx.Module, inputs: Any, labels: Any = None, *,
               kwargs: dict[str, Any] | None = None, step: StepMode | None = None, reps: int = 20, warmup: int = 3,
               inner_lr: float = 0.05, device: str = "auto", overrides: Any = None, seed: int = 0) -> BenchReport:
    """Time both models of a pair on ``inputs`` (as :func:`~ssm_metarl.porting.compare_models` takes them)."""
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    dtype = model_dtype(torch_model)
    inputs = Inputs.of(inputs, kwargs)
    check_inputs(inputs, dtype)
    torch_device, jax_device = resolve_device(device)
    plan = plan_for(torch_model, flax_model, overrides)
    load_into_flax(flax_model, plan.to_flax(torch_tree(torch_model).tensors))
    pair = ModelPair(torch_model, flax_model, plan, losses("mse"), inner_lr, train=torch_model.training, step=step,
                     device=torch_device, jax_device=jax_device)
    x, jx = pair.to_torch(inputs), pair.to_jax(inputs)
    with torch.no_grad():
        outputs = pair.torch_forward(pair.torch_params, x)[0]["output"]
    rng = np.random.default_rng(seed)
    if labels is None:
        labels = tree_map(lambda o: rng.normal(size=tuple(o.shape)).astype(dtype) if o.is_floating_point()
                          else o.cpu().numpy(), outputs)
    y, jy = pair.to_torch(labels), pair.to_jax(labels)
    task = (inputs, labels, inputs, labels)
    notes = [n for n in [_double_backward(pair, [task])] if n]

    def torch_sync(value: Any) -> Any:
        if torch_device.type == "cuda":
            torch.cuda.synchronize(torch_device)
        return value

    def jax_sync(value: Any) -> Any:
        return jax.block_until_ready(value)

    params = pair.torch_leaves()
    torch_task = tuple(pair.to_torch(v) for v in task)
    jax_task = tuple(pair.to_jax(v) for v in task)
    jit_inner = jax.jit(lambda p, a, b: pair.jax_adapt(p, a, b, 1, grad=jax.grad(pair.jax_task_loss)))

    def torch_forward() -> Any:
        with torch.no_grad():
            return pair.torch_forward(pair.torch_params, x)[0]

    contenders: dict[str, dict[str, Callable[[], Any]]] = {
        "torch eager": {
            "forward": torch_forward,
            "gradient": lambda: pair.torch_grad(pair.torch_task_loss(params, x, y), params, create_graph=False),
            "inner step": lambda: pair.torch_adapt(params, x, y, 1, create_graph=False),
            "meta-step (second order)": lambda: pair.torch_meta(params, [torch_task], 1, first_order=False),
        },
        "jax jit": {
            "forward": lambda: pair.jit_forward(pair.flax_params, jx, pair.train),
            "gradient": lambda: pair.jit_grad(pair.flax_params, jx, jy),
            "inner step": lambda: jit_inner(pair.flax_params, jx, jy),
            "meta-step (second order)": lambda: pair.jit_task_meta(pair.flax_params, *jax_task, 1),
        },
    }
    contenders["torch.func"] = _torch_func_workloads(pair, x, y, torch_task)
    timings = []
    for contender, workloads in contenders.items():
        sync = jax_sync if contender.startswith("jax") else torch_sync
        for workload in WORKLOADS:
            try:
                first, median, iqr = _time(workloads[workload], sync, reps, warmup)
            except RuntimeError as err:  # e.g. an op without a functorch rule: that contender sits out
                notes.append(f"{contender} cannot run the {workload}: {str(err).splitlines()[0]}")
                continue
            compile_s = max(first - median / 1e3, 0.0) if contender.startswith("jax") else None
            timings.append(Timing(workload, contender, median, iqr, compile_s))
    return BenchReport(tuple(timings), dtype, (str(torch_device), str(jax_device)), tuple(notes))
