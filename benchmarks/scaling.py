"""Scale-out throughput: one meta-batch split over 1 vs 2 (or more) workers, both backends.

PyTorch: N gloo processes on localhost (one intra-op thread each), each computing the second-order
meta-gradient of its slice of the tasks; one ``all_reduce`` and an identical Adam step per
meta-update (``torch_impl.meta_rl.distributed``). JAX: one process with N forced host devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``), the task axis sharded over a mesh
(``jax_impl.meta_rl.distributed``). Reported: median seconds per meta-update, tasks per second,
speed-up over 1 worker and scaling efficiency (speed-up / workers).

    python -m benchmarks.scaling                       # torch and JAX, 1 and 2 workers, 16 tasks
    python -m benchmarks.scaling --workers 1 2 4 --tasks 32 --backend torch

A worker count above the machine's cores measures oversubscription, not scaling.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DIMS = (32, 8, 4, 64)  # SSM state, input, output, hidden (ARCHITECTURE.md section 3's sizes)
BATCH, SEQ = 16, 16  # sequences x time steps per task


def make_tasks(n: int, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    _, i, o, _ = DIMS
    return [tuple(rng.normal(size=(BATCH, SEQ, d)).astype("float32") for d in (i, o, i, o)) for _ in range(n)]


# --------------------------------------------------------------------------- workers
def torch_worker(tasks: int, steps: int, warmup: int, out: Path) -> None:
    import torch

    from torch_impl.core.ssm import SSM
    from torch_impl.meta_rl.distributed import DistributedMetaMAML, init_distributed
    from torch_impl.meta_rl.meta_maml import MetaMAML

    torch.set_num_threads(1)
    rank, world = init_distributed("gloo", timeout_s=300)
    torch.manual_seed(0)
    distributed = DistributedMetaMAML(MetaMAML(SSM(*DIMS, "cpu"), 0.01, 1e-3), check_every=0)
    batch = [tuple(torch.from_numpy(a) for a in task) for task in make_tasks(tasks)]
    times = []
    for step in range(warmup + steps):
        torch.distributed.barrier()
        start = time.perf_counter()
        distributed.meta_update(batch)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    if rank == 0:
        out.write_text(json.dumps({"times": times, "workers": world}))
    torch.distributed.destroy_process_group()


def jax_worker(tasks: int, steps: int, warmup: int, workers: int, out: Path) -> None:
    import jax

    from jax_impl.core.params import from_canonical
    from jax_impl.core.ssm import SSM
    from jax_impl.meta_rl.distributed import DistributedMetaMAML, make_mesh
    from jax_impl.meta_rl.meta_maml import MetaMAML

    rng = np.random.default_rng(0)
    model = SSM(*DIMS, "cpu")
    from_canonical(model, {k: rng.normal(scale=0.1, size=np.shape(v)).astype("float32")
                           for k, v in _canonical_shapes(model).items()})
    maml = MetaMAML(model, 0.01, 1e-3)
    runner = DistributedMetaMAML(maml, make_mesh(workers)) if workers > 1 else maml
    batch = make_tasks(tasks)
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        runner.meta_update(batch)
        jax.block_until_ready(jax.tree.leaves(maml.opt_state))
        if step >= warmup:
            times.append(time.perf_counter() - start)
    out.write_text(json.dumps({"times": times, "workers": workers}))


def _canonical_shapes(model: Any) -> dict[str, np.ndarray]:
    from flax import nnx

    from jax_impl.core.params import to_canonical

    return to_canonical(nnx.state(model, nnx.Param))


# --------------------------------------------------------------------------- launcher
def run_torch(workers: int, tasks: int, steps: int, warmup: int, tmp: Path) -> list[float]:
    from parity_tests.distributed import check_launch, launch_torch

    out = tmp / f"torch_{workers}.json"
    check_launch(launch_torch(workers, ["benchmarks.scaling", "torch-worker", str(tasks), str(steps), str(warmup),
                                        str(out)], timeout_s=1800))
    return json.loads(out.read_text())["times"]


def run_jax(workers: int, tasks: int, steps: int, warmup: int, tmp: Path) -> list[float]:
    out = tmp / f"jax_{workers}.json"
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={workers}", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "benchmarks.scaling", "jax-worker", str(tasks), str(steps),
                             str(warmup), str(workers), str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"JAX worker failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return json.loads(out.read_text())["times"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__.splitlines()[0])
    parser.add_argument("--backend", nargs="+", choices=["torch", "jax"], default=["torch", "jax"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--tasks", type=int, default=16, help="tasks per meta-batch (default 16)")
    parser.add_argument("--steps", type=int, default=10, help="timed meta-updates (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed meta-updates first (default 3)")
    parser.add_argument("--note", default="", help="a remark stored with the results (e.g. 'machine under load')")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = parser.parse_args(argv)
    if min(args.workers) < 1 or args.tasks < 1 or args.steps < 1 or args.warmup < 0:
        parser.error("workers, tasks and steps must be positive and warmup >= 0")
    tmp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ssm_metarl_scaling_{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    rows = []
    for backend in args.backend:
        base = None
        for workers in sorted(args.workers):
            runner = run_torch if backend == "torch" else run_jax
            times = runner(workers, args.tasks, args.steps, args.warmup, tmp)
            median = statistics.median(times)
            base = median if workers == 1 or base is None else base
            speedup = base / median
            rows.append({"backend": backend, "workers": workers, "tasks": args.tasks, "median_s": median,
                         "min_s": min(times), "tasks_per_s": args.tasks / median, "speedup": speedup,
                         "efficiency": speedup / workers})
            print(f"{backend:<6} {workers} worker(s): {median * 1e3:8.1f} ms/meta-update, "
                  f"{args.tasks / median:7.1f} tasks/s, speed-up {speedup:4.2f}, efficiency {speedup / workers:4.0%}",
                  flush=True)
    report = {"rows": rows, "note": args.note, "cores": os.cpu_count(), "machine": platform.processor() or
              platform.machine(), "python": platform.python_version(),
              "workload": f"second-order MetaMAML, SSM {DIMS}, {BATCH} sequences x {SEQ} steps per task, float32"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2))
    lines = ["| backend | workers | ms / meta-update | tasks / s | speed-up | efficiency |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['backend']} | {r['workers']} | {r['median_s'] * 1e3:.1f} | {r['tasks_per_s']:.1f} | "
              f"{r['speedup']:.2f} | {r['efficiency']:.0%} |" for r in rows]
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n" + (f"\n{args.note}\n" if args.note else ""))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "torch-worker":
        torch_worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), Path(sys.argv[5]))
    elif len(sys.argv) > 1 and sys.argv[1] == "jax-worker":
        jax_worker(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]))
    else:
        sys.exit(main())
