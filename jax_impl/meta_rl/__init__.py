from jax_impl.meta_rl.meta_maml import MetaMAML, mse

__all__ = ["MetaMAML", "mse"]
