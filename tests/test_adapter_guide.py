"""The Adapter guide's worked examples run as written and do what the guide says: TENT lowers the
entropy in both backends, and adapting a meta-trained SSM to a shifted task lowers the query MSE by
the same amount in PyTorch and JAX (same weights file)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "guides" / "adapter.md"


def run_example(name: str, cwd: Path) -> str:
    block = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", GUIDE.read_text(), re.S)
    assert block, f"the Adapter guide has no {name} example"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, wherever the venv points
    result = subprocess.run([sys.executable, "-c", block.group(1)], cwd=cwd, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tent_example_lowers_the_entropy_in_both_backends(tmp_path):
    lines = [line for line in run_example("tent", tmp_path).splitlines() if "entropy" in line]
    assert [line.split(":")[0] for line in lines] == ["torch", "jax"]
    for line in lines:
        before, after = (float(v) for v in re.findall(r"\d+\.\d+", line))
        assert after < before, line  # entropy minimisation lowers the entropy


def test_adapter_example_gives_the_same_result_in_both_backends(tmp_path):
    lines = [line for line in run_example("adapter", tmp_path).splitlines() if "query MSE" in line]
    assert [line.split(":")[0] for line in lines] == ["torch", "jax"]
    numbers = [[float(v) for v in re.findall(r"\d+\.\d+", line)] for line in lines]
    for before, after, _ in numbers:
        assert after < before
    np.testing.assert_allclose(numbers[1], numbers[0], rtol=1e-3)  # float32, same weights: the same result
