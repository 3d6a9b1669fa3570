"""The porting kit's public surface: exports, save_pair/load_pair, a user's torch checkpoint,
assert_port_matches, and timing a user's pair (API and CLI)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import safetensors.torch
import torch

import ssm_metarl.porting as porting
from examples.porting import broken_gelu
from ssm_metarl import cli
from ssm_metarl.porting import assert_port_matches, load_pair, load_torch_checkpoint, save_pair
from ssm_metarl.porting.bench import WORKLOADS, bench_pair
from tests import porting_pairs

PAIR = ["--torch", "tests.porting_pairs:tanh_mlp_torch", "--flax", "tests.porting_pairs:tanh_mlp_flax"]


def test_public_names_and_no_dependency_on_the_test_package() -> None:
    for name in ("compare_models", "find_divergence", "copy_torch_to_flax", "copy_flax_to_torch", "Rule",
                 "register_rule", "torch_compatible_gru_cell", "TorchBatchNorm", "save_pair", "load_pair",
                 "assert_port_matches", "precision_sweep", "StepMode", "Inputs"):
        assert name in porting.__all__ and hasattr(porting, name)
    import parity_tests.matrix
    import shared.contract

    assert parity_tests.matrix.TOLERANCES is shared.contract.TOLERANCES
    sources = [p.read_text() for p in __import__("pathlib").Path(porting.__file__).parent.glob("*.py")]
    assert not any("parity_tests" in line for text in sources for line in text.splitlines()
                   if line.startswith(("import", "from")))


def test_save_pair_and_load_pair_round_trip_exactly(tmp_path) -> None:
    torch_model, flax_model = porting_pairs.tanh_mlp_torch("float64"), porting_pairs.tanh_mlp_flax("float64")
    porting.copy_torch_to_flax(torch_model, flax_model)
    save_pair(torch_model, flax_model, tmp_path / "pair")
    manifest = json.loads((tmp_path / "pair" / "manifest.json").read_text())
    assert {p["torch"] for p in manifest["pairs"]} == {"0", "2"}
    torch.manual_seed(5)
    fresh_torch, fresh_flax = porting_pairs.tanh_mlp_torch("float64"), porting_pairs.tanh_mlp_flax("float64")
    for p in fresh_torch.parameters():
        torch.nn.init.normal_(p)
    load_pair(fresh_torch, fresh_flax, tmp_path / "pair")
    assert all(torch.equal(a, b) for a, b in zip(fresh_torch.state_dict().values(), torch_model.state_dict().values(),
                                                 strict=True))
    assert_port_matches(fresh_torch, fresh_flax, np.ones((2, porting_pairs.D_IN)), rows=("weights", "forward"),
                        transfer=False)


def test_load_pair_refuses_a_tampered_or_foreign_pair(tmp_path) -> None:
    torch_model, flax_model = porting_pairs.tanh_mlp_torch("float64"), porting_pairs.tanh_mlp_flax("float64")
    porting.copy_torch_to_flax(torch_model, flax_model)
    save_pair(torch_model, flax_model, tmp_path)
    tensors = safetensors.torch.load_file(str(tmp_path / "torch.safetensors"))
    tensors["0.bias"] = tensors["0.bias"] + 1
    safetensors.torch.save_file(tensors, str(tmp_path / "torch.safetensors"))
    with pytest.raises(ValueError, match=r"do not map onto each other exactly .*0\.bias"):
        load_pair(porting_pairs.tanh_mlp_torch("float64"), porting_pairs.tanh_mlp_flax("float64"), tmp_path)
    with pytest.raises(ValueError, match=r"saved (pairing|torch tensors) differ"):
        load_pair(porting_pairs.TorchTokens(), porting_pairs.FlaxTokens(), tmp_path)
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        load_pair(torch_model, flax_model, tmp_path / "nothing")


def test_torch_checkpoint_loads_real_weights_strictly(tmp_path) -> None:
    source = porting_pairs.tanh_mlp_torch("float32")
    for p in source.parameters():
        torch.nn.init.normal_(p)
    torch.save({"state_dict": source.state_dict()}, tmp_path / "w.pt")
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("w.pt", "w.safetensors"):
        target = porting_pairs.tanh_mlp_torch("float64")
        notes = load_torch_checkpoint(target, tmp_path / name)
        assert notes and "float32 -> float64" in notes[0]
        assert all(torch.equal(a.double(), b) for a, b in zip(source.state_dict().values(),
                                                               target.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match=r"missing \['0.bias'.*shapes differ"):
        load_torch_checkpoint(porting_pairs.tanh_mlp_torch("float64"), _save(tmp_path, {"0.weight": torch.zeros(1)}))


def _save(tmp_path, state: dict) -> object:
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    return path


def test_assert_port_matches_fails_with_the_report() -> None:
    with pytest.raises(AssertionError, match=r"(?s)differs from the torch model in 1 row\(s\) \(forward\).*'mlp.1'"):
        assert_port_matches(broken_gelu.torch_model("float64"), broken_gelu.flax_model("float64"),
                            broken_gelu.example_inputs("float64"), rows=("weights", "forward"))


def test_cli_loads_a_torch_checkpoint_and_runs_a_sweep(tmp_path, capsys) -> None:
    source = porting_pairs.tanh_mlp_torch("float64")
    safetensors.torch.save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    argv = ["parity", *PAIR, "--inputs", "float:2x3", "--rows", "forward", "--output", str(tmp_path / "r.json")]
    assert cli.main([*argv, "--dtype", "float64", "--torch-checkpoint", str(tmp_path / "w.safetensors")]) == 0
    assert cli.main([*argv, "--precision-sweep"]) == 0
    out = capsys.readouterr().out
    assert "verdict: no bug in float64" in out
    assert json.loads((tmp_path / "r.json").read_text())["bug"] is False
    float32_only = ["--torch", "tests.porting_pairs:float32_only_torch",
                    "--flax", "tests.porting_pairs:float32_only_flax"]
    assert cli.main(["parity", *float32_only, "--inputs", "float:2x3", "--dtype", "bfloat16"]) == 2
    assert "cannot run in bfloat16" in capsys.readouterr().err


def test_bench_times_every_workload_for_both_frameworks(tmp_path, capsys) -> None:
    report = bench_pair(porting_pairs.tanh_mlp_torch(), porting_pairs.tanh_mlp_flax(),
                        np.ones((2, porting_pairs.D_IN), np.float32), reps=2, warmup=1)
    assert {(t.workload, t.contender) for t in report.timings} == {(w, c) for w in WORKLOADS
                                                                   for c in ("torch eager", "torch.func", "jax jit")}
    assert all(t.median_ms > 0 for t in report.timings)
    assert all(t.compile_s is not None for t in report.timings if t.contender == "jax jit")
    assert "best torch (torch" in report.table() and not report.notes
    output = tmp_path / "bench.json"
    assert cli.main(["bench", *PAIR, "--inputs", "float:2x3", "--reps", "2", "--warmup", "1",
                     "--output", str(output)]) == 0
    assert len(json.loads(output.read_text())["timings"]) == 3 * len(WORKLOADS)
    assert cli.main(["bench", "--torch", "tests.porting_pairs:tanh_mlp_torch", "--inputs", "float:2x3"]) == 2
    assert "needs both --torch" in capsys.readouterr().err
