"""Print the headline tables of a ``compare.py`` result file (the tables the Benchmarks page shows).

``python -m benchmarks.headline benchmarks/results/full.json``

Per thread setting: the MAML times of every contender; the ratios ours/floor per mode (the targets
(each <= 1.2) and best torch vs best jax (the only cross-framework comparison we draw);
the compile times (first call) on their own.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.names import AUTOGRAD, MAML, RATIOS, framework

MAML_CASES = ("meta_update_second", "meta_update_first", "adapt")


def median(rows: list[dict], case: str, size: Any, contender: str) -> float | None:
    for r in rows:
        if r["case"] == case and str(r["size"]) == str(size) and r["contender"] == contender:
            return r["median_s"]
    return None


def fmt(seconds: float | None) -> str:
    return "n/a" if seconds is None else f"{seconds * 1e3:.2f}"


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def best(rows: list[dict], case: str, size: Any, fw: str) -> tuple[float, str] | None:
    """The fastest timed contender of framework ``fw`` in one case and size: ``(seconds, name)``."""
    timed = [(r["median_s"], r["contender"]) for r in rows
             if r["case"] == case and str(r["size"]) == str(size) and r["median_s"] and framework(r["contender"]) == fw]
    return min(timed, default=None)


def _sizes(rows: list[dict], case: str) -> list[Any]:
    return sorted({r["size"] for r in rows if r["case"] == case}, key=lambda s: (str(type(s)), s))


def _label(case: str, size: Any) -> str:
    unit = "steps" if case == "adapt" else "tasks"
    return f"| {case.replace('_', ' ')} | {size} {unit} |"


def maml_tables(rows: list[dict]) -> list[str]:
    present = [c for c in MAML if any(r["contender"] == c.name for r in rows if r["case"] in MAML_CASES)]
    if not present:  # a result file from before these contenders existed
        return []
    lines = ["", "Times (median ms; `n/a`: not run, the JSON/Markdown rows say why):", "",
             "| case | size | " + " | ".join(c.name for c in present) + " |",
             "|---|---|" + "---|" * len(present)]
    for case in MAML_CASES:
        for size in _sizes(rows, case):
            lines.append(_label(case, size) + " " + " | ".join(fmt(median(rows, case, size, c.name))
                                                                for c in present) + " |")
    lines += ["", "Ratios: ours / floor per mode (target <= 1.2), and best torch vs best jax (any contender):", "",
              "| case | size | " + " | ".join(label for label, _, _ in RATIOS)
              + " | best torch | best jax | best torch / best jax |",
              "|---|---|" + "---|" * (len(RATIOS) + 3)]
    for case in MAML_CASES:
        for size in _sizes(rows, case):
            cells = [ratio(median(rows, case, size, a), median(rows, case, size, b)) for _, a, b in RATIOS]
            bt, bj = best(rows, case, size, "torch"), best(rows, case, size, "jax")
            cells += [f"{bt[1]} ({fmt(bt[0])})" if bt else "n/a", f"{bj[1]} ({fmt(bj[0])})" if bj else "n/a",
                      ratio(bt[0] if bt else None, bj[0] if bj else None)]
            lines.append(_label(case, size) + " " + " | ".join(cells) + " |")
    compiled = [c for c in present if c.compiled]
    lines += ["", "Compile time (s; the first call, compile plus one run):", "",
              "| case | size | " + " | ".join(c.name for c in compiled) + " |", "|---|---|" + "---|" * len(compiled)]
    for case in MAML_CASES:
        for size in _sizes(rows, case):
            cells = []
            for c in compiled:
                r = next((r for r in rows if r["case"] == case and str(r["size"]) == str(size)
                          and r["contender"] == c.name), None)
                cells.append("n/a" if r is None or r["compile_s"] is None else f"{r['compile_s']:.1f}")
            lines.append(_label(case, size) + " " + " | ".join(cells) + " |")
    lines.append(f"\n`{AUTOGRAD.name}` is the plain double-backward loop, kept for reference; it is not a floor.")
    return lines


def other_tables(rows: list[dict], rl_compile: dict[str, float] | None = None) -> list[str]:
    """Scan, step and MAML-RL rows; ``rl_compile``: seconds each native path spent compiling (shown beside it)."""
    if not any(r["case"] in ("sequence_forward", "ssm_step", "adapter_step", "rl_iteration") for r in rows):
        return []
    lines = ["", "| case | size | torch (ms) | jax (ms) | note |", "|---|---|---|---|---|"]
    for size in _sizes(rows, "sequence_forward"):
        seq, par = (median(rows, "sequence_forward", size, f"jax jit {m}") for m in ("sequential", "parallel"))
        tseq, tpar = (median(rows, "sequence_forward", size, f"torch eager {m}") for m in ("sequential", "parallel"))
        tcomp = median(rows, "sequence_forward", size, "torch compiled parallel")
        lines.append(f"| scan T={size} (seq / par) | batch 16 | {fmt(tseq)} / {fmt(tpar)} "
                     f"(compiled par {fmt(tcomp)}) | {fmt(seq)} / {fmt(par)} | jax par/seq {ratio(par, seq)} |")
    for case in ("ssm_step", "adapter_step"):
        for size in _sizes(rows, case):
            t, j = median(rows, case, size, "torch eager"), median(rows, case, size, "jax jit")
            tf, jf = median(rows, case, size, "torch floor"), median(rows, case, size, "jax floor")
            lines.append(f"| {case.replace('_', ' ')} | batch {size} | {fmt(t)} (floor {fmt(tf)}) | {fmt(j)} "
                         f"(floor {fmt(jf)}) | torch/floor {ratio(t, tf)}, jax/floor {ratio(j, jf)} |")
    for r in rows:
        if r["case"] == "rl_iteration":
            side = framework(r["contender"])
            cells = (f"{fmt(r['median_s'])}", "") if side == "torch" else ("", f"{fmt(r['median_s'])}")
            compiled = (rl_compile or {}).get(f"{side} native") if "native" in r["contender"] \
                and "eager" not in r["contender"] else None
            note = r["contender"] + (f" (compile {compiled:.1f} s, apart)" if compiled else "")
            lines.append(f"| MAML-RL iteration | {r['size']} | {cells[0]} | {cells[1]} | {note} |")
    return lines


def headline(payload: dict[str, Any]) -> str:
    lines = []
    for run in payload["runs"]:
        env, rows = run["environment"], run["results"]
        peak = run["matmul"]["peak_flops_per_s"]
        tf32 = env.get("tf32")
        lines.append(f"\n**{env['threads']} thread(s)** ({env['cpu']}, device {env['device']}, torch {env['torch']}, "
                     f"jax {env['jax']}; measured matmul peak {peak / 1e9:.1f} GFLOP/s"
                     + (f"; TF32 {tf32}" if tf32 is not None else "")
                     + ("" if env.get("torch_compile_in_this_process", True) else "; no torch.compile in this run")
                     + ")")
        lines += maml_tables(rows)
        lines += other_tables(rows, run.get("rl_compile_seconds"))
    return "\n".join(lines)


__all__ = ["best", "headline", "median"]

if __name__ == "__main__":
    print(headline(json.loads(Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/full.json").read_text())))
