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
              "nav2d_maml_rl/seed_0/learning_curve.png", "nav2d_maml_rl/seed_0/adaptation.png")
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


GENERATORS: dict[str, Callable[[], str]] = {
    "default-run": default_run, "demo": demo, "nav2d-seeds": nav2d_seeds, "bandit": bandit,
    "benchmark-runs": benchmark_runs,
    "benchmarks-full": benchmarks_full, "benchmarks-meta-update": benchmarks_meta_update,
    "best-against-best": best_against_best, "metamaml-modes": metamaml_modes, "scan-ratios": scan_ratios,
    "scaling": scaling, "scaling-summary": scaling_summary,
    "parity": parity, "parity-worst": parity_worst,
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
