"""Weight rule for torch's ``nn.MultiheadAttention`` <-> Flax ``nnx.MultiHeadAttention`` (pure numpy).

torch (embed dim E, N heads of size H = E / N):

    in_proj_weight (3E, E)          the q, k and v projections stacked (when kdim == vdim == E)
    q/k/v_proj_weight (E, E|kdim|vdim)  instead, when kdim or vdim differ from E
    in_proj_bias (3E,)              q, k and v biases stacked (absent with bias=False)
    out_proj.weight (E, E), out_proj.bias (E,)

Flax (flax 0.12; ``in_kv_features`` = kdim; a different vdim needs its own ``value`` layer, see
``ssm_metarl.porting.torch_compatible_multihead_attention``):

    query.kernel (E, N, H), query.bias (N, H); key.kernel (kdim, N, H); value.kernel (vdim, N, H)
    out.kernel (N, H, E), out.bias (E,)

torch splits a projection's E outputs into heads row-major (head n holds rows n*H .. n*H + H - 1),
which is exactly a reshape of ``W.T`` to ``(in, N, H)``. Every tensor is a transpose, a split and a
reshape: exact both ways. ``add_bias_kv`` (``bias_k``/``bias_v``) and Flax's ``normalize_qk`` have no
counterpart: :class:`~shared.porting.rules.RuleError`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from shared.porting.rules import Rule, RuleError, Shapes, Tensors, register_rule

PROJECTIONS = ("query", "key", "value")
TORCH_SEPARATE = {"query": "q_proj_weight", "key": "k_proj_weight", "value": "v_proj_weight"}


def _heads(shapes: Shapes) -> tuple[int, int]:
    if "query.kernel" not in shapes or len(shapes["query.kernel"]) != 3:
        raise RuleError(f"expected an nnx.MultiHeadAttention with query.kernel (in, heads, head_dim); got "
                        f"{ {k: tuple(v) for k, v in shapes.items()} }")
    _, heads, head_dim = shapes["query.kernel"]
    return heads, head_dim


def mha_to_flax(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """torch ``nn.MultiheadAttention`` tensors -> ``nnx.MultiHeadAttention`` variables."""
    unsupported = sorted(set(tensors) & {"bias_k", "bias_v"})
    if unsupported:
        raise RuleError(f"nn.MultiheadAttention(add_bias_kv=True) holds {unsupported}, which nnx.MultiHeadAttention "
                        "has no place for; append them to the key/value sequence in your port and pair with overrides")
    extra = sorted(k for k in shapes if k.split(".")[0] not in (*PROJECTIONS, "out"))
    if extra:
        raise RuleError(f"the flax attention holds {extra} (normalize_qk?), which nn.MultiheadAttention has no twin of")
    heads, head_dim = _heads(shapes)
    if "in_proj_weight" in tensors:
        weights = np.split(np.asarray(tensors["in_proj_weight"]), 3, axis=0)
    else:
        missing = [n for n in TORCH_SEPARATE.values() if n not in tensors]
        if missing:
            raise RuleError(f"nn.MultiheadAttention lacks {missing} (expected in_proj_weight or q/k/v_proj_weight)")
        weights = [np.asarray(tensors[TORCH_SEPARATE[p]]) for p in PROJECTIONS]
    out: Tensors = {}
    for name, weight in zip(PROJECTIONS, weights, strict=True):
        if weight.shape[0] != heads * head_dim:
            raise RuleError(f"torch's {name} projection has {weight.shape[0]} outputs, the flax one {heads} heads x "
                            f"{head_dim} = {heads * head_dim}")
        out[f"{name}.kernel"] = np.ascontiguousarray(weight.T.reshape(weight.shape[1], heads, head_dim))
    if "in_proj_bias" in tensors:
        for name, bias in zip(PROJECTIONS, np.split(np.asarray(tensors["in_proj_bias"]), 3), strict=True):
            out[f"{name}.bias"] = np.array(bias).reshape(heads, head_dim)
    if "out_proj.weight" in tensors:
        w = np.asarray(tensors["out_proj.weight"])
        out["out.kernel"] = np.ascontiguousarray(w.T.reshape(heads, head_dim, w.shape[0]))
    if "out_proj.bias" in tensors:
        out["out.bias"] = np.array(tensors["out_proj.bias"], copy=True)
    return out


def mha_to_torch(tensors: Mapping[str, np.ndarray], shapes: Shapes) -> Tensors:
    """The inverse of :func:`mha_to_flax`; ``shapes`` (the torch model's) says packed or separate q/k/v."""
    out: Tensors = {}
    weights = []
    for name in PROJECTIONS:
        kernel = np.asarray(tensors[f"{name}.kernel"])
        weights.append(np.ascontiguousarray(kernel.reshape(kernel.shape[0], -1).T))
    if "in_proj_weight" in shapes:
        out["in_proj_weight"] = np.concatenate(weights, axis=0)
    else:
        for name, weight in zip(PROJECTIONS, weights, strict=True):
            out[TORCH_SEPARATE[name]] = weight
    if all(f"{name}.bias" in tensors for name in PROJECTIONS):
        out["in_proj_bias"] = np.concatenate([np.asarray(tensors[f"{n}.bias"]).reshape(-1) for n in PROJECTIONS])
    elif any(f"{name}.bias" in tensors for name in PROJECTIONS):
        raise RuleError("nn.MultiheadAttention has q, k and v biases all or none; the flax attention has some")
    kernel = np.asarray(tensors["out.kernel"])
    out["out_proj.weight"] = np.ascontiguousarray(kernel.reshape(-1, kernel.shape[-1]).T)
    if "out.bias" in tensors:
        out["out_proj.bias"] = np.array(tensors["out.bias"], copy=True)
    return out


MULTIHEAD_ATTENTION = Rule("multihead_attention", mha_to_flax, mha_to_torch)
register_rule("MultiheadAttention", "MultiHeadAttention", MULTIHEAD_ATTENTION)
