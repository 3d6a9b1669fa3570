"""The Flax/JAX reference implementation of ssm-metarl, mirroring ``torch_impl`` file for file.

The public surface is the same as ``torch_impl``'s: the SSM, MetaMAML, the test-time Adapter and its
configuration, and MAML-RL with its SSM policy.
"""

from jax_impl.adaptation.test_time_adaptation import Adapter
from jax_impl.core.ssm import SSM
from jax_impl.meta_rl.maml_rl import MAMLRL, SSMPolicy
from jax_impl.meta_rl.meta_maml import MetaMAML
from shared.adaptation import AdaptationConfig

__all__ = ["MAMLRL", "SSM", "AdaptationConfig", "Adapter", "MetaMAML", "SSMPolicy"]
