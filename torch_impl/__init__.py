"""The canonical PyTorch implementation of ssm-metarl.

The public surface is the same in ``jax_impl``: the SSM, MetaMAML, the test-time Adapter and its
configuration, and MAML-RL with its SSM policy.
"""

from shared.adaptation import AdaptationConfig
from torch_impl.adaptation.test_time_adaptation import Adapter
from torch_impl.core.ssm import SSM
from torch_impl.meta_rl.maml_rl import MAMLRL, SSMPolicy
from torch_impl.meta_rl.meta_maml import MetaMAML

__all__ = ["MAMLRL", "SSM", "AdaptationConfig", "Adapter", "MetaMAML", "SSMPolicy"]
