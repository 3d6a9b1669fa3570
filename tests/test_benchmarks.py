"""The benchmark suites: they run, every contender reports, and the floors compute our maths.

No timing is asserted anywhere (timings are reported, never tested).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import floors, names, peers, quick_benchmark
from benchmarks.compare import compile_plan, summarize
from benchmarks.harness import measure
from benchmarks.headline import headline
from shared.compare import compare_trees
from ssm_metarl.cli import main
from torch_impl.core.ssm import SSM
from torch_impl.meta_rl.meta_maml import MetaMAML

STATE, INP, OUT, HID, B, T = 4, 3, 2, 5, 6, 5
LR = 0.1


def _problem(n_tasks: int = 3, seq: int = T):
    torch.manual_seed(0)
    model = SSM(STATE, INP, OUT, HID, "cpu", dtype=torch.float64)
    weights = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    rng = np.random.default_rng(0)
    tasks = [tuple(rng.normal(size=s) for s in [(B, seq, INP), (B, seq, OUT)] * 2) for _ in range(n_tasks)]
    return model, weights, tasks


def _fresh(weights):
    model = SSM(STATE, INP, OUT, HID, "cpu", dtype=torch.float64)
    model.load_state_dict({k: torch.tensor(v) for k, v in weights.items()})
    return model


def _floor_gradients(weights, tasks, k, first_order):
    t_tasks = [tuple(torch.tensor(a) for a in task) for task in tasks]
    t_stacked = [torch.stack(part) for part in zip(*t_tasks, strict=True)]
    j_stacked = tuple(jnp.asarray(np.stack(part)) for part in zip(*tasks, strict=True))
    out = {
        names.AUTOGRAD.name: floors.torch_autograd_meta_grad(
            floors.torch_params(weights, requires_grad=True), t_tasks, LR, k, first_order)[0],
        names.FLOOR_EAGER.name: floors.torch_func_meta_grad(LR, k, first_order)(
            floors.torch_params(weights), *t_stacked)[0],
    }
    for contender, layout in ((names.JAX_FLOOR_OUT_IN, "out_in"), (names.JAX_FLOOR_IN_OUT, "in_out")):
        grads = jax.grad(floors.jax_meta_loss(LR, k, first_order, layout))(floors.jax_params(weights, layout),
                                                                           j_stacked)
        out[contender.name] = floors.to_canonical(grads)
    for peer in ("higher", "torchopt"):
        model = _fresh(weights)
        run = getattr(peers, f"{peer}_meta_grad")(model, LR, k, first_order)
        assert run is not None, f"{peer} is a dev dependency"
        run(t_tasks)
        out[peer] = {n: p.grad for n, p in model.named_parameters()}
    return out


@pytest.mark.parametrize(("k", "first_order"), [(1, False), (2, False), (2, True)])
def test_every_floor_and_peer_computes_meta_mamls_meta_gradient_float64(k, first_order):
    model, weights, tasks = _problem()
    maml = MetaMAML(model, LR, num_inner_steps=k, first_order=first_order)
    expected = maml.meta_gradient([tuple(torch.tensor(a) for a in task) for task in tasks])
    other_order = MetaMAML(_fresh(weights), LR, num_inner_steps=k, first_order=not first_order).meta_gradient(
        [tuple(torch.tensor(a) for a in task) for task in tasks])
    assert not compare_trees(other_order, expected).passes(1e-6), "first and second order must differ here"
    for name, grads in _floor_gradients(weights, tasks, k, first_order).items():
        comparison = compare_trees(grads, expected)
        assert comparison.passes(1e-10), f"{name}:\n{comparison.report(1e-10)}"


def test_floor_adapt_and_peer_adapt_match_meta_maml_adapt_float64():
    model, weights, tasks = _problem(1)
    x, y = (torch.tensor(a) for a in tasks[0][:2])
    expected = MetaMAML(model, LR, num_inner_steps=3).adapt(x, y)
    got = {
        "torch.func": floors.torch_func_inner(LR, 3, False)(floors.torch_params(weights), x, y),
        "autograd": floors.torch_autograd_inner(floors.torch_params(weights, requires_grad=True), x, y, LR, 3, False),
        "jax (in,out)": floors.to_canonical(floors.jax_inner(floors.jax_params(weights, "in_out"),
                                                             jnp.asarray(tasks[0][0]), jnp.asarray(tasks[0][1]),
                                                             LR, 3, True, "in_out")),
    }
    for peer in ("higher", "torchopt"):
        params = getattr(peers, f"{peer}_adapt")(_fresh(weights), LR, 3)(x, y)
        got[peer] = dict(zip([n for n, _ in model.named_parameters()], params, strict=True))
    for name, params in got.items():
        comparison = compare_trees(params, expected)
        assert comparison.passes(1e-10), f"{name}:\n{comparison.report(1e-10)}"


def test_compiled_torch_func_floor_matches_meta_maml_float64():
    """The compiled floor at a tiny shape (3 steps, so that compiling stays short)."""
    model, weights, tasks = _problem(2, seq=3)
    expected = MetaMAML(model, LR).meta_gradient([tuple(torch.tensor(a) for a in task) for task in tasks])
    torch.compiler.reset()
    compiled = torch.compile(floors.torch_func_meta_grad(LR, 1, False), dynamic=False)
    stacked = [torch.stack([torch.tensor(task[i]) for task in tasks]) for i in range(4)]
    grads, _ = compiled(floors.torch_params(weights), *stacked)
    comparison = compare_trees(grads, expected)
    assert comparison.passes(1e-10), comparison.report(1e-10)


def test_measure_reports_median_and_quartiles():
    stats = measure(lambda: sum(range(1000)), reps=21, warmup=2)
    assert stats["reps"] == 21
    assert 0 < stats["q1_s"] <= stats["median_s"] <= stats["q3_s"]


def test_compile_plan_compiles_only_in_the_one_thread_process_by_default():
    assert compile_plan([1, 2], "lowest") == {1: True, 2: False}
    assert compile_plan([1, 2], "all") == {1: True, 2: True}
    assert compile_plan([1, 2], "none") == {1: False, 2: False}
    with pytest.raises(ValueError, match="lowest"):
        compile_plan([1], "sometimes")


def _row(case, size, contender, median_s, note=""):
    return {"case": case, "size": size, "contender": contender, "median_s": median_s, "q1_s": None, "q3_s": None,
            "reps": 20, "compile_s": 30.0 if names.is_compiled(contender) else None, "threads": 1, "flops": None,
            "note": note}


def test_headline_reports_ratios_per_mode_and_best_torch_against_best_jax():
    times = {names.TORCH_LOOP.name: 6.0, names.TORCH_VMAP.name: 2.4, names.TORCH_COMPILED.name: 1.1,
             names.FLOOR_EAGER.name: 2.0, names.FLOOR_COMPILED.name: 1.0, names.AUTOGRAD.name: 5.0,
             names.HIGHER.name: 7.0, names.TORCHOPT.name: None, names.JAX_OURS.name: 1.5,
             names.JAX_FLOOR_OUT_IN.name: 1.2, names.JAX_FLOOR_IN_OUT.name: 1.25}
    rows = [_row("meta_update_second", 4, n, None if t is None else t / 1e3, "" if t else "not run: test")
            for n, t in times.items()]
    run = {"environment": {"threads": 1, "cpu": "test cpu", "device": "cpu", "torch": "x", "jax": "y"},
           "matmul": {"peak_flops_per_s": 1e9}, "results": rows}
    entry = summarize([run])["1_threads"]["meta_update_second"]["4"]
    assert entry["torch compiled / floor compiled"] == pytest.approx(1.1)
    assert entry["torch vmap / floor eager"] == pytest.approx(1.2)
    assert entry["torch loop / floor eager"] == pytest.approx(3.0)
    assert entry["jax ours / floor (in,out)"] == pytest.approx(1.2)
    assert (entry["best_torch"], entry["best_jax"]) == (names.FLOOR_COMPILED.name, names.JAX_FLOOR_OUT_IN.name)
    assert entry["best_torch_vs_best_jax"] == pytest.approx(1.0 / 1.2)
    text = headline({"runs": [run]})
    assert "| meta update second | 4 tasks |" in text and "0.83x" in text and "1.10x" in text
    header = next(line for line in text.splitlines() if line.startswith("| case | size | torch ours loop"))
    assert "torchopt" in header and "| 6.00 | 2.40 | 1.10 | 2.00 | 1.00 | 5.00 | 7.00 | n/a |" in text


def test_quick_benchmark_checks_every_api_on_both_backends(tmp_path, capsys):
    assert quick_benchmark.main(["--reps", "2", "--output", str(tmp_path / "quick.json")]) == 0
    rows = json.loads((tmp_path / "quick.json").read_text())
    apis = {(r["api"], r["backend"]) for r in rows}
    for api in ("SSM forward", "MetaMAML.adapt", "MetaMAML.meta_update", "Adapter.update_step"):
        assert {(api, "torch"), (api, "jax")} <= apis
    assert "median (ms)" in capsys.readouterr().out


def test_bench_quick_runs_every_contender_and_writes_json_markdown_and_plots(tmp_path):
    assert main(["bench", "--quick", "--threads", "1", "--no-compile", "--output", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "quick.json").read_text())
    run = payload["runs"][0]
    assert run["environment"]["threads"] == 1 and run["matmul"]["peak_flops_per_s"] > 0
    assert run["environment"]["tf32"] == "n/a on cpu" and run["environment"]["optional"]["torchopt"] == "0.7.3"
    cases = {r["case"] for r in run["results"]}
    assert {"ssm_step", "sequence_forward", "adapt", "meta_update_second", "meta_update_first", "adapter_step",
            "rl_iteration"} <= cases
    for case in ("meta_update_second", "meta_update_first", "adapt"):
        rows = {r["contender"]: r for r in run["results"] if r["case"] == case and str(r["size"]) == "1"}
        assert set(rows) == {c.name for c in names.MAML}, case
        for contender in names.MAML:
            row = rows[contender.name]
            if contender in (names.TORCH_COMPILED, names.FLOOR_COMPILED):  # --no-compile: a row that says so
                assert row["median_s"] is None and row["note"].startswith("not run: "), row
            else:
                assert row["median_s"] and row["median_s"] > 0, row
    assert (tmp_path / "quick.md").read_text().startswith("| case |")
    assert (tmp_path / "quick_sequence_forward.png").stat().st_size > 0
    assert "torch compiled / floor compiled" in json.dumps(payload["summary"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_on_cuda_without_a_gpu_says_so(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--quick", "--device", "cuda"])
    assert "--device cuda: torch sees no CUDA device here" in capsys.readouterr().err
