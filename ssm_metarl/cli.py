"""The ssm-metarl command line: meta-train and evaluate SSM policies, check PyTorch-vs-JAX parity, benchmark."""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from pathlib import Path

from ssm_metarl import porting_cli
from ssm_metarl.argtypes import finite_float, non_negative_int, positive_float, positive_int

EPILOG = """\
examples (one per command):
  ssm-metarl train --backend jax --task nav2d --seeds 0 1 2 --output runs/nav2d
  ssm-metarl evaluate runs/nav2d/seed_0/checkpoint.safetensors --backend torch
  ssm-metarl parity --dtype float64 --output runs/parity.json
  ssm-metarl bench
  ssm-metarl demo --backend jax --iterations 200

'ssm-metarl COMMAND --help' shows a command's options and their defaults.
"""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default, except where the help text already says it (defaults computed later)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, argparse.SUPPRESS) or isinstance(action.default, bool):
            return text
        return super()._get_help_string(action)


def add_demo(sub: argparse._SubParsersAction) -> None:
    demo = sub.add_parser("demo", help="meta-train the SSM on sinusoid regression and show the adaptation gain",
                          description=textwrap.fill(
                              "Meta-train the SSM with MetaMAML on sinusoid sequence regression and print the "
                              "held-out query MSE before and after one adaptation step.", 100),
                          formatter_class=HelpFormatter)
    demo.add_argument("--backend", choices=["torch", "jax"], default="torch", help="framework to run in")
    demo.add_argument("--iterations", type=non_negative_int, default=500, help="outer (meta) steps")
    demo.add_argument("--meta-batch", type=positive_int, default=8, help="tasks per outer step")
    demo.add_argument("--seed", type=non_negative_int, default=0, help="seed of the weights and task sampler")
    demo.add_argument("--output", type=Path, default=None, help="directory for demo.json (default: none written)")


def add_train(sub: argparse._SubParsersAction) -> None:
    from ssm_metarl.train import DECAY_RING, TrainConfig

    d = TrainConfig()
    train = sub.add_parser(
        "train", help="meta-train an SSM policy with MAML-RL, then evaluate it on held-out tasks",
        formatter_class=HelpFormatter,
        description=textwrap.fill(
            "Meta-train an SSM policy with second-order MAML-RL, then evaluate it on a fixed held-out set of "
            "tasks. Every field can also come from a TOML file (--config; the flags given on the command line "
            "override it). The run is written to .OUTPUT.partial and renamed to OUTPUT when complete; Ctrl-C "
            "saves a resumable checkpoint there.", 100),
        epilog="examples:\n  ssm-metarl train --backend jax --task bandit --iterations 300\n"
               "  ssm-metarl train --config runs/train/config.toml --output runs/again   # repeat a run\n"
               "  ssm-metarl train --resume runs/train                                # after Ctrl-C\n"
               "  ssm-metarl train --resume runs/train --backend jax                  # ... in the other backend")
    # Config fields default to SUPPRESS, so only the flags actually given override a --config file.
    field = {"default": argparse.SUPPRESS}
    train.add_argument("--config", type=Path, default=None,
                       help="TOML file with any of the fields below (underscores: meta_batch = 20, seeds = [0, 1]); "
                            "default: none")
    train.add_argument("--backend", choices=["torch", "jax"], **field, help=f"framework (default: {d.backend})")
    train.add_argument("--task", choices=sorted(DECAY_RING), **field, help=f"task family (default: {d.task})")
    train.add_argument("--iterations", type=non_negative_int, **field,
                       help=f"meta-iterations, one outer Adam step each (default: {d.iterations})")
    train.add_argument("--meta-batch", type=positive_int, **field,
                       help=f"tasks per meta-iteration (default: {d.meta_batch})")
    train.add_argument("--episodes", type=positive_int, **field,
                       help=f"episodes per task for each rollout (default: {d.episodes})")
    train.add_argument("--state-dim", type=positive_int, **field, help=f"SSM state size (default: {d.state_dim})")
    train.add_argument("--hidden-dim", type=positive_int, **field,
                       help=f"width of the SSM's output MLP (default: {d.hidden_dim})")
    train.add_argument("--inner-lr", type=positive_float, **field,
                       help=f"inner (adaptation) SGD step size (default: {d.inner_lr})")
    train.add_argument("--outer-lr", type=positive_float, **field,
                       help=f"outer Adam learning rate (default: {d.outer_lr})")
    train.add_argument("--init-log-std", type=finite_float, **field,
                       help=f"Gaussian policies' initial log standard deviation (default: {d.init_log_std})")
    train.add_argument("--r-min", type=finite_float, **field,
                       help="SSM decays start uniform in [r-min, r-max] (default: the task's; nav2d, cartpole, "
                            "pendulum 0.01, bandit 0.9)")
    train.add_argument("--r-max", type=finite_float, **field,
                       help="upper end of the decay ring (default: the task's; 0.5 for the Markov tasks, "
                            "0.999 for bandit)")
    train.add_argument("--seeds", type=non_negative_int, nargs="+", **field,
                       help="one run per seed, each in OUTPUT/seed_<k> when there are several (default: 0)")
    train.add_argument("--eval-tasks", type=positive_int, **field, help=f"held-out tasks (default: {d.eval_tasks})")
    train.add_argument("--eval-episodes", type=positive_int, **field,
                       help=f"episodes per held-out task (default: {d.eval_episodes})")
    train.add_argument("--objective", type=str, **field,
                       help=f"maml (post-adaptation return), incontext (the whole trial's return, no inner step) or "
                            f"both (an inner step on top of the in-context policy) (default: {d.objective})")
    train.add_argument("--trial-episodes", type=int, **field,
                       help=f"in-context objectives: episodes per trial; the SSM state carries across them "
                            f"(default: {d.trial_episodes})")
    train.add_argument("--trial-discount", type=float, **field,
                       help=f"in-context objectives: discount over the whole trial (default: {d.trial_discount})")
    train.add_argument("--trial-baseline", type=str, **field,
                       help=f"in-context objectives: state, time or linear (default: {d.trial_baseline})")
    train.add_argument("--trial-entropy", type=float, **field,
                       help=f"in-context objectives: weight of the entropy bonus in the outer loss "
                            f"(default: {d.trial_entropy})")
    train.add_argument("--rollouts", choices=["runner", "native"], **field,
                       help="runner: gymnasium environments through the backend-neutral runner; native: the "
                            "dynamics written in the framework, one compiled program per meta-iteration "
                            "(nav2d and bandit only) (default: native where the task has it, else runner)")
    train.add_argument("--output", type=Path, default=Path("runs/train"), help="run directory")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty --output (once the new run is complete) and discard an "
                            "interrupted run waiting there (default: refuse)")
    train.add_argument("--resume", type=Path, default=None, metavar="DIR",
                       help="continue the interrupted run whose --output was DIR, with its saved config; "
                            "--backend may be given to continue it in the other framework (default: start a "
                            "new run)")
    train.add_argument("--checkpoint-every", type=positive_int, default=10,
                       help="save a resumable checkpoint every N meta-iterations")


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    evaluate = sub.add_parser(
        "evaluate", help="re-run the held-out evaluation of a train checkpoint, in either backend",
        formatter_class=HelpFormatter,
        description=textwrap.fill(
            "Re-run the held-out evaluation of a train checkpoint. Writes evaluation_<backend>.json and "
            "adaptation_<backend>.png; the training run's own files are never overwritten.", 100))
    evaluate.add_argument("checkpoint", type=Path, help="a checkpoint.safetensors written by 'ssm-metarl train'")
    evaluate.add_argument("--backend", choices=["torch", "jax"], default=None,
                          help="framework to evaluate in (default: the checkpoint's)")
    evaluate.add_argument("--output", type=Path, default=None,
                          help="directory for the results (default: the checkpoint's directory)")


def add_bench(sub: argparse._SubParsersAction) -> None:
    bench = sub.add_parser("bench", help="the PyTorch-vs-JAX benchmark suite (see 'ssm-metarl bench --help')",
                           add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to benchmarks/compare.py")


def add_parity(sub: argparse._SubParsersAction) -> None:
    parity = sub.add_parser(
        "parity", help="run the PyTorch-vs-JAX parity matrix as a table; exit 1 if a row fails",
        formatter_class=HelpFormatter,
        description=textwrap.fill("Run the parity matrix: the same weights and inputs through both backends, every "
                                  "quantity of the contract compared (max abs, normwise rel, tolerance).", 100))
    parity.add_argument("--dtype", choices=["float64", "float32", "both", "bfloat16", "float16"], default="both",
                        help="precision(s) to check; float32 lists float64-only rows as n/a; bfloat16 and float16 "
                             "for your own pair (--torch/--flax) only (default: both)")
    parity.add_argument("--state-dim", type=positive_int, default=8, help="SSM state size")
    parity.add_argument("--input-dim", type=positive_int, default=3, help="SSM input size")
    parity.add_argument("--output-dim", type=positive_int, default=2, help="SSM output size")
    parity.add_argument("--hidden-dim", type=positive_int, default=16, help="width of the SSM's output MLP")
    parity.add_argument("--batch", type=positive_int, default=4, help="sequences per batch")
    parity.add_argument("--seq-len", type=positive_int, default=33, help="time steps per sequence")
    parity.add_argument("--seed", type=non_negative_int, default=0, help="seed of the weights and inputs")
    parity.add_argument("--output", type=Path, default=Path("runs/parity_report.json"), help="JSON report path")
    porting_cli.add_arguments(parity)


def add_study(sub: argparse._SubParsersAction) -> None:
    study = sub.add_parser(
        "study", help="held-out return vs test-time compute (inner steps, Adapter steps, episodes of context)",
        formatter_class=HelpFormatter,
        description=textwrap.fill(
            "Measure held-out return as a function of test-time compute along every axis each checkpoint "
            "supports (episodes of context for in-context checkpoints, inner gradient steps for both kinds, "
            "Adapter steps for 'ssm-metarl train' MAML checkpoints), with the classical baselines on the same "
            "held-out tasks. Checkpoints of one task family are averaged as seeds. Writes study.json, study.csv "
            "and study.png to --output.", 100),
        epilog="example:\n  ssm-metarl study benchmarks/results/incontext/bandit_seed*.safetensors --output runs/study")
    study.add_argument("checkpoints", type=Path, nargs="+", help="in-context or 'ssm-metarl train' checkpoints")
    study.add_argument("--backend", choices=["torch", "jax"], default="jax", help="framework to evaluate in")
    study.add_argument("--tasks", type=positive_int, default=40, help="held-out tasks")
    study.add_argument("--trials", type=positive_int, default=4, help="trials (episodes for MAML) per task")
    study.add_argument("--max-inner-steps", type=non_negative_int, default=3, help="inner gradient steps 0..K")
    study.add_argument("--max-episodes", type=positive_int, default=3, help="episodes of context 1..N")
    study.add_argument("--adapter-steps", type=non_negative_int, default=3, help="Adapter steps 1..A")
    study.add_argument("--seed", type=non_negative_int, default=0, help="seed of the evaluation rollouts")
    study.add_argument("--output", type=Path, default=Path("runs/study"), help="directory for the results")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssm-metarl", description=__doc__.strip(), epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")
    for add in (add_train, add_evaluate, add_study, add_parity, add_bench, add_demo):
        add(sub)
    return parser


CONFIG_FLAGS = ("backend", "task", "iterations", "meta_batch", "episodes", "state_dim", "hidden_dim", "inner_lr",
                "outer_lr", "init_log_std", "r_min", "r_max", "seeds", "eval_tasks", "eval_episodes", "rollouts",
                "objective", "trial_episodes", "trial_discount", "trial_baseline", "trial_entropy")


def run_train(args: argparse.Namespace) -> int:
    from ssm_metarl import train
    from ssm_metarl.config_file import read_toml
    from ssm_metarl.rundir import output_of_staging

    flags = {name: getattr(args, name) for name in CONFIG_FLAGS if hasattr(args, name)}
    output = args.output
    backend = None
    if args.resume is not None:
        backend = flags.pop("backend", None)  # a run may continue in the other backend
        if flags or args.config is not None:
            given = ["--" + name.replace("_", "-") for name in flags] + (["--config"] if args.config else [])
            raise ValueError(f"--resume continues a run with its saved configuration (only --backend may "
                             f"change); drop {', '.join(given)}")
        output = output_of_staging(args.resume)
        configs: list = []
    else:
        file_values = read_toml(args.config) if args.config is not None else {}
        configs = train.resolve_configs(file_values, flags, str(args.config))
    try:
        train.run(configs, output, overwrite=args.overwrite, resume=args.resume is not None,
                  checkpoint_every=args.checkpoint_every, backend=backend)
    except KeyboardInterrupt as interrupt:
        where = f" ({interrupt})" if isinstance(interrupt, train.TrainingInterrupted) else ""
        print(f"\nssm-metarl train: interrupted{where}.\n{output} is unchanged. Continue with: "
              f"ssm-metarl train --resume {output}", file=sys.stderr)
        return 130
    return 0


def run_parity(args: argparse.Namespace) -> int:
    from ssm_metarl.rundir import check_writable_file

    check_writable_file(args.output, "--output")
    from parity_tests.models import set_high_precision

    set_high_precision()
    if args.torch is not None or args.flax is not None:  # a user's own model pair: the porting kit
        return porting_cli.run(args)
    if args.dtype in ("bfloat16", "float16"):
        raise ValueError(f"--dtype {args.dtype} is for your own pair (--torch/--flax); the built-in matrix runs "
                         "float64 and float32")
    from parity_tests.matrix import Sizes
    from ssm_metarl import parity

    sizes = Sizes(args.state_dim, args.input_dim, args.output_dim, args.hidden_dim, args.batch, args.seq_len,
                  seed=args.seed)
    dtypes = ["float64", "float32"] if args.dtype == "both" else [args.dtype]
    return parity.run(dtypes, sizes, args.output)


def run_command(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from ssm_metarl import demo

        if args.output is not None:
            from ssm_metarl.rundir import check_writable_dir

            check_writable_dir(args.output, "--output")
        config = demo.DemoConfig(backend=args.backend, iterations=args.iterations, meta_batch=args.meta_batch,
                                 seed=args.seed)
        demo.run(config, args.output)
        return 0
    if args.command == "train":
        return run_train(args)
    if args.command == "evaluate":
        from ssm_metarl import train

        train.evaluate_checkpoint(args.checkpoint, args.backend, args.output)
        return 0
    if args.command == "parity":
        return run_parity(args)
    if args.command == "study":
        from ssm_metarl import study
        from ssm_metarl.rundir import check_writable_dir

        check_writable_dir(args.output, "--output")
        missing = [str(p) for p in args.checkpoints if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"checkpoint(s) not found: {', '.join(missing)}")
        config = study.StudyConfig(args.backend, args.tasks, args.trials, args.max_inner_steps, args.max_episodes,
                                   args.adapter_steps, args.seed)
        study.run(args.checkpoints, args.output, config)
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"] and any(a.split("=")[0] in ("--torch", "--flax") for a in argv[1:]):
        return porting_cli.bench_main(argv[1:])  # a user's own pair (the porting kit)
    if argv[:1] == ["bench"]:  # its own parser (benchmarks/compare.py) takes every option, --help included
        from benchmarks import compare

        return compare.main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return run_command(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"ssm-metarl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        if type(err).__name__ != "WorkerFailure":  # either backend's; checked by name so no backend is imported
            raise
        # A peer died or hung: the process group is broken, and gloo's teardown would abort; leave at once.
        print(f"ssm-metarl {args.command}: error: {err}", file=sys.stderr, flush=True)
        os._exit(3)


if __name__ == "__main__":
    sys.exit(main())
