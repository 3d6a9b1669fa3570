"""Pair a torch model's tensors with its Flax port's variables by module path, then map them (pure numpy).

Both models are described by a :class:`ModelTree`: module paths (dotted, ``""`` is the root) with the
class names along each class's MRO, and every tensor by dotted path. Flax paths come normalised by
the caller (``nnx.Sequential``'s ``layers`` and ``nnx.RNN``'s ``cell`` dropped) so that they read
like torch's.

A *unit* is the outermost module whose class has a rule on its side (see ``shared.porting.rules``);
its tensors move together. A tensor outside every unit is a unit of its own (a "loose" tensor,
e.g. a raw ``nn.Parameter``) and pairs with the same path on the other side, copied unchanged.
``overrides`` pairs a torch path with a different Flax path and/or a custom rule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from shared.porting.rules import IDENTITY, Rule, RuleError, find_rule, has_rule

Target = str | tuple[str, Rule]
Overrides = Mapping[str, Target] | Callable[[str], Target | None] | None
LOOSE = "<tensor>"
HOW_TO = (
    "Register a rule with shared.porting.register_rule('<TorchClass>', '<FlaxClass>', Rule(...)) "
    "or pair paths explicitly with overrides={'<torch path>': '<flax path>'} or "
    "{'<torch path>': ('<flax path>', rule)} (rules: shared.porting.rules LINEAR, CONV, NORM, TRANSPOSE, ...), "
    "whole families at once with shared.porting.regex_table([(r'<torch regex>', r'<flax path with \\1>', "
    "'<rule name>')]) or glob_table, or copy the weights yourself with shared.porting.CustomCopy(to_flax, to_torch)."
)


class PairingError(ValueError):
    """The two models' tensors cannot be paired or mapped; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class ModelTree:
    """One model's structure.

    Attributes:
        modules: path -> class names along the MRO, in definition order (parents before children).
        tensors: dotted path -> array.
        attributes: path -> a few module attributes rules may specialise on (``einsum_str``,
            ``transpose_kernel``, a norm's ``scale_offset``).
        ties: tensor path -> the path of the tensor it shares storage with (torch ``lm_head.weight``
            -> ``embed.weight``); a tied tensor pairs through its canonical one.
    """

    modules: Mapping[str, tuple[str, ...]]
    tensors: Mapping[str, np.ndarray]
    attributes: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    ties: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Unit:
    path: str
    types: tuple[str, ...]  # (LOOSE,) for a tensor outside every known layer
    names: tuple[str, ...]  # tensor names relative to ``path``

    def key(self, name: str) -> str:
        return join(self.path, name)


@dataclasses.dataclass(frozen=True)
class Pair:
    torch: Unit
    flax: Unit
    rule: Rule
    how: str = "path"  # path, override, alias, shape, order


def join(path: str, name: str) -> str:
    return ".".join(part for part in (path, name) if part)


def _under(key: str, path: str) -> bool:
    return path == "" or key == path or key.startswith(path + ".")


def _relative(key: str, path: str) -> str:
    return key if path == "" else key[len(path) + 1:]


def _shapes(tree: ModelTree, unit: Unit, prefix: str | None = None) -> str:
    keys = [unit.key(n) for n in unit.names]
    return ", ".join(f"{_relative(k, prefix) if prefix is not None else k} {tuple(np.shape(tree.tensors[k]))}"
                     for k in keys) or "none"


def _describe(tree: ModelTree, unit: Unit, side: str) -> str:
    if unit.types == (LOOSE,):
        return f"{side} tensor {unit.path!r} {tuple(np.shape(tree.tensors[unit.path]))}"
    return f"{side} {unit.path or '<root>'!r} ({unit.types[0]}: {_shapes(tree, unit, unit.path)})"


def find_units(tree: ModelTree, side: str, forced: set[str]) -> dict[str, Unit]:
    """Outermost modules with a rule on ``side`` (or named in ``forced``), then loose tensors."""
    unit_paths: list[str] = []
    for path in sorted(tree.modules, key=lambda p: (p.count(".") + (p != ""), p)):
        if any(_under(path, u) for u in unit_paths):
            continue
        if path in forced or has_rule(side, tree.modules[path]):
            unit_paths.append(path)
    tensors = [k for k in tree.tensors if k not in tree.ties]  # a tied tensor follows its canonical one
    units: dict[str, Unit] = {}
    for path in unit_paths:
        names = tuple(_relative(k, path) for k in tensors if _under(k, path))
        if names:
            units[path] = Unit(path, tuple(tree.modules[path]), names)
    for key in sorted(tensors):
        if not any(_under(key, u) for u in unit_paths):
            units[key] = Unit(key, (LOOSE,), ("",))
    return units


def _resolve(overrides: Overrides, torch_paths: list[str]) -> dict[str, tuple[str, Rule | None]]:
    if overrides is None:
        return {}
    if callable(overrides):
        items = {p: overrides(p) for p in torch_paths}
        items = {p: t for p, t in items.items() if t is not None}
    elif isinstance(overrides, Mapping):
        items = dict(overrides)
    else:
        raise TypeError(f"overrides must be a dict or a callable, got {type(overrides).__name__}")
    out = {}
    for torch_path, target in items.items():
        if isinstance(target, str):
            out[torch_path] = (target, None)
        elif isinstance(target, tuple) and len(target) == 2 and isinstance(target[0], str) \
                and isinstance(target[1], Rule):
            out[torch_path] = target
        else:
            raise TypeError(f"override for {torch_path!r} must be a flax path (str) or (flax path, Rule), "
                            f"got {target!r}")
    return out


@dataclasses.dataclass(frozen=True)
class Plan:
    """The pairing of two models' tensors, and the mapping both ways through it."""

    pairs: tuple[Pair, ...]
    torch_shapes: Mapping[str, tuple[int, ...]]
    flax_shapes: Mapping[str, tuple[int, ...]]
    ties: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_flax(self, torch_tensors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """torch tensors (``state_dict`` names) -> Flax variables (normalised dotted paths)."""
        return self._map(torch_tensors, "flax")

    def to_torch(self, flax_tensors: Mapping[str, np.ndarray],
                 torch_fill: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """Flax variables -> torch tensors. ``torch_fill`` gives the values of torch-only tensors
        (e.g. ``num_batches_tracked``); without it those are left out. A tied torch tensor gets its
        canonical tensor's value (the tie holds)."""
        out = self._map(flax_tensors, "torch")
        for pair in self.pairs:
            for name in pair.rule.torch_only:
                key = pair.torch.key(name)
                if key in self.torch_shapes and torch_fill is not None and key in torch_fill:
                    out[key] = np.array(torch_fill[key], copy=True)
        for alias, canonical in self.ties.items():
            if canonical in out:
                out[alias] = np.array(out[canonical], copy=True)
        return out

    def describe(self, everything: bool = False) -> str:
        """The plan, one line per pair, so a user can check it: ``torch path -> flax path  rule  [how]``.
        By default pairs found by their identical path are counted, not listed."""
        lines, same = [], 0
        for pair in self.pairs:
            if pair.how == "path" and not everything:
                same += 1
                continue
            kind = "" if pair.torch.types == (LOOSE,) else f" ({pair.torch.types[0]} -> {pair.flax.types[0]})"
            lines.append(f"  {pair.torch.path or '<root>'} -> {pair.flax.path or '<root>'}{kind}  "
                         f"rule {pair.rule.name}  [{HOW[pair.how]}]")
        for alias, canonical in sorted(self.ties.items()):
            lines.append(f"  {alias} is tied to {canonical}  [follows it both ways]")
        head = f"pairing plan: {len(self.pairs)} pairs"
        if same:
            head += f", {same} by identical path{'' if everything else ' (not listed)'}"
        return "\n".join([head + ":" if lines else head, *lines])

    def _map(self, source: Mapping[str, np.ndarray], to: str) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        errors = []
        for pair in self.pairs:
            src_unit, dst_unit = (pair.torch, pair.flax) if to == "flax" else (pair.flax, pair.torch)
            skip_src = pair.rule.torch_only if to == "flax" else pair.rule.flax_only
            skip_dst = pair.rule.flax_only if to == "flax" else pair.rule.torch_only
            dst_shapes_all = self.flax_shapes if to == "flax" else self.torch_shapes
            src_names = [n for n in src_unit.names if n not in skip_src]
            missing = [src_unit.key(n) for n in src_names if src_unit.key(n) not in source]
            if missing:
                errors.append(f"{pair.rule.name} rule {src_unit.path!r}: input lacks {missing}")
                continue
            tensors = {n: np.asarray(source[src_unit.key(n)]) for n in src_names}
            shapes = {n: dst_shapes_all[dst_unit.key(n)] for n in dst_unit.names if n not in skip_dst}
            convert = pair.rule.to_flax if to == "flax" else pair.rule.to_torch
            try:
                mapped = convert(tensors, shapes)
            except RuleError as err:
                errors.append(f"{pair.rule.name} rule, torch {pair.torch.path!r} <-> flax {pair.flax.path!r}: {err}")
                continue
            got = {n: tuple(np.shape(v)) for n, v in mapped.items()}
            if got != shapes:
                errors.append(
                    f"{pair.rule.name} rule, torch {pair.torch.path!r} -> flax {pair.flax.path!r} "
                    f"({'to ' + to}): produced {_fmt(got)}, the {to} model holds {_fmt(shapes)}"
                )
                continue
            for name, value in mapped.items():
                out[dst_unit.key(name)] = value
        if errors:
            raise PairingError("cannot map the weights:\n  " + "\n  ".join(errors) + "\n" + HOW_TO)
        return out


HOW = {"path": "same path", "override": "override", "alias": "renamed path (aliases, prefixes dropped)",
       "shape": "only fit by shape within its module", "order": "by shape and order within its module: check it"}


def _fmt(shapes: Mapping[str, tuple[int, ...]]) -> str:
    return "{" + ", ".join(f"{n or '(tensor)'}: {s}" for n, s in sorted(shapes.items())) + "}"


def _rule_for(torch_tree: ModelTree, flax_tree: ModelTree, t_unit: Unit, f_unit: Unit,
              rule: Rule | None) -> Rule | None:
    """The rule for a pair (specialised on the two modules' attributes); ``None`` if none is registered.
    Raises :class:`RuleError` when the registered rule refuses the pair."""
    if rule is None:
        if t_unit.types == (LOOSE,) and f_unit.types == (LOOSE,):
            return IDENTITY
        rule = find_rule(t_unit.types, f_unit.types)
        if rule is None:
            return None
    return rule.for_modules(torch_tree.attributes.get(t_unit.path, {}), flax_tree.attributes.get(f_unit.path, {}))


FitCache = dict[tuple, tuple[Rule, bool]]


def _fits(torch_tree: ModelTree, flax_tree: ModelTree, t_unit: Unit, f_unit: Unit,
          cache: FitCache | None = None) -> Rule | None:
    """The rule that maps ``t_unit`` onto exactly ``f_unit``'s shapes, or ``None``. Results are cached
    by rule and shapes (a decoder's layers repeat: the rule runs once per kind of layer)."""
    if t_unit.types == (LOOSE,) or f_unit.types == (LOOSE,):
        if t_unit.types != f_unit.types:
            return None
        same = np.shape(torch_tree.tensors[t_unit.path]) == np.shape(flax_tree.tensors[f_unit.path])
        return IDENTITY if same else None
    try:
        rule = _rule_for(torch_tree, flax_tree, t_unit, f_unit, None)
    except RuleError:
        return None
    if rule is None:
        return None
    src = {n: torch_tree.tensors[t_unit.key(n)] for n in t_unit.names if n not in rule.torch_only}
    shapes = {n: tuple(np.shape(flax_tree.tensors[f_unit.key(n)])) for n in f_unit.names if n not in rule.flax_only}
    if sum(np.size(v) for v in src.values()) != sum(int(np.prod(s)) for s in shapes.values()):
        return None
    cache = {} if cache is None else cache
    # the entry keeps the rule alive, so its id is not reused for another rule while the cache lives
    key = (id(rule), tuple(sorted((n, np.shape(v)) for n, v in src.items())), tuple(sorted(shapes.items())))
    if key not in cache:
        try:
            mapped = rule.to_flax(src, shapes)
            cache[key] = (rule, {n: tuple(np.shape(v)) for n, v in mapped.items()} == shapes)
        except (RuleError, ValueError, KeyError, IndexError):
            cache[key] = (rule, False)
    return rule if cache[key][1] else None


def plan_pairing(torch_tree: ModelTree, flax_tree: ModelTree, overrides: Overrides = None, *,
                 auto: bool = True) -> Plan:
    """Pair every torch tensor with Flax variables; raise :class:`PairingError` listing every tensor
    left unpaired (path and shapes on both sides) and every layer pair without a rule.

    Layers pair by identical path, then by ``overrides``; with ``auto`` (default) the rest pair by
    renamed path (``shared.porting.aliases``: common prefixes dropped, ``self_attn``/``attn``, ...)
    and then by shape and definition order within corresponding modules. ``Plan.describe()`` lists
    every pair not found by its identical path.
    """
    torch_modules = sorted(set(torch_tree.modules) | set(torch_tree.tensors))
    resolved = _resolve(overrides, torch_modules)
    for torch_path, (flax_path, _) in resolved.items():
        if torch_path not in torch_tree.modules and torch_path not in torch_tree.tensors:
            raise PairingError(f"override names torch path {torch_path!r}, which the torch model does not have")
        if flax_path not in flax_tree.modules and flax_path not in flax_tree.tensors:
            raise PairingError(f"override maps {torch_path!r} to flax path {flax_path!r}, which the flax model "
                               f"does not have; flax modules: {sorted(p for p in flax_tree.modules if p)}")
    torch_units = find_units(torch_tree, "torch", set(resolved))
    flax_units = find_units(flax_tree, "flax", {target for target, _ in resolved.values()})
    pairs, errors, used = [], [], set()
    matched: dict[str, str] = {}
    for path, t_unit in torch_units.items():
        flax_path, rule = resolved.get(path, (path, None))
        f_unit = flax_units.get(flax_path)
        if f_unit is None or flax_path in used:
            continue  # reported below, with what the flax side holds there
        used.add(flax_path)
        matched[path] = flax_path
        how = "override" if path in resolved else "path"
        try:
            rule = _rule_for(torch_tree, flax_tree, t_unit, f_unit, rule)
        except RuleError as err:
            errors.append(f"torch {path!r} <-> flax {flax_path!r}: {err}")
            continue
        if rule is None:
            errors.append(f"no rule pairs {_describe(torch_tree, t_unit, 'torch')} with "
                          f"{_describe(flax_tree, f_unit, 'flax')}")
            continue
        if rule is IDENTITY:
            t_shape = tuple(np.shape(torch_tree.tensors[t_unit.key('')]))
            f_shape = tuple(np.shape(flax_tree.tensors[f_unit.key('')]))
            if t_shape != f_shape:
                errors.append(f"torch tensor {t_unit.path!r} {t_shape} and flax tensor {f_unit.path!r} {f_shape} "
                              "pair by path but differ in shape (a transposed weight? use rules.TRANSPOSE)")
                continue
        pairs.append(Pair(t_unit, f_unit, rule, how))
    cache: FitCache = {}
    if auto:
        from shared.porting.aliases import auto_pairs

        rest_torch = {p: u for p, u in torch_units.items() if p not in matched}
        rest_flax = {p: u for p, u in flax_units.items() if p not in used}
        for t_unit, f_unit, rule, how in auto_pairs(torch_tree, flax_tree, rest_torch, rest_flax, matched,
                                                    lambda t, f: _fits(torch_tree, flax_tree, t, f, cache)):
            matched[t_unit.path] = f_unit.path
            used.add(f_unit.path)
            pairs.append(Pair(t_unit, f_unit, rule, how))
    unpaired_torch = [u for p, u in torch_units.items() if p not in matched]
    unpaired_flax = [u for p, u in flax_units.items() if p not in used]
    errors.extend(_unknown_layers(torch_tree, flax_tree, unpaired_torch, unpaired_flax))
    for unit in unpaired_torch:
        fitting = [u.path for u in unpaired_flax if _fits(torch_tree, flax_tree, unit, u, cache) is not None]
        suggestion = f"; did you mean overrides={{{unit.path!r}: {fitting[0]!r}}}?" if len(fitting) == 1 else ""
        if len(fitting) > 1:
            suggestion = f"; it fits flax {fitting[:4]}: pair it with overrides={{{unit.path!r}: '<flax path>'}}"
        tied = [a for a, c in torch_tree.ties.items() if c == unit.path or _under(a, unit.path)]
        errors.append(f"{_describe(torch_tree, unit, 'torch')} has no flax counterpart"
                      + _context(unit.path, flax_tree, flax_units, "flax") + suggestion
                      + (f" (tied with {tied})" if tied else ""))
    for unit in unpaired_flax:
        ties = [f"{a} -> {c}" for a, c in torch_tree.ties.items() if _under(a, unit.path) or a == unit.path]
        note = (f"; the torch model ties {ties}: tie it in the port too (e.g. nnx.Embed.attend) or untie the "
                "torch model") if ties else ""
        errors.append(f"{_describe(flax_tree, unit, 'flax')} has no torch counterpart"
                      + _context(unit.path, torch_tree, torch_units, "torch") + note)
    if errors:
        raise PairingError("cannot pair the torch model with the flax model:\n  " + "\n  ".join(errors) + "\n"
                           + HOW_TO)
    ties = {a: c for a, c in torch_tree.ties.items() if a in torch_tree.tensors}
    order = {p: i for i, p in enumerate([*torch_tree.modules, *torch_tree.tensors])}
    pairs.sort(key=lambda pair: order.get(pair.torch.path, len(order)))  # definition order, for describe()
    return Plan(tuple(pairs), {k: tuple(np.shape(v)) for k, v in torch_tree.tensors.items()},
                {k: tuple(np.shape(v)) for k, v in flax_tree.tensors.items()}, ties)


def _unknown_layers(torch_tree: ModelTree, flax_tree: ModelTree, unpaired_torch: list[Unit],
                    unpaired_flax: list[Unit]) -> list[str]:
    """Unpaired tensors on both sides under one module path (not the root): a layer without a rule.
    Reports it once and removes its tensors from the lists (in place)."""
    errors = []
    for unit in list(unpaired_torch):
        if unit not in unpaired_torch:
            continue
        parts = unit.path.split(".")
        for depth in range(len(parts), 0, -1):
            prefix = ".".join(parts[:depth])
            flax_side = [u for u in unpaired_flax if _under(u.path, prefix)]
            if prefix in torch_tree.modules and prefix in flax_tree.modules and flax_side:
                torch_side = [u for u in unpaired_torch if _under(u.path, prefix)]
                t_type, f_type = torch_tree.modules[prefix][0], flax_tree.modules[prefix][0]
                t_held = ", ".join(_shapes(torch_tree, u, prefix) for u in torch_side)
                f_held = ", ".join(_shapes(flax_tree, u, prefix) for u in flax_side)
                errors.append(
                    f"unknown layer: no rule pairs torch {prefix!r} ({t_type}: {t_held}) with flax {prefix!r} "
                    f"({f_type}: {f_held}); register one with register_rule({t_type!r}, {f_type!r}, Rule(...)) "
                    f"or pass overrides={{{prefix!r}: ({prefix!r}, rule)}}"
                )
                for u in torch_side:
                    unpaired_torch.remove(u)
                for u in flax_side:
                    unpaired_flax.remove(u)
                break
    return errors


def _context(path: str, other: ModelTree, other_units: Mapping[str, Unit], side: str) -> str:
    """What the other model holds at or near ``path``: the module there, or its unpaired tensors."""
    parts = path.split(".")
    for depth in range(len(parts), 0, -1):
        prefix = ".".join(parts[:depth])
        nearby = [u for p, u in other_units.items() if _under(p, prefix)]
        if prefix in other.modules or nearby:
            kind = other.modules.get(prefix, ("?",))[0]
            held = "; ".join(_describe(other, u, side) for u in nearby) or "no tensors"
            return f" (the {side} model has {prefix!r} ({kind}) holding {held})"
    return ""
