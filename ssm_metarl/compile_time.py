"""Compilation time: JAX (tracing, lowering, XLA, through ``jax.monitoring``) and ``torch.compile``."""

from __future__ import annotations

EVENTS = frozenset({"/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                    "/jax/core/compile/backend_compile_duration"})
# tqdm's bar with the ETA and a rate always in iterations per second
BAR_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} "
              "[{elapsed} elapsed, ETA {remaining}, {rate_noinv_fmt}{postfix}]")
_total = [0.0]
_listening = [False]


def _listen(event: str, duration: float, **_: object) -> None:
    if event in EVENTS:
        _total[0] += duration


def jax_compile_seconds() -> float:
    """Seconds this process has spent compiling JAX functions since the first call of this function."""
    if not _listening[0]:
        import jax

        jax.monitoring.register_event_duration_secs_listener(_listen)
        _listening[0] = True
    return _total[0]


def torch_compile_seconds() -> float:
    """Seconds this process has spent in ``torch.compile`` (dynamo + inductor), from dynamo's own timers."""
    from torch._dynamo.utils import compilation_time_metrics

    return float(sum(compilation_time_metrics.get("_compile.compile_inner", [])))


def compile_seconds(backend: str) -> float:
    """Seconds this process has spent compiling in ``backend`` (``"torch"`` or ``"jax"``) so far."""
    return {"torch": torch_compile_seconds, "jax": jax_compile_seconds}[backend]()
