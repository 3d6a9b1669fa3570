"""Measurement and reporting shared by the benchmark suites.

Timing: median and interquartile range of at least ``reps`` repetitions after ``warmup`` calls,
each call synchronised (``block_until_ready`` in JAX, ``torch.cuda.synchronize`` on a GPU).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ssm_metarl.runinfo import cpu_name


@dataclasses.dataclass
class Result:
    case: str
    size: int | str
    contender: str
    median_s: float | None
    q1_s: float | None = None
    q3_s: float | None = None
    reps: int = 0
    compile_s: float | None = None
    threads: int | None = None
    flops: float | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def synchronize(value: Any) -> Any:
    """Wait for asynchronous work: JAX arrays (``block_until_ready``) and CUDA tensors."""
    try:
        import jax

        jax.block_until_ready(value)
    except ImportError:  # pragma: no cover - jax is a dependency
        pass
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return value


def measure(fn: Callable[[], Any], reps: int = 20, warmup: int = 3, min_time: float = 0.0) -> dict[str, float]:
    """Median and quartiles (seconds) of ``fn()`` over ``reps`` synchronised calls after ``warmup``."""
    for _ in range(warmup):
        synchronize(fn())
    times = []
    start_all = time.perf_counter()
    while len(times) < reps or (time.perf_counter() - start_all) < min_time:
        start = time.perf_counter()
        synchronize(fn())
        times.append(time.perf_counter() - start)
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {"median_s": float(median), "q1_s": float(q1), "q3_s": float(q3), "reps": len(times)}


def compile_time(fn: Callable[[], Any]) -> float:
    """Seconds of the first (compiling) call."""
    start = time.perf_counter()
    synchronize(fn())
    return time.perf_counter() - start


def environment(threads: int, device: str) -> dict[str, Any]:
    import flax
    import jax
    import optax
    import torch

    return {
        "python": platform.python_version(), "torch": torch.__version__, "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else jax.__version__,
        "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
        "cpu": cpu_name(), "cpu_count": os.cpu_count(), "threads": threads, "device": device,
        "torch_threads": torch.get_num_threads(), "jax_devices": [str(d) for d in jax.devices()],
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "tf32": tf32_state(device),
        "torchinductor_fx_graph_cache": os.environ.get("TORCHINDUCTOR_FX_GRAPH_CACHE", "default"),
        "jax_default_matmul_precision": str(jax.config.jax_default_matmul_precision),
        "optional": optional_versions(),
    }


def tf32_state(device: str) -> str:
    """Whether float32 matmuls/convolutions may use TF32 on this device ("n/a on cpu")."""
    import torch

    if device != "cuda":
        return "n/a on cpu"
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return (f"matmul {'on' if matmul else 'off'}, cudnn {'on' if cudnn else 'off'} "
            f"(float32_matmul_precision={torch.get_float32_matmul_precision()}; "
            f"device {torch.cuda.get_device_name()})")


def optional_versions() -> dict[str, str | None]:
    """Versions of the peers (None when not installed)."""
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in ("higher", "torchopt", "optree"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def matmul_peak(threads: int, device: str = "cpu", n: int = 1024) -> dict[str, float]:
    """The machine's measured float32 matmul throughput (FLOP/s), in torch and in JAX, same run."""
    import jax
    import jax.numpy as jnp
    import torch

    a = torch.randn(n, n, device=device)
    torch_time = measure(lambda: a @ a, reps=20)["median_s"]
    x = jnp.ones((n, n), jnp.float32)
    dot = jax.jit(lambda m: m @ m)
    jax_time = measure(lambda: dot(x), reps=20)["median_s"]
    flops = 2.0 * n**3
    return {"torch_flops_per_s": flops / torch_time, "jax_flops_per_s": flops / jax_time,
            "peak_flops_per_s": max(flops / torch_time, flops / jax_time), "n": n}


def write_results(name: str, results: list[Result], env: dict[str, Any], extra: dict[str, Any],
                  directory: Path) -> Path:
    """``<name>.json`` and ``<name>.md`` under ``directory``; returns the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    payload = {"environment": env, **extra, "results": [r.to_dict() for r in results]}
    path = directory / f"{name}.json"
    path.write_text(json.dumps(payload, indent=1))
    (directory / f"{name}.md").write_text(markdown_table(results))
    return path


def markdown_table(results: list[Result]) -> str:
    lines = ["| case | size | contender | threads | median (ms) | IQR (ms) | compile (s) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        median = "n/a" if r.median_s is None else f"{r.median_s * 1e3:.3f}"
        iqr = "" if r.q1_s is None else f"{(r.q3_s - r.q1_s) * 1e3:.3f}"
        comp = "" if r.compile_s is None else f"{r.compile_s:.2f}"
        lines.append(f"| {r.case} | {r.size} | {r.contender} | {r.threads or ''} | {median} | {iqr} | {comp} | "
                     f"{r.note} |")
    return "\n".join(lines) + "\n"
