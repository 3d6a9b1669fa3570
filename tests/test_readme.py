"""The README stays true: its Python snippets run as written, and CI runs its test command, which
builds the documentation strictly before the tests."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_snippets_run_as_written(tmp_path):
    blocks = re.findall(r"^```python\n(.*?)^```", README, re.S | re.M)
    assert len(blocks) >= 3, "the README shows the SSM, MetaMAML and parity snippets"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    rel = float(re.search(r"max rel (\S+)", result.stdout).group(1))
    assert rel < 1e-12  # float64 parity of the two backends: round-off only


def test_ci_runs_the_readme_test_command():
    command = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```", README, re.S)
    assert command and "pytest" in command.group(1)
    assert '".[dev,docs]"' in command.group(1) and "mkdocs build --strict" in command.group(1)
    assert command.group(1).index("mkdocs build") < command.group(1).index("pytest")
    assert "test-command" in (ROOT / ".ci" / "run").read_text()


def test_the_main_job_command_is_the_packaged_console_script():
    main_job = re.search(r"## Two commands.*?```bash\n(.*?)\n```", README, re.S).group(1)
    assert main_job.endswith(".venv/bin/ssm-metarl train")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'ssm-metarl = "ssm_metarl.cli:main"' in pyproject
    assert re.search(r'^docs = \[', pyproject, re.M), "the docs extra the test command installs"
