"""The ``ssm-metarl`` command line."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ssm_metarl import porting_cli


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssm-metarl", description=__doc__.strip().splitlines()[0].rstrip("."))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="meta-train the SSM on sinusoid regression and show the adaptation gain")
    demo.add_argument("--backend", choices=["torch", "jax"], default="torch")
    demo.add_argument("--iterations", type=non_negative_int, default=500, help="outer (meta) steps (default: 500)")
    demo.add_argument("--meta-batch", type=positive_int, default=8, help="tasks per outer step (default: 8)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--output", type=Path, default=None, help="directory for demo.json (default: none)")

    train = sub.add_parser("train", help="meta-train an SSM policy with MAML-RL, then evaluate on held-out tasks")
    train.add_argument("--backend", choices=["torch", "jax"], default="torch")
    train.add_argument("--task", choices=["nav2d", "bandit", "cartpole", "pendulum"], default="nav2d")
    train.add_argument("--iterations", type=non_negative_int, default=150, help="meta-iterations (default: 150)")
    train.add_argument("--meta-batch", type=positive_int, default=20, help="tasks per meta-iteration (default: 20)")
    train.add_argument("--episodes", type=positive_int, default=20, help="episodes per task and phase (default: 20)")
    train.add_argument("--inner-lr", type=float, default=0.1)
    train.add_argument("--outer-lr", type=float, default=3e-3)
    train.add_argument("--init-log-std", type=float, default=0.0, help="Gaussian policies' initial log std")
    train.add_argument("--r-min", type=float, default=None,
                       help="SSM decays start in [r-min, r-max] (default: the task's; short for Markov tasks)")
    train.add_argument("--r-max", type=float, default=None)
    train.add_argument("--seeds", type=int, nargs="+", default=[0], help="one run per seed (default: 0)")
    train.add_argument("--eval-tasks", type=positive_int, default=40, help="held-out tasks (default: 40)")
    train.add_argument("--no-native", action="store_true", help="JAX: use the numpy environments, not jit rollouts")
    train.add_argument("--output", type=Path, default=Path("runs/train"), help="output directory (default: runs/train)")

    evaluate = sub.add_parser("evaluate", help="re-run the held-out evaluation of a train checkpoint")
    evaluate.add_argument("checkpoint", type=Path)
    evaluate.add_argument("--backend", choices=["torch", "jax"], default=None, help="default: the checkpoint's")
    evaluate.add_argument("--output", type=Path, default=None, help="default: the checkpoint's directory")

    bench = sub.add_parser("bench", help="the PyTorch-vs-JAX benchmark suite (see benchmarks/compare.py)",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)

    parity = sub.add_parser("parity", help="run the PyTorch-vs-JAX parity matrix; exit 1 if a row fails")
    parity.add_argument("--dtype", choices=["float64", "float32", "both"], default="both")
    parity.add_argument("--state-dim", type=int, default=8)
    parity.add_argument("--input-dim", type=int, default=3)
    parity.add_argument("--output-dim", type=int, default=2)
    parity.add_argument("--hidden-dim", type=int, default=16)
    parity.add_argument("--batch", type=int, default=4)
    parity.add_argument("--seq-len", type=int, default=33)
    parity.add_argument("--seed", type=int, default=0)
    parity.add_argument("--output", type=Path, default=Path("parity_report.json"), help="JSON report path")
    porting_cli.add_arguments(parity)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:  # its own parser (benchmarks/compare.py) takes every option, --help included
        from benchmarks import compare

        return compare.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from ssm_metarl import demo

            config = demo.DemoConfig(backend=args.backend, iterations=args.iterations, meta_batch=args.meta_batch,
                                     seed=args.seed)
            demo.run(config, args.output)
            return 0
        if args.command == "train":
            from ssm_metarl import train

            for seed in args.seeds:
                config = train.TrainConfig(
                    backend=args.backend, task=args.task, iterations=args.iterations, meta_batch=args.meta_batch,
                    episodes=args.episodes, inner_lr=args.inner_lr, outer_lr=args.outer_lr, seed=seed,
                    init_log_std=args.init_log_std, r_min=args.r_min, r_max=args.r_max,
                    eval_tasks=args.eval_tasks, native=not args.no_native,
                )
                train.train(config, args.output / f"seed_{seed}" if len(args.seeds) > 1 else args.output)
            if len(args.seeds) > 1:
                train.summarize_seeds(args.output, args.seeds)
            return 0
        if args.command == "evaluate":
            from ssm_metarl import train

            train.evaluate_checkpoint(args.checkpoint, args.backend, args.output)
            return 0
        if args.command == "parity":
            from parity_tests.models import set_high_precision

            set_high_precision()
            if args.torch is not None or args.flax is not None:  # a user's own model pair: the porting kit
                return porting_cli.run(args)
            from parity_tests.matrix import Sizes
            from ssm_metarl import parity

            sizes = Sizes(args.state_dim, args.input_dim, args.output_dim, args.hidden_dim, args.batch,
                          args.seq_len, seed=args.seed)
            dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
            return parity.run(dtypes, sizes, args.output)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"ssm-metarl {args.command}: error: {err}", file=sys.stderr)
        return 2
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
