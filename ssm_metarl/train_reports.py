"""What a training run writes: metrics (JSON and CSV), the final checkpoint, console reports, seed summaries."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from shared.env_runner.tasks import TaskDistribution
from shared.weights import save_weights
from ssm_metarl.runinfo import RETURN_MEANING
from ssm_metarl.train_config import TrainConfig, report_config


def summarize(values: list[float]) -> dict[str, float]:
    """Mean, standard error and count of ``values``."""
    values = np.asarray(values, dtype=np.float64)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
    return {"mean": float(values.mean()), "se": float(se), "n": len(values)}


def compile_line(config: TrainConfig, compile_seconds: float, train_seconds: float) -> str:
    what = "JAX compilation (tracing + XLA" if config.backend == "jax" else "torch.compile (dynamo + inductor"
    return (f"training took {train_seconds:.1f} s, of which {compile_seconds:.1f} s were {what}, "
            f"during the first iterations; {config.rollouts} rollouts)")


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically: a partly written report is never left behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=2))
    os.replace(tmp, path)


def write_metrics(directory: Path, metrics: list[dict[str, Any]], config: TrainConfig, info: dict[str, Any],
                  compile_seconds: float | None) -> None:
    """``metrics.json`` (with the run's provenance) and ``metrics.csv`` (one row per iteration)."""
    report = {"run": info, "config": report_config(config),
              "return": "pre_return/post_return: mean return of the iteration's training batch before/after "
                        "one inner step; " + RETURN_MEANING.get(config.task, ""),
              "iterations": metrics}
    if compile_seconds is not None:
        report["compile_seconds"] = compile_seconds
    write_json(directory / "metrics.json", report)
    columns = ["iteration", "pre_return", "post_return", "loss", "seconds", "backend"]
    with open(directory / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(metrics)


def save_checkpoint(path: Path, learner: Any, config: TrainConfig) -> None:
    """The trained policy's canonical weights, with the config (``ssm-metarl evaluate`` reads it)."""
    save_weights(path, learner.canonical_weights(), {"train": dataclasses.asdict(config)})


def print_report(report: dict[str, Any], distribution: TaskDistribution, output: Path) -> None:
    n = report["after_0_steps"]["n"]
    print(f"\nheld-out {distribution.name}: mean return over {n} tasks (± s.e.)")
    for key in ("after_0_steps", "after_1_steps", "after_2_steps", "after_3_steps", "after_adapter"):
        label = key.replace("after_", "after ").replace("_steps", " inner steps").replace("adapter", "3 Adapter steps")
        print(f"  {label:<24} {report[key]['mean']:>9.2f} ± {report[key]['se']:.2f}")
    gain = report["after_1_steps"]["mean"] - report["after_0_steps"]["mean"]
    print(f"  gain after 1 step        {gain:>9.2f}")
    if "regret" in report:
        print(f"  regret before adaptation {report['regret']['after_0_steps']['mean']:>9.2f} "
              f"(a uniformly random policy: {report['random_policy_regret']:.2f})")
    print(f"results: {output}")


def summarize_seeds(output: Path, seeds: list[int]) -> dict[str, Any]:
    """Mean over seeds of each seed's held-out means, written to ``summary.json`` and ``summary.md``."""
    reports = [json.loads((output / f"seed_{s}" / "evaluation.json").read_text()) for s in seeds]
    keys = [k for k in ("after_0_steps", "after_1_steps", "after_2_steps", "after_3_steps", "after_adapter",
                        "episode_1", "episode_2", "episode_3", "episode_4", "regret") if k in reports[0]]
    summary = {key: summarize([r[key]["mean"] for r in reports]) for key in keys}
    summary["seeds"] = seeds
    summary = {"run": reports[0].get("run"), "config": {k: v for k, v in reports[0]["config"].items() if k != "seed"},
               "return": reports[0].get("return"), **summary}
    write_json(output / "summary.json", summary)
    lines = ["| after | mean return over seeds | s.e. over seeds |", "|---|---|---|"]
    lines += [f"| {key.replace('after_', '').replace('_', ' ')} | {summary[key]['mean']:.2f} | "
              f"{summary[key]['se']:.2f} |" for key in keys]
    (output / "summary.md").write_text("\n".join(lines) + "\n")
    print(f"\nover seeds {seeds}:\n" + "\n".join(lines))
    return summary
