"""Run directories: staged beside the output, renamed when complete, never mixing two runs."""

import pytest

from ssm_metarl import rundir


def test_a_run_is_staged_and_replaces_the_old_one_only_when_complete(tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "evaluation.json").write_text("old")
    with pytest.raises(ValueError, match="already holds a run"):
        rundir.start(output, overwrite=False, resume=False)
    staging = rundir.start(output, overwrite=True, resume=False)
    assert staging == tmp_path / ".run.partial" and staging.is_dir()
    (staging / "metrics.json").write_text("new")
    assert (output / "evaluation.json").read_text() == "old"  # untouched until the new run is complete
    rundir.finish(staging, output)
    assert sorted(p.name for p in output.iterdir()) == ["metrics.json"]  # nothing of the old run is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_an_empty_output_is_fine_and_resume_needs_a_staged_run(tmp_path):
    (tmp_path / "empty").mkdir()
    assert rundir.start(tmp_path / "empty", overwrite=False, resume=False).is_dir()
    with pytest.raises(ValueError, match="there is no interrupted run to resume"):
        rundir.start(tmp_path / "new", overwrite=False, resume=True)
    with pytest.raises(ValueError, match="an interrupted run is waiting"):
        rundir.start(tmp_path / "empty", overwrite=False, resume=False)
    assert rundir.output_of_staging(tmp_path / ".x.partial") == tmp_path / "x"
    assert rundir.output_of_staging(tmp_path / "x") == tmp_path / "x"
