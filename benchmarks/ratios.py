"""Ours / floor ratios of ``meta_update``, interleaved in one process (a quick check between full runs).

``python -m benchmarks.ratios --tasks 1 4 16 32 --order second first --rounds 7`` times, per task
count and order, our torch MetaMAML (compiled and vmapped eager), the ``torch.func`` floors (compiled
and eager, each with a fused ``torch.optim.Adam``), our JAX MetaMAML and the JAX floor, built by
``benchmarks.workloads.meta_update`` (the same contenders as ``ssm-metarl bench --cases meta_update``).
Each round times every contender once (``calls`` calls each, the mean per call); the median over
rounds is reported, so load that drifts during the run hits every contender alike. Run it with
``OMP_NUM_THREADS=1`` and ``XLA_FLAGS`` set as ``benchmarks/compare.py`` sets them for one thread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks import names, workloads

PAIRS = [  # (ours, floor)
    (names.TORCH_COMPILED.name, names.FLOOR_COMPILED.name),
    (names.TORCH_VMAP.name, names.FLOOR_EAGER.name),
    (names.JAX_OURS.name, names.JAX_FLOOR_OUT_IN.name),
]


def _block(value: object) -> None:
    if hasattr(value, "block_until_ready"):
        value.block_until_ready()


def ratios(tasks: int, first_order: bool, rounds: int, calls: int, compiled: bool) -> list[tuple[str, float, float]]:
    contenders, _ = workloads.meta_update(workloads.Dims(), tasks, first_order, "cpu",
                                          skip_compiled=None if compiled else "--no-compile")
    pairs = [pair for pair in PAIRS if compiled or pair[0] != names.TORCH_COMPILED.name]
    timed = {name: contenders[name] for pair in pairs for name in pair}
    for fn in timed.values():  # compile and warm up
        for _ in range(3):
            _block(fn())
    times: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(rounds):
        for name, fn in timed.items():
            start = time.perf_counter()
            for _ in range(calls):
                _block(fn())
            times[name].append((time.perf_counter() - start) / calls)
    return [(f"{ours} / {floor}", float(np.median(times[ours])), float(np.median(times[floor])))
            for ours, floor in pairs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[1, 4, 16, 32])
    parser.add_argument("--order", choices=["second", "first"], nargs="+", default=["second", "first"])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| order | tasks | ours / floor | ours (ms) | floor (ms) | ratio |\n|---|---|---|---|---|---|")
    for order in args.order:
        for n in args.tasks:
            for label, ours, floor in ratios(n, order == "first", args.rounds, args.calls, not args.no_compile):
                print(f"| {order} | {n} | {label} | {ours * 1e3:.3f} | {floor * 1e3:.3f} | {ours / floor:.2f}x |",
                      flush=True)


if __name__ == "__main__":
    main()
