from jax_impl.core.ssm import SSM

__all__ = ["SSM"]
