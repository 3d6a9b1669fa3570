"""Porting kit, end to end: the worked example pairs pass every parity row in float64 and float32, the
divergence finder names the broken layer (and the classic causes), and the CLI runs a user's pair."""

from __future__ import annotations

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from examples.porting import broken_gelu, cnn, gru_policy
from shared.porting import Rule
from ssm_metarl import cli, porting_cli
from ssm_metarl.parity import format_table
from ssm_metarl.porting import ROW_GROUPS, compare_models, copy_torch_to_flax, find_divergence

EXAMPLES = {"gru_policy": gru_policy, "cnn": cnn}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_pair_passes_every_row(name: str, dtype: str) -> None:
    example = EXAMPLES[name]
    torch_model = example.torch_model(dtype)
    before = {k: v.clone() for k, v in torch_model.state_dict().items()}
    report = compare_models(torch_model, example.flax_model(dtype), example.example_inputs(dtype), adam_steps=3)
    assert report.passed, report.table()
    quantities = " ".join(r.quantity for r in report.rows)
    for expected in ("weights torch -> flax -> torch", "weights flax -> torch -> flax", "forward",
                     "loss gradients", "adapted parameters, k=3", "meta-gradient, second order",
                     "second order differs from first"):
        assert expected in quantities
    assert ("Adam" in quantities) == (dtype == "float64")  # the contract has no float32 Adam row
    if name == "cnn":
        assert "running statistics after one train-mode forward" in quantities
    assert all(torch.equal(v, before[k]) for k, v in torch_model.state_dict().items()), "torch model changed"
    assert report.divergence is None
    assert json.loads(report.to_json())["passed"] is True


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_broken_port_report_pinpoints_the_tanh_gelu(dtype: str) -> None:
    inputs = broken_gelu.example_inputs(dtype)
    report = compare_models(broken_gelu.torch_model(dtype), broken_gelu.flax_model(dtype), inputs,
                            rows=("weights", "forward"))
    assert not report.passed
    assert all(r.passed for r in report.rows if "weights" in r.quantity)
    divergence = report.divergence
    assert divergence is not None
    assert (divergence.module, divergence.module_type, divergence.last_match) == ("mlp.1", "GELU", "mlp.0")
    assert divergence.rel > divergence.tolerance
    assert any("tanh approximation" in hint for hint in divergence.hints)
    assert "first divergent module: 'mlp.1' (GELU)" in report.table()
    if dtype == "float64":  # the porting guide shows this report: it stays true
        guide = (Path(__file__).resolve().parents[1] / "docs" / "guides" / "porting.md").read_text()
        shown = guide.split("<!-- porting: broken report -->", 1)[1].split("```", 2)[1]
        assert divergence.describe() in shown
        assert format_table([r for r in report.rows if r.quantity == "forward"]).splitlines()[-1] in shown
    fixed = compare_models(broken_gelu.torch_model(dtype), broken_gelu.fixed_flax_model(dtype), inputs,
                           rows=("weights", "forward"))
    assert fixed.passed and fixed.divergence is None, fixed.table()


# --------------------------------------------------------------------------- hints for the classic causes
def _divergence(torch_model: torch.nn.Module, flax_model: nnx.Module, inputs: np.ndarray, **kw: object):
    copy_torch_to_flax(torch_model, flax_model, **kw)
    return find_divergence(torch_model, flax_model, inputs, tolerance=1e-10, train=True)


def _linear(i: int, o: int, **kw: object) -> nnx.Linear:
    return nnx.Linear(i, o, param_dtype=jnp.float64, rngs=nnx.Rngs(0), **kw)


def test_hint_layer_norm_epsilon() -> None:
    torch_model = torch.nn.Sequential(torch.nn.Linear(3, 4, dtype=torch.float64),
                                      torch.nn.LayerNorm(4, dtype=torch.float64))
    flax_model = nnx.Sequential(_linear(3, 4), nnx.LayerNorm(4, param_dtype=jnp.float64, rngs=nnx.Rngs(0)))
    found = _divergence(torch_model, flax_model, np.random.default_rng(0).normal(size=(5, 3)) * 1e-3)
    assert (found.module, found.module_type, found.input_matches) == ("1", "LayerNorm", True)
    assert any("LayerNorm epsilon: torch eps=1e-05, flax epsilon=1e-06" in h for h in found.hints)


def test_hint_same_padding_against_explicit_padding() -> None:
    torch_model = cnn.torch_model("float64")
    flax_model = cnn.FlaxCNN("float64", padding="SAME", rngs=nnx.Rngs(0))
    found = _divergence(torch_model, flax_model, cnn.example_inputs("float64"))
    assert (found.module, found.module_type) == ("conv2", "Conv2d")  # conv1 (stride 1): 'SAME' = (1, 1), fine
    assert any("padding: torch pads [(1, 1), (1, 1)]" in h and "flax pads [(0, 1), (0, 1)]" in h for h in found.hints)


def test_hint_batch_norm_momentum_convention() -> None:
    torch_model = torch.nn.Sequential(torch.nn.Linear(3, 4, dtype=torch.float64),
                                      torch.nn.BatchNorm1d(4, dtype=torch.float64))
    stock = nnx.BatchNorm(4, momentum=0.1, param_dtype=jnp.float64, use_fast_variance=False, rngs=nnx.Rngs(0))
    found = _divergence(torch_model, nnx.Sequential(_linear(3, 4), stock), np.random.default_rng(0).normal(size=(6, 3)))
    assert found.module.startswith("1 (running_mean") and found.module_type == "BatchNorm1d"
    assert any("momentum should be 0.9, got 0.1" in h for h in found.hints)


def test_hint_untransposed_weight() -> None:
    untransposed = Rule("untransposed", lambda t, s: {"kernel": t["weight"], "bias": t["bias"]},
                        lambda f, s: {"weight": f["kernel"], "bias": f["bias"]})
    torch_model = torch.nn.Sequential(torch.nn.Linear(4, 4, dtype=torch.float64), torch.nn.Tanh())
    found = _divergence(torch_model, nnx.Sequential(_linear(4, 4), jnp.tanh),
                        np.random.default_rng(0).normal(size=(5, 4)), overrides={"0": ("0", untransposed)})
    assert (found.module, found.module_type) == ("0", "Linear")
    assert any("untransposed weight" in h for h in found.hints)


def test_hint_precision_float32_inside_a_float64_port() -> None:
    torch_model = torch.nn.Sequential(torch.nn.Linear(3, 4, dtype=torch.float64))
    flax_model = nnx.Sequential(_linear(3, 4, dtype=jnp.float32))
    found = _divergence(torch_model, flax_model, np.random.default_rng(0).normal(size=(5, 3)))
    assert found.module == "0"
    assert any("torch computes this module in float64, flax in float32" in h for h in found.hints)


# --------------------------------------------------------------------------- bad input and the CLI
def test_compare_models_rejects_bad_input() -> None:
    t, f = broken_gelu.torch_model("float64"), broken_gelu.fixed_flax_model("float64")
    with pytest.raises(TypeError, match="dtype float64"):
        compare_models(t, f, np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="numpy array"):
        compare_models(t, f, torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown row groups"):
        compare_models(t, f, np.zeros((2, 4)), rows=("forward", "everything"))
    with pytest.raises(TypeError, match="loss must be"):
        compare_models(t, f, np.zeros((2, 4)), loss="huber")
    with pytest.raises(ValueError, match=r"outputs' shape \(2, 2\), got \(2, 1\)"):
        compare_models(t, f, np.zeros((2, 4)), np.zeros((2, 1)))


class TorchTokens(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(7, 4, dtype=torch.float64)
        self.out = torch.nn.Linear(4, 2, dtype=torch.float64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.embed(ids)))


class FlaxTokens(nnx.Module):
    def __init__(self) -> None:
        self.embed = nnx.Embed(7, 4, param_dtype=jnp.float64, rngs=nnx.Rngs(0))
        self.out = _linear(4, 2)

    def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
        return self.out(jnp.tanh(self.embed(ids)))


def test_integer_inputs_and_a_custom_loss_pair() -> None:
    ids = np.random.default_rng(0).integers(0, 7, size=(5, 3))
    loss = (lambda out, y: torch.mean(torch.abs(out - y) ** 3), lambda out, y: jnp.mean(jnp.abs(out - y) ** 3))
    report = compare_models(TorchTokens(), FlaxTokens(), ids, loss=loss, rows=("weights", "forward", "gradients",
                                                                                 "adapted"))
    assert report.passed, report.table()
    assert porting_cli.ROW_GROUPS == ROW_GROUPS


@pytest.mark.parametrize("flax_factory, code", [("flax_model", 1), ("fixed_flax_model", 0)])
def test_cli_runs_a_user_pair(tmp_path, capsys, flax_factory: str, code: int) -> None:
    output = tmp_path / "report.json"
    argv = ["parity", "--torch", "examples.porting.broken_gelu:torch_model",
            "--flax", f"examples.porting.broken_gelu:{flax_factory}", "--input-shape", "8,4", "--dtype", "float32",
            "--rows", "weights", "forward", "--output", str(output)]
    assert cli.main(argv) == code
    printed = capsys.readouterr().out
    assert "| forward | float32 |" in printed
    report = json.loads(output.read_text())
    assert [r["quantity"] for r in report["rows"]][-1] == "forward"
    if code:
        assert report["divergence"]["float32"]["module"] == "mlp.1"
        assert "first divergent module: 'mlp.1' (GELU)" in printed
    else:
        assert report["divergence"]["float32"] is None


def test_cli_errors_are_clear(capsys) -> None:
    assert cli.main(["parity", "--torch", "no_such_module:f", "--flax", "x:y", "--input-shape", "2,3"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    pair = ["--torch", "examples.porting.cnn:torch_model", "--flax", "examples.porting.cnn:flax_model"]
    assert cli.main(["parity", *pair]) == 2
    assert "--input-shape" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["parity", "--torch", "a:b", "--input-shape", "2,-3"])

