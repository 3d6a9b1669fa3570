"""Print the headline table of a ``compare.py`` result file (the table the README quotes).

``python -m benchmarks.headline benchmarks/results/full.json``
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def median(rows: list[dict], case: str, size: Any, contender: str) -> float | None:
    for r in rows:
        if r["case"] == case and str(r["size"]) == str(size) and r["contender"] == contender:
            return r["median_s"]
    return None


def fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def headline(payload: dict[str, Any]) -> str:
    lines = []
    for run in payload["runs"]:
        env, rows = run["environment"], run["results"]
        peak = run["matmul"]["peak_flops_per_s"]
        lines.append(f"\n**{env['threads']} thread(s)** ({env['cpu']}, torch {env['torch']}, jax {env['jax']}; "
                     f"measured matmul peak {peak / 1e9:.1f} GFLOP/s)\n")
        lines.append("| case | size | torch eager | torch floor | higher | jax jit | jax floor | "
                     "torch/floor | jax/floor | torch/higher | jax jit % of peak |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for case in ("meta_update_second", "meta_update_first"):
            for size in sorted({r["size"] for r in rows if r["case"] == case}):
                t, tf, h, j, jf = (median(rows, case, size, c) for c in
                                   ("torch eager", "torch floor", "higher", "jax jit", "jax floor"))
                flops = next((r["flops"] for r in rows if r["case"] == case and r["size"] == size and r["flops"]),
                             None)
                frac = "n/a" if not (flops and j) else f"{100 * flops / j / peak:.1f}%"
                lines.append(f"| {case.replace('_', ' ')} | {size} tasks | {fmt(t)} | {fmt(tf)} | {fmt(h)} | "
                             f"{fmt(j)} | {fmt(jf)} | {ratio(t, tf)} | {ratio(j, jf)} | {ratio(t, h)} | {frac} |")
        for size in sorted({r["size"] for r in rows if r["case"] == "sequence_forward"}):
            seq, par = (median(rows, "sequence_forward", size, f"jax jit {m}") for m in ("sequential", "parallel"))
            tseq, tpar = (median(rows, "sequence_forward", size, f"torch eager {m}")
                          for m in ("sequential", "parallel"))
            lines.append(f"| scan T={size} (seq / par) | batch 16 | {fmt(tseq)} / {fmt(tpar)} | | | "
                         f"{fmt(seq)} / {fmt(par)} | | | par/seq {ratio(par, seq)} | | |")
        for r in rows:
            if r["case"] == "rl_iteration":
                lines.append(f"| MAML-RL iteration | {r['size']} | {r['contender']}: {fmt(r['median_s'])} ms "
                             f"| | | | | | | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(headline(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/full.json").read_text())))
