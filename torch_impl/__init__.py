"""The canonical PyTorch implementation of ssm-metarl."""

from torch_impl.core.ssm import SSM
from torch_impl.meta_rl.meta_maml import MetaMAML

__all__ = ["SSM", "MetaMAML"]
