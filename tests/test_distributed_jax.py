"""JAX scale-out on 4 forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``).

The flag must be set before JAX is imported, so :func:`test_four_device_suite` runs this module's
``test_on_4_devices_*`` tests in a fresh pytest subprocess with the flag set; in the normal run they
skip (one device).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jax_impl.core.params import to_canonical
from jax_impl.meta_rl.distributed import DistributedMetaMAML, WorkerFailure, make_mesh
from jax_impl.meta_rl.meta_maml import MetaMAML
from parity_tests.distributed import INNER_LR, INNER_STEPS, MLP_DIMS, OUTER_LR, make_mlp_tasks
from parity_tests.models import twin_mlps
from shared.compare import compare_trees

ROOT = Path(__file__).resolve().parents[1]
FOUR = len(jax.devices()) >= 4
needs_four = pytest.mark.skipif(not FOUR, reason="run by test_four_device_suite with 4 forced host devices")


def test_four_device_suite() -> None:
    if FOUR:
        pytest.skip("already on 4 devices")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__,
                             "-k", "on_4_devices", "--durations=0"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "skipped" not in result.stdout.splitlines()[-1], result.stdout[-2000:]
    print(result.stdout[-2000:])


def mlp_maml(dtype: str = "float64", seed: int = 0) -> MetaMAML:
    _, model = twin_mlps(MLP_DIMS[0], MLP_DIMS[1], MLP_DIMS[2], dtype, seed)
    return MetaMAML(model, INNER_LR, OUTER_LR, INNER_STEPS)


def params_of(maml: MetaMAML) -> dict:
    return to_canonical(nnx.state(maml.model, nnx.Param))


@needs_four
def test_on_4_devices_trajectory_matches_one_device() -> None:
    """5 tasks on 4 devices (padded to 8), 3 Adam steps, checksum checked every step == 1 device."""
    tasks = make_mlp_tasks(5, "float64", seed=1)
    single, sharded_maml = mlp_maml(), mlp_maml()
    sharded = DistributedMetaMAML(sharded_maml, make_mesh(4), check_every=1)
    single_losses = [single.meta_update(tasks) for _ in range(3)]
    sharded_losses = [sharded.meta_update(tasks) for _ in range(3)]
    comparison = compare_trees({"params": params_of(sharded_maml), "losses": np.array(sharded_losses)},
                               {"params": params_of(single), "losses": np.array(single_losses)})
    assert comparison.passes(1e-9), comparison.report(1e-9)
    assert sharded.steps == 3


@needs_four
def test_on_4_devices_the_task_axis_is_really_sharded() -> None:
    sharded = DistributedMetaMAML(mlp_maml(), make_mesh(4))
    tasks = make_mlp_tasks(5, "float64")
    loss, _ = sharded.value_and_meta_gradient(tasks)
    assert len(loss.sharding.device_set) == 4  # replicated result on every device
    arguments = sharded._arguments(tasks)
    weights = arguments[3]
    assert [s.data.shape for s in weights.addressable_shards] == [(2,)] * 4  # 5 tasks padded to 8
    np.testing.assert_array_equal(np.asarray(weights), [0.2] * 5 + [0.0] * 3)
    shard_shapes = {s.data.shape[0] for s in jax.tree.leaves(arguments[2])[0].addressable_shards}
    assert shard_shapes == {2}
    hlo = sharded._value_and_grad.lower(*arguments).compile().as_text()
    assert "all-reduce" in hlo


@needs_four
def test_on_4_devices_resume_with_a_different_mesh() -> None:
    """2 steps on 4 devices, state saved, 2 more on 2 devices == 4 uninterrupted steps on 4 devices."""
    tasks = make_mlp_tasks(5, "float64", seed=2)
    uninterrupted = mlp_maml()
    run = DistributedMetaMAML(uninterrupted, make_mesh(4))
    for _ in range(4):
        run.meta_update(tasks)
    first = mlp_maml()
    first_run = DistributedMetaMAML(first, make_mesh(4))
    for _ in range(2):
        first_run.meta_update(tasks)
    saved_params = jax.tree.map(np.asarray, nnx.state(first.model, nnx.Param))
    saved_opt = jax.tree.map(np.asarray, first.opt_state)
    resumed = mlp_maml(seed=7)  # other weights: everything must come from the saved state
    nnx.update(resumed.model, jax.tree.map(jax.numpy.asarray, saved_params))
    resumed.opt_state = jax.tree.map(jax.numpy.asarray, saved_opt)
    second_run = DistributedMetaMAML(resumed, make_mesh(2))
    for _ in range(2):
        second_run.meta_update(tasks)
    comparison = compare_trees(params_of(resumed), params_of(uninterrupted))
    assert comparison.passes(1e-9), comparison.report(1e-9)


@needs_four
def test_on_4_devices_bad_input() -> None:
    import torch

    sharded = DistributedMetaMAML(mlp_maml(), make_mesh(4))
    tasks = make_mlp_tasks(3, "float64")
    with pytest.raises(TypeError, match="jax or numpy array"):
        sharded.value_and_meta_gradient([tuple(torch.from_numpy(a) for a in tasks[0])])
    with pytest.raises(TypeError, match="dtype float64"):
        sharded.value_and_meta_gradient([tuple(a.astype("float32") for a in tasks[0])])
    with pytest.raises(ValueError, match="same structure and shapes"):
        sharded.value_and_meta_gradient([tasks[0], tuple(a[:5] for a in tasks[1])])
    with pytest.raises(ValueError, match="non-empty"):
        sharded.value_and_meta_gradient([])
    with pytest.raises(ValueError, match="workers must be an integer in"):
        make_mesh(5)
    with pytest.raises(ValueError, match="'tasks' axis"):
        DistributedMetaMAML(mlp_maml(), jax.sharding.Mesh(np.array(jax.devices()), ("data",)))
    bad = [tuple(np.full_like(a, np.nan) if i == 1 else a for i, a in enumerate(tasks[0]))]
    with pytest.raises(ValueError, match="task 0 support_y contains NaN"):
        sharded.meta_update(bad)
    before = params_of(sharded.maml)
    _, grads = sharded.value_and_meta_gradient(tasks)
    with pytest.raises(ValueError, match="not changed"):
        sharded.apply_meta_gradient(jax.tree.map(lambda g: g * np.inf, grads))
    assert compare_trees(params_of(sharded.maml), before).max_abs == 0.0


@needs_four
def test_on_4_devices_sync_check_detects_divergence(monkeypatch: pytest.MonkeyPatch) -> None:
    from jax.experimental import multihost_utils

    sharded = DistributedMetaMAML(mlp_maml(), make_mesh(4), check_every=1)
    sharded.check_in_sync()  # one process: agrees with itself
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.array([[1], [2]], np.uint64))
    with pytest.raises(WorkerFailure, match="diverged"):
        sharded.check_in_sync()


@needs_four
def test_on_4_devices_local_api_in_one_process() -> None:
    """One process holds every task: the local API is the whole-batch API, and it checks the count."""
    sharded = DistributedMetaMAML(mlp_maml(), make_mesh(4))
    assert (sharded.rank, sharded.world_size, sharded.devices) == (0, 1, 4)
    tasks = make_mlp_tasks(5, "float64")
    loss, grads = sharded.local_value_and_meta_gradient(tasks, expected_total=5)
    reference_loss, reference = sharded.maml.value_and_meta_gradient(tasks)
    comparison = compare_trees({"loss": loss, **to_canonical(grads)},
                               {"loss": reference_loss, **to_canonical(reference)})
    assert comparison.passes(1e-12), comparison.report(1e-12)
    with pytest.raises(WorkerFailure, match="disagree"):
        sharded.local_value_and_meta_gradient(tasks, expected_total=6)
    assert sharded.reduce_sum([1.5, 2.0]) == [1.5, 2.0]


@needs_four
def test_on_4_devices_maml_rl_sharded_equals_one_device() -> None:
    """The sharded MAML-RL iteration with the JAX backend (meta-gradient over 4 devices, 3 tasks, so one
    device holds only padding) gives the numbers of the same loop on one device."""
    from shared.env_runner import MetaEnvironment
    from ssm_metarl import scaleout, train

    config = train.TrainConfig(backend="jax", task="nav2d", meta_batch=3, episodes=2, iterations=1, rollouts="runner",
                               state_dim=4, hidden_dim=8)
    distribution = MetaEnvironment(config.task).distribution
    runs = {}
    for name in ("one device", "4 devices"):
        learner = train.make_learner(config, distribution, train.initial_weights(config, distribution))
        meta_env = MetaEnvironment(distribution, seed=config.seed)
        workers = (scaleout.SingleWorker(learner.maml) if name == "one device"
                   else DistributedMetaMAML(learner.maml, make_mesh(4), check_every=1))
        metrics = [scaleout.sharded_meta_iteration(learner, workers, meta_env, config.meta_batch, config.episodes)
                   for _ in range(config.iterations)]
        runs[name] = {"metrics": {k: np.array([m[k] for m in metrics]) for k in metrics[0]},
                      "weights": learner.canonical_weights()}
    comparison = compare_trees(runs["4 devices"], runs["one device"])
    assert comparison.passes(1e-5), comparison.report(1e-5)  # float32 policy
