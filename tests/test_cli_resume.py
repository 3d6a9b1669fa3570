"""``ssm-metarl train``: Ctrl-C exits 130 with the resume command, and ``--resume`` finishes the run."""

import json
import signal

from ssm_metarl import train_session as train_module
from ssm_metarl.cli import main

FLAGS = ["--iterations", "2", "--meta-batch", "2", "--episodes", "2", "--state-dim", "4", "--hidden-dim", "8",
         "--eval-tasks", "2", "--eval-episodes", "1", "--seeds", "0", "1"]


def test_ctrl_c_then_resume_from_the_command_line(tmp_path, capsys, monkeypatch):
    original = train_module.iteration_fn

    def interrupting(config, *args):
        step = original(config, *args)

        def once():
            result = step()
            if config.seed == 1:  # the second seed's first iteration: seed 0 is complete by then
                signal.raise_signal(signal.SIGINT)
            return result
        return once

    monkeypatch.setattr(train_module, "iteration_fn", interrupting)
    output = tmp_path / "run"
    assert main(["train", *FLAGS, "--output", str(output)]) == 130
    err = capsys.readouterr().err
    assert f"Continue with: ssm-metarl train --resume {output}" in err and "interrupted after 1 meta-iterations" in err
    assert not output.exists()
    staged = tmp_path / ".run.partial"
    assert (staged / "seed_0" / "evaluation.json").is_file() and (staged / "seed_1" / "resume.safetensors").is_file()

    monkeypatch.setattr(train_module, "iteration_fn", original)
    assert main(["train", "--resume", str(output)]) == 0
    assert not staged.exists()
    metrics = json.loads((output / "seed_1" / "metrics.json").read_text())["iterations"]
    assert [m["iteration"] for m in metrics] == [0, 1]
    assert json.loads((output / "summary.json").read_text())["seeds"] == [0, 1]
