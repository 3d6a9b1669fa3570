"""Porting kit, worked examples: a transformer block and an LSTM policy pass every parity row in float64,
the LSTM policy agrees step by step with a carried state, and two broken attention ports are localised."""

from __future__ import annotations

import numpy as np
import pytest

from examples.porting import broken_attention, lstm_policy, transformer_block
from parity_tests.matrix import TOLERANCES
from ssm_metarl.porting import compare_models, copy_torch_to_flax, plan_for


def test_transformer_block_pairs_renamed_layers_and_passes_every_row() -> None:
    torch_model, flax_model = transformer_block.torch_model("float64"), transformer_block.flax_model("float64")
    plan = plan_for(torch_model, flax_model).describe()
    for line in ("attn.q_proj -> attn.query (Linear -> LinearGeneral)", "attn.o_proj -> attn.out (Linear -> Einsum)",
                 "ln_1 -> norm1 (LayerNorm -> LayerNorm)", "mlp.fc -> mlp.up (Linear -> Linear)"):
        assert line in plan, plan
    report = compare_models(torch_model, flax_model, transformer_block.example_inputs("float64"), adam_steps=2)
    assert report.passed, report.table()
    quantities = " ".join(r.quantity for r in report.rows)
    assert "meta-gradient, second order" in quantities and "Adam" in quantities
    assert report.divergence is None


def test_transformer_block_float32_forward_and_gradients() -> None:
    report = compare_models(transformer_block.torch_model("float32"), transformer_block.flax_model("float32"),
                            transformer_block.example_inputs("float32"), rows=("weights", "forward", "gradients"))
    assert report.passed, report.table()


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_lstm_policy_sequence_rows_and_step_mode(dtype: str) -> None:
    torch_model, flax_model = lstm_policy.torch_model(dtype), lstm_policy.flax_model(dtype)
    observations = lstm_policy.example_inputs(dtype)
    # the meta-learning rows of a recurrent policy are the GRU example's job (tests/test_porting_examples.py)
    report = compare_models(torch_model, flax_model, observations, rows=("weights", "forward", "gradients"))
    assert report.passed, report.table()
    copy_torch_to_flax(torch_model, flax_model)
    stepped = lstm_policy.compare_steps(torch_model, flax_model, observations)
    for name, comparison in stepped.items():
        assert comparison.passes(TOLERANCES[dtype]["outputs"]), (name, comparison)
    # the step mode carries state: step-by-step actions equal the sequence forward's
    whole = np.asarray(flax_model(observations))
    np.testing.assert_allclose(whole[:, -1], np.asarray(flax_model.step(
        observations[:, -1], _carry_before_last(flax_model, observations))[0]), rtol=1e-5, atol=1e-6)


def _carry_before_last(flax_model: lstm_policy.FlaxLSTMPolicy, observations: np.ndarray) -> tuple:
    carry = flax_model.initial_carry(observations.shape[0])
    for t in range(observations.shape[1] - 1):
        _, carry = flax_model.step(observations[:, t], carry)
    return carry


def test_broken_mask_polarity_is_named() -> None:
    report = compare_models(broken_attention.torch_model("float64"), broken_attention.mask_polarity_port("float64"),
                            broken_attention.example_inputs("float64"), rows=("weights", "forward"))
    assert not report.passed
    assert all(r.passed for r in report.rows if "weights" in r.quantity)
    divergence = report.divergence
    assert divergence is not None
    # q/k/v projections and RoPE agree; the attention core, given the same q, k, v, does not
    assert (divergence.module, divergence.module_type, divergence.input_matches) == \
        ("attn.core", "TorchCausalAttention", True)
    assert divergence.rel > 0.1
    assert "first divergent module: 'attn.core' (TorchCausalAttention)" in report.table()


def test_broken_interleaved_rope_is_named() -> None:
    report = compare_models(broken_attention.torch_model("float64"), broken_attention.interleaved_rope_port("float64"),
                            broken_attention.example_inputs("float64"), rows=("weights", "forward"))
    divergence = report.divergence
    assert divergence is not None
    assert (divergence.module, divergence.module_type, divergence.input_matches) == ("attn.rope", "TorchRoPE", True)
    assert "first divergent module: 'attn.rope' (TorchRoPE)" in report.table()
