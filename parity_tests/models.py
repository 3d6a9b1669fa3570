"""Twin models and precision set-up for the parity matrix (sits above both backends)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from jax_impl.core.params import from_canonical
from jax_impl.core.ssm import SSM as JaxSSM
from jax_impl.core.ssm import torch_default_linear
from torch_impl.core.ssm import SSM as TorchSSM


def set_high_precision() -> None:
    """x64 and 'highest' matmul precision in JAX, no TF32 in PyTorch (ARCHITECTURE.md section 5)."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_default_matmul_precision", "highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class TorchMLP(torch.nn.Module):
    """``l2(tanh(l1(x)))``: the non-SSM model of the matrix."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.l1 = torch.nn.Linear(input_dim, hidden_dim, dtype=dtype)
        self.l2 = torch.nn.Linear(hidden_dim, output_dim, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.tanh(self.l1(x)))


class JaxMLP(nnx.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, dtype: str) -> None:
        rngs = nnx.Rngs(0)
        self.l1 = torch_default_linear(input_dim, hidden_dim, jnp.dtype(dtype), rngs)
        self.l2 = torch_default_linear(hidden_dim, output_dim, jnp.dtype(dtype), rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.l2(jnp.tanh(self.l1(x)))


def canonical(model: torch.nn.Module) -> dict[str, np.ndarray]:
    return {name: t.detach().cpu().numpy().copy() for name, t in model.state_dict().items()}


def twin_ssms(dims: tuple[int, int, int, int], dtype: str, seed: int) -> tuple[TorchSSM, JaxSSM]:
    """A torch SSM and a JAX SSM holding the torch weights (made in torch, then transferred)."""
    torch.manual_seed(seed)
    torch_model = TorchSSM(*dims, "cpu", dtype=TORCH_DTYPES[dtype])
    jax_model = JaxSSM(*dims, "cpu", dtype=dtype)
    from_canonical(jax_model, canonical(torch_model))
    return torch_model, jax_model


def twin_mlps(input_dim: int, hidden_dim: int, output_dim: int, dtype: str, seed: int) -> tuple[TorchMLP, JaxMLP]:
    torch.manual_seed(seed)
    torch_model = TorchMLP(input_dim, hidden_dim, output_dim, TORCH_DTYPES[dtype])
    jax_model = JaxMLP(input_dim, hidden_dim, output_dim, dtype)
    from_canonical(jax_model, canonical(torch_model))
    return torch_model, jax_model
