"""Numbers for the documentation, generated from the committed results under ``benchmarks/results/``.

No number on the results pages is typed by hand. A page (or the README) holds a marker pair::

    <!-- gen: NAME -->
    ...
    <!-- /gen: NAME -->

and :func:`fill` replaces what lies between with ``GENERATORS[NAME]()``. mkdocs runs this as a hook
(``hooks:`` in ``mkdocs.yml``) on every page, so ``mkdocs build`` and ``mkdocs serve`` always show the
committed JSON; the plots are copied into the site as ``results/img/*.png``. From the command line::

    python docs/gen_pages.py            # rewrite the README's generated blocks from the JSON
    python docs/gen_pages.py --check    # exit 1 if the README's blocks differ from the JSON
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"<!-- gen: (?P<name>[\w-]+) -->\n(?:.*?\n)?<!-- /gen: (?P=name) -->", re.S)
IMAGES = ("full_meta_update_second.png", "full_meta_update_first.png", "full_adapt.png", "full_sequence_forward.png",
          "meta_update_1thread_meta_update_second.png", "meta_update_1thread_meta_update_first.png")
RUN_IMAGES = ("default_run/learning_curve.png", "default_run/adaptation.png", "bandit_300/adaptation.png",
              "nav2d_maml_rl/seed_0/learning_curve.png", "nav2d_maml_rl/seed_0/adaptation.png",
              "incontext/study/study.png", "incontext/bandit_targets.png", "incontext/nav2d_targets.png")
STAGES = (("after_0_steps", "before adaptation"), ("after_1_steps", "after 1 inner step"),
          ("after_2_steps", "after 2 inner steps"), ("after_3_steps", "after 3 inner steps"),
          ("after_adapter", "after 3 Adapter steps"))


@cache
def load(relative: str) -> Any:
    """A committed result file, parsed."""
    if str(ROOT) not in sys.path:  # benchmarks.headline, when mkdocs runs this file as a hook
        sys.path.insert(0, str(ROOT))
    return json.loads((RESULTS / relative).read_text())


def _pm(stat: dict[str, float]) -> str:
    return f"{stat['mean']:.2f} ± {stat['se']:.2f}"


def _machine(run: dict[str, Any]) -> str:
    m = run.get("machine", {})
    return f"{m.get('cpu_count', '?')}-core {m.get('cpu', 'CPU')} (torch threads: {m.get('torch_threads', '?')})"


def _native(cfg: dict[str, Any]) -> str:
    """`` (native)`` for a run on the native rollout path (``rollouts``; older reports: ``native``)."""
    return " (native)" if cfg.get("rollouts", "native" if cfg.get("native") else None) == "native" else ""


def _without_output(command: str) -> str:
    """A recorded command without its ``--output DIR`` (where a run was written does not change it)."""
    return re.sub(r" --output \S+", "", command)


# --------------------------------------------------------------------------- MAML-RL runs
def default_run() -> str:
    """The default ``ssm-metarl train`` run: held-out returns after 0-3 inner steps and the Adapter."""
    e = load("default_run/evaluation.json")
    cfg, run = e["config"], e["run"]
    gain = e["after_1_steps"]["mean"] - e["after_0_steps"]["mean"]
    return "\n".join([
        "| held-out return (" + str(e["after_0_steps"]["n"]) + " goals) | " + " | ".join(s for _, s in STAGES) + " |",
        "|---" * (len(STAGES) + 1) + "|",
        f"| `{_without_output(run['command'])}` ({cfg['backend']}) | " + " | ".join(_pm(e[k]) for k, _ in STAGES)
        + " |",
        "",
        f"{cfg['task']}, {cfg['iterations']} meta-iterations, seed {cfg['seed']}, meta-batch {cfg['meta_batch']} "
        f"tasks × {cfg['episodes']} episodes; {e['train_seconds']:.0f} s of training on a {_machine(run)}, "
        f"torch {run['torch']}. One inner step gains {gain:.1f} in return. ± is the standard error over "
        "the held-out tasks. Source: `benchmarks/results/default_run/evaluation.json`.",
    ])


def nav2d_seeds() -> str:
    """Nav2D, several seeds: per-seed held-out returns and the mean over seeds."""
    summary = load("nav2d_maml_rl/summary.json")
    seeds = summary["seeds"]
    evals = [load(f"nav2d_maml_rl/seed_{s}/evaluation.json") for s in seeds]
    cfg = evals[0]["config"]
    lines = ["| held-out return | " + " | ".join(f"seed {s}" for s in seeds) + " | mean over seeds |",
             "|---" * (len(seeds) + 2) + "|"]
    for key, label in STAGES:
        lines.append(f"| {label} | " + " | ".join(_pm(e[key]) for e in evals) + f" | **{summary[key]['mean']:.2f}** |")
    lines += ["", f"{cfg['backend']}{_native(cfg)}, {cfg['task']}, "
              f"{cfg['iterations']} meta-iterations, meta-batch {cfg['meta_batch']} tasks × {cfg['episodes']} "
              f"episodes, {evals[0]['after_0_steps']['n']} held-out goals; ± is the standard error over the goals. "
              "Source: `benchmarks/results/nav2d_maml_rl/`."]
    return "\n".join(lines)


def bandit() -> str:
    """Bernoulli bandits: regret before and after adaptation, and a uniformly random policy's."""
    e = load("bandit_300/evaluation.json")
    cfg = e["config"]
    regret = e["regret"]
    return "\n".join([
        "| | " + " | ".join(s for _, s in STAGES) + " | uniformly random policy |",
        "|---" * (len(STAGES) + 2) + "|",
        "| regret | " + " | ".join(f"{regret[k]['mean']:.1f} ± {regret[k]['se']:.1f}" for k, _ in STAGES)
        + f" | {e['random_policy_regret']:.1f} |",
        "",
        f"{cfg['backend']}{_native(cfg)}, {cfg['iterations']} meta-iterations, "
        f"seed {cfg['seed']}, {regret['after_0_steps']['n']} held-out bandits, memory ring "
        f"[{cfg['r_min']}, {cfg['r_max']}]. Source: `benchmarks/results/bandit_300/evaluation.json`.",
    ])


def demo() -> str:
    """``ssm-metarl demo`` in each backend: held-out query MSE before and after one adaptation step."""
    lines = ["| backend | model | before adaptation | after 1 step |", "|---|---|---|---|"]
    runs = [load(f"demo_{backend}/demo.json") for backend in ("torch", "jax")]
    for r in runs:
        for key, label in (("untrained", "untrained"), ("meta_trained", "meta-trained")):
            lines.append(f"| {r['config']['backend']} | {label} | {r[key]['before_adaptation']:.2f} | "
                         f"{r[key]['after_adaptation']:.2f} |")
    run = runs[0]["run"]
    lines += ["", f"Held-out query MSE on 20 fixed sinusoid tasks after {runs[0]['config']['iterations']} "
              f"meta-iterations; training took " + " and ".join(
                  f"{r['train_seconds']:.0f} s ({r['config']['backend']})" for r in runs)
              + f" on a {_machine(run)}. Source: `benchmarks/results/demo_*/demo.json` "
              "(`ssm-metarl demo --backend B --output benchmarks/results/demo_B`)."]
    return "\n".join(lines)


# --------------------------------------------------------------------------- benchmarks
def _run_line(payload: dict[str, Any], name: str) -> str:
    env = payload["runs"][0]["environment"]
    threads = ", ".join(str(r["environment"]["threads"]) for r in payload["runs"])
    return (f"`{payload['command'].strip()}` ({name}): {env['cpu_count']}-core {env['cpu']}, "
            f"thread settings {threads}, device {env['device']}, torch {env['torch']}, jax {env['jax']}; "
            f"the whole run took {payload['wall_seconds']:.0f} s.")


def benchmark_runs() -> str:
    """One line per committed benchmark run: command, machine, versions, wall time."""
    return "\n".join(f"- {_run_line(load(f'{n}.json'), f'benchmarks/results/{n}.json')}"
                     for n in ("full", "meta_update_1thread"))


def _headline(name: str) -> str:
    from benchmarks.headline import headline

    return headline(load(f"{name}.json")).strip()


def benchmarks_full() -> str:
    """The headline tables of the full suite, per thread setting (``benchmarks.headline``)."""
    return _headline("full")


def benchmarks_meta_update() -> str:
    """The meta-update cases re-run at one thread."""
    return _headline("meta_update_1thread")


def _best_ratios(name: str, case: str) -> tuple[list[str], list[float]]:
    summary = load(f"{name}.json")["summary"]["1_threads"][case]
    sizes = sorted(summary, key=int)
    return sizes, [summary[s]["best_torch_vs_best_jax"] for s in sizes]


def best_against_best() -> str:
    """One sentence: the best PyTorch contender against the best JAX contender, second-order meta-update."""
    payload = load("meta_update_1thread.json")
    env = payload["runs"][0]["environment"]
    sizes, ratios = _best_ratios("meta_update_1thread", "meta_update_second")
    return (f"Best against best (each framework's fastest code for the same maths, on a {env['cpu_count']}-core "
            f"{env['cpu']} CPU at {env['threads']} thread), a second-order meta-update in PyTorch takes "
            + ", ".join(f"{r:.2f}×" for r in ratios) + " the time of JAX at " + ", ".join(sizes)
            + " tasks (`benchmarks/results/meta_update_1thread.json`); PyTorch's best is "
            "`torch.func` + `vmap` under `torch.compile`.")


FLOOR_TARGET = 1.2  # ours / floor, per mode (the twins' speed contract)
# (label, ours / floor from one summary entry); JAX's floor is the faster of its two weight layouts
FLOOR_MODES = (("PyTorch `compile=True` / compiled `torch.func` floor", lambda e: e["torch compiled / floor compiled"]),
               ("PyTorch `vectorize=True` (eager) / eager floor", lambda e: e["torch vmap / floor eager"]),
               ("JAX / faster JAX floor",
                lambda e: max(e["jax ours / floor (in,out)"], e["jax ours / floor (out,in)"])))


def floor_ratios() -> str:
    """Ours over the floor of the same framework and mode, per task count and order, one thread; over the
    target in bold. JAX's floor is the faster of its two weight layouts."""
    payload = load("meta_update_1thread.json")
    summary = payload["summary"]["1_threads"]
    rows = ["| ours / floor | order | " + " | ".join(f"{s} tasks" for s in sorted(summary["meta_update_second"],
                                                                                   key=int)) + " |"]
    rows.append("|---|---" + "|---" * len(summary["meta_update_second"]) + "|")
    for label, ratio in FLOOR_MODES:
        for order in ("second", "first"):
            case = summary[f"meta_update_{order}"]
            cells = []
            for size in sorted(case, key=int):
                r = ratio(case[size])
                cells.append("n/a" if r is None else f"**{r:.2f}**" if round(r, 2) > FLOOR_TARGET else f"{r:.2f}")
            rows.append(f"| {label} | {order} | " + " | ".join(cells) + " |")
    env = payload["runs"][0]["environment"]
    reps = max(r["reps"] or 0 for r in payload["runs"][0]["results"])
    return "\n".join([*rows, "", f"Target: at most {FLOOR_TARGET}x (over it in bold). Medians of "
                       f"{reps} calls after warm-up, every contender in one run "
                       f"on a {env['cpu_count']}-core {env['cpu']} CPU at {env['threads']} thread; source "
                       "`benchmarks/results/meta_update_1thread.json` (`ssm-metarl bench --cases meta_update "
                       "--threads 1 --name meta_update_1thread`)."])


def floor_ratio_ranges() -> str:
    """The README's sentence: the range of ours / floor per mode over every task count and both orders."""
    summary = load("meta_update_1thread.json")["summary"]["1_threads"]
    entries = [e for order in ("second", "first") for e in summary[f"meta_update_{order}"].values()]
    parts = []
    for label, ratio in zip(("compiled PyTorch", "eager vectorised PyTorch", "JAX"), (m[1] for m in FLOOR_MODES),
                            strict=True):
        values = [ratio(e) for e in entries if ratio(e) is not None]
        over = sum(round(v, 2) > FLOOR_TARGET for v in values)
        parts.append(f"{label} {min(values):.2f}-{max(values):.2f}× ({over} of {len(values)} over)")
    return ("Our MetaMAML against the fastest hand-written code for the same maths in the same framework and "
            f"mode (target at most {FLOOR_TARGET}×, 1-32 tasks, first and second order): " + ", ".join(parts)
            + "; the misses are at 1-4 tasks ([why](docs/design.md#the-compiled-step-folds-in-adam-and-the-"
            "finiteness-checks)).")


RUNNER_TARGET_MS, NATIVE_TARGET = 250.0, 1.2  # PyTorch runner iteration; PyTorch native / JAX native


def rl_iteration() -> str:
    """One Nav2D MAML-RL meta-iteration per contender and thread setting, compile apart, and the two targets."""
    payload = load("full.json")
    rows = ["| threads | contender | median (ms) | compile (s, apart) |", "|---|---|---|---|"]
    verdicts = []
    for run in payload["runs"]:
        threads, compiled = run["environment"]["threads"], run.get("rl_compile_seconds", {})
        timed = {r["contender"]: r["median_s"] * 1e3 for r in run["results"]
                 if r["case"] == "rl_iteration" and r["median_s"] is not None}
        for name, ms in timed.items():
            side = "torch" if name.startswith("torch") else "jax"
            seconds = compiled.get(f"{side} native") if "native" in name and "eager" not in name else None
            rows.append(f"| {threads} | {name} | {ms:.1f} | {'' if seconds is None else f'{seconds:.1f}'} |")
        torch_native = next((v for k, v in timed.items() if k.startswith("torch native")), None)
        jax_native = next((v for k, v in timed.items() if k.startswith("jax native")), None)
        if torch_native and jax_native:
            ratio = torch_native / jax_native
            verdicts.append(f"{threads} thread(s): PyTorch native / JAX native = {ratio:.2f}x (target "
                            f"{NATIVE_TARGET}x: {'met' if ratio <= NATIVE_TARGET else 'missed'})")
        if threads == 1 and "torch runner" in timed:
            ms = timed["torch runner"]
            verdicts.append(f"PyTorch runner on one core: {ms:.0f} ms (target {RUNNER_TARGET_MS:.0f} ms: "
                            f"{'met' if ms <= RUNNER_TARGET_MS else 'missed'})")
    size = next(r["size"] for r in payload["runs"][0]["results"] if r["case"] == "rl_iteration")
    return "\n".join([*rows, "", f"Nav2D, {size} (tasks × episodes × steps), medians after warm-up; "
                       + "; ".join(verdicts) + ". Source: `benchmarks/results/full.json` (`ssm-metarl bench`)."])


def scan_ratios() -> str:
    """Parallel over sequential scan time per sequence length, both frameworks, one thread."""
    summary = load("full.json")["summary"]["1_threads"]
    torch_r, jax_r = summary["torch_parallel_vs_sequential"], summary["jax_parallel_vs_sequential"]
    lengths = sorted(torch_r, key=int)
    return "\n".join(["| T | " + " | ".join(lengths) + " |", "|---" * (len(lengths) + 1) + "|",
                      "| torch parallel / sequential | " + " | ".join(f"{torch_r[t]:.2f}" for t in lengths) + " |",
                      "| jax parallel / sequential | " + " | ".join(f"{jax_r[t]:.2f}" for t in lengths) + " |"])


def metamaml_modes() -> str:
    """Our torch MetaMAML in each mode against the plain autograd loop, second order, one thread."""
    payload = load("meta_update_1thread.json")
    rows = payload["runs"][0]["results"]
    names = (("torch autograd loop (reference)", "autograd loop (reference)"),
             ("torch ours loop", "`vectorize=False`"), ("torch ours vmap", "`vectorize=True` (default)"),
             ("torch ours compiled", "`compile=True`"))

    def cell(size: str, contender: str, key: str = "median_s") -> float | None:
        for r in rows:
            if r["case"] == "meta_update_second" and str(r["size"]) == size and r["contender"] == contender:
                return r[key]
        return None

    sizes = sorted({str(r["size"]) for r in rows if r["case"] == "meta_update_second"}, key=int)
    lines = ["| tasks | " + " | ".join(label for _, label in names) + " | compiling (s) |",
             "|---" * (len(names) + 2) + "|"]
    for size in sizes:
        times = [cell(size, c) for c, _ in names]
        compile_s = cell(size, "torch ours compiled", "compile_s")
        lines.append(f"| {size} | " + " | ".join("n/a" if t is None else f"{t * 1e3:.1f}" for t in times)
                     + f" | {'n/a' if compile_s is None else f'{compile_s:.1f}'} |")
    env = payload["runs"][0]["environment"]
    lines += ["", f"Median ms per `meta_update`, second order, SSM 32/8/4/64, 16 sequences × 16 steps per task, "
              f"float32; {env['cpu_count']}-core {env['cpu']}, {env['threads']} thread; "
              f"`{payload['command'].strip()}`."]
    return "\n".join(lines)


def scaling() -> str:
    """Throughput of the sharded meta-update on 1 and 2 workers, per committed scaling run."""
    out = []
    for name in ("scaling.json", "scaling_64.json"):
        payload = load(name)
        tasks = payload["rows"][0]["tasks"]
        out += [f"**{tasks} tasks per meta-batch** (`benchmarks/results/{name}`; {payload['note']}, "
                f"Python {payload['python']}):", "",
                "| backend | workers | ms / meta-update | tasks / s | speed-up | efficiency |",
                "|---|---|---|---|---|---|"]
        out += [f"| {r['backend']} | {r['workers']} | {r['median_s'] * 1e3:.1f} | {r['tasks_per_s']:.1f} | "
                f"{r['speedup']:.2f} | {r['efficiency']:.0%} |" for r in payload["rows"]]
        out.append("")
    out.append(f"Workload: {load('scaling.json')['workload']}.")
    return "\n".join(out)


def scaling_summary() -> str:
    """One sentence per committed scaling run: the 2-worker speed-up and efficiency of each backend."""
    parts = []
    for name in ("scaling.json", "scaling_64.json"):
        rows = load(name)["rows"]
        two = {r["backend"]: r for r in rows if r["workers"] == 2}
        parts.append(f"with {rows[0]['tasks']} tasks, two workers run at "
                     + " and ".join(f"{r['speedup']:.2f}× the speed of one in {b} ({r['efficiency']:.0%} efficiency)"
                                    for b, r in two.items()))
    return "Two workers against one: " + "; ".join(parts) + "."


# --------------------------------------------------------------------------- parity
def parity() -> str:
    """The parity matrix as committed: one row per quantity and dtype."""
    from parity_tests.matrix import Row
    from ssm_metarl.parity import format_table

    report = load("parity.json")
    rows = [Row(**r) for r in report["rows"]]
    table = format_table(rows, [(r["quantity"], r["dtype"]) for r in report["not_applicable"]])
    run = report.get("run", {})
    failed = sum(not r.passed for r in rows)
    sizes = ", ".join(f"{k} {v}" for k, v in report["sizes"].items())
    return "\n".join([
        table, "",
        f"{len(rows) - failed} of {len(rows)} rows within tolerance. Sizes: {sizes}. "
        + (f"Run: `{run['command']}` on a {_machine(run)}, torch {run['torch']}, jax {run['jax']}, "
           f"flax {run['flax']} ({run['timestamp_utc']}). " if run else "")
        + "Source: `benchmarks/results/parity.json`.",
    ])


def parity_worst() -> str:
    """The worst relative error per dtype over the rows that compare equal quantities."""
    report = load("parity.json")
    parts = []
    for dtype in ("float64", "float32"):
        rows = [r for r in report["rows"] if r["dtype"] == dtype and "differs" not in r["quantity"]]
        if rows:
            worst = max(rows, key=lambda r: r["rel"])
            parts.append(f"{dtype}: {worst['rel']:.1e} ({worst['quantity']}, tolerance {worst['tolerance']:.0e})")
    return "Worst normwise relative error per dtype: " + "; ".join(parts) + "."


# --------------------------------------------------------------------------- in-context RL and test-time compute
STUDY = "incontext/study/study.json"
UNITS = {"episodes of context": "episodes", "inner gradient steps": "steps", "Adapter steps": "steps"}


def _unit(mechanism: str, compute: int) -> str:
    unit = next((u for prefix, u in UNITS.items() if mechanism.startswith(prefix)), "")
    return f"{compute} {unit[:-1] if compute == 1 else unit}".strip()


def _study_summary() -> dict[str, list[dict[str, Any]]]:
    """``ssm_metarl.study.mechanism_summary`` of the committed study, grouped by task family."""
    from ssm_metarl.study import mechanism_summary

    out: dict[str, list[dict[str, Any]]] = {}
    for s in mechanism_summary(load(STUDY)["rows"]):
        s["gain"] = s["best_return"] - s["return_at_zero"]
        out.setdefault(s["family"], []).append(s)
    return out


def _study_winner(summaries: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return max(summaries, key=lambda s: s[key])


def _study_baselines() -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for r in load(STUDY)["rows"]:
        if r["mechanism"].startswith("baseline: "):
            out.setdefault(r["family"], []).append({**r, "name": r["mechanism"][len("baseline: "):]})
    return out


def _study_source() -> str:
    report = load(STUDY)
    cfg = report["config"]
    names = ", ".join(Path(c).parent.name if Path(c).stem == "checkpoint" else Path(c).stem
                      for c in report["checkpoints"])
    return (f"{cfg['tasks']} held-out tasks × {cfg['trials']} trials, {cfg['backend']}; checkpoints {names} "
            "(`benchmarks/results/incontext/`), those of one family and mechanism averaged as seeds; ± is the "
            "standard error over tasks; wall times are per task and adaptation, compile excluded, on the 2-core "
            "CPU that ran it. Source: `benchmarks/results/incontext/study/study.json`.")


def study_mechanisms() -> str:
    """The test-time compute table: per family and mechanism, the best return along its axis, what it cost and
    the return gained per 1000 environment steps and per second; each family's best buy in bold."""
    lines = ["| family | mechanism | return, no compute | best return | at | gain | env steps | "
             "gain per 1000 env steps | wall s / adaptation | gain per second |", "|---" * 10 + "|"]
    for family, summaries in _study_summary().items():
        best = {_study_winner(summaries, "gain_per_1000_env_steps")["mechanism"],
                _study_winner(summaries, "gain_per_second")["mechanism"]}
        for s in summaries:
            bold = "**" if s["mechanism"] in best and s["gain"] > 0 else ""
            lines.append(
                f"| {family} | {bold}{s['mechanism']}{bold} | {s['return_at_zero']:.2f} | {s['best_return']:.2f} ± "
                f"{s['best_se']:.2f} | {_unit(s['mechanism'], s['compute_at_best'])} | {s['gain']:+.2f} | "
                f"{s['env_steps_at_best']} | {bold}{s['gain_per_1000_env_steps']:.2f}{bold} | "
                f"{s['wall_seconds_at_best']:.4f} | {bold}{s['gain_per_second']:.1f}{bold} |")
    return "\n".join([*lines, "", _study_source()])


def study_winners() -> str:
    """One line per family: the mechanism that buys the most return per environment step and per second, and
    the best classical baseline on the same tasks."""
    baselines = _study_baselines()
    lines = []
    for family, summaries in _study_summary().items():
        parts = []
        for key, label, fmt in (("gain_per_1000_env_steps", "per 1000 environment steps", ".2f"),
                                ("gain_per_second", "per second", ".1f")):
            s = _study_winner(summaries, key)
            parts.append(f"{label}: {s['mechanism']}, {s[key]:{fmt}} ({s['gain']:+.2f} after "
                         f"{_unit(s['mechanism'], s['compute_at_best'])})")
        ours = max(summaries, key=lambda s: s["best_return"])
        top = max(baselines.get(family, []), key=lambda b: b["return_mean"])
        lines.append(f"- **{family}**: the most return {'; '.join(parts)}. Best learned return: "
                     f"{ours['best_return']:.2f}, by {ours['mechanism']}; best classical baseline on the same tasks, "
                     f"{top['name']}: {top['return_mean']:.2f}.")
    return "\n".join(lines)


def study_readme() -> str:
    """The README's short test-time compute table: gain and gain per unit of compute per mechanism."""
    lines = ["| family | mechanism | gain (at) | per 1000 env steps | per second |", "|---|---|---|---|---|"]
    for family, summaries in _study_summary().items():
        best = {_study_winner(summaries, "gain_per_1000_env_steps")["mechanism"],
                _study_winner(summaries, "gain_per_second")["mechanism"]}
        for s in summaries:
            bold = "**" if s["mechanism"] in best and s["gain"] > 0 else ""
            lines.append(f"| {family} | {bold}{s['mechanism']}{bold} | {s['gain']:+.2f} "
                         f"({_unit(s['mechanism'], s['compute_at_best'])}) | {s['gain_per_1000_env_steps']:.2f} | "
                         f"{s['gain_per_second']:.1f} |")
    cfg = load(STUDY)["config"]
    return "\n".join([*lines, "", f"Held-out return gained over no test-time compute ({cfg['tasks']} held-out "
                      "tasks), per 1000 environment steps and per second of wall time (on a 2-core CPU); in "
                      "bold, the family's best buy. Source: `benchmarks/results/incontext/study/study.json`."])


def study_baselines() -> str:
    """The classical baselines of the study, on its held-out tasks."""
    lines = ["| family | baseline | return |", "|---|---|---|"]
    for family, rows in _study_baselines().items():
        lines += [f"| {family} | {b['name']} | {b['return_mean']:.2f} ± {b['return_se']:.2f} |" for b in rows]
    return "\n".join(lines)


def _targets(family: str) -> dict[str, Any]:
    return load(f"incontext/{family}_targets.json")


def _bandit_verdict() -> tuple[bool, float, float, float]:
    t = _targets("bandit")
    ours, thompson = t["in-context (no gradient step)"], t["baselines"]["Thompson sampling"]
    return ours["regret"] < thompson["regret"], ours["regret"], ours["se"], thompson["regret"]


def _nav2d_verdict() -> tuple[bool, float, float, float]:
    t = _targets("nav2d")
    last = t["in-context (no gradient step)"][-1]
    return last["return"] > t["maml_one_step_post_adaptation"], last["return"], last["se"], \
        t["maml_one_step_post_adaptation"]


def incontext_targets() -> str:
    """One sentence per target: met or missed, with the numbers."""
    met_b, regret, se, thompson = _bandit_verdict()
    met_n, ret, nse, maml = _nav2d_verdict()
    episodes = len(_targets("nav2d")["in-context (no gradient step)"])
    return (f"Bandits: regret **{regret:.2f} ± {se:.2f}** against Thompson sampling's {thompson:.2f}, "
            f"target (below Thompson sampling) **{'met' if met_b else 'missed'}**. Nav2D: in-context return in "
            f"episode {episodes} of a trial **{ret:.2f} ± {nse:.2f}** against MAML's {maml:.1f} after one gradient "
            f"step, target (above it) **{'met' if met_n else 'missed'}**. Sources: "
            "`benchmarks/results/incontext/bandit_targets.json`, `nav2d_targets.json`.")


def incontext_bandit() -> str:
    """The bandit target: regret of the in-context policy (all seeds and each) and of the classical baselines."""
    t = _targets("bandit")
    ours = t["in-context (no gradient step)"]
    lines = ["| policy | regret (100 pulls) |", "|---|---|",
             f"| **in-context SSM, no gradient step, {len(t['seeds'])} seeds** | **{ours['regret']:.2f} ± "
             f"{ours['se']:.2f}** |"]
    lines += [f"| in-context SSM, {name} | {s['regret']:.2f} ± {s['se']:.2f} |" for name, s in t["seeds"].items()]
    for name, b in t["baselines"].items():
        if name == "UCB1":
            name = f"UCB1, textbook c = √2 = {b['c']:.2f}"
        elif "c" in b:
            name = f"UCB1, c = {b['c']:g} (tuned on training bandits)"
        lines.append(f"| {name} | {b['regret']:.2f} ± {b['se']:.2f} |")
    grid = ", ".join(f"c = {c}: {r:.2f}" for c, r in t["ucb1_c_grid_on_training_bandits"].items())
    rl2 = ", ".join(f"{k} {v}" for k, v in t["rl2_table_regret"].items())
    return "\n".join([*lines, "",
                      f"{t['held_out_tasks']} held-out bandits × {t['trials_per_task']} trials; ± is the standard "
                      "error over bandits. UCB1's index is `mean + c sqrt(ln t / n)`; its regret on training "
                      f"bandits for each c: {grid}. The RL² paper's table (Duan et al. 2016, regret derived as "
                      f"100 × 5/6 minus total reward): {rl2}. Source: "
                      "`benchmarks/results/incontext/bandit_targets.json`."])


def incontext_nav2d() -> str:
    """The Nav2D target: return per episode of a trial (all seeds and each) against the oracle, random and MAML."""
    t = _targets("nav2d")
    eps = t["in-context (no gradient step)"]
    header = " | ".join(f"episode {e['episode']}" for e in eps)
    lines = [f"| policy | {header} |", "|---" * (len(eps) + 1) + "|",
             f"| **in-context SSM, {len(t['seeds'])} seeds** | "
             + " | ".join(f"**{e['return']:.2f} ± {e['se']:.2f}**" for e in eps) + " |"]
    lines += [f"| in-context SSM, {name} | " + " | ".join(f"{e['return']:.2f} ± {e['se']:.2f}" for e in s) + " |"
              for name, s in t["seeds"].items()]
    lines += [f"| {name} | " + " | ".join(f"{b['return']:.2f} ± {b['se']:.2f}" for _ in eps) + " |"
              for name, b in t["baselines"].items()]
    lines.append("| MAML, after one gradient step on a batch of episodes (the target) | | "
                 f"{t['maml_one_step_post_adaptation']:.1f} |" if len(eps) == 2 else
                 f"| MAML, one gradient step | {t['maml_one_step_post_adaptation']:.1f} |")
    return "\n".join([*lines, "", f"{t['held_out_tasks']} held-out goals × {t['trials_per_task']} trials; the "
                      "baselines' return is per episode. Source: `benchmarks/results/incontext/nav2d_targets.json`."])


def _probe_table(files: tuple[str, ...], baseline: str | None = None) -> str:
    rows = [r for f in files for r in load(f"incontext/{f}") if baseline in (None, r["baseline"])]
    lines = ["| value baseline | Adam lr | trial discount | meta-iterations | held-out regret | training return, "
             "last 50 iterations | train time (s, under load) |", "|---" * 7 + "|"]
    lines += [f"| `{r['baseline']}` | {r['lr']:g} | {r['discount']:g} | {r['iterations']} | {r['regret']:.1f} | "
              f"{r['train_return_last50']:.1f} | {r['seconds']:.0f} |" for r in rows]
    clip = ", ".join(f"{c:g}" for c in sorted({r["clip"] for r in rows}))
    return "\n".join([*lines, "", f"Bandits, one seed each, global gradient norm clipped to {clip}; held-out regret "
                      "over 100 bandits × 4 trials (`benchmarks/incontext_probe.py`). Sources: "
                      + ", ".join(f"`benchmarks/results/incontext/{f}`" for f in files) + "."])


def incontext_estimator() -> str:
    """The value-baseline probe on bandits: held-out regret per baseline."""
    return _probe_table(("probe_estimator_bandit.json",))


def incontext_optimiser() -> str:
    """The outer-optimiser probes on bandits: learning rate and trial discount against the chosen setting."""
    return _probe_table(("probe_estimator_bandit.json", "probe_bandit_lr1e-2.json", "probe_bandit_discount1.json"),
                        baseline="state")


def incontext_nav2d_probes() -> str:
    """The Nav2D learning-rate probe: return per episode of a trial."""
    rows = load("incontext/probe_nav2d_lr.json")
    lines = ["| Adam lr | meta-iterations | " + " | ".join(f"episode {i + 1}" for i in
                                                        range(len(rows[0]["episode_returns"]))) + " |",
             "|---" * (2 + len(rows[0]["episode_returns"])) + "|"]
    lines += [f"| {r['lr']:g} | {r['iterations']} | " + " | ".join(f"{v:.1f}" for v in r["episode_returns"]) + " |"
              for r in rows]
    return "\n".join([*lines, "", "One seed each, `state` baseline, discount 0.99. Source: "
                      "`benchmarks/results/incontext/probe_nav2d_lr.json`."])


GENERATORS: dict[str, Callable[[], str]] = {
    "default-run": default_run, "demo": demo, "nav2d-seeds": nav2d_seeds, "bandit": bandit,
    "benchmark-runs": benchmark_runs,
    "benchmarks-full": benchmarks_full, "benchmarks-meta-update": benchmarks_meta_update,
    "best-against-best": best_against_best, "metamaml-modes": metamaml_modes, "scan-ratios": scan_ratios,
    "floor-ratios": floor_ratios, "floor-ratio-ranges": floor_ratio_ranges, "rl-iteration": rl_iteration,
    "scaling": scaling, "scaling-summary": scaling_summary,
    "parity": parity, "parity-worst": parity_worst,
    "study-mechanisms": study_mechanisms, "study-winners": study_winners, "study-readme": study_readme,
    "study-baselines": study_baselines, "incontext-targets": incontext_targets, "incontext-bandit": incontext_bandit,
    "incontext-nav2d": incontext_nav2d, "incontext-estimator": incontext_estimator,
    "incontext-optimiser": incontext_optimiser,
    "incontext-nav2d-probes": incontext_nav2d_probes,
}


def fill(markdown: str) -> str:
    """Replace every ``<!-- gen: NAME -->`` block with freshly generated Markdown."""
    def replace(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in GENERATORS:
            raise KeyError(f"unknown generated block {name!r}; known: {sorted(GENERATORS)}")
        return f"<!-- gen: {name} -->\n{GENERATORS[name]()}\n<!-- /gen: {name} -->"

    return MARKER.sub(replace, markdown)


# --------------------------------------------------------------------------- mkdocs hooks
def on_page_markdown(markdown: str, **_: Any) -> str:
    return fill(markdown)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    for relative in (*IMAGES, *RUN_IMAGES):
        name = relative.replace("/", "_")
        files.append(File.generated(config, f"results/img/{name}", content=(RESULTS / relative).read_bytes()))
    return files


def main(argv: list[str]) -> int:
    readme = ROOT / "README.md"
    text = readme.read_text()
    filled = fill(text)
    if "--check" in argv:
        if filled != text:
            print("README.md's generated blocks differ from benchmarks/results: run python docs/gen_pages.py")
            return 1
        return 0
    readme.write_text(filled)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
