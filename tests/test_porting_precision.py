"""Precision in the porting kit: the bit-exact bfloat16 bridge, half-precision pairs on their profile,
named tolerance profiles with overrides, the precision sweep's verdict, and a bf16 request on a model
that cannot run in bf16."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
import torch

from examples.porting import broken_gelu
from shared.contract import PROFILES, TOLERANCES, tolerances
from ssm_metarl.porting import compare_models, precision_sweep
from ssm_metarl.porting.precision import numpy_to_torch, torch_to_numpy
from tests import porting_pairs


def test_bfloat16_bridge_is_bit_exact_both_ways() -> None:
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    values = bits.view(torch.bfloat16)
    array = torch_to_numpy(values)
    assert array.dtype == ml_dtypes.bfloat16
    assert torch.equal(numpy_to_torch(array).view(torch.int16), bits)
    half = torch.randn(5, dtype=torch.float16)
    assert torch.equal(numpy_to_torch(torch_to_numpy(half)), half)


def test_profiles_hold_the_contract_and_overrides_apply() -> None:
    assert PROFILES["float64"] == TOLERANCES["float64"] and PROFILES["float32"] == TOLERANCES["float32"]
    assert PROFILES["bfloat16"]["outputs"] > PROFILES["float16"]["outputs"] > PROFILES["float32"]["outputs"]
    assert tolerances("float32", {"outputs": 1e-6})["outputs"] == 1e-6
    with pytest.raises(ValueError, match="unknown tolerance kind 'output'"):
        tolerances("float32", {"output": 1e-6})
    with pytest.raises(ValueError, match="no tolerance profile for dtype 'int8'"):
        tolerances("int8")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_pair_passes_on_its_profile(dtype: str) -> None:
    x = np.random.default_rng(0).normal(size=(4, porting_pairs.D_IN)).astype(ml_dtypes.bfloat16 if dtype == "bfloat16"
                                                                             else np.float16)
    report = compare_models(porting_pairs.tanh_mlp_torch(dtype), porting_pairs.tanh_mlp_flax(dtype), x,
                            rows=("weights", "forward", "gradients"))
    assert report.passed, report.table()
    assert {r.dtype for r in report.rows} == {dtype}
    assert next(r for r in report.rows if r.quantity == "forward").tolerance == PROFILES[dtype]["outputs"]


def test_a_user_override_can_make_a_row_strict_enough_to_fail() -> None:
    x = np.random.default_rng(0).normal(size=(4, porting_pairs.D_IN)).astype(ml_dtypes.bfloat16)
    report = compare_models(porting_pairs.tanh_mlp_torch("bfloat16"), porting_pairs.tanh_mlp_flax("bfloat16"), x,
                            rows=("forward",), tolerances_override={"outputs": 1e-12})
    assert report.rows[0].tolerance == 1e-12


def test_sweep_calls_a_float64_mismatch_a_bug() -> None:
    sweep = precision_sweep(broken_gelu.torch_model, broken_gelu.flax_model, broken_gelu.example_inputs("float64"),
                            dtypes=("float64", "float32"), rows=("forward",))
    assert sweep.bug
    assert sweep.verdicts["forward"].startswith("bug: differs in float64")
    assert "verdict: a bug" in sweep.table()


def test_sweep_calls_an_error_that_shrinks_with_precision_rounding() -> None:
    # float32 at a float64-grade tolerance fails; float64 agrees: rounding, not a bug.
    sweep = precision_sweep(porting_pairs.tanh_mlp_torch, porting_pairs.tanh_mlp_flax,
                            np.random.default_rng(0).normal(size=(4, porting_pairs.D_IN)), rows=("forward",),
                            tolerances_override={"outputs": 1e-12})
    assert not sweep.bug
    assert set(sweep.reports) == {"float64", "float32", "bfloat16"}
    assert sweep.verdicts["forward"].startswith("rounding: agrees in float64"), sweep.table()


def test_a_bf16_request_on_a_model_that_cannot_run_bf16_says_so() -> None:
    sweep = precision_sweep(porting_pairs.float32_only_torch, porting_pairs.float32_only_flax,
                            np.zeros((2, porting_pairs.D_IN)), dtypes=("float32", "bfloat16"), rows=("forward",))
    assert "bfloat16" in sweep.skipped and "cannot run in bfloat16" in sweep.skipped["bfloat16"]
    assert "not run in bfloat16" in sweep.table()
