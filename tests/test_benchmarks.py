"""Smoke tests of the benchmark suites (they run; they report; no timing is asserted)."""

import json

from benchmarks import quick_benchmark
from benchmarks.harness import measure
from ssm_metarl.cli import main


def test_measure_reports_median_and_quartiles():
    stats = measure(lambda: sum(range(1000)), reps=21, warmup=2)
    assert stats["reps"] == 21
    assert 0 < stats["q1_s"] <= stats["median_s"] <= stats["q3_s"]


def test_quick_benchmark_checks_every_api_on_both_backends(tmp_path, capsys):
    assert quick_benchmark.main(["--reps", "2", "--output", str(tmp_path / "quick.json")]) == 0
    rows = json.loads((tmp_path / "quick.json").read_text())
    apis = {(r["api"], r["backend"]) for r in rows}
    for api in ("SSM forward", "MetaMAML.adapt", "MetaMAML.meta_update", "Adapter.update_step"):
        assert {(api, "torch"), (api, "jax")} <= apis
    assert "median (ms)" in capsys.readouterr().out


def test_bench_quick_writes_json_markdown_and_plots(tmp_path):
    assert main(["bench", "--quick", "--threads", "1", "--no-compile", "--output", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "quick.json").read_text())
    run = payload["runs"][0]
    assert run["environment"]["threads"] == 1 and run["matmul"]["peak_flops_per_s"] > 0
    cases = {r["case"] for r in run["results"]}
    assert {"ssm_step", "sequence_forward", "adapt", "meta_update_second", "meta_update_first", "adapter_step",
            "rl_iteration"} <= cases
    assert (tmp_path / "quick.md").read_text().startswith("| case |")
    assert (tmp_path / "quick_sequence_forward.png").stat().st_size > 0
    assert "jax_vs_jax_floor" in json.dumps(payload["summary"])
