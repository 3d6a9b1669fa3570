"""The porting kit's I/O contract: positional and keyword inputs (masks), dict/tuple outputs, train/eval,
step mode with a carried state, the CLI input spec, and errors that name the model, argument and shape."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np
import pytest
import torch

from examples.porting import broken_gelu
from ssm_metarl import porting_cli
from ssm_metarl.porting import Inputs, InputSpecError, StepMode, compare_models
from tests.porting_pairs import (
    D_IN,
    HIDDEN,
    FlaxMasked,
    FlaxStepPolicy,
    TorchMasked,
    TorchStepPolicy,
    masked_inputs,
)


def test_keyword_inputs_and_dict_of_tuple_outputs_pass_every_row() -> None:
    x, kwargs = masked_inputs()
    report = compare_models(TorchMasked(), FlaxMasked(), x, kwargs=kwargs, rows=("weights", "forward", "gradients"))
    assert report.passed, report.table()
    forward = next(r for r in report.rows if r.quantity == "forward")
    assert {leaf.name for leaf in forward.comparison.leaves} == {"y", "aux.0"}


def test_mask_polarity_is_named_when_negating_the_mask_fixes_the_forward() -> None:
    x, kwargs = masked_inputs()
    report = compare_models(TorchMasked(), FlaxMasked(attend_true=True), Inputs((x,), kwargs),
                            rows=("weights", "forward"))
    assert not report.passed
    assert any("attention mask polarity" in n and "kwargs['mask']" in n for n in report.notes), report.table()
    assert "worst leaves of 'forward'" in report.table()


def test_step_mode_compares_every_step_and_the_final_state() -> None:
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(2, 4, D_IN))
    step = StepMode(state=rng.normal(size=(2, HIDDEN)))  # torch (obs, h) -> (a, h); flax (h, obs) -> (h, a)
    report = compare_models(TorchStepPolicy(), FlaxStepPolicy(), obs, step=step,
                            rows=("weights", "forward", "gradients"))
    assert report.passed, report.table()
    names = [r.quantity for r in report.rows]
    assert "forward: every step's output (4 steps)" in names and "final state after 4 steps" in names


def test_step_mode_names_a_wrong_calling_convention() -> None:
    rng = np.random.default_rng(0)
    step = StepMode(state=rng.normal(size=(2, HIDDEN)), flax_convention="x_state")
    with pytest.raises(InputSpecError, match="FlaxStepPolicy"):
        compare_models(TorchStepPolicy(), FlaxStepPolicy(), rng.normal(size=(2, 4, D_IN)), step=step,
                       rows=("forward",))


def test_eval_mode_is_a_choice() -> None:
    torch_model = broken_gelu.torch_model("float64")
    report = compare_models(torch_model, broken_gelu.fixed_flax_model("float64"), broken_gelu.example_inputs("float64"),
                            train=False, rows=("forward",))
    assert report.passed and torch_model.training  # the user's model keeps its mode


def test_bad_inputs_name_the_model_the_argument_and_the_expected_shape() -> None:
    x, kwargs = masked_inputs()
    wide = np.zeros((2, 5, D_IN + 2))
    with pytest.raises(InputSpecError) as info:
        compare_models(TorchMasked(), FlaxMasked(), wide, kwargs=kwargs, rows=("forward",))
    text = str(info.value)
    assert "torch model TorchMasked" in text and "args[0] (2, 5, 5)" in text
    assert f"layer 'proj' (Linear) expects shape (..., {D_IN})" in text and "from argument args[0]" in text
    with pytest.raises(InputSpecError, match=r"TorchMasked\(x, mask, scale=None\) does not take .*kwargs\['msk'\]"):
        compare_models(TorchMasked(), FlaxMasked(), x, kwargs={"msk": kwargs["mask"]}, rows=("forward",))
    with pytest.raises(TypeError, match=r"kwargs\['scale'\] must have dtype float64"):
        compare_models(TorchMasked(), FlaxMasked(), x, kwargs={**kwargs, "scale": kwargs["scale"].astype("float32")})


def test_cli_input_spec_builds_seeded_positional_and_keyword_inputs(tmp_path) -> None:
    specs = ["float:2x5x3", "mask=bool:2x5:1.0", "ids=int:2x5:3..7", "positions=arange:2x5"]
    args, kwargs = porting_cli.build_inputs([porting_cli.input_spec(s) for s in specs], "float64", seed=0)
    assert args[0].shape == (2, 5, 3) and args[0].dtype == np.float64
    assert kwargs["mask"].all() and kwargs["ids"].min() >= 3 and kwargs["ids"].max() < 7
    assert (kwargs["positions"][1] == np.arange(5)).all()
    again, _ = porting_cli.build_inputs(specs, "float64", seed=0)
    assert np.array_equal(args[0], again[0])
    path = tmp_path / "real.npz"
    np.savez(path, np.ones((2, 3), np.float32), mask=np.zeros((2,), bool))
    args, kwargs = porting_cli.build_inputs([str(path)], "float64", seed=0)
    assert args[0].dtype == np.float64 and kwargs["mask"].dtype == np.bool_
    for bad in ("float:0x3", "int:2x3:5..1", "bool:2:2.0", "complex:2x3", "float:2x3:0..1"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"expected|range"):
            porting_cli.input_spec(bad)


def test_cli_runs_a_pair_from_specs_and_reports_a_bad_spec(tmp_path, capsys) -> None:
    from ssm_metarl import cli

    pair = ["parity", "--torch", "tests.porting_pairs:TorchMasked", "--flax", "tests.porting_pairs:FlaxMasked",
            "--dtype", "float64", "--rows", "weights", "forward", "--output", str(tmp_path / "r.json")]
    assert cli.main([*pair, "--inputs", "float:2x5x3", "mask=bool:2x5:0.3"]) == 0
    assert "| forward | float64 |" in capsys.readouterr().out
    assert cli.main([*pair, "--inputs", "float:2x5x4", "mask=bool:2x5"]) == 2
    err = capsys.readouterr().err
    assert "TorchMasked" in err and "args[0] (2, 5, 4)" in err and "expects shape (..., 3)" in err


def test_torch_state_is_unchanged_by_a_step_run() -> None:
    torch_model = TorchStepPolicy()
    before = {k: v.clone() for k, v in torch_model.state_dict().items()}
    rng = np.random.default_rng(1)
    compare_models(torch_model, FlaxStepPolicy(), rng.normal(size=(2, 3, D_IN)),
                   step=StepMode(rng.normal(size=(2, HIDDEN))), rows=("forward",))
    assert all(torch.equal(v, before[k]) for k, v in torch_model.state_dict().items())


def test_cli_step_mode_from_a_state_spec(tmp_path, capsys) -> None:
    from ssm_metarl import cli

    argv = ["parity", "--torch", "tests.porting_pairs:TorchStepPolicy", "--flax", "tests.porting_pairs:FlaxStepPolicy",
            "--dtype", "float64", "--inputs", "float:2x3x3", "--state", "float:2x4", "--rows", "forward",
            "--output", str(tmp_path / "r.json")]
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "| forward: every step's output (3 steps) | float64 |" in out and "| final state after 3 steps |" in out


def _method_step(rng: np.random.Generator) -> StepMode:
    # torch's step keeps nn.GRU's (1, B, H) state; the common layout (and Flax's) is (B, H).
    return StepMode(state=rng.normal(size=(2, HIDDEN)), torch_method="step", flax_method="step",
                    flax_convention="x_state", torch_state=(lambda h: h[None], lambda h: h[0]))


def test_step_mode_calls_a_step_method_with_its_own_state_layout() -> None:
    rng = np.random.default_rng(2)
    report = compare_models(TorchStepPolicy(), FlaxStepPolicy(), rng.normal(size=(2, 3, D_IN)),
                            step=_method_step(rng), rows=("weights", "forward", "gradients"))
    assert report.passed, report.table()


def test_step_mode_divergence_is_found_inside_the_step_method() -> None:
    class Leaky(FlaxStepPolicy):
        def step(self, obs: Any, h: Any) -> Any:
            return super().step(obs, h, leak=1e-3)

    rng = np.random.default_rng(2)
    report = compare_models(TorchStepPolicy(), Leaky(), rng.normal(size=(2, 3, D_IN)), step=_method_step(rng),
                            rows=("weights", "forward", "gradients"))
    assert not report.passed
    found = report.divergence
    assert found is not None and (found.module, found.input_matches, found.last_match) == ("head", False, "gru")
