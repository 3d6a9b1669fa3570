"""CI smoke tests of ``ssm-metarl train``/``evaluate`` with reduced batches (no timing, no target numbers)."""

import json

import numpy as np
import pytest

from ssm_metarl.cli import main
from ssm_metarl.train import TrainConfig, evaluate_checkpoint, train

SMALL = {"meta_batch": 10, "episodes": 10, "eval_tasks": 8, "eval_episodes": 10}


@pytest.mark.parametrize("backend, iterations", [("jax", 40), ("torch", 40)])
def test_nav2d_training_gives_a_positive_adaptation_gain(tmp_path, backend, iterations):
    report = train(TrainConfig(backend=backend, task="nav2d", iterations=iterations, **SMALL), tmp_path)
    assert report["after_1_steps"]["mean"] > report["after_0_steps"]["mean"]
    for name in ("config.toml", "metrics.json", "metrics.csv", "evaluation.json", "checkpoint.safetensors",
                 "learning_curve.png", "adaptation.png"):
        assert (tmp_path / name).is_file(), name
    metrics = json.loads((tmp_path / "metrics.json").read_text())["iterations"]
    assert len(metrics) == iterations and {"pre_return", "post_return", "loss"} <= set(metrics[0])
    assert len((tmp_path / "metrics.csv").read_text().splitlines()) == iterations + 1


@pytest.mark.parametrize("task", ["bandit", "cartpole", "pendulum"])
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_every_task_family_trains_in_both_backends(tmp_path, task, backend):
    config = TrainConfig(backend=backend, task=task, iterations=2, meta_batch=2, episodes=2, eval_tasks=2,
                         eval_episodes=2)
    report = train(config, tmp_path)
    values = [report[f"after_{k}_steps"]["mean"] for k in range(4)] + [report["after_adapter"]["mean"]]
    assert np.isfinite(values).all()
    if task == "bandit":
        assert report["random_policy_regret"] > 0


def test_evaluate_a_checkpoint_in_the_other_backend(tmp_path):
    train(TrainConfig(backend="jax", task="nav2d", iterations=3, **SMALL), tmp_path / "run")
    report = evaluate_checkpoint(tmp_path / "run" / "checkpoint.safetensors", "torch", tmp_path / "eval")
    assert report["config"]["backend"] == "torch"
    assert (tmp_path / "eval" / "evaluation_torch.json").is_file()


def test_train_cli_and_its_errors(tmp_path, capsys):
    assert main(["train", "--backend", "jax", "--iterations", "1", "--meta-batch", "2", "--episodes", "2",
                 "--eval-tasks", "2", "--seeds", "0", "1", "--output", str(tmp_path)]) == 0
    assert (tmp_path / "summary.json").is_file() and (tmp_path / "seed_1" / "evaluation.json").is_file()
    assert main(["evaluate", str(tmp_path / "missing.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--task", "mars"])
