"""The README stays true: its Python example runs as written, and CI runs its test command."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_adapter_example_runs_as_written(tmp_path):
    block = re.search(r"<!-- example: adapter -->\n```python\n(.*?)```", README, re.S)
    assert block, "README has no adapter example"
    result = subprocess.run([sys.executable, "-c", block.group(1)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "query MSE" in line]
    assert [line.split(":")[0] for line in lines] == ["torch", "jax"]
    numbers = [[float(v) for v in re.findall(r"\d+\.\d+", line)] for line in lines]
    for before, after, _ in numbers:
        assert after < before
    np.testing.assert_allclose(numbers[1], numbers[0], rtol=1e-3)  # float32, same weights: the same result


def test_ci_runs_the_readme_test_command():
    command = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```", README, re.S)
    assert command and "pytest" in command.group(1)
    assert "test-command" in (ROOT / ".ci" / "run").read_text()
