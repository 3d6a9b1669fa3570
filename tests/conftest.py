import jax
import pytest
import torch

# float64 tests need x64 in JAX before any array is made; float32 code paths pass dtypes explicitly.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
