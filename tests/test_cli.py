"""The ``ssm-metarl`` command line: help, demo, parity report and exit codes."""

import json
import subprocess
import sys

import pytest

from ssm_metarl.cli import main


def test_help_exits_zero():
    result = subprocess.run([sys.executable, "-m", "ssm_metarl.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "demo" in result.stdout and "parity" in result.stdout


def test_unknown_command_exits_two():
    with pytest.raises(SystemExit) as err:
        main(["fly"])
    assert err.value.code == 2


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_demo_runs_and_writes_json(tmp_path, capsys, backend):
    assert main(["demo", "--backend", backend, "--iterations", "3", "--meta-batch", "2",
                 "--output", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "demo.json").read_text())
    assert set(report["meta_trained"]) == {"before_adaptation", "after_adaptation"}
    assert "held-out query MSE" in capsys.readouterr().out


def test_bad_argument_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as err:
        main(["demo", "--iterations", "2", "--meta-batch", "0"])
    assert err.value.code == 2
    assert "expected a positive integer, got 0" in capsys.readouterr().err


def test_parity_command_prints_and_writes_the_matrix(tmp_path, capsys, monkeypatch):
    """The command's table and JSON; every case itself runs in parity_tests/test_matrix.py, so the cases
    that compile (torch.compile, whole native iterations, several processes) are left to it here."""
    from parity_tests import matrix
    from ssm_metarl import parity

    slow = ("compiled", "native", "distributed", "incontext")
    monkeypatch.setattr(parity, "CASES", {k: v for k, v in matrix.CASES.items() if not any(s in k for s in slow)})
    out = tmp_path / "parity.json"
    code = main(["parity", "--dtype", "float64", "--state-dim", "3", "--hidden-dim", "4", "--seq-len", "5",
                 "--output", str(out)])
    report = json.loads(out.read_text())
    assert code == 0
    assert all(row["passed"] for row in report["rows"])
    assert len(report["rows"]) >= 15
    assert "| quantity | dtype | max abs |" in capsys.readouterr().out


def test_parity_float32_lists_the_float64_only_cases_as_not_applicable(tmp_path, capsys, monkeypatch):
    from parity_tests import matrix
    from ssm_metarl import parity

    cases = {name: matrix.CASES[name] for name in ("weights_through_flax", "meta_update_trajectories")}
    monkeypatch.setattr(parity, "CASES", cases)
    sizes = matrix.Sizes(3, 2, 2, 4, 2, 5)
    assert parity.run(["float32"], sizes, tmp_path / "p.json") == 0
    out = capsys.readouterr().out
    assert "| meta update trajectories (every row of this case) | float32 | - | - | - | n/a (float64 only) |" in out
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["not_applicable"] == [{"quantity": "meta update trajectories (every row of this case)",
                                         "dtype": "float32", "result": "n/a (float64 only)"}]
    assert report["rows"] and all(r["dtype"] == "float32" for r in report["rows"])


def test_parity_writes_under_runs_by_default():
    from ssm_metarl.cli import build_parser

    assert str(build_parser().parse_args(["parity"]).output) == "runs/parity_report.json"
