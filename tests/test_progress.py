"""Progress output suits where it goes: a tqdm bar on a terminal; in a file or CI log, plain lines
(no carriage-return refreshes), one every few seconds and one at the end."""

import io
import subprocess
import sys
from pathlib import Path

from tqdm import tqdm

from ssm_metarl import progress as progress_module
from ssm_metarl.progress import LineProgress, progress

ROOT = Path(__file__).resolve().parents[1]


def test_lines_are_plain_and_rate_limited() -> None:
    out = io.StringIO()
    bar = LineProgress(range(200), desc="train", interval=3600.0, file=out)
    for i in bar:
        bar.set_postfix(loss=f"{i:.1f}")
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert len(lines) == 2  # the first iteration and the end, nothing in between within the interval
    assert lines[0].startswith("train: 1/200 (0%)") and lines[-1].startswith("train: 200/200 (100%)")
    assert "loss=199.0" in lines[-1] and "it/s" in lines[-1] and "ETA" in lines[-1]


def test_every_iteration_prints_when_the_interval_is_zero() -> None:
    out = io.StringIO()
    bar = LineProgress(range(3, 7), desc="x", total=10, initial=3, interval=0.0, file=out)
    assert list(bar) == [3, 4, 5, 6]
    bar.close()  # closing again prints nothing more
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == ["x: 4/10", "x: 5/10", "x: 6/10",
                                                                            "x: 7/10"]


def test_disabled_prints_nothing() -> None:
    out = io.StringIO()
    assert list(LineProgress(range(3), disable=True, interval=0.0, file=out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_bar_on_a_terminal_lines_elsewhere(monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "is_terminal", lambda stream: True)
    assert isinstance(progress(range(2), disable=True), tqdm)
    monkeypatch.setattr(progress_module, "is_terminal", lambda stream: False)
    assert isinstance(progress(range(2)), LineProgress)


def test_redirected_output_has_no_carriage_returns() -> None:
    code = ("from ssm_metarl.progress import progress\n"
            "p = progress(range(500), desc='loop')\n"
            "for i in p: p.set_postfix(i=i)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert "\r" not in result.stderr
    assert len(result.stderr.splitlines()) <= 3 and "loop: 500/500 (100%)" in result.stderr


def test_the_commands_use_the_progress_module() -> None:
    for name in ("train.py", "demo.py"):
        assert "tqdm(" not in (ROOT / "ssm_metarl" / name).read_text(), name
