"""The test suite's warnings policy (pyproject.toml): a FutureWarning or DeprecationWarning raised from
our own packages is an error; the same warning from a third-party module is only reported."""

import warnings

import pytest

OURS = ["torch_impl.meta_rl.meta_maml", "jax_impl.core.ssm", "shared.messages", "ssm_metarl.cli",
        "parity_tests.matrix", "benchmarks.harness", "examples.demo"]


def _warn_from(module: str, category: type[Warning]) -> None:
    warnings.warn_explicit("this will be an error in a later release", category, f"{module}.py", 1, module=module)


@pytest.mark.parametrize("category", [FutureWarning, DeprecationWarning])
@pytest.mark.parametrize("module", OURS)
def test_our_future_and_deprecation_warnings_fail(module, category):
    with pytest.raises(category):
        _warn_from(module, category)


@pytest.mark.parametrize("category", [FutureWarning, DeprecationWarning])
@pytest.mark.parametrize("module", ["jax._src.lax.slicing", "torch.nn.modules", "shared_thirdparty", "numpy"])
def test_third_party_warnings_are_reported_not_failed(module, category):
    with pytest.warns(category):
        _warn_from(module, category)


def test_jaxs_scatter_dtype_warning_fails_although_jax_raises_it():
    """JAX attributes it to its own scatter frame, but only a caller's dtype mismatch triggers it."""
    with pytest.raises(FutureWarning):
        warnings.warn_explicit("scatter inputs have incompatible types: cannot safely cast value from dtype=float64 "
                               "to dtype=float32", FutureWarning, "scatter.py", 105, module="jax._src.ops.scatter")
