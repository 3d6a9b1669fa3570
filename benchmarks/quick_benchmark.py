"""The quick suite: every public API call on both backends works, and how long each takes.

``python -m benchmarks.quick_benchmark`` runs in well under 2 minutes on a 2-core CPU (no
``torch.compile``: the compiled mode is timed by ``ssm-metarl bench``). Each call is
checked (shapes, finite values, that an update happened) before it is timed; the table shows the
median of ``--reps`` synchronised calls after warm-up, with the first (compiling) call apart.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def checks() -> list[tuple[str, str, Callable[[], Any], Callable[[Any], None]]]:
    """``(api, backend, call, check)`` for every public entry point."""
    import jax.numpy as jnp
    import torch

    from benchmarks import workloads as w

    d = w.Dims(batch=8, seq=16)
    t, j, _ = w.twins(d)
    x = np.random.default_rng(0).normal(size=(d.batch, d.input)).astype("float32")
    tasks = w._tasks(d, 4)
    t_tasks = [tuple(torch.tensor(a) for a in task) for task in tasks]
    t_maml, j_maml = w.TorchMAML(t, 0.01, 0.001), w.JaxMAML(j, 0.01, 0.001)
    t_loop = w.TorchMAML(w.torch_model(d, {k: v.detach().numpy() for k, v in t.state_dict().items()}), 0.01, 0.001,
                         vectorize=False)
    adapter = w.adapter_step(d, "cpu")
    rl = w.rl_iteration(tasks=4, episodes=4, torch_compile=False)  # a quick check: no torch.compile

    def finite(value: Any) -> None:
        assert np.isfinite(np.asarray(value, dtype=np.float64)).all(), "non-finite result"

    def shape(value: Any) -> None:
        assert tuple(value.shape) == (d.batch, d.output), f"expected {(d.batch, d.output)}, got {tuple(value.shape)}"
        finite(value.detach().numpy() if hasattr(value, "detach") else value)

    def params(value: Any) -> None:
        assert len(value) > 0

    def updated(info: dict) -> None:
        assert info["updated"] and info["skipped"] is None, info

    def rl_ok(metrics: dict) -> None:
        finite([metrics["pre_return"], metrics["post_return"], metrics["loss"]])

    tx, jx = torch.tensor(x), jnp.asarray(x)
    return [
        ("SSM forward", "torch", lambda: t(tx), shape),
        ("SSM forward", "jax", lambda: j(jx), shape),
        ("MetaMAML.adapt", "torch", lambda: t_maml.adapt(*t_tasks[0][:2]), params),
        ("MetaMAML.adapt", "jax", lambda: j_maml.adapt(*tasks[0][:2]), params),
        ("MetaMAML.meta_update", "torch", lambda: t_maml.meta_update(t_tasks), finite),
        ("MetaMAML.meta_update", "jax", lambda: j_maml.meta_update(tasks), finite),
        ("MetaMAML.meta_update (vectorize=False)", "torch", lambda: t_loop.meta_update(t_tasks), finite),
        ("Adapter.update_step", "torch", adapter["torch eager"], updated),
        ("Adapter.update_step", "jax", adapter["jax jit"], updated),
        ("MAML-RL meta-iteration, runner (nav2d 4x4)", "torch", rl["torch runner"], rl_ok),
        ("MAML-RL meta-iteration, runner (nav2d 4x4)", "jax", rl["jax runner"], rl_ok),
        ("MAML-RL meta-iteration, native (nav2d 4x4)", "torch", rl["torch native (eager)"], rl_ok),
        ("MAML-RL meta-iteration, native (nav2d 4x4)", "jax", rl["jax native (jit)"], rl_ok),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="quick_benchmark", description=__doc__.strip().splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per call (default: 10)")
    parser.add_argument("--output", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    from benchmarks.harness import compile_time, measure

    rows = []
    for api, backend, call, check in checks():
        first_s = compile_time(call)
        check(call())
        stats = measure(call, reps=args.reps, warmup=1)
        rows.append({"api": api, "backend": backend, "first_call_s": first_s, **stats})
    print(f"{'API':<38} {'backend':<7} {'median (ms)':>12} {'IQR (ms)':>10} {'first call (s)':>15}")
    for r in rows:
        print(f"{r['api']:<38} {r['backend']:<7} {r['median_s'] * 1e3:>12.3f} {(r['q3_s'] - r['q1_s']) * 1e3:>10.3f} "
              f"{r['first_call_s']:>15.3f}")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
