"""The porting kit: check a user's own PyTorch model against their Flax NNX port (ARCHITECTURE.md section 8).

- :func:`copy_torch_to_flax` / :func:`copy_flax_to_torch`: exact weight transfer, paired by module path
  (rules in ``shared.porting``: :class:`Rule`, :func:`register_rule`);
- :func:`compare_models`: the parity rows on the pair (any pytree of inputs and outputs, :class:`StepMode`
  for a carried state), the same report as ``ssm-metarl parity``, with the worst leaves and the diagnosis;
- :func:`find_divergence`: the first layer whose output differs, with hints;
- :func:`precision_sweep`: the pair in float64, float32 and bfloat16, with a verdict (bug or rounding);
- :func:`save_pair` / :func:`load_pair`: both sides as safetensors plus a mapping manifest;
- :func:`assert_port_matches`: the pytest helper for users' own test suites;
- :func:`torch_compatible_gru_cell`, :class:`TorchBatchNorm`: NNX layers that compute what torch's do
  (also the LSTM, stacked/bidirectional RNN, attention and offset-RMSNorm twins).
"""

from shared.contract import PROFILES, tolerances
from shared.porting import Rule, register_rule
from ssm_metarl.porting.checkpoints import load_pair, load_torch_checkpoint, save_pair
from ssm_metarl.porting.divergence import Divergence, find_divergence
from ssm_metarl.porting.flax_layers import (
    OffsetRMSNorm,
    TorchBatchNorm,
    TorchRNN,
    torch_compatible_attention,
    torch_compatible_gru_cell,
    torch_compatible_lstm_cell,
    torch_compatible_multihead_attention,
    torch_compatible_rnn,
)
from ssm_metarl.porting.io import Inputs, InputSpecError, StepMode
from ssm_metarl.porting.rows import ROW_GROUPS, GradientDivergence, PortingReport, compare_models
from ssm_metarl.porting.sweep import SweepReport, precision_sweep
from ssm_metarl.porting.testing import assert_port_matches
from ssm_metarl.porting.trees import copy_flax_to_torch, copy_torch_to_flax, plan_for

__all__ = ["PROFILES", "ROW_GROUPS", "Divergence", "GradientDivergence", "InputSpecError", "Inputs", "OffsetRMSNorm",
           "PortingReport", "Rule", "StepMode", "SweepReport", "TorchBatchNorm", "TorchRNN", "assert_port_matches",
           "compare_models", "copy_flax_to_torch", "copy_torch_to_flax", "find_divergence", "load_pair",
           "load_torch_checkpoint", "plan_for", "precision_sweep", "register_rule", "save_pair", "tolerances",
           "torch_compatible_attention", "torch_compatible_gru_cell", "torch_compatible_lstm_cell",
           "torch_compatible_multihead_attention", "torch_compatible_rnn"]
