"""The full PyTorch-vs-JAX comparison (``ssm-metarl bench``), each contender measured in the same run.

Every thread setting runs in a fresh worker process, because XLA reads its thread flags at start-up;
torch gets the same count through ``torch.set_num_threads``. ``torch.compile`` costs 25-30 s per
shape on a 2-core CPU, so by default only the 1-thread process runs the compiled contenders
(``--compile``); a contender not run somewhere gets a row whose note says why. Results:
``<output>/<name>.json``, ``<name>.md`` and PNG plots (time against size, one line per contender).
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

from ssm_metarl.argtypes import positive_int

RESULTS = Path(__file__).resolve().parent / "results"
FULL = {"lengths": [16, 64, 256, 1024, 4096], "ks": [1, 5, 10], "meta_batches": [1, 4, 16, 32],
        "memory_ks": [1, 2, 4, 8], "rl": (20, 20), "reps": 20,
        # torch.compile costs 25-30 s per shape on a quiet 2-core CPU: compile these sizes only.
        "compile_lengths": [16, 256], "compile_ks": [1], "compile_meta_batches": [1, 4, 16, 32]}
QUICK = {"lengths": [16, 64], "ks": [1], "meta_batches": [1], "memory_ks": [], "rl": (2, 2), "reps": 3,
         "compile_lengths": [], "compile_ks": [], "compile_meta_batches": [1], "compile_orders": ["second"]}
CASES = ("ssm_step", "sequence_forward", "adapt", "meta_update", "adapter_step", "rl_iteration", "memory")


def thread_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    if threads == 1:
        env["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    env["OMP_NUM_THREADS"] = str(threads)
    env["BENCH_THREADS"] = str(threads)
    # Cold compiles, so the compile-time column does not depend on what an earlier run left on disk.
    env.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
    env.setdefault("TORCHINDUCTOR_AUTOGRAD_CACHE", "0")
    return env


def compile_plan(threads: list[int], policy: str) -> dict[int, bool]:
    """Which worker runs the torch.compile contenders: ``lowest`` (the fewest threads), ``all`` or ``none``."""
    if policy not in ("lowest", "all", "none"):
        raise ValueError(f"compile policy must be 'lowest', 'all' or 'none', got {policy!r}")
    return {n: policy == "all" or (policy == "lowest" and n == min(threads)) for n in threads}


def worker(threads: int, device: str, quick: bool, compile_torch: bool, out: Path,
           cases: tuple[str, ...] = CASES, memory: bool = True) -> None:
    """Run the cases at one thread count and write the rows as JSON (runs in its own process).

    ``compile_torch``: run the torch.compile contenders here; ``memory``: run the memory case here
    (its numbers do not depend on the thread count, so only the first process runs it).
    """
    import torch

    torch.set_num_threads(threads)
    from benchmarks import workloads as w
    from benchmarks.harness import Result, compile_time, environment, matmul_peak, measure
    from benchmarks.names import is_compiled

    sizes = QUICK if quick else FULL
    reps = sizes["reps"]
    results: list[Result] = []
    d = w.Dims()
    not_here = None if compile_torch else ("torch.compile is off at this thread setting (--compile lowest, the "
                                           "default, compiles in the 1-thread process only; --no-compile nowhere)")

    def skip(allowed: bool, why: str) -> str | None:
        return not_here or (None if allowed else why)

    def run(case: str, size: Any, contenders: dict, flops: Any = None) -> None:
        start = len(results)
        for name, fn in contenders.items():
            if isinstance(fn, str):
                results.append(Result(case, size, name, None, threads=threads, note=fn))
                print(f"[{threads} thr] {case:<18} {size!s:<14} {name:<32} {fn}", flush=True)
                continue
            first = compile_time(fn)
            stats = measure(fn, reps=reps)
            results.append(Result(case, size, name, threads=threads,
                                  compile_s=first if is_compiled(name) else None, **stats))
            print(f"[{threads} thr] {case:<18} {size!s:<14} {name:<32} {stats['median_s'] * 1e3:10.3f} ms"
                  + (f"  (first call {first:.1f} s)" if is_compiled(name) else ""), flush=True)
        if flops is not None:  # counted after timing, so that no contender's compile happens ahead of it
            count = flops()
            for r in results[start:]:
                r.flops = count if r.median_s is not None else None

    label = "--quick" if quick else "the full suite"
    if "ssm_step" in cases:
        run("ssm_step", d.batch, w.ssm_step(d, device, skip(not quick, f"{label} compiles no ssm_step")))
    if "sequence_forward" in cases:
        for length in sizes["lengths"]:
            why = f"{label} compiles sequence_forward {_only('T', sizes['compile_lengths'])}"
            run("sequence_forward", length,
                w.sequence_forward(d, length, device, skip(length in sizes["compile_lengths"], why)))
    if "adapt" in cases:
        for k in sizes["ks"]:
            why = f"{label} compiles adapt {_only('k', sizes['compile_ks'])}"
            run("adapt", k, w.adapt(d, k, device, skip(k in sizes["compile_ks"], why)))
    if "meta_update" in cases:
        for order in ("second", "first"):
            for mb in sizes["meta_batches"]:
                allowed = mb in sizes["compile_meta_batches"] and order in sizes.get("compile_orders", [order])
                why = (f"{label} compiles meta_update only at {sizes['compile_meta_batches']} tasks, "
                       f"{'/'.join(sizes.get('compile_orders', ['first', 'second']))} order")
                contenders, flops = w.meta_update(d, mb, order == "first", device, skip(allowed, why))
                run(f"meta_update_{order}", mb, contenders, flops)
    if "adapter_step" in cases:
        run("adapter_step", d.batch, w.adapter_step(d, device))
    rl_compile: dict[str, float] = {}
    if "rl_iteration" in cases:
        tasks, episodes = sizes["rl"]
        # compile seconds of the native paths, reported apart from the steady-state medians; measured first,
        # because torch.compile's cache would make a later measurement read 0 s for PyTorch
        rl_compile = w.rl_compile_seconds(tasks, episodes, ("torch", "jax") if compile_torch else ("jax",))
        run("rl_iteration", f"{tasks}x{episodes}x100", w.rl_iteration(tasks, episodes, torch_compile=compile_torch))
    memory: dict[str, Any] = {"jax_floor_temp_bytes": {}, "torch_peak_rss_bytes": {}}
    for k in sizes["memory_ks"] if "memory" in cases and memory else []:
        memory["jax_floor_temp_bytes"][k] = w.maml_memory_jax(d, k)
        code = (f"import torch; torch.set_num_threads({threads}); from benchmarks import workloads as w; "
                f"print(w.maml_memory_torch(w.Dims(), {k}))")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=thread_env(threads),
                              check=True)
        memory["torch_peak_rss_bytes"][k] = float(proc.stdout.strip().splitlines()[-1])
    env = environment(threads, device)
    env["torch_compile_in_this_process"] = compile_torch
    payload = {"environment": env, "matmul": matmul_peak(threads, device), "memory": memory,
               "rl_compile_seconds": rl_compile, "results": [r.to_dict() for r in results]}
    out.write_text(json.dumps(payload))


def _only(symbol: str, values: list) -> str:
    return f"only at {symbol} in {values}" if values else "at no size"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run (thread setting): ratios ours/floor per mode, and best torch vs best jax, per MAML case and size."""
    from benchmarks.names import RATIOS, framework

    summary: dict[str, Any] = {}
    for run in runs:
        threads = run["environment"]["threads"]
        rows = run["results"]
        by = {(r["case"], str(r["size"]), r["contender"]): r["median_s"] for r in rows}
        s: dict[str, Any] = {}
        for case in ("meta_update_second", "meta_update_first", "adapt"):
            sizes = sorted({r["size"] for r in rows if r["case"] == case})
            s[case] = {}
            for size in sizes:
                timed = {r["contender"]: r["median_s"] for r in rows
                         if r["case"] == case and r["size"] == size and r["median_s"]}
                entry: dict[str, Any] = {label: _ratio(by, case, size, a, b) for label, a, b in RATIOS}
                best = {fw: min(((t, n) for n, t in timed.items() if framework(n) == fw), default=None)
                        for fw in ("torch", "jax")}
                entry["best_torch"] = best["torch"][1] if best["torch"] else None
                entry["best_jax"] = best["jax"][1] if best["jax"] else None
                entry["best_torch_vs_best_jax"] = (best["torch"][0] / best["jax"][0]
                                                   if best["torch"] and best["jax"] else None)
                entry["fraction_of_peak"] = {n: _fraction(rows, case, size, n, run["matmul"]["peak_flops_per_s"])
                                             for n in timed}
                s[case][str(size)] = entry
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
            if not rows:
                ax.set_axis_off()
                continue
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssm-metarl bench", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repetitions (CI's smoke run)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the torch contenders (and JAX, with its CUDA build) run (default: cpu)")
    parser.add_argument("--threads", type=positive_int, nargs="+", default=None,
                        help="thread counts, each in its own process (default: 1 and all cores)")
    parser.add_argument("--compile", choices=["lowest", "all", "none"], default="lowest",
                        help="which thread setting runs the torch.compile contenders (default: lowest, i.e. the "
                             "1-thread process only: each shape takes 25-30 s to compile)")
    parser.add_argument("--no-compile", action="store_true", help="same as --compile none")
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="run only these cases (default: all)")
    parser.add_argument("--name", default=None, help="results file stem (default: full or quick)")
    parser.add_argument("--output", type=Path, default=RESULTS,
                        help=f"directory for NAME.json, NAME.md and the plots (default: {RESULTS})")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--compile-here", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-memory-here", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    threads = args.threads or sorted({1, os.cpu_count() or 1})
    if args.worker is not None:
        worker(threads[0], args.device, args.quick, args.compile_here, args.worker, tuple(args.cases),
               memory=not args.no_memory_here)
        return 0
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
    plan = compile_plan(threads, "none" if args.no_compile else args.compile)
    for n, here in plan.items():
        print(f"{n} thread(s): torch.compile contenders {'run' if here else 'not run (rows say so)'}"
              + (" (--quick compiles only meta_update_second at 1 task)" if here and args.quick else ""), flush=True)
    name = args.name or ("quick" if args.quick else "full")
    args.output.mkdir(parents=True, exist_ok=True)
    runs, start = [], time.perf_counter()
    for n in threads:
        part = args.output / f".{name}_{n}.part.json"
        cmd = [sys.executable, "-m", "benchmarks.compare", "--worker", str(part), "--threads", str(n),
               "--device", args.device, "--cases", *args.cases]
        cmd += (["--quick"] if args.quick else []) + (["--compile-here"] if plan[n] else [])
        cmd += [] if n == threads[0] else ["--no-memory-here"]
        subprocess.run(cmd, env=thread_env(n), check=True)
        runs.append(json.loads(part.read_text()))
        part.unlink()
    from benchmarks.harness import Result, markdown_table
    from benchmarks.headline import headline

    summary = summarize(runs)
    payload = {"runs": runs, "summary": summary, "wall_seconds": time.perf_counter() - start,
               "command": "ssm-metarl bench " + " ".join(argv if argv is not None else sys.argv[1:])}
    (args.output / f"{name}.json").write_text(json.dumps(payload, indent=1))
    rows = [Result(**r) for run in runs for r in run["results"]]
    (args.output / f"{name}.md").write_text(markdown_table(rows))
    plots = plot(runs, name, args.output)
    print(headline(payload))
    print(f"\nwrote {args.output / (name + '.json')}, {name}.md and {len(plots)} plots "
          f"in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
