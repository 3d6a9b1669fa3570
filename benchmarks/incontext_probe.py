"""Short probes of in-context training choices (estimator, discount, learning rate) on bandits or Nav2D.

Each probe trains one seed for ``--iterations`` meta-iterations (JAX) and reports held-out return/regret.
    python -m benchmarks.incontext_probe --family bandit --iterations 400 --baseline state time linear
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np

from shared.baselines import pseudo_regret
from shared.incontext import TrialConfig
from ssm_metarl.incontext import PolicySpec, train


def held_out_score(trainer, family: str, episodes: int, n: int = 100, trials: int = 4, seed: int = 123) -> dict:
    dist = trainer.distribution
    tasks = dist.held_out(n)
    out = trainer.evaluate(tasks, jax.random.PRNGKey(seed), trials=trials, episodes=episodes)
    if family == "bandit":
        means = np.array([t["means"] for t in tasks])
        arms = out["actions"].reshape(n, trials, -1)
        return {"regret": float(pseudo_regret(means, arms).mean())}
    per_episode = out["rewards"].reshape(n, trials, episodes, -1).sum(-1).mean((0, 1))
    return {"episode_returns": [float(v) for v in per_episode]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--family", default="bandit")
    p.add_argument("--iterations", type=int, default=400)
    p.add_argument("--episodes", type=int, default=1)
    p.add_argument("--baseline", nargs="+", default=["state"])
    p.add_argument("--discount", nargs="+", type=float, default=[0.99])
    p.add_argument("--lr", nargs="+", type=float, default=[3e-3])
    p.add_argument("--clip", nargs="+", type=float, default=[1.0])
    p.add_argument("--state-dim", type=int, default=32)
    p.add_argument("--hidden-dim", type=int, default=64)
    p.add_argument("--init-log-std", type=float, default=-1.0)
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--meta-batch", type=int, default=16)
    p.add_argument("--objective", default="incontext")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None)
    a = p.parse_args()
    rows = []
    for baseline in a.baseline:
        for discount in a.discount:
            for lr in a.lr:
                for clip in a.clip:
                    spec = PolicySpec(a.family, a.state_dim, a.hidden_dim, a.init_log_std)
                    cfg = TrialConfig(a.objective, a.episodes, discount, baseline, a.trials)
                    start = time.perf_counter()
                    _, trainer, metrics = train("jax", spec, cfg, a.iterations, seed=a.seed,
                                                meta_batch_size=a.meta_batch, outer_lr=lr, max_grad_norm=clip or None,
                                                log=lambda m: print(json.dumps(m), flush=True), log_every=100)
                    row = {"baseline": baseline, "discount": discount, "lr": lr, "clip": clip,
                           "iterations": a.iterations, "seconds": time.perf_counter() - start,
                           "train_return_last50": float(np.mean([m["pre_return"] for m in metrics[-50:]])),
                           **held_out_score(trainer, a.family, a.episodes)}
                    print("ROW", json.dumps(row), flush=True)
                    rows.append(row)
    if a.output:
        with open(a.output, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
