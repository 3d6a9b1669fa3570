"""torch.distributed scale-out: real gloo processes on localhost (the environment torchrun sets).

The 2-rank launch (``parity_tests.distributed.torch_results``) is shared with the parity rows; here
it is checked for what the parity rows do not cover: every rank holds bit-identical parameters after
each step (the checksum check ran every step), the trajectory equals a single-process run, resuming
the 2-rank checkpoint with 1 worker equals the uninterrupted run, and faults end in a clear error.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import torch

from parity_tests import distributed as harness
from shared.compare import compare_trees
from shared.scaleout import padded_size, task_counts, task_slice
from torch_impl.core.ssm import SSM
from torch_impl.meta_rl.distributed import DistributedMetaMAML, init_distributed, parameter_checksum
from torch_impl.meta_rl.meta_maml import MetaMAML


def test_task_split_arithmetic() -> None:
    assert task_counts(5, 2) == [3, 2]
    assert task_counts(3, 4) == [1, 1, 1, 0]
    assert [task_slice(5, r, 2) for r in range(2)] == [slice(0, 3), slice(3, 5)]
    assert task_slice(3, 3, 4) == slice(3, 3)
    assert padded_size(5, 2) == 6 and padded_size(5, 4) == 8 and padded_size(4, 4) == 4
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_tasks must be a positive integer"):
            task_counts(bad, 2)
    with pytest.raises(ValueError, match="rank must be an integer in"):
        task_slice(5, 2, 2)


def test_needs_an_initialised_process_group(monkeypatch: pytest.MonkeyPatch) -> None:
    maml = MetaMAML(SSM(*harness.SSM_DIMS, "cpu", dtype=torch.float64))
    with pytest.raises(ValueError, match="call init_distributed"):
        DistributedMetaMAML(maml)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        init_distributed()
    with pytest.raises(TypeError, match="torch_impl MetaMAML"):
        DistributedMetaMAML(object())


def single_process_trajectory(steps: int) -> tuple[MetaMAML, list[float]]:
    torch.manual_seed(0)
    maml = MetaMAML(SSM(*harness.SSM_DIMS, "cpu", dtype=torch.float64), harness.INNER_LR, harness.OUTER_LR,
                    harness.INNER_STEPS)
    tasks = [tuple(torch.from_numpy(a) for a in task) for task in harness.make_tasks(harness.TRAJECTORY_TASKS,
                                                                                      "float64", seed=1)]
    return maml, [maml.meta_update(tasks) for _ in range(steps)]


def test_two_ranks_stay_identical_and_match_one_process() -> None:
    results = harness.torch_results(2)
    rank0, rank1 = results[0]["trajectory"], results[1]["trajectory"]
    assert rank0["checksum"] == rank1["checksum"] == parameter_checksum_of(rank0["params"])
    for name in rank0["params"]:
        assert torch.equal(rank0["params"][name], rank1["params"][name]), name
    assert rank0["losses"] == rank1["losses"]
    steps = harness.STEPS_BEFORE_SAVE + harness.STEPS_AFTER_SAVE
    maml, losses = single_process_trajectory(steps)
    comparison = compare_trees({"params": dict(maml.model.state_dict()), "losses": torch.tensor(losses)},
                               {"params": rank0["params"], "losses": torch.tensor(rank0["losses"])})
    assert comparison.passes(1e-9), comparison.report(1e-9)  # section 5: N meta_update steps, rtol 1e-9


def parameter_checksum_of(state: dict) -> int:
    model = SSM(*harness.SSM_DIMS, "cpu", dtype=torch.float64)
    model.load_state_dict(state)
    return parameter_checksum(model)


def test_resume_a_two_rank_checkpoint_with_one_worker() -> None:
    """State saved after 2 steps on 2 ranks, continued on 1 worker == the uninterrupted 2-rank run."""
    results = harness.torch_results(2)
    checkpoint = torch.load(results["dir"] / "checkpoint.pt")
    torch.manual_seed(123)  # a different initialisation: everything must come from the checkpoint
    maml = MetaMAML(SSM(*harness.SSM_DIMS, "cpu", dtype=torch.float64), harness.INNER_LR, harness.OUTER_LR,
                    harness.INNER_STEPS)
    maml.model.load_state_dict(checkpoint["model"])
    maml.optimizer.load_state_dict(checkpoint["optimizer"])
    tasks = [tuple(torch.from_numpy(a) for a in task) for task in harness.make_tasks(harness.TRAJECTORY_TASKS,
                                                                                      "float64", seed=1)]
    losses = [maml.meta_update(tasks) for _ in range(harness.STEPS_AFTER_SAVE)]
    uninterrupted = results[0]["trajectory"]
    comparison = compare_trees(
        {"params": dict(maml.model.state_dict()), "losses": torch.tensor(losses)},
        {"params": uninterrupted["params"],
         "losses": torch.tensor(uninterrupted["losses"][harness.STEPS_BEFORE_SAVE:])})
    assert comparison.passes(1e-9), comparison.report(1e-9)


def run_fault(scenario: str, wait_s: float = 90.0) -> tuple[float, str, list[subprocess.Popen]]:
    out = Path(tempfile.mkdtemp(prefix=f"ssm_metarl_fault_{scenario}_"))
    procs = harness.start_torch(2, ["parity_tests.distributed", "torch-fault", str(out), scenario],
                                {"SSM_METARL_TEST_TIMEOUT": "5"})
    try:
        procs[0].wait(timeout=wait_s)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.communicate()
    report = (out / "fault_rank0.txt").read_text() if (out / "fault_rank0.txt").exists() else "0\nno report"
    seconds, outcome = report.split("\n", 1)
    return float(seconds), outcome, procs


@pytest.mark.parametrize("scenario", ["die", "hang"])
def test_a_lost_worker_ends_the_others_with_a_clear_error(scenario: str) -> None:
    start = time.monotonic()
    seconds, outcome, procs = run_fault(scenario)
    assert procs[0].returncode == 3, outcome
    assert outcome.startswith("WorkerFailure: rank 0/2: all_reduce failed; another worker died"), outcome
    assert seconds < 30, f"rank 0 needed {seconds:.1f} s to notice (collective timeout 5 s)"
    assert time.monotonic() - start < 90


def test_ranks_with_different_meta_batches_all_fail() -> None:
    results = harness.torch_results(2)
    for rank in range(2):
        assert results[rank]["disagree"].startswith("WorkerFailure: ranks disagree on the meta-batch"), rank


def test_bad_input_on_one_rank_fails_every_rank_at_once() -> None:
    results = harness.torch_results(2)
    assert "contains NaN" in results[1]["bad_slice"], results[1]["bad_slice"]  # its own, original error
    assert "1 other rank(s) could not compute their slice" in results[0]["bad_slice"], results[0]["bad_slice"]
    for rank in range(2):  # nothing changed
        assert results[rank]["after_bad_slice"] == results[rank]["trajectory"]["checksum"]
