"""Bad command-line input: a clear message naming the flag, given before any compute is spent."""

import os
import time

import pytest

from ssm_metarl import train as train_module
from ssm_metarl.cli import main


def run_error(capsys, argv):
    """Run the CLI expecting an error; returns stderr."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2, code
    return capsys.readouterr().err


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any training would start."""
    def refuse(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(train_module, "_train_one", refuse)


@pytest.mark.parametrize("argv, expected", [
    (["train", "--seeds", "-1"], "--seeds"),
    (["train", "--seeds", "0", "0"], "--seeds"),
    (["train", "--init-log-std", "inf"], "--init-log-std: expected a finite number"),
    (["train", "--inner-lr", "nan"], "--inner-lr"),
    (["train", "--outer-lr", "-1"], "--outer-lr: expected a positive number"),
    (["train", "--r-min", "0.9", "--r-max", "0.5"], "r_min <= r_max"),
    (["parity", "--batch", "-1"], "--batch: expected a positive integer, got -1"),
    (["parity", "--seq-len", "0"], "--seq-len"),
    (["train", "--iterations", "x"], "--iterations: expected an integer"),
])
def test_bad_flags_name_the_flag(capsys, no_training, tmp_path, argv, expected):
    assert expected in run_error(capsys, [*argv, "--output", str(tmp_path / "out")])


def test_duplicate_seeds_are_refused(capsys, no_training, tmp_path):
    err = run_error(capsys, ["train", "--seeds", "0", "1", "0", "--output", str(tmp_path / "x")])
    assert "must be distinct; [0] given more than once" in err


def test_output_naming_an_existing_file(capsys, no_training, tmp_path):
    (tmp_path / "file").write_text("x")
    assert "is an existing file; expected a directory" in run_error(
        capsys, ["train", "--output", str(tmp_path / "file")])
    assert "is a directory; expected a file path" in run_error(capsys, ["parity", "--output", str(tmp_path)])


def test_unwritable_output_fails_before_any_compute(capsys, no_training, tmp_path):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, so nothing can be created below it")
    start = time.perf_counter()
    for argv in (["train", "--output", str(blocked / "run")], ["parity", "--output", str(blocked / "r.json")],
                 ["demo", "--output", str(blocked / "demo")]):
        assert "is a file, so no directory can be made there" in run_error(capsys, argv), argv
    assert time.perf_counter() - start < 30  # no training, no parity matrix


def test_read_only_directory_is_refused(capsys, no_training, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o500)
    try:
        probe = locked / "probe"
        try:
            probe.write_text("x")  # root ignores permissions: nothing to test then
            pytest.skip("running with permission to write into read-only directories")
        except PermissionError:
            pass
        assert "is not writable" in run_error(capsys, ["train", "--output", str(locked / "run")])
        assert "is not writable" in run_error(capsys, ["parity", "--output", str(locked / "r.json")])
    finally:
        os.chmod(locked, 0o700)


def test_non_empty_output_needs_overwrite_and_a_waiting_run_needs_resume(capsys, no_training, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "evaluation.json").write_text("{}")
    assert "already holds a run; pass --overwrite" in run_error(capsys, ["train", "--output", str(tmp_path / "run")])
    (tmp_path / ".new.partial").mkdir()
    assert "--resume" in run_error(capsys, ["train", "--output", str(tmp_path / "new")])
    assert "no interrupted run to resume" in run_error(capsys, ["train", "--resume", str(tmp_path / "other")])
    assert "drop --iterations" in run_error(capsys, ["train", "--resume", str(tmp_path / "new"), "--iterations", "3"])


def test_unknown_config_key_and_bad_toml(capsys, no_training, tmp_path):
    (tmp_path / "a.toml").write_text("iterations = 3\nmeta_bach = 4\n")
    err = run_error(capsys, ["train", "--config", str(tmp_path / "a.toml"), "--output", str(tmp_path / "o")])
    assert "unknown key(s) ['meta_bach']" in err and "meta_batch" in err
    (tmp_path / "b.toml").write_text("iterations = \n")
    assert "is not valid TOML" in run_error(capsys, ["train", "--config", str(tmp_path / "b.toml")])
    (tmp_path / "c.toml").write_text("seeds = [0, 0]\n")
    assert "distinct" in run_error(capsys, ["train", "--config", str(tmp_path / "c.toml")])
    (tmp_path / "d.toml").write_text("init_log_std = inf\n")
    assert "init_log_std must be a finite number" in run_error(capsys, ["train", "--config", str(tmp_path / "d.toml")])
    assert "does not exist" in run_error(capsys, ["train", "--config", str(tmp_path / "missing.toml")])
