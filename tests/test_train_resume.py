"""Interrupted-then-resumed training ends bit-identical to an uninterrupted run, and never mixes run directories."""

import json
import signal

import numpy as np
import pytest

from shared.weights import load_weights
from ssm_metarl import checkpoint
from ssm_metarl.rundir import staging_dir
from ssm_metarl.train import TrainConfig, TrainingInterrupted, train

TINY = {"task": "nav2d", "iterations": 3, "meta_batch": 2, "episodes": 2, "state_dim": 4, "hidden_dim": 8,
        "eval_tasks": 2, "eval_episodes": 1}


def interrupt_after(k):
    """An ``on_iteration`` hook that presses Ctrl-C (a real SIGINT) after iteration ``k``."""
    def hook(iteration):
        if iteration == k:
            signal.raise_signal(signal.SIGINT)
    return hook


def snapshot(directory):
    tensors, _ = load_weights(directory / "checkpoint.safetensors")
    metrics = json.loads((directory / "metrics.json").read_text())["iterations"]
    evaluation = json.loads((directory / "evaluation.json").read_text())
    numbers = {k: v for k, v in evaluation.items() if k.startswith("after_")}
    return tensors, [{k: v for k, v in m.items() if k != "seconds"} for m in metrics], numbers


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_interrupted_and_resumed_run_is_bit_identical(tmp_path, backend):
    config = TrainConfig(backend=backend, **TINY)
    output = tmp_path / "run"
    train(config, output, checkpoint_every=1)
    reference = snapshot(output)
    before = {p.name: p.read_bytes() for p in output.iterdir()}

    # a second run into the same directory, interrupted after its first iteration
    with pytest.raises(TrainingInterrupted) as interrupted:
        train(config, output, overwrite=True, checkpoint_every=100, on_iteration=interrupt_after(0))
    assert interrupted.value.iteration == 1
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before  # the old run, untouched
    state = checkpoint.load(staging_dir(output) / checkpoint.RESUME_FILE)
    assert state.iteration == 1 and len(state.metrics) == 1 and state.optimizer

    train(config, output, resume=True)
    tensors, metrics, numbers = snapshot(output)
    assert metrics == reference[1] and numbers == reference[2]
    assert tensors.keys() == reference[0].keys()
    for name in tensors:
        np.testing.assert_array_equal(tensors[name], reference[0][name], err_msg=name)
    assert not staging_dir(output).exists() and not (output / checkpoint.RESUME_FILE).exists()


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_periodic_checkpoint(tmp_path):
    def press_twice(iteration):
        if iteration == 1:
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)

    output = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job without job control
    with pytest.raises(KeyboardInterrupt) as err:
        train(TrainConfig(backend="torch", **TINY), output, checkpoint_every=1, on_iteration=press_twice)
    assert not isinstance(err.value, TrainingInterrupted) and not output.exists()
    assert checkpoint.load(staging_dir(output) / checkpoint.RESUME_FILE).iteration == 1
    assert signal.getsignal(signal.SIGINT) is before  # the handler is put back
