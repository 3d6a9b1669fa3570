"""Parity rows for the distributed meta-gradient (ARCHITECTURE.md sections 5 and 9).

The distributed meta-gradient must equal the single-process one, to 1e-12 (float64) and 1e-5
(float32) normwise relative error, in both backends, for 2 and 4 workers, even and uneven splits
(5 tasks on 2 workers; 5 and 3 tasks on 4 workers, where one worker holds nothing), first and second
order. The workers are real: PyTorch runs ``world`` gloo processes on localhost (the environment that
``torchrun`` sets); JAX runs one process with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(set before JAX is imported, hence a subprocess) and shards the task axis over 2- and 4-device meshes.

``python -m parity_tests.distributed torch-worker OUT`` and ``... jax-worker OUT`` are the worker
entry points; :func:`rows` launches them and compares.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from shared.compare import compare_trees

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = {"float64": 1e-12, "float32": 1e-5}
SSM_DIMS = (8, 3, 2, 16)  # state, input, output, hidden
TASK_COUNTS = {2: (4, 5), 4: (4, 5, 3)}  # per world size: even, uneven (and fewer tasks than workers)
# JAX compiles once per padded shape: 4 and 5 tasks on 2 devices, 4 and 3 (one device only padding) on 4.
JAX_TASK_COUNTS = {2: (4, 5), 4: (4, 3)}
MLP_DIMS = (3, 16, 2)  # input, hidden, output
INNER_LR, OUTER_LR, INNER_STEPS = 0.05, 0.01, 2
TRAJECTORY_TASKS, STEPS_BEFORE_SAVE, STEPS_AFTER_SAVE = 5, 2, 2


def make_tasks(n: int, dtype: str, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """``n`` seeded SSM regression tasks ``(support_x, support_y, query_x, query_y)``, 4 sequences x 9 steps."""
    rng = np.random.default_rng(seed)
    _, i, o, _ = SSM_DIMS
    return [tuple(rng.normal(size=(4, 9, d)).astype(dtype) for d in (i, o, i, o)) for _ in range(n)]


def make_mlp_tasks(n: int, dtype: str, seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    """``n`` seeded MLP regression tasks, 10 samples each."""
    rng = np.random.default_rng(seed)
    i, _, o = MLP_DIMS
    return [tuple(rng.normal(size=(10, d)).astype(dtype) for d in (i, o, i, o)) for _ in range(n)]


def key(world: int, n: int, dtype: str, first_order: bool) -> str:
    return f"w{world}_n{n}_{dtype}_{'first' if first_order else 'second'}"


# --------------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_torch(world: int, command: list[str], extra_env: dict[str, str] | None = None) -> list[subprocess.Popen]:
    """Start ``world`` processes ``python -m <command>`` with the environment torchrun would set."""
    port = free_port()
    procs = []
    for rank in range(world):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
               "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(extra_env or {})}
        procs.append(subprocess.Popen([sys.executable, "-m", *command], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    return procs


def launch_torch(world: int, command: list[str], *, timeout_s: float = 120.0,
                 extra_env: dict[str, str] | None = None) -> list[subprocess.CompletedProcess]:
    """:func:`start_torch`, then wait for every rank (all are killed after ``timeout_s``)."""
    procs = start_torch(world, command, extra_env)
    deadline = time.monotonic() + timeout_s
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(deadline - time.monotonic(), 1.0))
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            out, _ = proc.communicate()
            out += f"\n[launcher] killed after {timeout_s} s"
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, None))
    return results


def check_launch(results: list[subprocess.CompletedProcess]) -> None:
    bad = [(rank, r.returncode, r.stdout[-3000:]) for rank, r in enumerate(results) if r.returncode != 0]
    if bad:
        raise RuntimeError("distributed workers failed:\n" + "\n".join(f"rank {r} exit {c}:\n{o}" for r, c, o in bad))


@functools.cache
def torch_results(world: int) -> dict[str, Any]:
    """Launch ``world`` gloo workers once per process; returns ``{rank: results}`` plus ``"dir"``."""
    import torch

    out = Path(tempfile.mkdtemp(prefix=f"ssm_metarl_dist{world}_"))
    check_launch(launch_torch(world, ["parity_tests.distributed", "torch-worker", str(out)]))
    return {"dir": out, **{r: torch.load(out / f"rank{r}.pt") for r in range(world)}}


@functools.cache
def jax_results() -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="ssm_metarl_jaxdist_"))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "parity_tests.distributed", "jax-worker", str(out)], cwd=ROOT,
                            env=env, text=True, capture_output=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"JAX worker failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return dict(np.load(out / "results.npz", allow_pickle=True)["results"].item())


# --------------------------------------------------------------------------- rows
def rows(dtype: str) -> list:
    """One row per (backend, workers, tasks, order): distributed vs single-process meta-gradient and loss."""
    from parity_tests.matrix import Row

    tol = TOLERANCE[dtype]
    out = []
    for world in (2, 4):
        results = torch_results(world)
        for n in TASK_COUNTS[world]:
            for first_order in (False, True):
                k = key(world, n, dtype, first_order)
                single = results[0][k]["single"]
                comparisons = [compare_trees(results[r][k]["dist"], single) for r in range(world)]
                worst = max(comparisons, key=lambda c: c.rel)
                ok = all(c.passes(tol) for c in comparisons)
                out.append(Row(f"distributed meta-gradient (SSM), torch gloo, {world} ranks, {n} tasks, "
                               f"{'first' if first_order else 'second'} order", dtype, worst.max_abs, worst.rel,
                               tol, ok, worst))
    jax = jax_results()
    for world in (2, 4):
        for n in JAX_TASK_COUNTS[world]:
            for first_order in (False, True) if dtype == "float64" else (False,):
                k = key(world, n, dtype, first_order)
                c = compare_trees(jax[k]["dist"], jax[k]["single"])
                out.append(Row(f"distributed meta-gradient (MLP), JAX mesh, {world} devices, {n} tasks, "
                               f"{'first' if first_order else 'second'} order", dtype, c.max_abs, c.rel, tol,
                               c.passes(tol), c))
    return out


# --------------------------------------------------------------------------- workers
def torch_worker(out: Path) -> None:
    """One gloo rank: the parity meta-gradients, a synchronised trajectory, a checkpoint for resuming."""
    import torch

    from torch_impl.core.ssm import SSM
    from torch_impl.meta_rl.distributed import (
        DistributedMetaMAML,
        WorkerFailure,
        init_distributed,
        parameter_checksum,
    )
    from torch_impl.meta_rl.meta_maml import MetaMAML

    torch.set_num_threads(1)
    rank, world = init_distributed("gloo", timeout_s=60)
    dtypes = {"float64": torch.float64, "float32": torch.float32}

    def maml(dtype: str, first_order: bool = False) -> MetaMAML:
        torch.manual_seed(0)
        return MetaMAML(SSM(*SSM_DIMS, "cpu", dtype=dtypes[dtype]), INNER_LR, OUTER_LR, INNER_STEPS,
                        first_order=first_order)

    def as_torch(tasks: list) -> list:
        return [tuple(torch.from_numpy(a) for a in task) for task in tasks]

    results: dict[str, Any] = {}
    for dtype in dtypes:
        for n in TASK_COUNTS[world]:
            tasks = as_torch(make_tasks(n, dtype))
            for first_order in (False, True):
                loss, grads = DistributedMetaMAML(maml(dtype, first_order)).value_and_meta_gradient(tasks)
                entry = {"dist": {"loss": loss, **grads}}
                if rank == 0:
                    single_loss, single = maml(dtype, first_order).value_and_meta_gradient(tasks)
                    entry["single"] = {"loss": single_loss, **single}
                results[key(world, n, dtype, first_order)] = entry

    # a trajectory with the sync check on every step, a checkpoint halfway, then the rest
    tasks = as_torch(make_tasks(TRAJECTORY_TASKS, "float64", seed=1))
    learner = maml("float64")
    distributed = DistributedMetaMAML(learner, check_every=1)
    losses = [distributed.meta_update(tasks) for _ in range(STEPS_BEFORE_SAVE)]
    if rank == 0:
        torch.save({"model": learner.model.state_dict(), "optimizer": learner.optimizer.state_dict()},
                   out / "checkpoint.pt")
    losses += [distributed.meta_update(tasks) for _ in range(STEPS_AFTER_SAVE)]
    results["trajectory"] = {"losses": losses, "params": dict(learner.model.state_dict()),
                             "checksum": parameter_checksum(learner.model)}
    try:  # ranks that pass different meta-batches must all refuse, not compute a wrong mean
        distributed.meta_update(tasks[: len(tasks) - rank])
        results["disagree"] = "no error"
    except WorkerFailure as err:
        results["disagree"] = f"WorkerFailure: {err}"
    bad = [tuple(torch.full_like(a, float("nan")) if rank == 1 and i == 0 else a for i, a in enumerate(task))
           for task in tasks]  # rank 1's copy of the tasks has NaN, so its slice is bad; rank 0's slice is fine
    try:  # one rank's bad slice: every rank raises at once (no hang), nothing changes
        distributed.meta_update(bad)
        results["bad_slice"] = "no error"
    except ValueError as err:
        results["bad_slice"] = f"ValueError: {err}"
    results["after_bad_slice"] = parameter_checksum(learner.model)
    torch.save(results, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def jax_worker(out: Path) -> None:
    """2- and 4-device meshes over forced host devices: sharded vs single-device meta-gradients (MLP)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")
    from jax_impl.core.params import to_canonical
    from jax_impl.meta_rl.distributed import DistributedMetaMAML, make_mesh
    from jax_impl.meta_rl.meta_maml import MetaMAML
    from parity_tests.models import twin_mlps

    if len(jax.devices()) < 4:
        raise RuntimeError(f"expected 4 host devices (XLA_FLAGS), got {jax.devices()}")
    results: dict[str, Any] = {}
    # float32: second order only (the contract's float32 rows do not split by order)
    for dtype, first_order in (("float64", False), ("float64", True), ("float32", False)):
        # one MetaMAML (and one sharded twin per mesh) per setting: each compiles once per shape
        _, model = twin_mlps(MLP_DIMS[0], MLP_DIMS[1], MLP_DIMS[2], dtype, 0)
        maml = MetaMAML(model, INNER_LR, OUTER_LR, INNER_STEPS, first_order=first_order)
        for world in (2, 4):
            sharded = DistributedMetaMAML(maml, make_mesh(world))
            for n in JAX_TASK_COUNTS[world]:
                tasks = make_mlp_tasks(n, dtype)
                loss, grads = sharded.value_and_meta_gradient(tasks)
                single_loss, single = maml.value_and_meta_gradient(tasks)
                results[key(world, n, dtype, first_order)] = {
                    "dist": {"loss": np.asarray(loss), **to_canonical(grads)},
                    "single": {"loss": np.asarray(single_loss), **to_canonical(single)}}
    np.savez(out / "results.npz", results=np.array(results, dtype=object))


def torch_fault_worker(out: Path, scenario: str) -> None:
    """A fault on purpose. ``die``: rank 1 exits after one step; ``hang``: rank 1 stops answering.
    Rank 0 writes how long it took to fail, and how, to ``out``."""
    import torch

    from torch_impl.core.ssm import SSM
    from torch_impl.meta_rl.distributed import DistributedMetaMAML, WorkerFailure, init_distributed
    from torch_impl.meta_rl.meta_maml import MetaMAML

    torch.set_num_threads(1)
    rank, _ = init_distributed("gloo", timeout_s=float(os.environ.get("SSM_METARL_TEST_TIMEOUT", "5")))
    torch.manual_seed(0)
    distributed = DistributedMetaMAML(MetaMAML(SSM(*SSM_DIMS, "cpu", dtype=torch.float64), INNER_LR))
    tasks = [tuple(torch.from_numpy(a) for a in task) for task in make_tasks(4, "float64")]
    distributed.meta_update(tasks)
    if rank == 1 and scenario == "die":
        os._exit(17)
    if rank == 1 and scenario == "hang":
        time.sleep(600)
    start = time.monotonic()
    try:
        distributed.meta_update(tasks)
        outcome = "no error"
    except WorkerFailure as err:
        outcome = f"WorkerFailure: {err}"
    (out / f"fault_rank{rank}.txt").write_text(f"{time.monotonic() - start:.3f}\n{outcome}")
    # After a failed collective the process group is broken and gloo's teardown aborts (SIGABRT), so a
    # worker leaves with os._exit, as `ssm-metarl` does on WorkerFailure.
    os._exit(3 if outcome.startswith("WorkerFailure") else 0)


if __name__ == "__main__":
    role, target = sys.argv[1], Path(sys.argv[2])
    if role == "torch-fault":
        torch_fault_worker(target, sys.argv[3])
    else:
        {"torch-worker": torch_worker, "jax-worker": jax_worker}[role](target)
