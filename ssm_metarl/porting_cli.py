"""``ssm-metarl parity --torch pkg.module:factory --flax pkg.module:factory --inputs SPEC...``: the parity
rows on a user's own PyTorch model and Flax NNX port (the porting kit, ``ssm_metarl.porting``), and
``ssm-metarl bench --torch ... --flax ... --inputs SPEC...``: timings of the pair.

Each factory is called as ``factory(dtype="float64")`` (or ``factory()`` if it takes no ``dtype``) and
returns the model. Prints the same table as ``ssm-metarl parity`` plus the diagnosis, writes the JSON
report, and returns 1 if a row fails.

Input specs (``--inputs``, one per argument of the models' call, positional in order, ``NAME=`` for keywords):

- ``[NAME=]DTYPE:SHAPE[:RANGE]``: seeded random values. DTYPE: ``float`` (the run's dtype), ``float32``,
  ``float64``, ``bfloat16``, ``float16``, ``int``/``int64``/``int32`` (RANGE ``LOW..HIGH``, half-open,
  default ``0..2``), ``bool`` (RANGE: the fraction of True, default 0.5), ``arange`` (0, 1, ... along the
  last axis, e.g. positions). SHAPE: ``4x10x3`` or ``4,10,3``.
  Example: ``--inputs float:4x10x8 mask=bool:4x10:0.9 positions=arange:4x10``
- ``PATH.npz``: real inputs; keys ``arr_0``, ``arr_1``, ... (``np.savez(path, x, y)``) are positional, other
  keys are keyword arguments; float arrays are cast to the run's dtype.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ssm_metarl.argtypes import positive_int

# ssm_metarl.porting.rows.ROW_GROUPS, repeated so that building the parser imports neither framework.
ROW_GROUPS = ("weights", "forward", "gradients", "adapted", "meta_gradient", "adam")
SPEC = re.compile(r"^(?:(?P<name>[A-Za-z_]\w*)=)?(?P<dtype>[a-z0-9]+):(?P<shape>[0-9x,]+)(?::(?P<range>[^:]+))?$")
SPEC_DTYPES = ("float", "float32", "float64", "bfloat16", "float16", "int", "int32", "int64", "bool", "arange")


def shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, e.g. 4,10,3; got {text!r}")
    return dims


def input_spec(text: str) -> str:
    """argparse type: a ``[NAME=]DTYPE:SHAPE[:RANGE]`` spec or an existing ``.npz`` path, checked early."""
    if text.endswith(".npz"):
        if not Path(text).is_file():
            raise argparse.ArgumentTypeError(f"no .npz file {text!r}")
        return text
    match = SPEC.match(text)
    if match is None or match["dtype"] not in SPEC_DTYPES:
        raise argparse.ArgumentTypeError(
            f"expected [NAME=]DTYPE:SHAPE[:RANGE] with DTYPE one of {', '.join(SPEC_DTYPES)} (e.g. float:4x10x3, "
            f"ids=int:4x10:0..100, mask=bool:4x10:0.9) or a .npz path; got {text!r}")
    shape(match["shape"])
    _range(match["dtype"], match["range"], text)
    return text


def _range(dtype: str, text: str | None, spec: str) -> tuple[float, float] | float | None:
    if dtype.startswith("int"):
        if text is None:
            return 0, 2
        low, sep, high = text.partition("..")
        try:
            bounds = int(low), int(high)
        except ValueError:
            bounds = (0, 0)
        if not sep or bounds[1] <= bounds[0]:
            raise argparse.ArgumentTypeError(f"{spec!r}: an int range is LOW..HIGH with LOW < HIGH, got {text!r}")
        return bounds
    if dtype == "bool":
        try:
            fraction = 0.5 if text is None else float(text)
        except ValueError:
            fraction = -1.0
        if not 0.0 <= fraction <= 1.0:
            raise argparse.ArgumentTypeError(f"{spec!r}: a bool range is the fraction of True in [0, 1], got {text!r}")
        return fraction
    if text is not None:
        raise argparse.ArgumentTypeError(f"{spec!r}: only int and bool inputs take a range, got {text!r}")
    return None


def build_inputs(specs: list[str], dtype: str, seed: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The specs -> (positional arrays, keyword arrays), seeded; see the module docstring."""
    import numpy as np

    from ssm_metarl.porting.precision import NUMPY_DTYPES, is_floating

    rng = np.random.default_rng(seed)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for spec in specs:
        if spec.endswith(".npz"):
            with np.load(spec) as data:
                arrays = {k: data[k] for k in data.files}
            cast = {k: v.astype(NUMPY_DTYPES[dtype]) if is_floating(v) else v for k, v in arrays.items()}
            positional = sorted((k for k in cast if re.fullmatch(r"arr_\d+", k)), key=lambda k: int(k[4:]))
            args += [cast[k] for k in positional]
            kwargs.update({k: v for k, v in cast.items() if k not in positional})
            continue
        match = SPEC.match(spec)
        kind, dims, bounds = match["dtype"], shape(match["shape"]), _range(match["dtype"], match["range"], spec)
        if kind.startswith("int"):
            value = rng.integers(bounds[0], bounds[1], size=dims).astype("int32" if kind == "int32" else "int64")
        elif kind == "bool":
            value = rng.random(dims) < bounds
        elif kind == "arange":
            value = np.broadcast_to(np.arange(dims[-1]), dims).copy()
        else:
            value = rng.normal(size=dims).astype(NUMPY_DTYPES[dtype if kind == "float" else kind])
        if match["name"]:
            kwargs[match["name"]] = value
        else:
            args.append(value)
    return tuple(args), kwargs


def tolerance_override(text: str) -> tuple[str, float]:
    kind, sep, value = text.partition("=")
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if not sep or number < 0:
        raise argparse.ArgumentTypeError(f"expected KIND=RTOL, e.g. outputs=1e-6; got {text!r}")
    return kind, number


def add_pair_arguments(group: argparse._ArgumentGroup) -> None:
    """The options naming a pair and its inputs (shared by ``parity`` and ``bench``)."""
    group.add_argument("--torch", metavar="MODULE:FACTORY", default=None,
                       help="factory of your torch.nn.Module, e.g. examples.porting.gru_policy:torch_model "
                            "(default: none, run the built-in matrix)")
    group.add_argument("--flax", metavar="MODULE:FACTORY", default=None,
                       help="factory of its flax.nnx.Module port, e.g. examples.porting.gru_policy:flax_model "
                            "(default: none; needed with --torch)")
    group.add_argument("--inputs", nargs="+", type=input_spec, default=None, metavar="SPEC",
                       help="the models' inputs, one spec per argument: [NAME=]DTYPE:SHAPE[:RANGE] (e.g. "
                            "float:4x10x3 mask=bool:4x10 ids=int:4x10:0..100 positions=arange:4x10) or a .npz of "
                            "real inputs (arr_N positional, other keys keyword) (default: none)")
    group.add_argument("--input-shape", type=shape, default=None, metavar="B,...",
                       help="shorthand for one float input of this shape, e.g. 4,10,3 (default: none)")
    group.add_argument("--int-inputs", type=positive_int, default=None, metavar="N",
                       help="with --input-shape: integer inputs in [0, N) instead of normal noise, e.g. token ids "
                            "(default: none, normal noise)")
    group.add_argument("--state", nargs="+", type=input_spec, default=None, metavar="SPEC",
                       help="step mode: the initial state (float specs; several form a tuple); the inputs' axis 1 "
                            "is time, torch is called model(x_t, state) -> (out, state), flax "
                            "model(state, x_t) -> (state, out) (default: none, one call)")
    group.add_argument("--torch-checkpoint", type=Path, default=None, metavar="PATH",
                       help="load your real torch weights (.safetensors, or .pt/.pth/.bin state_dict) before "
                            "comparing (default: the factory's weights)")
    group.add_argument("--mode", choices=["train", "eval"], default=None,
                       help="the mode both models run in (default: the torch model's after the factory)")
    group.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                       help="where both models run (default: auto, the accelerator when both frameworks see one)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The porting options of ``ssm-metarl parity`` (all optional: without --torch/--flax the matrix runs)."""
    group = parser.add_argument_group("your own model pair (porting kit)")
    add_pair_arguments(group)
    group.add_argument("--rows", nargs="+", choices=ROW_GROUPS, default=list(ROW_GROUPS),
                       help="row groups to run (default: all)")
    group.add_argument("--tolerance", nargs="+", type=tolerance_override, default=[], metavar="KIND=RTOL",
                       help="override the dtype's tolerance profile, e.g. outputs=1e-6 gradients=1e-5 "
                            "(default: the contract's profile)")
    group.add_argument("--precision-sweep", action="store_true",
                       help="run the pair in float64 (CPU), float32 and bfloat16 and say whether a mismatch is a "
                            "bug (persists in float64) or rounding (shrinks with precision) (default: off)")


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


def _torch_model(args: argparse.Namespace, dtype: str) -> Any:
    import torch

    from ssm_metarl.porting import load_torch_checkpoint

    torch_model = build(load_factory(args.torch, "--torch"), dtype)
    if not isinstance(torch_model, torch.nn.Module):
        raise TypeError(f"--torch factory must return a torch.nn.Module, got {type(torch_model).__name__}")
    if args.torch_checkpoint is not None:
        for note in load_torch_checkpoint(torch_model, args.torch_checkpoint):
            print(f"--torch-checkpoint: cast {note}")
    if args.mode is not None:
        torch_model.train(args.mode == "train")
    return torch_model


def _flax_model(args: argparse.Namespace, dtype: str) -> Any:
    from flax import nnx

    flax_model = build(load_factory(args.flax, "--flax"), dtype)
    if not isinstance(flax_model, nnx.Module):
        raise TypeError(f"--flax factory must return a flax.nnx.Module, got {type(flax_model).__name__}")
    return flax_model


def _pair(args: argparse.Namespace, dtype: str) -> tuple[Any, Any]:
    return _torch_model(args, dtype), _flax_model(args, dtype)


def _inputs(args: argparse.Namespace, dtype: str) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    if args.inputs is None and args.input_shape is None:
        raise ValueError("a model pair needs --inputs SPEC... (or --input-shape) besides --torch and --flax")
    if args.inputs is not None and args.input_shape is not None:
        raise ValueError("give either --inputs or --input-shape, not both")
    specs = args.inputs
    if specs is None:
        dims = "x".join(map(str, args.input_shape))
        specs = [f"int:{dims}:0..{args.int_inputs}" if args.int_inputs is not None else f"float:{dims}"]
    positional, keyword = build_inputs(specs, dtype, args.seed)
    step = None
    if args.state is not None:
        from ssm_metarl.porting import StepMode

        state_args, state_kw = build_inputs(args.state, dtype, args.seed + 1)
        if state_kw:
            raise ValueError(f"--state takes unnamed specs (a tuple of arrays), got names {sorted(state_kw)}")
        step = StepMode(state_args[0] if len(state_args) == 1 else state_args)
    return positional, keyword, step


def _dtypes(args: argparse.Namespace) -> list[str]:
    return ["float64", "float32"] if args.dtype == "both" else [args.dtype]


def run(args: argparse.Namespace) -> int:
    """Run the rows for each requested dtype; print tables; write JSON to ``args.output``; exit code."""
    if args.torch is None or args.flax is None:
        raise ValueError("a model pair needs both --torch MODULE:FACTORY and --flax MODULE:FACTORY, and --inputs")
    from ssm_metarl.porting import compare_models, precision_sweep
    from ssm_metarl.porting.rows import model_dtype

    overrides = dict(args.tolerance)
    if args.precision_sweep:
        positional, keyword, step = _inputs(args, "float64")
        sweep = precision_sweep(lambda dtype: _torch_model(args, dtype), lambda dtype: _flax_model(args, dtype),
                                positional,
                                kwargs=keyword, step=step, rows=args.rows, device=args.device,
                                tolerances_override=overrides or None, seed=args.seed)
        print(sweep.table())
        if args.output is not None:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            Path(args.output).write_text(json.dumps(sweep.to_dict(), indent=2))
            print(f"report written to {args.output}")
        return 1 if sweep.bug else 0
    reports = []
    for dtype in _dtypes(args):
        torch_model, flax_model = _pair(args, dtype)
        model = model_dtype(torch_model)
        if model != dtype and args.dtype != "both":
            raise TypeError(f"--dtype {dtype}: the --torch factory built a {model} model; the model cannot run in "
                            f"{dtype} this way (make the factory take dtype= and build in it)")
        positional, keyword, step = _inputs(args, model)
        report = compare_models(torch_model, flax_model, positional, kwargs=keyword, step=step, rows=args.rows,
                                seed=args.seed, device=args.device, tolerances_override=overrides or None)
        print(report.table() + "\n")
        reports.append(report)
        if model != dtype:  # the factories take no dtype: one run covers them
            break
    rows = [r for report in reports for r in report.rows]
    failed = [r for r in rows if not r.passed]
    print(f"parity rows: {len(rows) - len(failed)} within tolerance, {len(failed)} outside")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        payload = {"torch": args.torch, "flax": args.flax, "inputs": args.inputs,
                   "input_shape": None if args.input_shape is None else list(args.input_shape),
                   "rows": [r.to_dict() for r in rows],
                   "divergence": {rep.dtype: None if rep.divergence is None else rep.divergence.to_dict()
                                  for rep in reports},
                   "reports": {rep.dtype: rep.to_dict() for rep in reports}}
        Path(args.output).write_text(json.dumps(payload, indent=2))
        print(f"report written to {args.output}")
    return 1 if failed else 0


def bench_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssm-metarl bench", description="Time your own PyTorch model and its Flax NNX port: forward, loss "
        "gradient, one inner SGD step and one second-order meta-step; JAX compile time apart; best against best.")
    add_pair_arguments(parser.add_argument_group("your model pair"))
    parser.add_argument("--dtype", choices=["float32", "float64", "bfloat16", "float16"], default="float32",
                        help="the dtype the factories build in (default: float32)")
    parser.add_argument("--reps", type=positive_int, default=20, help="timed calls per workload (default: 20)")
    parser.add_argument("--warmup", type=positive_int, default=3, help="untimed calls first (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the inputs and labels (default: 0)")
    parser.add_argument("--output", type=Path, default=None, help="JSON report path (default: none)")
    return parser


def bench_main(argv: list[str]) -> int:
    """``ssm-metarl bench --torch ... --flax ... --inputs ...``; exit 2 with a message on bad input."""
    import sys

    args = bench_parser().parse_args(argv)
    try:
        if args.torch is None or args.flax is None:
            raise ValueError("ssm-metarl bench with a pair needs both --torch MODULE:FACTORY and --flax MODULE:FACTORY")
        if args.dtype == "float64":
            import jax

            jax.config.update("jax_enable_x64", True)
        from ssm_metarl.porting.bench import bench_pair
        from ssm_metarl.porting.rows import model_dtype

        torch_model, flax_model = _pair(args, args.dtype)
        positional, keyword, step = _inputs(args, model_dtype(torch_model))
        report = bench_pair(torch_model, flax_model, positional, kwargs=keyword, step=step, reps=args.reps,
                            warmup=args.warmup, device=args.device, seed=args.seed)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"ssm-metarl bench: error: {err}", file=sys.stderr)
        return 2
    print(report.table())
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(report.to_json())
        print(f"report written to {args.output}")
    return 0
