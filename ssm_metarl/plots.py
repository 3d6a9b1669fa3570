"""The two plots of a MAML-RL run, each readable alone: the learning curve and returns vs adaptation.

Returns are mean episode returns (see ``ssm_metarl.runinfo.RETURN_MEANING``); the learning curve shows
the training batches' returns, the adaptation plot the held-out tasks' mean ± 1 standard error.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def run_title(config: dict[str, Any], backend: str | None = None) -> str:
    return (f"{config['task']} · {backend or config['backend']} · seed {config['seed']} · "
            f"{config['iterations']} meta-iterations × {config['meta_batch']} tasks")


def robust_range(values: np.ndarray, skip: int) -> tuple[float, float]:
    """A y-range that shows the learning: the values after the first ``skip`` iterations, plus a margin.

    The first iterations (a random policy) can be ten times worse than the rest and would squash it.
    """
    tail = values[:, skip:] if values.shape[1] > skip else values
    low, high = float(np.nanmin(tail)), float(np.nanmax(tail))
    margin = 0.08 * (high - low) if high > low else 1.0
    return low - margin, high + margin


def learning_curve(metrics: list[dict[str, Any]], config: dict[str, Any], path: Path) -> None:
    """Mean return of each meta-iteration's training batch, before and after one inner step."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    iterations = np.array([m["iteration"] for m in metrics]) + 1
    pre = np.array([m["pre_return"] for m in metrics], dtype=float)
    post = np.array([m["post_return"] for m in metrics], dtype=float)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(iterations, pre, color="tab:blue", lw=1.2, label="before adaptation (meta-policy)")
    ax.plot(iterations, post, color="tab:orange", lw=1.2, label="after 1 inner step (adapted policy)")
    skip = max(1, len(iterations) // 10)
    if len(iterations) > 3:
        low, high = robust_range(np.stack([pre, post]), skip)
        ax.set_ylim(low, high)
        hidden = int(((pre < low) | (post < low) | (pre > high) | (post > high)).sum())
        if hidden:
            ax.text(0.99, 0.02, f"{hidden} early point(s) outside the range (lowest {min(pre.min(), post.min()):.0f})",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.4")
    ax.set(xlabel="meta-iteration (outer Adam steps)",
           ylabel="mean episode return\n(training batch, sum of rewards)",
           title=f"learning curve on training tasks\n{run_title(config)}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right" if len(iterations) <= 3 else "best", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def adaptation(report: dict[str, Any], config: dict[str, Any], backend: str, path: Path) -> None:
    """Held-out mean return (± 1 s.e. over tasks) after 0..3 inner steps, and after the Adapter, drawn apart."""
    plt = _pyplot()
    steps = [0, 1, 2, 3]
    means = [report[f"after_{k}_steps"]["mean"] for k in steps]
    errors = [report[f"after_{k}_steps"]["se"] for k in steps]
    n = report["after_0_steps"]["n"]
    adapter = report["after_adapter"]
    adapter_x = 4.5
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.errorbar(steps, means, yerr=errors, marker="o", capsize=4, color="tab:blue",
                label="MAML inner steps (policy gradient, inner lr)")
    ax.errorbar([adapter_x], [adapter["mean"]], yerr=[adapter["se"]], marker="s", capsize=4, linestyle="none",
                color="tab:green", label="test-time Adapter, 3 steps")
    ax.axvline(3.75, color="0.6", linestyle="--", lw=1)
    ax.set_xticks([*steps, adapter_x], [str(k) for k in steps] + ["Adapter\n(3 steps)"])
    ax.set_xlim(-0.5, 5.2)
    ax.set(xlabel="inner adaptation steps on fresh rollouts of each held-out task",
           ylabel=f"held-out mean episode return\n(mean ± 1 s.e. over {n} tasks)",
           title=f"held-out returns vs adaptation\n{run_title(config, backend)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower right", title="error bars: ± 1 standard error", title_fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
