"""shared/: config validation, the pytree comparison, layout checks, task sampling."""

import numpy as np
import pytest

from shared.compare import compare_trees
from shared.config import MetaConfig, SSMConfig
from shared.layout import check_layout
from shared.tasks import SinusoidTasks


def test_config_round_trips_through_dict():
    config = SSMConfig(4, 3, 2, 5, r_min=0.5, r_max=0.9)
    assert SSMConfig.from_dict(config.to_dict()) == config
    assert MetaConfig.from_dict({"inner_lr": 0.1}).inner_lr == 0.1


def test_unknown_config_keys_are_named():
    with pytest.raises(ValueError, match=r"unknown SSMConfig field\(s\) \['stat_dim'\]"):
        SSMConfig.from_dict({"stat_dim": 4, "input_dim": 3, "output_dim": 2, "hidden_dim": 5})
    with pytest.raises(TypeError, match="mapping"):
        MetaConfig.from_dict([("inner_lr", 0.1)])


def test_comparison_reports_errors_per_leaf():
    a = {"w": np.array([1.0, 2.0, 4.0]), "b": np.zeros(2)}
    b = {"w": np.array([1.0, 2.0, 4.0 + 4e-9]), "b": np.zeros(2)}
    result = compare_trees(a, b)
    assert result.max_abs == pytest.approx(4e-9)
    assert result.rel == pytest.approx(1e-9, rel=1e-6)
    assert result.passes(1e-8)
    assert not result.passes(1e-10)
    assert "w" in result.report(1e-10) and "NO" in result.report(1e-10)


def test_exact_tolerance_means_bit_equal():
    assert compare_trees(np.ones(3), np.ones(3)).passes(0.0)
    assert not compare_trees(np.ones(3), np.nextafter(np.ones(3), 2)).passes(0.0)


def test_nan_positions_must_match():
    assert compare_trees(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])).passes(1e-12)
    assert not compare_trees(np.array([np.nan, 1.0]), np.array([1.0, np.nan])).passes(1e-12)
    assert not compare_trees(np.array([np.inf, 1.0]), np.array([-np.inf, 1.0])).passes(1e-12)


def test_structure_and_shape_mismatch_are_errors():
    with pytest.raises(ValueError, match="only in actual"):
        compare_trees({"a": np.ones(1)}, {"b": np.ones(1)})
    with pytest.raises(ValueError, match="shapes differ"):
        compare_trees({"a": np.ones(1)}, {"a": np.ones(2)})


def test_check_layout_lists_everything():
    with pytest.raises(ValueError, match=r"missing keys \['b'\], unexpected keys \['c'\], wrong shapes \[a"):
        check_layout({"a": np.zeros(2), "c": np.zeros(1)}, {"a": (3,), "b": (1,)})


def test_held_out_tasks_are_fixed():
    tasks = SinusoidTasks()
    first, second = tasks.held_out(3), tasks.held_out(3)
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    sx, sy, _qx, _qy = first[0]
    assert sx.shape == (10, 16, 1) and sy.dtype == np.float32
    assert np.all(np.diff(sx[..., 0], axis=1) >= 0)
