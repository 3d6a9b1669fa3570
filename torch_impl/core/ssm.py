"""The SSM: a stable, real, diagonal linear recurrence with an MLP readout (ARCHITECTURE.md section 2).

    lambda = exp(-exp(nu_log))                       per state channel, always in (0, 1)
    gamma  = sqrt(-expm1(-2 exp(nu_log)))            = sqrt(1 - lambda^2), computed stably
    h_t    = lambda * (1 - start_t) * h_{t-1} + gamma * (B x_t + b_B)
    y_t    = W2 gelu(W1 h_t + b1) + b2 + D x_t + b_D  (exact, erf-based GELU)

The module holds no state between calls: the recurrent state is passed in and returned.
Data-dependent checks (NaN/Inf, 0/1 flags) run at the public boundary, on concrete tensors; under
``torch.func`` transforms (``vmap``, ``grad`` of wrapped inputs) and ``torch.compile`` the forward is
pure tensor maths, so it can be vmapped, differentiated to any order and compiled. The caller of a
transform (e.g. ``MetaMAML``) validates the data before tracing.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from shared.config import SSMConfig
from shared.layout import check_layout, ssm_layout
from shared.validation import check_rank_and_width, check_shape
from shared.weights import load_weights, save_weights
from torch_impl._private import is_functorch_wrapped

ScanMode = Literal["sequential", "parallel"]
# The parallel mode without resets uses the (S, T, T) decay-power matrix up to this many elements.
TOEPLITZ_MAX_ELEMENTS = 1 << 22


class SSM(nn.Module):
    """Diagonal SSM. ``forward`` on ``(batch, input_dim)`` returns ``(batch, output_dim)``.

    Args:
        state_dim: number of recurrent state channels ``S``.
        input_dim: input width ``I``.
        output_dim: output width ``O``.
        hidden_dim: width ``H`` of the readout MLP.
        device: where the parameters live (``"cpu"``, ``"cuda"``, a ``torch.device``).
        r_min: the decays are initialised uniformly in ``[r_min, r_max]``.
        r_max: upper end of that interval.
        dtype: parameter dtype (``torch.float32`` or ``torch.float64``).
    """

    def __init__(
        self,
        state_dim: int,
        input_dim: int,
        output_dim: int,
        hidden_dim: int,
        device: str | torch.device,
        *,
        r_min: float = 0.9,
        r_max: float = 0.999,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.config = SSMConfig(state_dim, input_dim, output_dim, hidden_dim, r_min, r_max)
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        kw = {"device": resolve_device(device), "dtype": dtype}
        decay = torch.empty(state_dim, **kw).uniform_(r_min, r_max)
        self.nu_log = nn.Parameter(torch.log(-torch.log(decay)))
        self.B = nn.Linear(input_dim, state_dim, **kw)
        self.W1 = nn.Linear(state_dim, hidden_dim, **kw)
        self.W2 = nn.Linear(hidden_dim, output_dim, **kw)
        self.D = nn.Linear(input_dim, output_dim, **kw)

    # ---------------------------------------------------------------- maths
    def params(self) -> dict[str, torch.Tensor]:
        """The parameters by canonical name (under ``functional_call``, the substituted ones)."""
        return dict(self.named_parameters())

    def decay_and_gain(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lambda, gamma)``, each ``(state_dim,)``."""
        return ssm_decay_and_gain(self.nu_log)

    def readout(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``(..., S), (..., I) -> (..., O)``."""
        return ssm_readout(self.params(), h, x)

    # ----------------------------------------------------------- entry points
    def forward(
        self, x: torch.Tensor, state: torch.Tensor | None = None, starts: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``(B, I) -> (B, O)`` (one step from ``state``, zeros by default) or ``(B, T, I) -> (B, T, O)``."""
        self._check_input(x, ranks=(2, 3))
        if x.dim() == 2:
            return self.step(x, self._state_or_zeros(state, x.shape[0]), starts)[0]
        return self.scan(x, state, starts)[0]

    def step(
        self, x: torch.Tensor, state: torch.Tensor, start: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step. ``x (B, I)``, ``state (B, S)``, ``start (B,)`` (1 where an episode starts).

        Returns ``(y (B, O), new_state (B, S))``.
        """
        self._check_input(x, ranks=(2,))
        self._check_state(state, x.shape[0])
        if start is not None:
            start = self._check_starts(start, x.shape[:1])
        return ssm_step(self.params(), x, state, start)

    def init_state(self, batch_size: int) -> torch.Tensor:
        """Zeros ``(batch_size, state_dim)`` on the parameters' device and dtype."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        return self.nu_log.new_zeros(batch_size, self.config.state_dim)

    def scan(
        self,
        xs: torch.Tensor,
        state: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
        mode: ScanMode = "sequential",
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run a sequence ``xs (B, T, I)`` with resets ``starts (B, T)``.

        Returns ``(ys (B, T, O), final_state (B, S))``.
        """
        hs = self.hidden_states(xs, state, starts, mode)
        return self.readout(hs, xs), hs[:, -1]

    def hidden_states(
        self,
        xs: torch.Tensor,
        state: torch.Tensor | None = None,
        starts: torch.Tensor | None = None,
        mode: ScanMode = "sequential",
    ) -> torch.Tensor:
        """Every hidden state ``h_1 .. h_T`` of the sequence, ``(B, T, S)``.

        ``mode="parallel"`` computes all steps at once: without ``starts`` (and while ``S * T * T`` is at
        most ``TOEPLITZ_MAX_ELEMENTS``) as one product with the matrix of decay powers
        (:func:`toeplitz_scan`), otherwise with the Hillis-Steele scan (:func:`parallel_scan`).
        """
        self._check_input(xs, ranks=(3,))
        batch, length = xs.shape[:2]
        state = self._state_or_zeros(state, batch)
        decay, gain = self.decay_and_gain()
        inputs = gain * F.linear(xs, self.B.weight, self.B.bias)  # (B, T, S)
        decays = decay  # (S,) while no episode restarts inside the sequence: fewer autograd nodes
        if starts is not None:
            decays = decay * (1.0 - self._check_starts(starts, (batch, length))).unsqueeze(-1)
        if mode == "sequential":
            return sequential_scan(decays, inputs, state)
        if mode == "parallel":
            if starts is None and self.config.state_dim * length * length <= TOEPLITZ_MAX_ELEMENTS:
                return toeplitz_scan(torch.exp(self.nu_log), inputs, state)
            return parallel_scan(decays.expand_as(inputs), inputs, state)
        raise ValueError(f"mode must be 'sequential' or 'parallel', got {mode!r}")

    # ------------------------------------------------------------- weights
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the weights and config to a safetensors file (atomically)."""
        tensors = {name: t.detach().cpu().numpy() for name, t in self.state_dict().items()}
        save_weights(path, tensors, self.config.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> SSM:
        """Build an SSM from a file written by :meth:`save` (or by the JAX twin)."""
        tensors, config_dict = load_weights(path)
        config = SSMConfig.from_dict(config_dict)
        check_layout(tensors, ssm_layout(config))
        dtypes = {t.dtype for t in tensors.values()}
        if len(dtypes) != 1 or next(iter(dtypes)).name not in ("float32", "float64"):
            found = sorted(d.name for d in dtypes)
            raise ValueError(f"{str(path)!r}: expected all tensors float32 or all float64, got {found}")
        dtype = torch.float64 if next(iter(dtypes)).name == "float64" else torch.float32
        model = cls(
            config.state_dim, config.input_dim, config.output_dim, config.hidden_dim, device,
            r_min=config.r_min, r_max=config.r_max, dtype=dtype,
        )
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
        return model

    # ------------------------------------------------------------- checks
    def _check_input(self, x: torch.Tensor, ranks: tuple[int, ...]) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        check_rank_and_width("input", x.shape, ranks, self.config.input_dim, "input_dim")
        if x.dim() == 3 and x.shape[1] == 0:
            raise ValueError(f"input has no time steps (shape {tuple(x.shape)}); expected at least one time step")
        self._check_dtype_device("input", x)
        if not _traced(x) and not bool(torch.isfinite(x).all()):
            raise ValueError("input contains NaN or Inf; expected finite values")

    def _check_dtype_device(self, name: str, t: torch.Tensor) -> None:
        ref = self.nu_log
        if t.dtype != ref.dtype:
            raise TypeError(f"{name} must have dtype {ref.dtype} (the model's), got {t.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{name} must be on device {ref.device} (the model's), got {t.device}")

    def _check_state(self, state: torch.Tensor, batch: int) -> None:
        if not isinstance(state, torch.Tensor):
            raise TypeError(f"state must be a torch.Tensor, got {type(state).__name__}")
        check_shape("state", state.shape, (batch, self.config.state_dim))
        self._check_dtype_device("state", state)
        if not _traced(state) and not bool(torch.isfinite(state).all()):
            raise ValueError("state contains NaN or Inf; expected finite values")

    def _state_or_zeros(self, state: torch.Tensor | None, batch: int) -> torch.Tensor:
        if state is None:
            return self.init_state(batch)
        self._check_state(state, batch)
        return state

    def _check_starts(self, starts: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if not isinstance(starts, torch.Tensor):
            raise TypeError(f"starts must be a torch.Tensor of 0/1 flags, got {type(starts).__name__}")
        check_shape("starts", starts.shape, shape)
        if starts.device != self.nu_log.device:
            raise ValueError(f"starts must be on device {self.nu_log.device}, got {starts.device}")
        if starts.dtype.is_complex:
            raise TypeError(f"starts must be a real or bool tensor of 0/1 flags, got {starts.dtype}")
        if not _traced(starts) and not bool(((starts == 0) | (starts == 1)).all()):
            bad = starts[(starts != 0) & (starts != 1)].flatten()[:3].tolist()
            raise ValueError(f"starts must hold only 0 or 1 (episode-start flags), got values such as {bad}")
        return starts.to(self.nu_log.dtype)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine, else ``ValueError`` naming the valid ones."""
    valid = ["cpu"]
    if torch.cuda.is_available():
        valid += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if torch.backends.mps.is_available():
        valid.append("mps")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a str or torch.device, one of {valid}, got {type(device).__name__}")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device must be one of {valid} (or a torch.device), got {device!r}") from err
    if resolved.type != "cpu" and str(resolved) not in valid:
        raise ValueError(f"device {device!r} is not available on this machine; expected one of {valid}")
    return resolved


def _traced(t: torch.Tensor) -> bool:
    """Inside ``torch.compile`` or a ``torch.func`` transform that wraps ``t``: no data-dependent checks."""
    return torch.compiler.is_compiling() or is_functorch_wrapped(t)


def ssm_decay_and_gain(nu_log: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``lambda = exp(-exp(nu_log))`` and ``gamma = sqrt(1 - lambda^2)``, computed stably."""
    rate = torch.exp(nu_log)
    return torch.exp(-rate), torch.sqrt(-torch.expm1(-2.0 * rate))


def ssm_readout(params: dict[str, torch.Tensor], h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``W2 gelu(W1 h + b1) + b2 + D x + b_D``; ``params`` by canonical name (see :func:`ssm_step` for
    stacked parameters)."""
    hidden = F.gelu(_affine(h, params["W1.weight"], params["W1.bias"]))
    return _affine(hidden, params["W2.weight"], params["W2.bias"]) + _affine(x, params["D.weight"], params["D.bias"])


def ssm_step(params: dict[str, torch.Tensor], x: torch.Tensor, state: torch.Tensor,
         start: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of the SSM as a pure function of its parameters (no checks): ``(y, new_state)``.

    ``params`` are one set (``x (B, I)``, ``state (B, S)``) or a stack of ``N`` sets with a leading
    axis (``x (N, B, I)``, ``state (N, B, S)``; set ``i`` acts on ``x[i]``), which runs as batched
    matrix products, cheaper than ``torch.func.vmap`` for one small step.
    """
    decay, gain = ssm_decay_and_gain(params["nu_log"])
    if params["nu_log"].dim() == 2:
        decay, gain = decay.unsqueeze(-2), gain.unsqueeze(-2)
    if start is not None:
        state = state * (1.0 - start).unsqueeze(-1)
    new_state = decay * state + gain * _affine(x, params["B.weight"], params["B.bias"])
    return ssm_readout(params, new_state, x), new_state


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``x W^T + b``; ``weight (O, I)``, or stacked ``(N, O, I)`` with ``x (N, B, I)`` and ``bias (N, O)``."""
    if weight.dim() == 2:
        return F.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(-2), x, weight.transpose(-1, -2))


def sequential_scan(decays: torch.Tensor, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """``h_t = decays_t * h_{t-1} + inputs_t`` step by step. ``inputs (B, T, S)``, ``state (B, S)``,
    ``decays`` ``(B, T, S)`` or one ``(S,)`` for every step."""
    hs = []
    for t in range(inputs.shape[1]):
        state = (decays if decays.dim() == 1 else decays[:, t]) * state + inputs[:, t]
        hs.append(state)
    return torch.stack(hs, dim=1)


def toeplitz_scan(rate: torch.Tensor, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """The recurrence with one decay ``lambda = exp(-rate)`` per channel and no resets, all steps at once:
    ``h_t = sum_{s<=t} lambda^(t-s) u_s + lambda^(t+1) h_0`` as one batched matrix product with the
    ``(S, T, T)`` lower-triangular matrix of decay powers ``exp(-rate (t - s))``. ``rate (S,)``,
    ``inputs (B, T, S)``, ``state (B, S)``. Few, large, fusable ops: cheap to differentiate to any order.
    """
    steps = torch.arange(inputs.shape[1], dtype=inputs.dtype, device=inputs.device)
    lag = steps[:, None] - steps[None, :]  # (T, T): t - s
    powers = torch.exp(-rate[:, None, None] * lag.clamp(min=0))  # (S, T, T); clamp keeps the masked part finite
    kernel = torch.where(lag >= 0, powers, torch.zeros((), dtype=inputs.dtype, device=inputs.device))
    carried = torch.exp(-rate * (steps[:, None] + 1)) * state.unsqueeze(1)  # (B, T, S)
    return torch.einsum("cts,bsc->btc", kernel, inputs) + carried


def parallel_scan(decays: torch.Tensor, inputs: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
    """The same recurrence as an out-of-place Hillis-Steele associative scan, ``ceil(log2 T)`` rounds.

    Pairs compose as ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``. No tensor is written in place,
    so autograd can differentiate it to any order.
    """
    first = decays[:, :1] * state.unsqueeze(1) + inputs[:, :1]
    a, b = decays, torch.cat([first, inputs[:, 1:]], dim=1)
    length = inputs.shape[1]
    for level in range(math.ceil(math.log2(length)) if length > 1 else 0):
        shift = 1 << level
        # Element t combines with element t - shift; the first `shift` elements meet the identity (1, 0).
        b = a * F.pad(b[:, :-shift], (0, 0, shift, 0)) + b
        a = a * F.pad(a[:, :-shift], (0, 0, shift, 0), value=1.0)
    return b
