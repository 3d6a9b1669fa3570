"""What computing the norm layers from primitive ops costs MetaMAML, against the loop mode.

A small MLP block with one norm layer (``Linear(16, 64) -> norm -> tanh -> Linear(64, 4)``), 16 samples
per task, second order, one inner step, float64: the median ``meta_gradient`` time of the autograd loop
(``vectorize=False``, torch's fused norm kernels), of ``vmap`` with the primitive norms (eager, and
with ``--compiled`` under ``torch.compile``), and of ``vmap`` over the fused kernels (wrong in second
order: shown only for the price of exactness). Also the cost of the rerouting mode on a model
without norms (the SSM): ``vmap`` with and without the mode. Interleaved in one process, so the ratios
hold under load.

    PYTHONPATH=$PWD python -m benchmarks.norm_layers [--tasks 8] [--reps 15] [--compiled]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from torch_impl import SSM, MetaMAML
from torch_impl.core import norms
from torch_impl.meta_rl import meta_maml as meta_maml_module

F64 = torch.float64
NORMS: dict[str, Callable[[], nn.Module]] = {
    "LayerNorm": lambda: nn.LayerNorm(64, dtype=F64),
    "BatchNorm1d (train)": lambda: nn.BatchNorm1d(64, dtype=F64),
    "GroupNorm": lambda: nn.GroupNorm(8, 64, dtype=F64),
}


def block(norm: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 64, dtype=F64), norm, nn.Tanh(), nn.Linear(64, 4, dtype=F64)).train()


def tasks(n: int, shapes: list[tuple[int, ...]]) -> list[tuple[torch.Tensor, ...]]:
    rng = np.random.default_rng(0)
    return [tuple(torch.from_numpy(rng.normal(size=s)) for s in shapes) for _ in range(n)]


@contextlib.contextmanager
def fused_norms() -> contextlib.AbstractContextManager:
    """MetaMAML's vmap path over torch's fused norm kernels (the rerouting switched off)."""
    saved = meta_maml_module.PrimitiveNorms
    meta_maml_module.PrimitiveNorms = contextlib.nullcontext
    try:
        yield
    finally:
        meta_maml_module.PrimitiveNorms = saved


def interleaved(contenders: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds per call of each contender, measured round-robin after two warm-up calls."""
    for fn in contenders.values():
        fn(), fn()
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(reps):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--compiled", action="store_true", help="also time compile=True (one shape per norm)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = tasks(args.tasks, [(16, 16), (16, 4), (16, 16), (16, 4)])
    print(f"| norm | loop | vmap, primitive norms | vmap, fused kernels (wrong) |"
          f"{' compiled, primitive norms |' if args.compiled else ''}")
    print(f"|---|---|---|---|{'---|' if args.compiled else ''}")
    for name, make in NORMS.items():
        model = block(make())
        loop = MetaMAML(model, 0.1, vectorize=False)
        vmapped = MetaMAML(model, 0.1)
        contenders = {"loop": lambda m=loop: m.meta_gradient(data), "vmap": lambda m=vmapped: m.meta_gradient(data)}
        if args.compiled:
            compiled = MetaMAML(model, 0.1, compile=True)
            contenders["compiled"] = lambda m=compiled: m.meta_gradient(data)

        def fused(m: MetaMAML = vmapped) -> object:
            with fused_norms():
                return m.meta_gradient(data)

        medians = interleaved({**contenders, "fused": fused}, args.reps)
        cells = [f"{medians[k] * 1e3:.2f} ms ({medians[k] / medians['loop']:.2f}x)" for k in ("loop", "vmap", "fused")]
        if args.compiled:
            cells.append(f"{medians['compiled'] * 1e3:.2f} ms ({medians['compiled'] / medians['loop']:.2f}x)")
        print(f"| {name} | " + " | ".join(cells) + " |")
    torch.manual_seed(0)
    ssm = MetaMAML(SSM(8, 3, 2, 16, "cpu", dtype=F64), 0.1)
    ssm_data = tasks(args.tasks, [(4, 9, 3), (4, 9, 2), (4, 9, 3), (4, 9, 2)])

    def without_mode() -> object:
        with fused_norms():
            return ssm.meta_gradient(ssm_data)

    ssm_medians = interleaved({"mode": lambda: ssm.meta_gradient(ssm_data), "none": without_mode}, args.reps)
    with_mode, without = ssm_medians["mode"], ssm_medians["none"]
    print(f"\nSSM 8/3/2/16 (no norm layer), vmap: {with_mode * 1e3:.2f} ms with the rerouting mode, "
          f"{without * 1e3:.2f} ms without ({with_mode / without:.2f}x); twins: {len(norms.PRIMITIVE_TWINS)}")


if __name__ == "__main__":
    main()
