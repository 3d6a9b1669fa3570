from jax_impl.adaptation.test_time_adaptation import Adapter

__all__ = ["Adapter"]
