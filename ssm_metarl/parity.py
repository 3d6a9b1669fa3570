"""``ssm-metarl parity``: run the parity matrix and report it as a table and as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from parity_tests.matrix import CASES, Row, Sizes, run_matrix
from ssm_metarl.runinfo import run_info

NOT_APPLICABLE = "n/a (float64 only)"


def format_table(rows: list[Row], not_applicable: list[tuple[str, str]] = ()) -> str:
    """A Markdown table: one row per quantity, then the cases the contract checks in float64 only."""
    lines = ["| quantity | dtype | max abs | max rel | tolerance | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        tolerance = "exact" if r.tolerance == 0 else (f"> {r.tolerance:.0e}" if "differs" in r.quantity
                                                      else f"{r.tolerance:.0e}")
        lines.append(f"| {r.quantity} | {r.dtype} | {r.max_abs:.2e} | {r.rel:.2e} | {tolerance} | "
                     f"{'pass' if r.passed else 'FAIL'} |")
    for quantity, dtype in not_applicable:
        lines.append(f"| {quantity} | {dtype} | - | - | - | {NOT_APPLICABLE} |")
    return "\n".join(lines)


def case_title(name: str) -> str:
    """``adapter_trajectories`` -> "adapter trajectories (every row of this case)"."""
    return f"{name.replace('_', ' ')} (every row of this case)"


def run(dtypes: list[str], sizes: Sizes, output: Path | None) -> int:
    """Print the matrix for each dtype; write JSON to ``output``; return the exit code (1 on any failure).

    A case with no rows in float32 (the contract has no float32 tolerance for it) is listed as
    ``n/a (float64 only)`` rather than left out.
    """
    rows: list[Row] = []
    not_applicable: list[tuple[str, str]] = []
    for dtype in dtypes:
        for name, case in CASES.items():
            case_rows = run_matrix(dtype, sizes, {name: case})
            rows += case_rows
            if not case_rows and dtype == "float32":
                not_applicable.append((case_title(name), dtype))
    print(format_table(rows, not_applicable))
    failed = [r for r in rows if not r.passed]
    print(f"\nparity rows: {len(rows) - len(failed)} within tolerance, {len(failed)} outside"
          + (f", {len(not_applicable)} case(s) {NOT_APPLICABLE}" if not_applicable else ""))
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        report = {"run": run_info("torch"), "dtypes": dtypes, "sizes": sizes.__dict__,
                  "rows": [r.to_dict() for r in rows],
                  "not_applicable": [{"quantity": q, "dtype": d, "result": NOT_APPLICABLE} for q, d in not_applicable]}
        tmp = output.with_name(f".{output.name}.tmp")
        tmp.write_text(json.dumps(report, indent=2))
        os.replace(tmp, output)
        print(f"report written to {output}")
    return 1 if failed else 0
