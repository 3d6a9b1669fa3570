"""The README's TENT example (test-time adaptation section) runs as written and does what it says."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tent_example_runs_as_written(tmp_path):
    block = re.search(r"<!-- example: tent -->\n```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README has no TENT example"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's code, wherever the venv points
    result = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "entropy" in line]
    assert [line.split(":")[0] for line in lines] == ["torch", "jax"]
    for line in lines:
        before, after = (float(v) for v in re.findall(r"\d+\.\d+", line))
        assert after < before, line  # entropy minimisation lowers the entropy
