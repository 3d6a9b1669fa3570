"""``ssm-metarl parity --torch pkg.module:factory --flax pkg.module:factory --input-shape ...``: the parity
rows on a user's own PyTorch model and Flax NNX port (the porting kit, ``ssm_metarl.porting``).

Each factory is called as ``factory(dtype="float64")`` (or ``factory()`` if it takes no ``dtype``) and
returns the model. Inputs are seeded normal noise of ``--input-shape`` (or integers below
``--int-inputs N``, e.g. token ids). Prints the same table as ``ssm-metarl parity`` plus the first
divergent layer, writes the JSON report, and returns 1 if a row fails.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssm_metarl.argtypes import positive_int

# ssm_metarl.porting.rows.ROW_GROUPS, repeated so that building the parser imports neither framework.
ROW_GROUPS = ("weights", "forward", "gradients", "adapted", "meta_gradient", "adam")


def shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, e.g. 4,10,3; got {text!r}")
    return dims


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The porting options of ``ssm-metarl parity`` (all optional: without --torch/--flax the matrix runs)."""
    group = parser.add_argument_group("your own model pair (porting kit)")
    group.add_argument("--torch", metavar="MODULE:FACTORY", default=None,
                       help="factory of your torch.nn.Module, e.g. examples.porting.gru_policy:torch_model "
                            "(default: none, run the built-in matrix)")
    group.add_argument("--flax", metavar="MODULE:FACTORY", default=None,
                       help="factory of its flax.nnx.Module port, e.g. examples.porting.gru_policy:flax_model "
                            "(default: none; needed with --torch)")
    group.add_argument("--input-shape", type=shape, default=None, metavar="B,...",
                       help="shape of one input batch, in the layout both models take, e.g. 4,10,3 "
                            "(default: none; needed with --torch)")
    group.add_argument("--int-inputs", type=positive_int, default=None, metavar="N",
                       help="integer inputs in [0, N) instead of normal noise, e.g. token ids "
                            "(default: none, normal noise)")
    group.add_argument("--rows", nargs="+", choices=ROW_GROUPS, default=list(ROW_GROUPS),
                       help="row groups to run (default: all)")


def load_factory(spec: str, option: str) -> Callable[..., Any]:
    """``"pkg.module:name"`` -> the callable, or ``ValueError`` saying what is wrong."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{option} expects MODULE:FACTORY (e.g. examples.porting.cnn:torch_model), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{option}: cannot import module {module_name!r}: {err}") from err
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{option}: module {module_name!r} has no callable {attr!r}")
    return factory


def build(factory: Callable[..., Any], dtype: str) -> Any:
    if "dtype" in inspect.signature(factory).parameters:
        return factory(dtype=dtype)
    return factory()


def run(args: argparse.Namespace) -> int:
    """Run the rows for each requested dtype; print tables; write JSON to ``args.output``; exit code."""
    if args.torch is None or args.flax is None or args.input_shape is None:
        raise ValueError("a model pair needs all of --torch MODULE:FACTORY, --flax MODULE:FACTORY and --input-shape")
    import numpy as np
    import torch
    from flax import nnx

    from ssm_metarl.porting import compare_models

    torch_factory, flax_factory = load_factory(args.torch, "--torch"), load_factory(args.flax, "--flax")
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    reports = []
    for dtype in dtypes:
        torch_model, flax_model = build(torch_factory, dtype), build(flax_factory, dtype)
        if not isinstance(torch_model, torch.nn.Module):
            raise TypeError(f"--torch factory must return a torch.nn.Module, got {type(torch_model).__name__}")
        if not isinstance(flax_model, nnx.Module):
            raise TypeError(f"--flax factory must return a flax.nnx.Module, got {type(flax_model).__name__}")
        model_dtype = str(next(iter(torch_model.parameters())).dtype).removeprefix("torch.")
        rng = np.random.default_rng(args.seed)
        if args.int_inputs is not None:
            inputs = rng.integers(0, args.int_inputs, size=args.input_shape)
        else:
            inputs = rng.normal(size=args.input_shape).astype(model_dtype)
        report = compare_models(torch_model, flax_model, inputs, rows=args.rows, seed=args.seed)
        print(report.table() + "\n")
        reports.append(report)
        if model_dtype != dtype:  # the factories take no dtype: one run covers them
            break
    rows = [r for report in reports for r in report.rows]
    failed = [r for r in rows if not r.passed]
    print(f"parity rows: {len(rows) - len(failed)} within tolerance, {len(failed)} outside")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"torch": args.torch, "flax": args.flax, "input_shape": list(args.input_shape),
                   "rows": [r.to_dict() for r in rows],
                   "divergence": {rep.dtype: None if rep.divergence is None else rep.divergence.to_dict()
                                  for rep in reports}}
        Path(args.output).write_text(json.dumps(payload, indent=2))
        print(f"report written to {args.output}")
    return 1 if failed else 0
