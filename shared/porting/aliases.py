"""Pair the layers that path pairing left over: renamed paths first, then shape and order within a module.

Real ports rename: ``model.layers.0.self_attn.q_proj`` (Hugging Face torch) is ``layers.0.attn.q``
in an NNX port, ``model.embed_tokens`` is ``embedder``. Two steps, each accepting only unambiguous
pairs and only where the rule maps the torch tensors onto exactly the Flax shapes:

1. *Renamed paths.* Each path segment maps to a canonical token through :data:`ALIASES`
   (``self_attn``/``attn``/``attention`` -> ``attn``); paths are compared by their longest common
   *suffix* of tokens, so leading segments one side lacks (``model.``) drop out. A pair is taken when
   each side is the other's unique best match.
2. *Shape and order within a module.* Parents correspond when paired children say so (``model.layers.0``
   <-> ``layers.0``), else by the same (canonical) path. Within corresponding parents, a torch layer
   that fits exactly one Flax layer pairs with it; several that fit alike pair in definition order
   (flagged "check it" in the plan).

``Plan.describe()`` prints every pair found here, with how it was found.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

ALIASES: dict[str, tuple[str, ...]] = {
    "attn": ("self_attn", "attn", "attention", "self_attention", "mha", "multihead_attn", "attn_layer"),
    "embed": ("embed_tokens", "embedder", "embedding", "embeddings", "embed", "wte", "tok_embeddings",
              "token_embedding", "tok_emb"),
    "norm": ("norm", "final_norm", "ln_f", "final_layernorm", "norm_f", "final_layer_norm"),
    "layers": ("layers", "layer", "blocks", "block", "h"),
    "mlp": ("mlp", "ffn", "feed_forward", "feedforward", "ff", "ffw"),
    "q": ("q_proj", "q", "query", "wq", "to_q", "q_lin"),
    "k": ("k_proj", "k", "key", "wk", "to_k", "k_lin"),
    "v": ("v_proj", "v", "value", "wv", "to_v", "v_lin"),
    "o": ("o_proj", "out_proj", "o", "out", "wo", "to_out", "out_lin"),
    "gate": ("gate_proj", "gate", "w1", "wi_0"),
    "up": ("up_proj", "up", "w3", "wi_1"),
    "down": ("down_proj", "down", "w2"),
    "pre_attn_norm": ("input_layernorm", "pre_attention_norm", "ln_1", "attention_norm", "norm1", "pre_attn_norm",
                      "attn_norm"),
    "pre_mlp_norm": ("post_attention_layernorm", "pre_ffw_norm", "ln_2", "ffn_norm", "norm2", "pre_mlp_norm",
                     "mlp_norm"),
    "head": ("lm_head", "head", "output", "unembed", "output_proj"),
}
"""Canonical token -> the segment names that mean it. Extend with :func:`add_alias`."""

_TOKEN = {name: token for token, names in ALIASES.items() for name in names}


def add_alias(token: str, *names: str) -> None:
    """Treat path segments ``names`` as the same layer name ``token`` (e.g. ``add_alias("attn", "mixer")``)."""
    ALIASES[token] = (*ALIASES.get(token, ()), *names)
    for name in names:
        _TOKEN[name] = token


def canonical(path: str) -> tuple[str, ...]:
    """Path segments as canonical tokens: ``model.layers.0.self_attn`` -> ``(model, layers, 0, attn)``."""
    return tuple(_TOKEN.get(segment, segment) for segment in path.split(".") if segment) if path else ()


def _suffix(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[-1 - n] == b[-1 - n]:
        n += 1
    return n


def _parent(path: str) -> str:
    return path.rpartition(".")[0]


Unit = Any  # shared.porting.pairing.Unit
Fits = Callable[[Unit, Unit], Any]


def auto_pairs(torch_tree: Any, flax_tree: Any, torch_units: Mapping[str, Unit], flax_units: Mapping[str, Unit],
               matched: Mapping[str, str], fits: Fits) -> Iterator[tuple[Unit, Unit, Any, str]]:
    """Yield ``(torch unit, flax unit, rule, how)`` for the units path pairing left over."""
    rest_t, rest_f = dict(torch_units), dict(flax_units)
    matched = dict(matched)
    cache: dict[tuple[str, str], Any] = {}

    def fit(t: str, f: str) -> Any:
        if (t, f) not in cache:
            cache[(t, f)] = fits(rest_t[t], rest_f[f])
        return cache[(t, f)]

    # 1. renamed paths: unique best common suffix of canonical tokens, both ways
    canon_t = {t: canonical(t) for t in rest_t}
    canon_f = {f: canonical(f) for f in rest_f}
    by_last: dict[str, list[str]] = {}
    for f, tokens in canon_f.items():
        by_last.setdefault(tokens[-1] if tokens else "", []).append(f)
    scores: dict[tuple[str, str], int] = {}
    for t, tokens in canon_t.items():
        for f in by_last.get(tokens[-1] if tokens else "", []):
            score = _suffix(tokens, canon_f[f])
            if score and fit(t, f) is not None:
                scores[(t, f)] = score
    changed = True
    while changed:
        changed = False
        best_t: dict[str, list[tuple[int, str]]] = {}
        best_f: dict[str, list[tuple[int, str]]] = {}
        for (t, f), score in scores.items():
            if t in rest_t and f in rest_f:
                best_t.setdefault(t, []).append((score, f))
                best_f.setdefault(f, []).append((score, t))
        for t, options in best_t.items():
            options.sort(reverse=True)
            score, f = options[0]
            if len(options) > 1 and options[1][0] == score:
                continue
            rivals = sorted(best_f[f], reverse=True)
            if rivals[0] != (score, t) or (len(rivals) > 1 and rivals[1][0] == score):
                continue
            if t in rest_t and f in rest_f:
                yield rest_t[t], rest_f[f], fit(t, f), "alias"
                matched[t] = f
                del rest_t[t], rest_f[f]
                changed = True

    # 2. shape and definition order within corresponding modules
    order_t = {p: i for i, p in enumerate([*torch_tree.modules, *torch_tree.tensors])}
    order_f = {p: i for i, p in enumerate([*flax_tree.modules, *flax_tree.tensors])}
    votes: dict[str, Counter] = {}
    for t, f in matched.items():
        t_parts, f_parts = t.split("."), f.split(".")
        for depth in range(1, min(len(t_parts), len(f_parts)) + 1):
            votes.setdefault(".".join(t_parts[:-depth]), Counter())[".".join(f_parts[:-depth])] += 1
    parents = {t: counter.most_common(1)[0][0] for t, counter in votes.items()}
    by_canonical: dict[tuple[str, ...], list[str]] = {}
    for f in flax_tree.modules:
        by_canonical.setdefault(canonical(f), []).append(f)
    for t in torch_tree.modules:  # otherwise: the same path, or the one module with the same canonical path
        if t not in parents:
            same = [t] if t in flax_tree.modules else by_canonical.get(canonical(t), [])
            if len(same) == 1:
                parents[t] = same[0]
    groups: dict[str, list[str]] = {}
    for t in rest_t:
        groups.setdefault(_parent(t), []).append(t)
    for t_parent, children in groups.items():
        f_parent = parents.get(t_parent)
        if f_parent is None:
            continue
        siblings = sorted((f for f in rest_f if _parent(f) == f_parent), key=lambda p: order_f.get(p, 0))
        children = sorted(children, key=lambda p: order_t.get(p, 0))
        fitting = {t: [f for f in siblings if fit(t, f) is not None] for t in children}
        # classes of interchangeable layers: torch layers that fit the same flax layers
        classes: dict[tuple[str, ...], list[str]] = {}
        for t in children:
            if fitting[t]:
                classes.setdefault(tuple(fitting[t]), []).append(t)
        for targets, torch_side in classes.items():
            if len(targets) != len(torch_side):
                continue
            how = "shape" if len(targets) == 1 else "order"
            for t, f in zip(torch_side, targets, strict=True):
                if t in rest_t and f in rest_f:
                    yield rest_t[t], rest_f[f], fit(t, f), how
                    del rest_t[t], rest_f[f]
