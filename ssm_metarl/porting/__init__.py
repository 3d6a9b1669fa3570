"""The porting kit: check a user's own PyTorch model against their Flax NNX port (ARCHITECTURE.md section 8).

- :func:`copy_torch_to_flax` / :func:`copy_flax_to_torch`: exact weight transfer, paired by module path
  (rules in ``shared.porting``);
- :func:`compare_models`: the parity rows on the pair, the same report as ``ssm-metarl parity``;
- :func:`find_divergence`: the first layer whose output differs, with hints;
- :func:`torch_compatible_gru_cell`, :class:`TorchBatchNorm`: NNX layers that compute what torch's do.
"""

from ssm_metarl.porting.divergence import Divergence, find_divergence
from ssm_metarl.porting.flax_layers import TorchBatchNorm, torch_compatible_gru_cell
from ssm_metarl.porting.rows import ROW_GROUPS, PortingReport, compare_models
from ssm_metarl.porting.trees import copy_flax_to_torch, copy_torch_to_flax, plan_for

__all__ = ["ROW_GROUPS", "Divergence", "PortingReport", "TorchBatchNorm", "compare_models", "copy_flax_to_torch",
           "copy_torch_to_flax", "find_divergence", "plan_for", "torch_compatible_gru_cell"]
from ssm_metarl.porting.flax_layers import (
           OffsetRMSNorm,
           TorchRNN,
           torch_compatible_attention,
           torch_compatible_lstm_cell,
           torch_compatible_multihead_attention,
           torch_compatible_rnn,
)

__all__ += ["OffsetRMSNorm", "TorchRNN", "torch_compatible_attention", "torch_compatible_lstm_cell",
            "torch_compatible_multihead_attention", "torch_compatible_rnn"]
