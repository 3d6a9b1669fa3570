"""``precision_sweep``: the same pair in float64 on the CPU, then float32 and bfloat16 (on the device when
there is one), with a verdict per row: a **bug** differs in float64 already (a wrong mapping, a wrong
formula: it persists at every precision); **rounding** agrees in float64 and its error shrinks as the
precision grows (bfloat16 > float32 > float64).
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ssm_metarl.porting.io import Inputs, tree_map
from ssm_metarl.porting.precision import NUMPY_DTYPES, is_floating
from ssm_metarl.porting.rows import PortingReport, compare_models, model_dtype

SWEEP = ("float64", "float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class SweepReport:
    """One :class:`PortingReport` per precision that could run, the ones that could not, and the verdicts."""

    reports: dict[str, PortingReport]
    skipped: dict[str, str]
    verdicts: dict[str, str]  # row quantity -> "agrees" | "bug: ..." | "rounding: ..." | "unclear: ..."

    @property
    def bug(self) -> bool:
        return any(v.startswith("bug") for v in self.verdicts.values())

    def table(self) -> str:
        dtypes = list(self.reports)
        lines = ["| quantity | " + " | ".join(f"rel {d}" for d in dtypes) + " | verdict |",
                 "|---|" + "---|" * len(dtypes) + "---|"]
        for quantity, verdict in self.verdicts.items():
            rels = []
            for d in dtypes:
                match = [r for r in self.reports[d].rows if r.quantity == quantity]
                rels.append(f"{match[0].rel:.1e}{'' if match[0].passed else ' FAIL'}" if match else "-")
            lines.append(f"| {quantity} | " + " | ".join(rels) + f" | {verdict} |")
        lines += [f"not run in {d}: {why}" for d, why in self.skipped.items()]
        overall = "a bug: it differs in float64" if self.bug else "no bug in float64"
        return "\n".join(lines) + f"\n\nverdict: {overall}"

    def to_dict(self) -> dict[str, Any]:
        return {"reports": {d: r.to_dict() for d, r in self.reports.items()}, "skipped": self.skipped,
                "verdicts": self.verdicts, "bug": self.bug}


def _build(factory: Callable[..., Any], dtype: str) -> Any:
    if "dtype" in inspect.signature(factory).parameters:
        return factory(dtype=dtype)
    return factory()


def _cast(tree: Any, dtype: str) -> Any:
    return tree_map(lambda a: np.asarray(a).astype(NUMPY_DTYPES[dtype]) if is_floating(np.asarray(a)) else a, tree)


def verdict(rows_by_dtype: dict[str, Any]) -> str:
    """The verdict for one quantity from its row in each precision (``None`` where it did not run)."""
    ran = {d: r for d, r in rows_by_dtype.items() if r is not None}
    if "float64" in ran and not ran["float64"].passed:
        return f"bug: differs in float64 (rel {ran['float64'].rel:.1e}), far above float64 rounding"
    if all(r.passed for r in ran.values()):
        return "agrees"
    order = [d for d in SWEEP if d in ran]
    rels = [ran[d].rel for d in order]
    if "float64" in ran and all(a <= b for a, b in itertools.pairwise(rels)):
        return ("rounding: agrees in float64 and the error shrinks with precision ("
                + ", ".join(f"{d} {ran[d].rel:.1e}" for d in reversed(order)) + ")")
    return "unclear: " + ", ".join(f"{d} {ran[d].rel:.1e}" for d in order)


def precision_sweep(torch_factory: Callable[..., Any], flax_factory: Callable[..., Any], inputs: Any,
                    labels: Any = None, *, dtypes: Sequence[str] = SWEEP,
                    rows: Sequence[str] = ("forward", "gradients"), device: str = "auto",
                    **options: Any) -> SweepReport:
    """Build the pair with ``factory(dtype=...)`` for each dtype and compare it (float leaves of ``inputs``
    and ``labels`` cast to that dtype; float64 on the CPU, the rest on ``device``). A dtype the factories
    cannot build (they return another dtype) or the torch model cannot run is skipped with the reason."""
    reports: dict[str, PortingReport] = {}
    skipped: dict[str, str] = {}
    keyword = options.pop("kwargs", None)
    for dtype in dtypes:
        if dtype not in NUMPY_DTYPES:
            raise ValueError(f"precision_sweep: unknown dtype {dtype!r}; expected some of {list(NUMPY_DTYPES)}")
        torch_model, flax_model = _build(torch_factory, dtype), _build(flax_factory, dtype)
        built = model_dtype(torch_model)
        if built != dtype:
            skipped[dtype] = (f"the torch factory returned a {built} model when asked for {dtype}: the model cannot "
                              f"run in {dtype} (make the factory take dtype= and build in it)")
            continue
        cast_inputs = Inputs.of(inputs, keyword).map(lambda a, d=dtype: _cast(a, d))
        try:
            reports[dtype] = compare_models(torch_model, flax_model, cast_inputs, _cast(labels, dtype), rows=rows,
                                            device="cpu" if dtype == "float64" else device, **options)
        except TypeError as err:
            if "cannot run in" not in str(err) and "dtype" not in str(err):
                raise
            skipped[dtype] = str(err).splitlines()[0]
    quantities = list(dict.fromkeys(r.quantity for rep in reports.values() for r in rep.rows))
    verdicts = {}
    for quantity in quantities:
        verdicts[quantity] = verdict({d: next((r for r in rep.rows if r.quantity == quantity), None)
                                      for d, rep in reports.items()})
    return SweepReport(reports, skipped, verdicts)
