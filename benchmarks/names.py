"""Contender names and roles, shared by the workloads, the runner and the headline table.

Roles: ``ours`` (our API, one row per mode), ``floor`` (the fastest hand-written code for the same
maths in that framework), ``reference`` (the plain autograd loop, kept for comparison; not a floor),
``peer`` (another library). Conclusions are drawn only between each framework's best contender.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Contender:
    name: str
    framework: str  # "torch" or "jax"
    role: str  # "ours", "floor", "reference", "peer"
    compiled: bool  # torch.compile or jax.jit: its first call is reported as the compile time


TORCH_LOOP = Contender("torch ours loop", "torch", "ours", False)
TORCH_VMAP = Contender("torch ours vmap", "torch", "ours", False)
TORCH_COMPILED = Contender("torch ours compiled", "torch", "ours", True)
FLOOR_EAGER = Contender("torch floor func eager", "torch", "floor", False)
FLOOR_COMPILED = Contender("torch floor func compiled", "torch", "floor", True)
AUTOGRAD = Contender("torch autograd loop (reference)", "torch", "reference", False)
HIGHER = Contender("higher", "torch", "peer", False)
TORCHOPT = Contender("torchopt", "torch", "peer", False)
JAX_OURS = Contender("jax ours jit", "jax", "ours", True)
JAX_FLOOR_OUT_IN = Contender("jax floor (out,in)", "jax", "floor", True)
JAX_FLOOR_IN_OUT = Contender("jax floor (in,out)", "jax", "floor", True)

MAML = (TORCH_LOOP, TORCH_VMAP, TORCH_COMPILED, FLOOR_EAGER, FLOOR_COMPILED, AUTOGRAD, HIGHER, TORCHOPT, JAX_OURS,
        JAX_FLOOR_OUT_IN, JAX_FLOOR_IN_OUT)
BY_NAME = {c.name: c for c in MAML}

# Ratios the headline reports per MAML case: (label, ours, floor). Target: each <= 1.2.
RATIOS = (
    ("torch loop / floor eager", TORCH_LOOP.name, FLOOR_EAGER.name),
    ("torch vmap / floor eager", TORCH_VMAP.name, FLOOR_EAGER.name),
    ("torch compiled / floor compiled", TORCH_COMPILED.name, FLOOR_COMPILED.name),
    ("jax ours / floor (in,out)", JAX_OURS.name, JAX_FLOOR_IN_OUT.name),
    ("jax ours / floor (out,in)", JAX_OURS.name, JAX_FLOOR_OUT_IN.name),
)


def is_compiled(name: str) -> bool:
    """Whether a contender's first call compiles (MAML names above, and the forward-pass cases' names)."""
    if name in BY_NAME:
        return BY_NAME[name].compiled
    return name.startswith(("jax jit", "jax floor")) or "compile" in name or "native" in name


def framework(name: str) -> str:
    if name in BY_NAME:
        return BY_NAME[name].framework
    return "jax" if name.startswith("jax") else "torch"
