"""The full PyTorch-vs-JAX comparison (``ssm-metarl bench``), each contender measured in the same run.

Every thread setting runs in a fresh worker process, because XLA reads its thread flags at start-up;
torch gets the same count through ``torch.set_num_threads``. Results: ``<output>/<name>.json``,
``<name>.md`` and PNG plots (time against size, one line per contender).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"lengths": [16, 64, 256, 1024, 4096], "ks": [1, 5, 10], "meta_batches": [1, 4, 16, 32],
        "memory_ks": [1, 2, 4, 8], "rl": (20, 20), "reps": 20}
QUICK = {"lengths": [16, 256], "ks": [1], "meta_batches": [1, 4], "memory_ks": [], "rl": (4, 4), "reps": 5}


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["OMP_NUM_THREADS"] = str(threads)
    env["BENCH_THREADS"] = str(threads)
    return env


def worker(threads: int, device: str, quick: bool, compile_torch: bool, out: Path) -> None:
    """Run every case at one thread count and write the rows as JSON (runs in its own process)."""
    import torch

    torch.set_num_threads(threads)
    from benchmarks import workloads as w
    from benchmarks.harness import Result, compile_time, environment, matmul_peak, measure

    sizes = QUICK if quick else FULL
    reps = sizes["reps"]
    results: list[Result] = []
    d = w.Dims()

    def run(case: str, size: Any, contenders: dict, flops: float | None = None, note: dict | None = None) -> None:
        for name, fn in contenders.items():
            first = compile_time(fn)
            stats = measure(fn, reps=reps)
            compiled = name.startswith(("jax jit", "jax floor")) or "compile" in name or "native" in name
            results.append(Result(case, size, name, threads=threads, flops=flops,
                                  compile_s=first if compiled else None, note=(note or {}).get(name, ""), **stats))
            print(f"[{threads} thr] {case:<16} {size!s:<14} {name:<28} {stats['median_s'] * 1e3:10.3f} ms", flush=True)

    run("ssm_step", d.batch, w.ssm_step(d, device, compile_torch))
    for length in sizes["lengths"]:
        run("sequence_forward", length, w.sequence_forward(d, length, device, compile_torch))
    for k in sizes["ks"]:
        run("adapt", k, w.adapt(d, k, device))
    for order in ("second", "first"):
        for mb in sizes["meta_batches"]:
            contenders, flops = w.meta_update(d, mb, order == "first", device)
            run(f"meta_update_{order}", mb, contenders, flops)
            if compile_torch:
                results.append(Result(f"meta_update_{order}", mb, "torch.compile", None, threads=threads,
                                      note="not run: double backward is unsupported by torch.compile"
                                      if order == "second" else "not run: the inner autograd.grad breaks the graph"))
    run("adapter_step", d.batch, w.adapter_step(d, device))
    tasks, episodes = sizes["rl"]
    run("rl_iteration", f"{tasks}x{episodes}x100", w.rl_iteration(tasks, episodes))
    memory = {"jax_temp_bytes": {}, "torch_peak_rss_bytes": {}}
    for k in sizes["memory_ks"]:
        memory["jax_temp_bytes"][k] = w.maml_memory_jax(d, k)
        code = (f"import torch; torch.set_num_threads({threads}); from benchmarks import workloads as w; "
                f"print(w.maml_memory_torch(w.Dims(), {k}))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=thread_env(threads),
                              check=True)
        memory["torch_peak_rss_bytes"][k] = float(proc.stdout.strip().splitlines()[-1])
    payload = {"environment": environment(threads, device), "matmul": matmul_peak(threads, device),
               "memory": memory, "results": [r.to_dict() for r in results]}
    out.write_text(json.dumps(payload))


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The performance targets as measured ratios (each ratio from one run, one thread setting)."""
    summary: dict[str, Any] = {}
    for run in runs:
        threads = run["environment"]["threads"]
        rows = run["results"]
        by = {(r["case"], str(r["size"]), r["contender"]): r["median_s"] for r in rows}
        s: dict[str, Any] = {}
        for case in ("meta_update_second", "meta_update_first"):
            sizes = sorted({r["size"] for r in rows if r["case"] == case})
            s[case] = {str(size): {
                "jax_vs_jax_floor": _ratio(by, case, size, "jax jit", "jax floor"),
                "torch_vs_torch_floor": _ratio(by, case, size, "torch eager", "torch floor"),
                "torch_vs_higher": _ratio(by, case, size, "torch eager", "higher"),
                "fraction_of_peak": {c: _fraction(rows, case, size, c, run["matmul"]["peak_flops_per_s"])
                                     for c in ("torch eager", "torch floor", "jax jit", "jax floor", "higher")},
            } for size in sizes}
        lengths = sorted({r["size"] for r in rows if r["case"] == "sequence_forward"})
        s["jax_parallel_vs_sequential"] = {str(n): _ratio(by, "sequence_forward", n, "jax jit parallel",
                                                          "jax jit sequential") for n in lengths}
        s["torch_parallel_vs_sequential"] = {str(n): _ratio(by, "sequence_forward", n, "torch eager parallel",
                                                            "torch eager sequential") for n in lengths}
        s["rl_iteration_s"] = {r["contender"]: r["median_s"] for r in rows if r["case"] == "rl_iteration"}
        summary[f"{threads}_threads"] = s
    return summary


def _ratio(by: dict, case: str, size: Any, a: str, b: str) -> float | None:
    x, y = by.get((case, str(size), a)), by.get((case, str(size), b))
    return None if x is None or y is None else x / y


def _fraction(rows: list[dict], case: str, size: Any, contender: str, peak: float) -> float | None:
    for r in rows:
        if r["case"] == case and r["size"] == size and r["contender"] == contender and r["median_s"]:
            return r["flops"] / r["median_s"] / peak if r["flops"] else None
    return None


def plot(runs: list[dict[str, Any]], name: str, output: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for case, xlabel in (("sequence_forward", "sequence length T"), ("meta_update_second", "meta-batch (tasks)"),
                         ("meta_update_first", "meta-batch (tasks)"), ("adapt", "inner steps k")):
        fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False)
        for ax, run in zip(axes[0], runs, strict=True):
            rows = [r for r in run["results"] if r["case"] == case and r["median_s"]]
            for contender in dict.fromkeys(r["contender"] for r in rows):
                pts = sorted((r["size"], r["median_s"] * 1e3) for r in rows if r["contender"] == contender)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=contender)
            ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="median time (ms)",
                   title=f"{case}, {run['environment']['threads']} thread(s)")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = output / f"{name}_{case}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssm-metarl bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (CI's smoke run)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="thread counts, each in its own process (default: 1 and all cores)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile contenders")
    parser.add_argument("--name", default=None, help="results file stem (default: full or quick)")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    if args.worker is not None:
        worker(threads[0], args.device, args.quick, not args.no_compile, args.worker)
        return 0
    name = args.name or ("quick" if args.quick else "full")
    args.output.mkdir(parents=True, exist_ok=True)
    runs, start = [], time.perf_counter()
    for n in threads:
        part = args.output / f".{name}_{n}.part.json"
        cmd = [sys.executable, "-m", "benchmarks.compare", "--worker", str(part), "--threads", str(n),
               "--device", args.device] + (["--quick"] if args.quick else []) + (["--no-compile"] if args.no_compile
                                                                                  else [])
        subprocess.run(cmd, env=thread_env(n), check=True)
        runs.append(json.loads(part.read_text()))
        part.unlink()
    from benchmarks.harness import Result, markdown_table

    summary = summarize(runs)
    payload = {"runs": runs, "summary": summary, "wall_seconds": time.perf_counter() - start}
    (args.output / f"{name}.json").write_text(json.dumps(payload, indent=1))
    rows = [Result(**r) for run in runs for r in run["results"]]
    (args.output / f"{name}.md").write_text(markdown_table(rows))
    plots = plot(runs, name, args.output)
    print(json.dumps(summary, indent=1))
    print(f"\nwrote {args.output / (name + '.json')}, {name}.md and {len(plots)} plots "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
