"""The documentation stays true: every guide's Python snippets run as written (one process per page,
blocks in order, as a reader would paste them), the README's generated blocks match the committed
results, and the README stays a front door."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "notes" not in p.relative_to(DOCS).parts)
# A block after an `<!-- example: NAME -->` marker runs in its own test, which also checks its output.
PYTHON_BLOCK = re.compile(r"^(<!-- example: [\w-]+ -->\n)?```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    """The page's Python blocks in order, without those that a dedicated test runs."""
    return [code for marker, code in PYTHON_BLOCK.findall(page.read_text()) if not marker]


def run_page(page: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = "\n".join(python_blocks(page))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=env)


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(DOCS)))
def test_page_snippets_run_as_written(page: Path, tmp_path: Path) -> None:
    result = run_page(page, tmp_path)
    assert result.returncode == 0, f"{page.relative_to(ROOT)}:\n{result.stderr[-4000:]}"


def test_readme_generated_blocks_match_the_committed_results() -> None:
    sys.path.insert(0, str(DOCS))
    try:
        import gen_pages
    finally:
        sys.path.remove(str(DOCS))
    readme = (ROOT / "README.md").read_text()
    assert gen_pages.MARKER.search(readme), "README has no generated block"
    assert gen_pages.fill(readme) == readme, "run python docs/gen_pages.py"


def test_readme_is_a_front_door() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15 * 1024
    for word in ("this round", "previous round", "ticket", "this session", "issue "):
        assert word not in readme.lower(), word
    for link in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (ROOT / link).exists(), link


def test_the_default_run_shown_is_the_current_default_configuration() -> None:
    import dataclasses
    import json

    from ssm_metarl.train import TrainConfig

    shown = json.loads((ROOT / "benchmarks" / "results" / "default_run" / "evaluation.json").read_text())["config"]
    defaults = dataclasses.asdict(TrainConfig())
    differing = {k: (v, defaults[k]) for k, v in shown.items()
                 if k in defaults and defaults[k] is not None and v != defaults[k]}
    assert not differing, f"the committed default run was made with other settings: {differing}"
