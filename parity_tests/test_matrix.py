"""Every row of the parity matrix, in float64 and float32, at ARCHITECTURE.md section 5's tolerances."""

import pytest

from parity_tests.matrix import CASES, TOLERANCES, Setup, Sizes


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_case(case: str, dtype: str) -> None:
    rows = CASES[case](Setup(dtype, Sizes()))
    contract_key = {"meta_update_trajectories": "meta_update", "adapter_trajectories": "adapter",
                    "adapter_tent_batchnorm": "adapter", "adapter_ema_tent_batchnorm": "adapter",
                    "rl_losses": "rl", "incontext_losses": "rl"}.get(case)
    if contract_key is not None and TOLERANCES[dtype][contract_key] is None:
        assert rows == []
        return
    assert rows, f"{case} produced no rows"
    for r in rows:
        detail = r.comparison.report(r.tolerance) if r.comparison is not None else ""
        assert r.passed, f"{r.quantity} [{dtype}]: rel {r.rel:.3e} vs tolerance {r.tolerance:.1e}\n{detail}"


def test_tolerances_are_the_contract() -> None:
    assert TOLERANCES["float64"] == {"weights": 0.0, "outputs": 1e-10, "gradients": 1e-9, "adapted": 1e-9,
                                     "meta_gradient": 1e-8, "meta_update": 1e-9, "adapter": 1e-9, "pg_loss": 1e-10,
                                     "rl": 1e-9}
    assert TOLERANCES["float32"]["outputs"] == 1e-5
    assert TOLERANCES["float32"]["gradients"] == 1e-4
    assert TOLERANCES["float32"]["adapted"] == 1e-4
    assert TOLERANCES["float32"]["meta_gradient"] == 1e-3
