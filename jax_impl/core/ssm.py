"""The SSM in Flax NNX: the same maths, names and entry points as ``torch_impl/core/ssm.py``.

    lambda = exp(-exp(nu_log))                       per state channel, always in (0, 1)
    gamma  = sqrt(-expm1(-2 exp(nu_log)))            = sqrt(1 - lambda^2), computed stably
    h_t    = lambda * (1 - start_t) * h_{t-1} + gamma * (B x_t + b_B)
    y_t    = W2 gelu(W1 h_t + b1) + b2 + D x_t + b_D  (exact, erf-based GELU, as torch's default)

The module holds no state between calls: the recurrent state is passed in and returned.
"""

from __future__ import annotations

import os
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jax_impl.core.params import from_canonical, to_canonical
from shared.config import SSMConfig
from shared.layout import check_layout, ssm_layout
from shared.validation import check_rank_and_width, check_shape
from shared.weights import load_weights, save_weights

ScanMode = Literal["sequential", "parallel"]
Array = jax.Array


def resolve_device(device: str | jax.Device) -> jax.Device:
    """``"cpu"``, ``"cuda"``/``"gpu"`` or a ``jax.Device`` -> the first such ``jax.Device``."""
    if isinstance(device, jax.Device):
        return device
    platform = {"cuda": "gpu"}.get(str(device).split(":")[0], str(device).split(":")[0])
    try:
        return jax.devices(platform)[0]
    except RuntimeError as err:
        raise ValueError(f"device must be 'cpu', 'cuda'/'gpu' or a jax.Device available here, got {device!r}") from err


def torch_default_linear(in_dim: int, out_dim: int, dtype: jnp.dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """``nnx.Linear`` initialised like ``torch.nn.Linear``: weight and bias ~ U(+-1/sqrt(in_dim))."""
    bound = 1.0 / jnp.sqrt(in_dim)

    def bias_init(key: Array, shape: tuple[int, ...], dtype: jnp.dtype = dtype) -> Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Linear(
        in_dim, out_dim, dtype=dtype, param_dtype=dtype, rngs=rngs,
        kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"), bias_init=bias_init,
    )


class SSM(nnx.Module):
    """Diagonal SSM. ``__call__`` on ``(batch, input_dim)`` returns ``(batch, output_dim)``.

    Args:
        state_dim: state size ``S``, as in ``torch_impl.SSM``.
        input_dim: input width ``I``.
        output_dim: output width ``O``.
        hidden_dim: width ``H`` of the readout MLP.
        device: ``"cpu"``, ``"cuda"``/``"gpu"`` or a ``jax.Device``.
        r_min: the decays are initialised uniformly in ``[r_min, r_max]``.
        r_max: upper end of that interval.
        dtype: ``jnp.float32`` or ``jnp.float64`` (needs ``jax_enable_x64``).
        rngs: Flax random streams (default ``nnx.Rngs(0)``).
    """

    def __init__(
        self,
        state_dim: int,
        input_dim: int,
        output_dim: int,
        hidden_dim: int,
        device: str | jax.Device,
        *,
        r_min: float = 0.9,
        r_max: float = 0.999,
        dtype: jnp.dtype = jnp.float32,
        rngs: nnx.Rngs | None = None,
    ) -> None:
        self.config = SSMConfig(state_dim, input_dim, output_dim, hidden_dim, r_min, r_max)
        dtype = jnp.dtype(dtype)
        if dtype not in (jnp.float32, jnp.float64):
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        if dtype == jnp.float64 and not jax.config.jax_enable_x64:
            raise ValueError("dtype float64 needs jax.config.update('jax_enable_x64', True) at start-up")
        rngs = rngs if rngs is not None else nnx.Rngs(0)
        with jax.default_device(resolve_device(device)):
            decay = jax.random.uniform(rngs.params(), (state_dim,), dtype, r_min, r_max)
            self.nu_log = nnx.Param(jnp.log(-jnp.log(decay)))
            self.B = torch_default_linear(input_dim, state_dim, dtype, rngs)
            self.W1 = torch_default_linear(state_dim, hidden_dim, dtype, rngs)
            self.W2 = torch_default_linear(hidden_dim, output_dim, dtype, rngs)
            self.D = torch_default_linear(input_dim, output_dim, dtype, rngs)

    # ---------------------------------------------------------------- maths
    def decay_and_gain(self) -> tuple[Array, Array]:
        """``(lambda, gamma)``, each ``(state_dim,)``."""
        rate = jnp.exp(self.nu_log[...])
        return jnp.exp(-rate), jnp.sqrt(-jnp.expm1(-2.0 * rate))

    def readout(self, h: Array, x: Array) -> Array:
        """``(..., S), (..., I) -> (..., O)``."""
        return self.W2(jax.nn.gelu(self.W1(h), approximate=False)) + self.D(x)

    # ----------------------------------------------------------- entry points
    def __call__(self, x: Array, state: Array | None = None, starts: Array | None = None) -> Array:
        """``(B, I) -> (B, O)`` (one step from ``state``, zeros by default) or ``(B, T, I) -> (B, T, O)``."""
        x = self._check_input(x, ranks=(2, 3))
        if x.ndim == 2:
            return self.step(x, self._state_or_zeros(state, x.shape[0]), starts)[0]
        return self.scan(x, state, starts)[0]

    def step(self, x: Array, state: Array, start: Array | None = None) -> tuple[Array, Array]:
        """One step. ``x (B, I)``, ``state (B, S)``, ``start (B,)`` (1 where an episode starts).

        Returns ``(y (B, O), new_state (B, S))``.
        """
        x = self._check_input(x, ranks=(2,))
        state = self._check_state(state, x.shape[0])
        decay, gain = self.decay_and_gain()
        if start is not None:
            start = self._check_starts(start, x.shape[:1])
            state = state * (1.0 - start)[:, None]
        new_state = decay * state + gain * self.B(x)
        return self.readout(new_state, x), new_state

    def init_state(self, batch_size: int) -> Array:
        """Zeros ``(batch_size, state_dim)`` in the parameters' dtype."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return jnp.zeros((batch_size, self.config.state_dim), self.nu_log.dtype)

    def scan(
        self, xs: Array, state: Array | None = None, starts: Array | None = None, mode: ScanMode = "sequential"
    ) -> tuple[Array, Array]:
        """Run a sequence ``xs (B, T, I)`` with resets ``starts (B, T)``.

        Returns ``(ys (B, T, O), final_state (B, S))``.
        """
        hs = self.hidden_states(xs, state, starts, mode)
        return self.readout(hs, xs), hs[:, -1]

    def hidden_states(
        self, xs: Array, state: Array | None = None, starts: Array | None = None, mode: ScanMode = "sequential"
    ) -> Array:
        """Every hidden state ``h_1 .. h_T`` of the sequence, ``(B, T, S)``."""
        xs = self._check_input(xs, ranks=(3,))
        batch, length = xs.shape[:2]
        state = self._state_or_zeros(state, batch)
        decay, gain = self.decay_and_gain()
        inputs = gain * self.B(xs)  # (B, T, S)
        decays = decay  # (S,) while no episode restarts inside the sequence: less to carry through the scan
        if starts is not None:
            decays = decay * (1.0 - self._check_starts(starts, (batch, length)))[..., None]
        if mode == "sequential":
            return sequential_scan(decays, inputs, state)
        if mode == "parallel":
            return parallel_scan(jnp.broadcast_to(decays, inputs.shape), inputs, state)
        raise ValueError(f"mode must be 'sequential' or 'parallel', got {mode!r}")

    # ------------------------------------------------------------- weights
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the weights (canonical PyTorch layout) and config to a safetensors file (atomically)."""
        save_weights(path, to_canonical(nnx.state(self, nnx.Param)), self.config.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | jax.Device = "cpu") -> SSM:
        """Build an SSM from a file written by :meth:`save` (or by the PyTorch twin)."""
        tensors, config_dict = load_weights(path)
        config = SSMConfig.from_dict(config_dict)
        check_layout(tensors, ssm_layout(config))
        dtypes = {t.dtype.name for t in tensors.values()}
        if len(dtypes) != 1 or not dtypes <= {"float32", "float64"}:
            raise ValueError(f"{str(path)!r}: expected all tensors float32 or all float64, got {sorted(dtypes)}")
        model = cls(
            config.state_dim, config.input_dim, config.output_dim, config.hidden_dim, device,
            r_min=config.r_min, r_max=config.r_max, dtype=jnp.dtype(dtypes.pop()),
        )
        from_canonical(model, tensors)
        return model

    # ------------------------------------------------------------- checks
    def _check_input(self, x: Array, ranks: tuple[int, ...]) -> Array:
        x = as_array("input", x)
        check_rank_and_width("input", x.shape, ranks, self.config.input_dim, "input_dim")
        if x.ndim == 3 and x.shape[1] == 0:
            raise ValueError(f"input: expected at least one time step, got shape {tuple(x.shape)}")
        self._check_dtype("input", x)
        check_finite("input", x)
        return to_jax(x)

    def _check_dtype(self, name: str, x: Array) -> None:
        if x.dtype != self.nu_log.dtype:
            raise TypeError(f"{name} must have dtype {self.nu_log.dtype} (the model's), got {x.dtype}")

    def _check_state(self, state: Array, batch: int) -> Array:
        state = as_array("state", state)
        check_shape("state", state.shape, (batch, self.config.state_dim))
        self._check_dtype("state", state)
        check_finite("state", state)
        return to_jax(state)

    def _state_or_zeros(self, state: Array | None, batch: int) -> Array:
        return self.init_state(batch) if state is None else self._check_state(state, batch)

    def _check_starts(self, starts: Array, shape: tuple[int, ...]) -> Array:
        starts = as_array("starts", starts)
        check_shape("starts", starts.shape, shape)
        if not isinstance(starts, jax.core.Tracer):
            values = np.asarray(starts)
            if not ((values == 0) | (values == 1)).all():
                bad = values[~((values == 0) | (values == 1))]
                raise ValueError(f"starts must hold only 0 or 1 (1 where an episode starts), got {bad.ravel()[0]!r}")
        return to_jax(starts).astype(self.nu_log.dtype)


def type_name(value: object) -> str:
    """``torch.Tensor`` rather than ``Tensor``: the module-qualified name of a non-builtin type."""
    kind = type(value)
    root = kind.__module__.split(".")[0]
    return kind.__qualname__ if root == "builtins" else f"{root}.{kind.__qualname__}"


def as_array(name: str, x: object) -> Array | np.ndarray:
    """A jax array, tracer or numpy array as it is (no cast: its dtype is checked as given); else ``TypeError``."""
    if not isinstance(x, (jax.Array, jax.core.Tracer, np.ndarray)):
        raise TypeError(f"{name}: expected a jax or numpy array, got {type_name(x)}")
    return x


def to_jax(x: Array | np.ndarray) -> Array:
    return x if isinstance(x, (jax.Array, jax.core.Tracer)) else jnp.asarray(x)


def check_finite(name: str, x: Array) -> None:
    """Reject NaN/Inf in concrete arrays; traced values (inside ``jit``/``grad``) cannot be inspected."""
    if not isinstance(x, jax.core.Tracer) and not np.isfinite(np.asarray(x)).all():
        raise ValueError(f"{name} contains NaN or Inf; expected finite values")


def sequential_scan(decays: Array, inputs: Array, state: Array) -> Array:
    """``h_t = decays_t * h_{t-1} + inputs_t`` with ``lax.scan``. ``inputs (B, T, S)``, ``state (B, S)``,
    ``decays`` ``(B, T, S)`` or one ``(S,)`` for every step."""

    def body(h: Array, a_and_b: tuple[Array, Array]) -> tuple[Array, Array]:
        a, b = a_and_b
        h = (decays if a is None else a) * h + b
        return h, h

    per_step = None if decays.ndim == 1 else jnp.swapaxes(decays, 0, 1)
    _, hs = jax.lax.scan(body, state, (per_step, jnp.swapaxes(inputs, 0, 1)))
    return jnp.swapaxes(hs, 0, 1)


def parallel_scan(decays: Array, inputs: Array, state: Array) -> Array:
    """The same recurrence with ``lax.associative_scan``: ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``."""

    def combine(left: tuple[Array, Array], right: tuple[Array, Array]) -> tuple[Array, Array]:
        return left[0] * right[0], right[0] * left[1] + right[1]

    first = decays[:, :1] * state[:, None] + inputs[:, :1]
    _, hs = jax.lax.associative_scan(combine, (decays, jnp.concatenate([first, inputs[:, 1:]], axis=1)), axis=1)
    return hs
