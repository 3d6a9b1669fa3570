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
    ConvTransposeNd  weight (I, O, *K)    -> kernel (*K, I, O), spatial axes flipped
                 (``transpose_kernel=True``: kernel (*K, O, I), flax flips it itself)
    Linear       weight (O, I)            -> LinearGeneral / Einsum head-shaped kernel, e.g. (D, N, H)
    *RMSNorm,    one 1-D weight           -> scale (custom classes, by structure; ``1 + weight``
    *LayerNorm                               conventions detected, see :func:`_norm_for`)
    GRU, LSTM    see ``shared.porting.recurrent`` (any layers and directions)
    MultiheadAttention  see ``shared.porting.attention``
    SSM          shared.layout (Linear rules for B, W1, W2, D; nu_log copied)

Rules are registered by class name, ``register_rule("MyTorchLayer", "MyFlaxLayer", rule)``; a class
inherits the rules of its bases (names are matched along the method resolution order).
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from shared.layout import flax_to_torch, torch_to_flax

Tensors = dict[str, np.ndarray]
Shapes = Mapping[str, tuple[int, ...]]
Converter = Callable[[Mapping[str, np.ndarray], Shapes], Tensors]
Attributes = Mapping[str, Any]
Specialiser = Callable[[Attributes, Attributes], "Rule"]


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
    specialise: Specialiser | None = None

    def for_modules(self, torch_attributes: Attributes, flax_attributes: Attributes) -> Rule:
        """The rule for one pair of modules: ``specialise`` picks a variant from the modules'
        attributes (e.g. a ConvTranspose's ``transpose_kernel``, an Einsum's ``einsum_str``)."""
        if self.specialise is None:
            return self
        return self.specialise(torch_attributes, flax_attributes)


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


# --------------------------------------------------------------------------- SSM and loose tensors
def ssm_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    return flatten_nested(torch_to_flax(tensors))


def ssm_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    return flax_to_torch(unflatten(tensors))


def identity_to(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    return {k: _copy(v) for k, v in tensors.items()}


def transpose_to(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    return {k: _t(v) for k, v in tensors.items()}


# --------------------------------------------------------------------------- ConvTransposeNd
def conv_transpose_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """torch ``ConvTransposeNd`` ``weight (I, O, *K)`` -> ``nnx.ConvTranspose(transpose_kernel=False)``
    ``kernel (*K, I, O)`` with every spatial axis flipped.

    torch's transposed convolution is the gradient of a convolution (it correlates with the flipped
    kernel); ``lax.conv_transpose`` without ``transpose_kernel`` does not flip. Padding is the user's:
    torch ``padding=p, output_padding=q, dilation=d`` is flax ``padding=[(d(k-1)-p, d(k-1)-p+q)]``.
    """
    out = {k: _copy(v) for k, v in tensors.items() if k != "weight"}
    if "weight" in tensors:
        w = np.asarray(tensors["weight"])
        if w.ndim < 3:
            raise RuleError(f"a transposed convolution weight must be (in, out/groups, *kernel), got shape {w.shape}")
        spatial = tuple(range(2, w.ndim))
        out["kernel"] = np.ascontiguousarray(np.transpose(np.flip(w, spatial), (*spatial, 0, 1)))
    _check_conv_transpose_groups(out, shapes)
    return out


def conv_transpose_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """The inverse of :func:`conv_transpose_to_flax`."""
    out = {k: _copy(v) for k, v in tensors.items() if k != "kernel"}
    if "kernel" in tensors:
        k = np.asarray(tensors["kernel"])
        if k.ndim < 3:
            raise RuleError(f"a transposed convolution kernel must be (*kernel, in, out), got shape {k.shape}")
        n = k.ndim - 2
        w = np.transpose(k, (n, n + 1, *range(n)))
        out["weight"] = np.ascontiguousarray(np.flip(w, tuple(range(2, w.ndim))))
    return out


def _check_conv_transpose_groups(mapped: Mapping[str, np.ndarray], shapes: Shapes) -> None:
    if "kernel" in mapped and "kernel" in shapes and mapped["kernel"].shape != tuple(shapes["kernel"]):
        raise RuleError(f"torch's kernel maps to {mapped['kernel'].shape}, the flax ConvTranspose holds "
                        f"{tuple(shapes['kernel'])}: nnx.ConvTranspose has no groups (torch groups=1 only)")


def conv_transpose_flipped_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """``nnx.ConvTranspose(transpose_kernel=True)``: flax flips the kernel itself and holds it as
    ``(*K, O, I)``, so torch's ``weight (I, O, *K)`` only moves its spatial axes first."""
    return conv_to_flax(tensors, shapes)


def _conv_transpose_for(torch_attributes: Attributes, flax_attributes: Attributes) -> Rule:
    return CONV_TRANSPOSE_FLIPPED if flax_attributes.get("transpose_kernel") else CONV_TRANSPOSE


# --------------------------------------------------------------------------- Linear <-> LinearGeneral / Einsum
def _split_point(shape: tuple[int, ...], first: int) -> int | None:
    size = 1
    for i, dim in enumerate(shape):
        if size == first:
            return i
        size *= dim
    return len(shape) if size == first else None


def linear_general_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """torch ``Linear`` ``weight (O, I)`` -> a head-shaped ``kernel (*in_dims, *out_dims)`` (e.g.
    ``(D, N, H)`` for a query projection, ``(N, H, D)`` for an output projection): ``weight.T``
    reshaped row-major; ``bias (O,)`` -> the flax bias shape (e.g. ``(N, H)``)."""
    out: Tensors = {}
    if "weight" in tensors:
        w = _require_ndim(tensors["weight"], 2, "weight", "(out, in)")
        kernel_shape = tuple(shapes.get("kernel", (w.shape[1], w.shape[0])))
        if _split_point(kernel_shape, w.shape[1]) is None or np.prod(kernel_shape) != w.size:
            raise RuleError(f"a Linear weight {w.shape} (out, in) does not reshape to the flax kernel {kernel_shape}: "
                            f"its leading axes must multiply to in={w.shape[1]} and the rest to out={w.shape[0]}")
        out["kernel"] = np.ascontiguousarray(_t(w).reshape(kernel_shape))
    if "bias" in tensors:
        out["bias"] = np.array(tensors["bias"]).reshape(tuple(shapes.get("bias", np.shape(tensors["bias"]))))
    return out


def linear_general_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """The inverse of :func:`linear_general_to_flax`: ``kernel (*in_dims, *out_dims) -> weight (O, I)``."""
    out: Tensors = {}
    if "kernel" in tensors:
        k = np.asarray(tensors["kernel"])
        if "weight" in shapes:
            o, i = shapes["weight"]
        else:
            raise RuleError("mapping a head-shaped kernel to a torch Linear needs the torch weight's shape")
        if _split_point(k.shape, i) is None or k.size != o * i:
            raise RuleError(f"the flax kernel {k.shape} does not flatten to a torch Linear weight ({o}, {i})")
        out["weight"] = _t(k.reshape(i, o))
    if "bias" in tensors:
        out["bias"] = np.array(tensors["bias"]).reshape(-1)
    return out


def einsum_rule(einsum_str: str) -> Rule:
    """torch ``Linear`` <-> ``nnx.Einsum(einsum_str)`` whose kernel is any permutation of head axes,
    e.g. ``"BTD,NDH->BTNH"`` (kernel (N, D, H)) or ``"BTNH,NHD->BTD"`` (kernel (N, H, D)).

    torch's ``in`` features are the contracted axes in the order the input holds them; its ``out``
    features are the kernel's remaining axes in the order the output holds them (the torch code
    reshapes ``(..., N*H)`` to ``(..., N, H)``). A kernel axis shared with both operands (per-head
    weights) is not a Linear: :class:`RuleError`.
    """
    spec = einsum_str.replace(" ", "").replace("...", "")
    try:
        inputs, output = spec.split("->")
        lhs, rhs = inputs.split(",")
    except ValueError:
        raise RuleError(f"expected an einsum string 'lhs,kernel->out', got {einsum_str!r}") from None
    contracted = [c for c in lhs if c in rhs and c not in output]
    produced = [c for c in output if c in rhs and c not in lhs]
    if sorted(contracted + produced) != sorted(rhs):
        raise RuleError(f"the Einsum {einsum_str!r} is not a Linear layer: every kernel axis must be either "
                        "contracted with the input or kept in the output (not both)")
    order = contracted + produced  # kernel axes as torch's (in, out) flattens them
    to_linear = [rhs.index(c) for c in order]
    from_linear = [order.index(c) for c in rhs]

    def to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
        out: Tensors = {}
        if "weight" in tensors:
            w = _require_ndim(tensors["weight"], 2, "weight", "(out, in)")
            kernel_shape = tuple(shapes.get("kernel", ()))
            if len(kernel_shape) != len(rhs) or int(np.prod(kernel_shape)) != w.size:
                raise RuleError(f"a Linear weight {w.shape} does not fit the Einsum {einsum_str!r} kernel "
                                f"{kernel_shape}")
            linear_shape = [kernel_shape[rhs.index(c)] for c in order]
            if int(np.prod(linear_shape[:len(contracted)])) != w.shape[1]:
                raise RuleError(f"the Einsum {einsum_str!r} contracts axes {''.join(contracted)} of size "
                                f"{int(np.prod(linear_shape[:len(contracted)]))}, the torch Linear takes {w.shape[1]}")
            out["kernel"] = np.ascontiguousarray(np.transpose(_t(w).reshape(linear_shape), from_linear))
        if "bias" in tensors:
            out["bias"] = np.array(tensors["bias"]).reshape(tuple(shapes.get("bias", np.shape(tensors["bias"]))))
        return out

    def to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
        out: Tensors = {}
        if "kernel" in tensors:
            k = np.transpose(np.asarray(tensors["kernel"]), to_linear)
            n_in = int(np.prod(k.shape[:len(contracted)]))
            out["weight"] = _t(k.reshape(n_in, -1))
        if "bias" in tensors:
            out["bias"] = np.array(tensors["bias"]).reshape(-1)
        return out

    return Rule(f"linear<->einsum {einsum_str}", to_flax, to_torch)


def _einsum_for(torch_attributes: Attributes, flax_attributes: Attributes) -> Rule:
    einsum_str = flax_attributes.get("einsum_str")
    if not isinstance(einsum_str, str):
        raise RuleError("an nnx.Einsum without an einsum_str attribute cannot be paired with a torch Linear")
    return einsum_rule(einsum_str)


# --------------------------------------------------------------------------- norms by structure
def _norm_for(torch_attributes: Attributes, flax_attributes: Attributes) -> Rule:
    """A custom torch norm class (``*RMSNorm``, ``*LayerNorm``) with one 1-D weight (and maybe a bias)."""
    t_offset = torch_attributes.get("scale_offset", 0.0)
    f_offset = flax_attributes.get("scale_offset", 0.0)
    if t_offset != f_offset:
        raise RuleError(
            f"the torch norm multiplies by ({t_offset:g} + weight), the flax norm by ({f_offset:g} + scale): "
            "copying the weight would change the model and 1 + weight is not exactly invertible. Build the flax "
            "side with ssm_metarl.porting.OffsetRMSNorm (scale_offset=1.0: y = x_normed * (1 + scale)), or map "
            "with overrides={path: (path, shared.porting.rules.PLUS_ONE_SCALE)} (exact to flax, rounded back)"
        )
    return NORM_BY_STRUCTURE_BASE


def norm_by_structure_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """One 1-D weight of any name -> ``scale``; ``bias`` -> ``bias``."""
    weights = [k for k in tensors if k != "bias"]
    if len(weights) != 1 or np.ndim(tensors[weights[0]]) != 1:
        raise RuleError(f"a norm pairs by structure when it holds one 1-D weight (and maybe a bias); got "
                        f"{ {k: np.shape(v) for k, v in tensors.items()} }")
    out = {"scale": _copy(tensors[weights[0]])}
    if "bias" in tensors:
        out["bias"] = _copy(tensors["bias"])
    return out


def norm_by_structure_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    weights = [k for k in shapes if k != "bias"] or ["weight"]
    if len(weights) != 1:
        raise RuleError(f"the torch norm holds {sorted(shapes)}; expected one weight (and maybe a bias)")
    out = {weights[0]: _copy(tensors["scale"])}
    if "bias" in tensors:
        out["bias"] = _copy(tensors["bias"])
    return out


def plus_one_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """``scale = 1 + weight`` (a torch ``x * (1 + weight)`` norm onto a plain ``x * scale`` one)."""
    mapped = norm_by_structure_to_flax(tensors, shapes)
    mapped["scale"] = mapped["scale"] + np.asarray(1, mapped["scale"].dtype)
    return mapped


def plus_one_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """``weight = scale - 1``: rounded, so flax -> torch -> flax is exact only where 1 + w is."""
    shifted = dict(tensors)
    shifted["scale"] = np.asarray(tensors["scale"]) - np.asarray(1, np.asarray(tensors["scale"]).dtype)
    return norm_by_structure_to_torch(shifted, shapes)


LINEAR = Rule("linear", linear_to_flax, linear_to_torch)
CONV = Rule("conv", conv_to_flax, conv_to_torch)
CONV_TRANSPOSE = Rule("conv_transpose", conv_transpose_to_flax, conv_transpose_to_torch,
                      specialise=_conv_transpose_for)
CONV_TRANSPOSE_FLIPPED = Rule("conv_transpose(transpose_kernel=True)", conv_transpose_flipped_to_flax, conv_to_torch)
LINEAR_GENERAL = Rule("linear<->linear_general", linear_general_to_flax, linear_general_to_torch)
EINSUM = Rule("linear<->einsum", linear_general_to_flax, linear_general_to_torch, specialise=_einsum_for)
NORM = renaming("norm", {"weight": "scale", "bias": "bias"})
NORM_BY_STRUCTURE_BASE = Rule("norm (by structure)", norm_by_structure_to_flax, norm_by_structure_to_torch)
NORM_BY_STRUCTURE = dataclasses.replace(NORM_BY_STRUCTURE_BASE, specialise=_norm_for)
PLUS_ONE_SCALE = Rule("norm, scale = 1 + weight (rounded back)", plus_one_to_flax, plus_one_to_torch)
EMBEDDING = renaming("embedding", {"weight": "embedding"})
BATCH_NORM = renaming("batch_norm", {"weight": "scale", "bias": "bias", "running_mean": "mean",
                                     "running_var": "var"}, torch_only=("num_batches_tracked",))
SSM = Rule("ssm", ssm_to_flax, ssm_to_torch)
IDENTITY = Rule("identity", identity_to, identity_to)
TRANSPOSE = Rule("transpose", transpose_to, transpose_to)



# --------------------------------------------------------------------------- registry
_REGISTRY: dict[tuple[str, str], Rule] = {}


def register_rule(torch_type: str, flax_type: str, rule: Rule) -> None:
    """Use ``rule`` for a torch layer of class ``torch_type`` paired with a Flax module of class
    ``flax_type`` (class names; subclasses match too; a name may be a glob such as ``"*RMSNorm"``,
    tried after every exact name). A later registration replaces an earlier one."""
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
    ("Linear", "LinearGeneral", LINEAR_GENERAL), ("Linear", "Einsum", EINSUM),
    ("Conv1d", "Conv", CONV), ("Conv2d", "Conv", CONV), ("Conv3d", "Conv", CONV),
    ("ConvTranspose1d", "ConvTranspose", CONV_TRANSPOSE), ("ConvTranspose2d", "ConvTranspose", CONV_TRANSPOSE),
    ("ConvTranspose3d", "ConvTranspose", CONV_TRANSPOSE),
    ("LayerNorm", "LayerNorm", NORM), ("RMSNorm", "RMSNorm", NORM), ("GroupNorm", "GroupNorm", NORM),
    ("*RMSNorm", "RMSNorm", NORM_BY_STRUCTURE), ("*LayerNorm", "LayerNorm", NORM_BY_STRUCTURE),
    ("*RMSNorm", "OffsetRMSNorm", NORM_BY_STRUCTURE), ("RMSNorm", "OffsetRMSNorm", NORM_BY_STRUCTURE),
    ("Embedding", "Embed", EMBEDDING),
    ("_BatchNorm", "BatchNorm", BATCH_NORM),
    ("SSM", "SSM", SSM),
):
    register_rule(_torch, _flax, _rule)


def _is_pattern(name: str) -> bool:
    return any(c in name for c in "*?[")


def _matches(pattern: str, names: tuple[str, ...] | list[str]) -> bool:
    """An exact name along the MRO, or a glob against the class's own name."""
    if _is_pattern(pattern):
        return bool(names) and fnmatch.fnmatchcase(names[0], pattern)
    return pattern in names


def has_rule(side: str, mro: Iterable[str]) -> bool:
    """Does a class (``mro``: its class names) have a rule on ``side`` (``"torch"`` or ``"flax"``)?"""
    index = {"torch": 0, "flax": 1}[side]
    names = tuple(mro)
    return any(_matches(key[index], names) for key in _REGISTRY)


def known_types(side: str) -> frozenset[str]:
    """Class names (and globs) that have a rule on ``side`` (``"torch"`` or ``"flax"``)."""
    index = {"torch": 0, "flax": 1}[side]
    return frozenset(key[index] for key in _REGISTRY)


def find_rule(torch_mro: Iterable[str], flax_mro: Iterable[str]) -> Rule | None:
    """The rule for the most specific pair of class names (each list: a class's MRO names); exact
    names before globs."""
    torch_names, flax_names = list(torch_mro), list(flax_mro)
    for t in torch_names:
        for f in flax_names:
            if (t, f) in _REGISTRY:
                return _REGISTRY[(t, f)]
    for (t_pattern, f_pattern), rule in _REGISTRY.items():
        if (_is_pattern(t_pattern) or _is_pattern(f_pattern)) and _matches(t_pattern, torch_names) \
                and _matches(f_pattern, flax_names):
            return rule
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
