"""What a run report needs to be read alone: versions, commit, UTC time, machine, and what "return" means."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

PACKAGES = ("torch", "jax", "flax", "optax", "gymnasium", "numpy")

RETURN_MEANING = {
    "nav2d": "return: the sum of the rewards of one 100-step episode (reward = minus the distance to the goal), "
             "averaged over episodes and tasks; higher is better, 0 is the best possible",
    "bandit": "return: the number of successful pulls in one trial of 100 pulls, averaged over trials and tasks; "
              "regret = 100 x the best arm's mean minus the return",
    "cartpole": "return: the number of steps the pole stays up in one episode (reward 1 per step), averaged over "
                "episodes and tasks",
    "pendulum": "return: the sum of the (negative) Pendulum rewards of one episode, averaged over episodes and "
                "tasks; higher is better",
}


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The source tree's commit (with ``-dirty`` when it has uncommitted changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device(backend: str) -> str:
    """The device the backend computes on (train and evaluate run on the CPU)."""
    if backend == "jax":
        import jax

        return str(jax.devices("cpu")[0])
    return "cpu"


def run_info(backend: str) -> dict[str, Any]:
    """Versions, project version and commit, UTC timestamp and machine of this process."""
    import torch

    info = {
        "timestamp_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "ssm_metarl": _version("ssm-metarl"),
        "git_commit": git_commit(),
        "python": platform.python_version(),
        **{package: _version(package) for package in PACKAGES},
        "machine": {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "device": device(backend)},
        "command": " ".join(["ssm-metarl", *sys.argv[1:]]) if Path(sys.argv[0]).name in ("ssm-metarl", "cli.py")
        else None,
    }
    return {key: value for key, value in info.items() if value is not None}  # drop what is not known
