"""A recurrent RL policy, ``nn.LSTM`` + a linear head, and its Flax NNX port, run over a sequence or one
step at a time with a carried state.

- ``forward(obs)``: ``(batch, time, obs_dim) -> (batch, time, action_dim)`` (what ``compare_models``
  checks: weights, forward, gradients, adapted parameters, meta-gradients);
- ``step(obs_t, state)``: ``(batch, obs_dim)`` and the state -> ``(batch, action_dim)`` and the new
  state, as an agent acts. torch's state is ``(h, c)``, each ``(1, batch, hidden)`` (``nn.LSTM``'s
  layout); Flax's carry is ``(c, h)``, each ``(batch, hidden)`` (``nnx.OptimizedLSTMCell``'s).
  :func:`compare_steps` runs both for T steps and compares every step's action and the final state.

The port's cell is ``torch_compatible_lstm_cell``: stock ``nnx.OptimizedLSTMCell`` has no input-side
bias, so it cannot hold both of torch's biases (``b_ih + b_hh``) exactly.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx
from torch import nn

from shared.compare import compare_trees
from ssm_metarl.porting import torch_compatible_lstm_cell

OBS_DIM, HIDDEN_DIM, ACTION_DIM = 3, 6, 2
TorchState = tuple[torch.Tensor, torch.Tensor]
FlaxCarry = tuple[jax.Array, jax.Array]


class TorchLSTMPolicy(nn.Module):
    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.lstm = nn.LSTM(OBS_DIM, HIDDEN_DIM, batch_first=True, dtype=dtype)
        self.head = nn.Linear(HIDDEN_DIM, ACTION_DIM, dtype=dtype)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(obs)[0])

    def initial_state(self, batch: int) -> TorchState:
        zeros = torch.zeros(1, batch, HIDDEN_DIM, dtype=self.head.weight.dtype)
        return zeros, zeros.clone()

    def step(self, obs: torch.Tensor, state: TorchState) -> tuple[torch.Tensor, TorchState]:
        hidden, state = self.lstm(obs[:, None, :], state)
        return self.head(hidden[:, 0]), state


class FlaxLSTMPolicy(nnx.Module):
    def __init__(self, dtype: str = "float32", *, rngs: nnx.Rngs) -> None:
        self.lstm = nnx.RNN(torch_compatible_lstm_cell(OBS_DIM, HIDDEN_DIM, param_dtype=jnp.dtype(dtype), rngs=rngs))
        self.head = nnx.Linear(HIDDEN_DIM, ACTION_DIM, dtype=dtype, param_dtype=dtype, rngs=rngs)

    def __call__(self, obs: jax.Array) -> jax.Array:
        return self.head(self.lstm(obs))

    def initial_carry(self, batch: int) -> FlaxCarry:
        zeros = jnp.zeros((batch, HIDDEN_DIM), self.head.kernel[...].dtype)
        return zeros, zeros

    def step(self, obs: jax.Array, carry: FlaxCarry) -> tuple[jax.Array, FlaxCarry]:
        carry, hidden = self.lstm.cell(carry, obs)
        return self.head(hidden), carry


def torch_model(dtype: str = "float32") -> TorchLSTMPolicy:
    torch.manual_seed(0)
    return TorchLSTMPolicy(getattr(torch, dtype))


def flax_model(dtype: str = "float32") -> FlaxLSTMPolicy:
    return FlaxLSTMPolicy(dtype, rngs=nnx.Rngs(0))


def example_inputs(dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 6, OBS_DIM)).astype(dtype)


def compare_steps(torch_policy: TorchLSTMPolicy, flax_policy: FlaxLSTMPolicy, observations: np.ndarray) -> dict:
    """Run both policies one step at a time over ``observations (batch, T, obs_dim)`` from zero state;
    returns ``{"actions": Comparison over every step's action, "state": Comparison of the final
    (h, c)}`` (``shared.compare.Comparison``: ``max_abs``, ``rel``). The weights must already be
    copied (``copy_torch_to_flax``)."""
    batch, steps = observations.shape[:2]
    state = torch_policy.initial_state(batch)
    carry = flax_policy.initial_carry(batch)
    step = nnx.jit(FlaxLSTMPolicy.step)
    torch_actions, flax_actions = [], []
    with torch.no_grad():
        for t in range(steps):
            action, state = torch_policy.step(torch.from_numpy(np.array(observations[:, t])), state)
            torch_actions.append(action.numpy())
            flax_action, carry = step(flax_policy, jnp.asarray(observations[:, t]), carry)
            flax_actions.append(np.asarray(flax_action))
    h, c = (s[0].numpy() for s in state)
    return {"actions": compare_trees(np.stack(flax_actions, 1), np.stack(torch_actions, 1)),
            "state": compare_trees({"h": np.asarray(carry[1]), "c": np.asarray(carry[0])}, {"h": h, "c": c})}
