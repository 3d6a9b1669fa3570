"""``ssm-metarl parity``: run the parity matrix and report it as a table and as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from parity_tests.matrix import Row, Sizes, run_matrix


def format_table(rows: list[Row]) -> str:
    """A Markdown table: one row per quantity."""
    lines = ["| quantity | dtype | max abs | max rel | tolerance | result |", "|---|---|---|---|---|---|"]
    for r in rows:
        tolerance = "exact" if r.tolerance == 0 else (f"> {r.tolerance:.0e}" if "differs" in r.quantity
                                                      else f"{r.tolerance:.0e}")
        lines.append(f"| {r.quantity} | {r.dtype} | {r.max_abs:.2e} | {r.rel:.2e} | {tolerance} | "
                     f"{'pass' if r.passed else 'FAIL'} |")
    return "\n".join(lines)


def run(dtypes: list[str], sizes: Sizes, output: Path | None) -> int:
    """Print the matrix for each dtype; write JSON to ``output``; return the exit code (1 on any failure)."""
    rows = [r for dtype in dtypes for r in run_matrix(dtype, sizes)]
    print(format_table(rows))
    failed = [r for r in rows if not r.passed]
    print(f"\nparity rows: {len(rows) - len(failed)} within tolerance, {len(failed)} outside")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        report = {"sizes": sizes.__dict__, "rows": [r.to_dict() for r in rows]}
        output.write_text(json.dumps(report, indent=2))
        print(f"report written to {output}")
    return 1 if failed else 0
