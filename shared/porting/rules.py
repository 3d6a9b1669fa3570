"""Weight-mapping rules between a PyTorch layer's tensors and its Flax NNX twin's variables (pure numpy).

A :class:`Rule` maps one layer in both directions. Tensors are keyed by their name *relative to the
layer*: torch ``{"weight": (out, in), "bias": (out,)}`` <-> Flax ``{"kernel": (in, out), "bias": (out,)}``.
Every built-in rule only renames, transposes or copies, so both directions are exact (bit for bit).

Layouts (torch -> Flax NNX, flax 0.12):

    Linear       weight (O, I)            -> kernel (I, O);  bias (O,) -> bias
    ConvNd       weight (O, I/g, *K)      -> kernel (*K, I/g, O);  bias -> bias
    LayerNorm,   weight (C,)              -> scale;  bias -> bias
    RMSNorm, GroupNorm
    Embedding    weight (N, D)            -> embedding (N, D)
    BatchNormNd  weight, bias             -> scale, bias;  running_mean, running_var -> mean, var
                 (num_batches_tracked has no Flax twin: flax -> torch keeps the torch model's value)
    GRU          weight_ih_l0 (3H, I)     -> dense_i.kernel (I, 3H);  bias_ih_l0 -> dense_i.bias
                 weight_hh_l0 (3H, H)     -> dense_h.kernel (H, 3H);  bias_hh_l0 -> dense_h.bias
                 (both pack the gates as (r, z, n); see :func:`gru_to_flax` for the hidden bias)
    SSM          shared.layout (Linear rules for B, W1, W2, D; nu_log copied)

Rules are registered by class name, ``register_rule("MyTorchLayer", "MyFlaxLayer", rule)``; a class
inherits the rules of its bases (names are matched along the method resolution order).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping

import numpy as np

from shared.layout import flax_to_torch, torch_to_flax

Tensors = dict[str, np.ndarray]
Shapes = Mapping[str, tuple[int, ...]]
Converter = Callable[[Mapping[str, np.ndarray], Shapes], Tensors]


class RuleError(ValueError):
    """A rule cannot map the tensors it was given (a layout it does not support)."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """How one layer's tensors map between the frameworks.

    Attributes:
        name: shown in reports and errors.
        to_flax: ``(torch tensors, flax shapes) -> flax tensors``, keys relative to the layer.
        to_torch: ``(flax tensors, torch shapes) -> torch tensors``.
        torch_only: torch tensors with no Flax twin (ignored going to Flax; going to torch the
            torch model keeps its own value), e.g. BatchNorm's ``num_batches_tracked``.
        flax_only: the same for Flax variables.
    """

    name: str
    to_flax: Converter
    to_torch: Converter
    torch_only: tuple[str, ...] = ()
    flax_only: tuple[str, ...] = ()


def _copy(x: np.ndarray) -> np.ndarray:
    return np.array(x, copy=True)


def _t(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(x).T)


def renaming(name: str, torch_to_flax_names: Mapping[str, str], torch_only: tuple[str, ...] = ()) -> Rule:
    """A rule that only renames (and copies) tensors, e.g. ``{"weight": "scale", "bias": "bias"}``."""
    back = {v: k for k, v in torch_to_flax_names.items()}

    def to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
        return {torch_to_flax_names.get(k, k): _copy(v) for k, v in tensors.items()}

    def to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
        return {back.get(k, k): _copy(v) for k, v in tensors.items()}

    return Rule(name, to_flax, to_torch, torch_only=torch_only)


# --------------------------------------------------------------------------- Linear
def linear_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """``weight (O, I) -> kernel (I, O)``, ``bias`` copied."""
    out = {k: _copy(v) for k, v in tensors.items() if k != "weight"}
    if "weight" in tensors:
        out["kernel"] = _t(_require_ndim(tensors["weight"], 2, "weight", "(out, in)"))
    return out


def linear_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """``kernel (I, O) -> weight (O, I)``, ``bias`` copied."""
    out = {k: _copy(v) for k, v in tensors.items() if k != "kernel"}
    if "kernel" in tensors:
        out["weight"] = _t(_require_ndim(tensors["kernel"], 2, "kernel", "(in, out)"))
    return out


# --------------------------------------------------------------------------- ConvNd
def conv_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """``weight (O, I/groups, *K) -> kernel (*K, I/groups, O)`` for any number of spatial dims."""
    out = {k: _copy(v) for k, v in tensors.items() if k != "weight"}
    if "weight" in tensors:
        w = np.asarray(tensors["weight"])
        if w.ndim < 3:
            raise RuleError(f"a convolution weight must be (out, in/groups, *kernel), got shape {w.shape}")
        out["kernel"] = np.ascontiguousarray(np.transpose(w, (*range(2, w.ndim), 1, 0)))
    return out


def conv_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """``kernel (*K, I/groups, O) -> weight (O, I/groups, *K)``."""
    out = {k: _copy(v) for k, v in tensors.items() if k != "kernel"}
    if "kernel" in tensors:
        k = np.asarray(tensors["kernel"])
        if k.ndim < 3:
            raise RuleError(f"a convolution kernel must be (*kernel, in/groups, out), got shape {k.shape}")
        n = k.ndim - 2
        out["weight"] = np.ascontiguousarray(np.transpose(k, (n + 1, n, *range(n))))
    return out


# --------------------------------------------------------------------------- GRU
GRU_TORCH = ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")


def gru_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """torch ``nn.GRU`` (one layer, one direction, with biases) -> Flax ``nnx.GRUCell`` whose
    ``dense_h`` has a bias.

    torch:  r = s(W_ir x + b_ir + W_hr h + b_hr),  z = s(W_iz x + b_iz + W_hz h + b_hz),
            n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) n + z h.
    flax 0.12 ``GRUCell``: ``dense_i`` (I -> 3H, bias) and ``dense_h`` (H -> 3H), both split into
    (r, z, n) like torch's packing, and n = tanh(xi_n + r * hh_n): the hidden bias of n must sit in
    ``dense_h``, inside r * (...). Stock ``nnx.GRUCell`` builds ``dense_h`` without a bias, so it
    cannot hold torch's b_hn: give the cell a biased ``dense_h`` (``ssm_metarl.porting.
    torch_compatible_gru_cell``). With it the mapping is a transpose per weight, exact both ways.
    """
    extra = sorted(set(tensors) - set(GRU_TORCH))
    if extra:
        raise RuleError(
            f"only a one-layer, one-direction nn.GRU maps onto one nnx.GRUCell; found {extra}. "
            "Port each layer/direction as its own cell and pair them with overrides"
        )
    missing = sorted(set(GRU_TORCH) - set(tensors))
    if missing:
        raise RuleError(f"nn.GRU without biases (bias=False) has no nnx.GRUCell twin (its dense_i has a bias); "
                        f"missing {missing}")
    if "dense_h.bias" not in shapes:
        raise RuleError(
            "this nnx.GRUCell's dense_h has no bias, so torch's b_hn (inside r * (W_hn h + b_hn)) has no place "
            "in it; build the cell with ssm_metarl.porting.torch_compatible_gru_cell (dense_h with a bias)"
        )
    return {
        "dense_i.kernel": _t(tensors["weight_ih_l0"]),
        "dense_i.bias": _copy(tensors["bias_ih_l0"]),
        "dense_h.kernel": _t(tensors["weight_hh_l0"]),
        "dense_h.bias": _copy(tensors["bias_hh_l0"]),
    }


def gru_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """The inverse of :func:`gru_to_flax`."""
    expected = {"dense_i.kernel", "dense_i.bias", "dense_h.kernel", "dense_h.bias"}
    if set(tensors) != expected:
        raise RuleError(f"expected a GRUCell with {sorted(expected)}, got {sorted(tensors)} "
                        "(a dense_h without bias cannot hold torch's b_hn)")
    return {
        "weight_ih_l0": _t(tensors["dense_i.kernel"]),
        "bias_ih_l0": _copy(tensors["dense_i.bias"]),
        "weight_hh_l0": _t(tensors["dense_h.kernel"]),
        "bias_hh_l0": _copy(tensors["dense_h.bias"]),
    }


# --------------------------------------------------------------------------- SSM and loose tensors
def ssm_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    return flatten_nested(torch_to_flax(tensors))


def ssm_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    return flax_to_torch(unflatten(tensors))


def identity_to(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    return {k: _copy(v) for k, v in tensors.items()}


def transpose_to(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    return {k: _t(v) for k, v in tensors.items()}


LINEAR = Rule("linear", linear_to_flax, linear_to_torch)
CONV = Rule("conv", conv_to_flax, conv_to_torch)
NORM = renaming("norm", {"weight": "scale", "bias": "bias"})
EMBEDDING = renaming("embedding", {"weight": "embedding"})
BATCH_NORM = renaming("batch_norm", {"weight": "scale", "bias": "bias", "running_mean": "mean",
                                     "running_var": "var"}, torch_only=("num_batches_tracked",))
GRU = Rule("gru", gru_to_flax, gru_to_torch)
SSM = Rule("ssm", ssm_to_flax, ssm_to_torch)
IDENTITY = Rule("identity", identity_to, identity_to)
TRANSPOSE = Rule("transpose", transpose_to, transpose_to)


# --------------------------------------------------------------------------- registry
_REGISTRY: dict[tuple[str, str], Rule] = {}


def register_rule(torch_type: str, flax_type: str, rule: Rule) -> None:
    """Use ``rule`` for a torch layer of class ``torch_type`` paired with a Flax module of class
    ``flax_type`` (class names; subclasses match too). A later registration replaces an earlier one."""
    if not isinstance(rule, Rule):
        raise TypeError(f"rule must be a shared.porting.Rule, got {type(rule).__name__}")
    for name, value in (("torch_type", torch_type), ("flax_type", flax_type)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name} must be a class name (a non-empty str), got {value!r}")
    _REGISTRY[(torch_type, flax_type)] = rule


def unregister_rule(torch_type: str, flax_type: str) -> None:
    _REGISTRY.pop((torch_type, flax_type), None)


for _torch, _flax, _rule in (
    ("Linear", "Linear", LINEAR),
    ("Conv1d", "Conv", CONV), ("Conv2d", "Conv", CONV), ("Conv3d", "Conv", CONV),
    ("LayerNorm", "LayerNorm", NORM), ("RMSNorm", "RMSNorm", NORM), ("GroupNorm", "GroupNorm", NORM),
    ("Embedding", "Embed", EMBEDDING),
    ("_BatchNorm", "BatchNorm", BATCH_NORM),
    ("GRU", "GRUCell", GRU),
    ("SSM", "SSM", SSM),
):
    register_rule(_torch, _flax, _rule)


def known_types(side: str) -> frozenset[str]:
    """Class names that have a rule on ``side`` (``"torch"`` or ``"flax"``)."""
    index = {"torch": 0, "flax": 1}[side]
    return frozenset(key[index] for key in _REGISTRY)


def find_rule(torch_mro: Iterable[str], flax_mro: Iterable[str]) -> Rule | None:
    """The rule for the most specific pair of class names (each list: a class's MRO names)."""
    flax_names = list(flax_mro)
    for t in torch_mro:
        for f in flax_names:
            if (t, f) in _REGISTRY:
                return _REGISTRY[(t, f)]
    return None


# --------------------------------------------------------------------------- helpers
def _require_ndim(x: np.ndarray, ndim: int, name: str, layout: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != ndim:
        raise RuleError(f"{name} must be {ndim}-D {layout}, got shape {x.shape}")
    return x


def flatten_nested(tree: Mapping, prefix: str = "") -> Tensors:
    out: Tensors = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten_nested(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(flat: Mapping[str, np.ndarray]) -> dict:
    nested: dict = {}
    for name, value in flat.items():
        *path, leaf = name.split(".")
        node = nested
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    return nested
