"""``train --config``: flags override the file, and a run's config.toml repeats the run exactly."""

import json

import numpy as np
import pytest

from shared.weights import load_weights
from ssm_metarl.cli import main
from ssm_metarl.config_file import dumps_toml, read_toml
from ssm_metarl.train import TrainConfig, resolve_configs

FLAGS = ["--iterations", "2", "--meta-batch", "2", "--episodes", "2", "--state-dim", "4", "--hidden-dim", "8",
         "--eval-tasks", "2", "--eval-episodes", "1", "--inner-lr", "0.07", "--outer-lr", "0.002",
         "--init-log-std", "-0.3", "--seeds", "3"]


def test_flags_override_the_file_and_missing_fields_take_the_defaults():
    configs = resolve_configs({"iterations": 7, "meta_batch": 3, "seeds": [1, 2]}, {"meta_batch": 5})
    assert [c.seed for c in configs] == [1, 2]
    assert configs[0] == TrainConfig(iterations=7, meta_batch=5, seed=1)


def test_toml_text_reads_back_exactly(tmp_path):
    values = {"backend": "jax", "inner_lr": 0.1 + 0.2, "outer_lr": 3e-3, "r_min": 1 / 3, "rollouts": "runner",
              "seeds": [0, 5]}
    (tmp_path / "c.toml").write_text(dumps_toml(values))
    assert read_toml(tmp_path / "c.toml") == values
    with pytest.raises(ValueError, match="finite"):
        dumps_toml({"inner_lr": float("nan")})


def test_config_toml_repeats_the_run_exactly(tmp_path, capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["train", *FLAGS, "--output", str(first)]) == 0
    out = capsys.readouterr()
    assert "ETA" in out.err and "it/s" in out.err  # the progress bar
    assert "torch.compile" in out.out  # the compile line
    written = read_toml(first / "config.toml")
    assert written["seeds"] == [3] and written["inner_lr"] == 0.07 and written["init_log_std"] == -0.3
    assert written["rollouts"] == "native"  # the task's default, resolved
    assert main(["train", "--config", str(first / "config.toml"), "--output", str(second)]) == 0
    assert read_toml(second / "config.toml") == written
    a, _ = load_weights(first / "checkpoint.safetensors")
    b, _ = load_weights(second / "checkpoint.safetensors")
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    strip = lambda path: [{k: v for k, v in m.items() if k != "seconds"}  # noqa: E731
                          for m in json.loads(path.read_text())["iterations"]]
    assert strip(first / "metrics.json") == strip(second / "metrics.json")

    # the reports stand alone
    report = json.loads((first / "evaluation.json").read_text())
    for key in ("python", "torch", "jax", "flax", "optax", "gymnasium", "ssm_metarl", "timestamp_utc"):
        assert key in report["run"], key
    assert {"cpu", "cpu_count", "torch_threads", "device"} <= set(report["run"]["machine"])
    assert report["return"].startswith("return: the sum of the rewards")
    assert report["config"]["rollouts"] == "native"

    # evaluate in the other backend writes its own files and overwrites none of the run's
    before = {p.name: p.read_bytes() for p in first.iterdir()}
    assert main(["evaluate", str(first / "checkpoint.safetensors"), "--backend", "jax"]) == 0
    assert "with the jax backend" in capsys.readouterr().out
    after = {p.name: p.read_bytes() for p in first.iterdir()}
    assert set(after) - set(before) == {"evaluation_jax.json", "adaptation_jax.png"}
    assert all(after[name] == content for name, content in before.items())
    evaluation = json.loads((first / "evaluation_jax.json").read_text())
    assert evaluation["config"]["backend"] == "jax" and evaluation["config"]["rollouts"] == "native"
