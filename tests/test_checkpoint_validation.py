"""A bad checkpoint gets the same clear message in both backends, before any evaluation runs."""

import dataclasses

import numpy as np
import pytest

from shared.env_runner import get_distribution
from shared.weights import check_weights, save_weights
from ssm_metarl.train import TrainConfig, evaluate_checkpoint, expected_layout, initial_weights

CONFIG = TrainConfig(task="nav2d", state_dim=4, hidden_dim=8, eval_tasks=1, eval_episodes=1)


def write_checkpoint(path, change):
    weights = initial_weights(CONFIG, get_distribution("nav2d"))
    change(weights)
    save_weights(path, weights, {"train": dataclasses.asdict(CONFIG)})
    return path


def nan_weight(w):
    w["ssm.W1.weight"][0, 0] = np.nan


def int_weights(w):
    for name in w:
        w[name] = w[name].astype(np.int64)


def wrong_shape(w):
    w["ssm.B.weight"] = np.zeros((5, 2), np.float32)


def missing_and_extra(w):
    del w["log_std"]
    w["ssm.extra"] = np.zeros(3, np.float32)


@pytest.mark.parametrize("change, message", [
    (nan_weight, r"non-finite \(NaN or Inf\) weights in ssm.W1.weight \(1 of 32 values\)"),
    (int_weights, r"wrong dtypes \[log_std: expected float32, got int64"),
    (wrong_shape, r"wrong shapes \[ssm.B.weight: expected \(4, 2\), got \(5, 2\)\]"),
    (missing_and_extra, r"missing keys \['log_std'\], unexpected keys \['ssm.extra'\]"),
])
def test_both_backends_refuse_a_bad_checkpoint_alike(tmp_path, change, message):
    path = write_checkpoint(tmp_path / "checkpoint.safetensors", change)
    errors = []
    for backend in ("torch", "jax"):
        with pytest.raises(ValueError, match=message) as err:
            evaluate_checkpoint(path, backend, tmp_path / "eval")
        errors.append(str(err.value))
    assert errors[0] == errors[1]
    assert not (tmp_path / "eval").exists()


def test_a_good_layout_passes_and_the_expected_layout_is_the_policys():
    layout = expected_layout(CONFIG, get_distribution("nav2d"))
    assert layout["ssm.B.weight"] == ((4, 2), "float32") and "log_std" in layout
    check_weights(initial_weights(CONFIG, get_distribution("nav2d")), layout)


def test_evaluate_checks_its_output_before_loading_or_computing(tmp_path):
    path = write_checkpoint(tmp_path / "checkpoint.safetensors", lambda w: None)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is an existing file; expected a directory"):
        evaluate_checkpoint(path, "torch", tmp_path / "file")
    with pytest.raises(ValueError, match=r"is a directory; expected a \.safetensors weight file"):
        evaluate_checkpoint(tmp_path, "torch", tmp_path / "eval")
