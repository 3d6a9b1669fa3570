"""The Flax/JAX reference implementation of ssm-metarl, mirroring ``torch_impl`` file for file."""

from jax_impl.core.ssm import SSM
from jax_impl.meta_rl.meta_maml import MetaMAML

__all__ = ["SSM", "MetaMAML"]
