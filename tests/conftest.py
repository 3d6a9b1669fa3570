import os

import jax
import pytest
import torch

# float64 tests need x64 in JAX before any array is made; float32 code paths pass dtypes explicitly.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_default_matmul_precision", "highest")
# Training runs in tests use the eager form of PyTorch's native path (each torch.compile costs tens of
# seconds); tests/test_maml_rl_paths.py checks the compiled form against it once.
os.environ.setdefault("SSM_METARL_TORCH_COMPILE", "0")


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
