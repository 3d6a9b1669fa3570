"""The distributed rows of the parity matrix: distributed meta-gradient == single-process, both backends."""

import pytest

from parity_tests import distributed


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_distributed_meta_gradient_rows(dtype: str) -> None:
    rows = distributed.rows(dtype)
    names = [r.quantity for r in rows]
    for backend, world, n in (("torch gloo", 2, 5), ("torch gloo", 4, 3), ("JAX mesh", 2, 5), ("JAX mesh", 4, 3)):
        for order in ("first", "second") if dtype == "float64" or backend == "torch gloo" else ("second",):
            assert any(backend in q and f"{world} " in q and f"{n} tasks" in q and f"{order} order" in q
                       for q in names), (backend, world, n, order)
    for r in rows:
        assert r.passed, f"{r.quantity} [{dtype}]: rel {r.rel:.3e} vs tolerance {r.tolerance:.1e}\n" + \
            r.comparison.report(r.tolerance)


def test_distributed_tolerances_are_the_contract() -> None:
    assert distributed.TOLERANCE == {"float64": 1e-12, "float32": 1e-5}
