"""The cross-backend parity matrix of ARCHITECTURE.md section 5.

Each case builds twin models (weights made in PyTorch, transferred to Flax), feeds both the
same seeded numpy inputs and returns one :class:`Row` per quantity: max absolute error,
normwise relative error (see ``shared.compare``), the contract's tolerance, and pass/fail.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from jax_impl.adaptation.test_time_adaptation import Adapter as JaxAdapter
from jax_impl.adaptation.test_time_adaptation import entropy as jax_entropy
from jax_impl.core.params import from_canonical, to_canonical
from jax_impl.core.ssm import SSM as JaxSSM
from jax_impl.meta_rl import maml_rl as jax_rl
from jax_impl.meta_rl.meta_maml import MetaMAML as JaxMAML
from jax_impl.meta_rl.native import advantages as jax_advantages
from parity_tests.models import TORCH_DTYPES, canonical, twin_mlps, twin_ssms
from parity_tests.tent import jax_state, torch_state, twin_tent_nets
from shared.adaptation import AdaptationConfig
from shared.compare import compare_trees
from shared.contract import MUST_DIFFER, TOLERANCES, Row, row
from shared.env_runner import MetaEnvironment
from shared.layout import flax_to_torch, torch_to_flax
from shared.rl import to_batch
from torch_impl.adaptation.test_time_adaptation import Adapter as TorchAdapter
from torch_impl.adaptation.test_time_adaptation import entropy as torch_entropy
from torch_impl.core.ssm import SSM as TorchSSM
from torch_impl.meta_rl import maml_rl as torch_rl
from torch_impl.meta_rl.meta_maml import MetaMAML as TorchMAML


@dataclasses.dataclass(frozen=True)
class Sizes:
    state_dim: int = 8
    input_dim: int = 3
    output_dim: int = 2
    hidden_dim: int = 16
    batch: int = 4
    seq_len: int = 33
    tasks: int = 3
    inner_lr: float = 0.05
    seed: int = 0

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return self.state_dim, self.input_dim, self.output_dim, self.hidden_dim


def as_torch(tree: Any) -> Any:
    if isinstance(tree, tuple):
        return tuple(as_torch(x) for x in tree)
    return torch.from_numpy(np.array(tree))


class Setup:
    """Seeded inputs and twin models for one dtype."""

    def __init__(self, dtype: str, sizes: Sizes) -> None:
        self.dtype, self.sizes = dtype, sizes
        self.rng = np.random.default_rng(sizes.seed)
        b, t, i = sizes.batch, sizes.seq_len, sizes.input_dim
        self.xs = self.array(b, t, i)
        self.starts = (self.rng.random((b, t)) < 0.15).astype(dtype)
        self.state0 = self.array(b, sizes.state_dim)
        self.targets = self.array(b, t, sizes.output_dim)

    def array(self, *shape: int) -> np.ndarray:
        return self.rng.normal(size=shape).astype(self.dtype)

    def ssms(self) -> tuple[TorchSSM, JaxSSM]:
        return twin_ssms(self.sizes.dims, self.dtype, self.sizes.seed)

    def ssm_tasks(self) -> list[tuple[np.ndarray, ...]]:
        s = self.sizes
        return [
            (self.array(s.batch, 9, s.input_dim), self.array(s.batch, 9, s.output_dim),
             self.array(s.batch, 9, s.input_dim), self.array(s.batch, 9, s.output_dim))
            for _ in range(s.tasks)
        ]

    def mlp_tasks(self) -> list[tuple[np.ndarray, ...]]:
        s = self.sizes
        return [
            (self.array(10, s.input_dim), self.array(10, s.output_dim), self.array(10, s.input_dim),
             self.array(10, s.output_dim))
            for _ in range(s.tasks)
        ]


# --------------------------------------------------------------------------- cases
def weights_through_flax(setup: Setup) -> list[Row]:
    torch_model, _ = setup.ssms()
    original = canonical(torch_model)
    back = flax_to_torch(torch_to_flax(original))
    return [row("weights torch -> flax -> torch", setup.dtype, "weights", compare_trees(back, original))]


def weights_through_safetensors(setup: Setup) -> list[Row]:
    torch_model, _ = setup.ssms()
    with tempfile.TemporaryDirectory() as tmp:
        torch_model.save(Path(tmp) / "torch.safetensors")
        jax_model = JaxSSM.load(Path(tmp) / "torch.safetensors")
        jax_model.save(Path(tmp) / "jax.safetensors")
        reloaded = TorchSSM.load(Path(tmp) / "jax.safetensors")
    return [
        row("weights torch -> safetensors -> flax", setup.dtype, "weights",
            compare_trees(to_canonical(nnx.state(jax_model, nnx.Param)), canonical(torch_model))),
        row("weights flax -> safetensors -> torch", setup.dtype, "weights",
            compare_trees(canonical(reloaded), canonical(torch_model))),
    ]


def ssm_outputs(setup: Setup) -> list[Row]:
    tm, jm = setup.ssms()
    x0, s0 = setup.xs[:, 0], setup.state0
    rows = [row("forward (B, I) from zero state", setup.dtype, "outputs",
                compare_trees(jm(x0), tm(as_torch(x0))))]
    j_step = jm.step(x0, s0, setup.starts[:, 0])
    t_step = tm.step(as_torch(x0), as_torch(s0), as_torch(setup.starts[:, 0]))
    rows.append(row("step with reset: y, state", setup.dtype, "outputs", compare_trees(j_step, t_step)))
    for mode in ("sequential", "parallel"):
        args = (setup.xs, setup.state0, setup.starts)
        j_h = jm.hidden_states(*args, mode=mode)
        t_h = tm.hidden_states(*(as_torch(a) for a in args), mode=mode)
        j_ys, j_last = jm.scan(*args, mode=mode)
        t_ys, t_last = tm.scan(*(as_torch(a) for a in args), mode=mode)
        comparison = compare_trees(
            {"hidden_states": j_h, "ys": j_ys, "final_state": j_last},
            {"hidden_states": t_h, "ys": t_ys, "final_state": t_last},
        )
        rows.append(row(f"scan {mode} with resets: h, ys, final", setup.dtype, "outputs", comparison))
    return rows


def loss_gradients(setup: Setup) -> list[Row]:
    tm, jm = setup.ssms()
    args = (setup.xs, setup.state0, setup.starts)
    graphdef, params = nnx.split(jm, nnx.Param)

    def jax_loss(p: nnx.State) -> jax.Array:
        return jnp.mean((nnx.merge(graphdef, p).scan(*args)[0] - setup.targets) ** 2)

    j_grads = to_canonical(jax.grad(jax_loss)(params))
    t_loss = torch.mean((tm.scan(*(as_torch(a) for a in args))[0] - as_torch(setup.targets)) ** 2)
    names = [n for n, _ in tm.named_parameters()]
    t_grads = dict(zip(names, torch.autograd.grad(t_loss, list(tm.parameters())), strict=True))
    return [row("loss gradients w.r.t. every parameter", setup.dtype, "gradients", compare_trees(j_grads, t_grads))]


def adapted_parameters(setup: Setup) -> list[Row]:
    rows = []
    sx, sy = setup.xs, setup.targets
    for k in (1, 3, 5):
        tm, jm = setup.ssms()
        t_adapted = TorchMAML(tm, setup.sizes.inner_lr, num_inner_steps=k).adapt(as_torch(sx), as_torch(sy))
        j_adapted = JaxMAML(jm, setup.sizes.inner_lr, num_inner_steps=k).adapt(sx, sy)
        rows.append(row(f"adapted parameters, k={k}", setup.dtype, "adapted",
                        compare_trees(to_canonical(j_adapted), t_adapted)))
    return rows


# The PyTorch MetaMAML modes of the matrix: constructor options of one definition of the maths.
TORCH_MODES: dict[str, dict[str, bool]] = {
    "torch loop": {"vectorize": False, "compile": False},
    "torch vectorised": {"vectorize": True, "compile": False},
    "torch compiled": {"vectorize": True, "compile": True},
}
# A finite-difference directional derivative of the fp64 meta-loss must match the meta-gradient to this.
FINITE_DIFFERENCE_RTOL = 1e-6


def meta_gradient_models(setup: Setup, compiled: bool) -> list[tuple[str, Any, list]]:
    """``(name, (torch model, jax model), tasks)``: the SSM on sequences and the MLP.

    The compiled rows use the same models on shorter sequences, so that ``torch.compile`` stays quick.
    """
    s = setup.sizes
    ssm_tasks = setup.ssm_tasks()
    if compiled:
        ssm_tasks = [tuple(a[:2, :3] for a in task) for task in ssm_tasks]
    mlps = twin_mlps(s.input_dim, 32, s.output_dim, setup.dtype, s.seed)
    return [("SSM", setup.ssms(), ssm_tasks), ("MLP", mlps, setup.mlp_tasks())]


def meta_gradients(setup: Setup, first_order: bool, modes: tuple[str, ...],
                   models: tuple[str, ...] = ("SSM", "MLP")) -> dict[str, dict[str, Any]]:
    """``{model: {"jax": canonical grads, mode: torch grads, ...}}`` for each torch mode in ``modes``."""
    out = {}
    compiled = any(TORCH_MODES[m]["compile"] for m in modes)
    for name, (tm, jm), tasks in meta_gradient_models(setup, compiled):
        if name not in models:
            continue
        j_maml = JaxMAML(jm, setup.sizes.inner_lr, num_inner_steps=2, first_order=first_order)
        out[name] = {"jax": to_canonical(j_maml.meta_gradient(tasks))}
        t_tasks = [as_torch(tuple(task)) for task in tasks]
        for mode in modes:
            t_maml = TorchMAML(tm, setup.sizes.inner_lr, num_inner_steps=2, first_order=first_order,
                               **TORCH_MODES[mode])
            out[name][mode] = t_maml.meta_gradient(t_tasks)
    return out


def finite_difference_row(setup: Setup, model: str, mode: str, eps: float = 1e-6) -> Row:
    """The fp64 meta-gradient of ``mode`` against central differences of its own meta-loss, along 3
    random directions (second order, k=2); the row compares the directional derivatives."""
    compiled = TORCH_MODES[mode]["compile"]
    (tm, _), tasks = next((pair, tasks) for name, pair, tasks in meta_gradient_models(setup, compiled)
                          if name == model)
    maml = TorchMAML(tm, setup.sizes.inner_lr, num_inner_steps=2, **TORCH_MODES[mode])
    t_tasks = [as_torch(tuple(task)) for task in tasks]
    grads = maml.meta_gradient(t_tasks)
    params = maml.trainable_parameters()
    gen = torch.Generator().manual_seed(setup.sizes.seed)
    analytic, numeric = [], []
    for _ in range(3):
        direction = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
        analytic.append(sum(float((grads[n] * direction[n]).sum()) for n in params))
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for n, p in params.items():
                    p.add_(sign * eps * direction[n])
            values.append(float(maml.value_and_meta_gradient(t_tasks)[0]))
            with torch.no_grad():
                for n, p in params.items():
                    p.sub_(sign * eps * direction[n])
        numeric.append((values[0] - values[1]) / (2 * eps))
    comparison = compare_trees(np.array(numeric), np.array(analytic))
    return Row(f"meta-gradient vs finite differences ({model}, k=2, {mode})", setup.dtype, comparison.max_abs,
               comparison.rel, FINITE_DIFFERENCE_RTOL, comparison.passes(FINITE_DIFFERENCE_RTOL), comparison)


def mode_rows(setup: Setup, modes: tuple[str, ...], models: tuple[str, ...] = ("SSM", "MLP"),
              orders: tuple[bool, ...] = (False, True)) -> list[Row]:
    """Each torch mode against JAX and against the loop mode, in each order; second differs from first."""
    results = {first_order: meta_gradients(setup, first_order, modes, models) for first_order in orders}
    rows = []
    for name in models:
        for first_order in orders:
            order = "first" if first_order else "second"
            grads = results[first_order][name]
            for mode in modes:
                rows.append(row(f"meta-gradient, {order} order ({name}, k=2), {mode} vs JAX", setup.dtype,
                                "meta_gradient", compare_trees(grads["jax"], grads[mode])))
                if mode != "torch loop" and "torch loop" in grads:
                    rows.append(row(f"meta-gradient, {order} order ({name}, k=2), {mode} vs torch loop",
                                    setup.dtype, "meta_gradient", compare_trees(grads["torch loop"], grads[mode])))
        if len(orders) == 2:
            for backend in ("jax", *modes):
                differ = compare_trees(results[False][name][backend], results[True][name][backend])
                rows.append(Row(f"second order differs from first ({name}, {backend})", setup.dtype, differ.max_abs,
                                differ.rel, MUST_DIFFER, differ.rel > MUST_DIFFER, differ))
    return rows


def meta_gradient_rows(setup: Setup) -> list[Row]:
    """The eager torch modes (loop, vectorised) against JAX and each other, plus finite differences."""
    modes = ("torch loop", "torch vectorised")
    rows = mode_rows(setup, modes)
    if setup.dtype == "float64":
        rows += [finite_difference_row(setup, model, mode) for model in ("SSM", "MLP") for mode in modes]
    return rows


def compiled_meta_gradient_rows(setup: Setup) -> list[Row]:
    """``torch.compile``d MetaMAML against JAX and the loop mode, on tiny shapes (compiling is slow):
    the MLP in both orders, the SSM in second order (the main gate). The finite-difference check of the
    compiled mode is in ``tests/test_torch_meta_maml_modes.py`` (through its equality with the loop here)."""
    modes = ("torch loop", "torch compiled")
    return mode_rows(setup, modes, models=("MLP",)) + mode_rows(setup, modes, models=("SSM",), orders=(False,))


def meta_update_trajectories(setup: Setup, steps: int = 10) -> list[Row]:
    if TOLERANCES[setup.dtype]["meta_update"] is None:
        return []
    rows = []
    for name, models, tasks in (("SSM", setup.ssms(), setup.ssm_tasks()), ("MLP", twin_mlps(
            setup.sizes.input_dim, 32, setup.sizes.output_dim, setup.dtype, setup.sizes.seed), setup.mlp_tasks())):
        tm, jm = models
        t_maml = TorchMAML(tm, setup.sizes.inner_lr, outer_lr=0.01, num_inner_steps=2)
        j_maml = JaxMAML(jm, setup.sizes.inner_lr, outer_lr=0.01, num_inner_steps=2)
        t_tasks = [as_torch(tuple(task)) for task in tasks]
        t_losses, j_losses = [], []
        for _ in range(steps):
            t_losses.append(t_maml.meta_update(t_tasks))
            j_losses.append(j_maml.meta_update(tasks))
        comparison = compare_trees(
            {"params": to_canonical(nnx.state(jm, nnx.Param)), "losses": np.array(j_losses)},
            {"params": canonical(tm), "losses": np.array(t_losses)},
        )
        rows.append(row(f"{steps} meta_update steps, torch Adam vs optax adam ({name})", setup.dtype,
                        "meta_update", comparison))
    return rows


def adapter_trajectories(setup: Setup, steps: int = 20) -> list[Row]:
    """The same AdaptationConfig and data give the same parameters after ``steps`` Adapter steps."""
    if TOLERANCES[setup.dtype]["adapter"] is None:
        return []
    data = (setup.xs, setup.targets)

    def loss_and_logits(model: Any, batch: tuple) -> tuple[Any, Any]:
        outputs = model(batch[0])
        return ((outputs - batch[1]) ** 2).mean(), outputs

    rows = []
    for optimizer in ("sgd", "adam", "adamw"):
        config = AdaptationConfig(
            optimizer=optimizer, lr=0.02, momentum=0.9 if optimizer == "sgd" else 0.0, weight_decay=0.01,
            grad_clip_norm=0.35, trust_region=0.4, ema_decay=0.9, entropy_weight=0.1, deny=("D.*",),
        )
        tm, jm = setup.ssms()
        t_adapter, j_adapter = TorchAdapter(tm, config), JaxAdapter(jm, config)
        t_info, j_info = [], []
        for _ in range(steps):
            t_info.append(t_adapter.update_step(loss_and_logits, as_torch(data)))
            j_info.append(j_adapter.update_step(loss_and_logits, data))
        telemetry = ("loss", "entropy", "grad_norm", "drift")
        comparison = compare_trees(
            {"params": to_canonical(nnx.state(jm, nnx.Param)),
             "teacher": to_canonical(nnx.state(j_adapter.teacher_model, nnx.Param)),
             "info": {k: np.array([i[k] for i in j_info]) for k in telemetry}},
            {"params": canonical(tm), "teacher": canonical(t_adapter.teacher_model),
             "info": {k: np.array([i[k] for i in t_info]) for k in telemetry}},
        )
        rows.append(row(f"Adapter, {steps} steps, {optimizer} + clip, decay, trust region, mask, EMA, entropy",
                        setup.dtype, "adapter", comparison))
        t_adapter.reset()
        j_adapter.reset()
        source_t, source_j = setup.ssms()
        comparison = compare_trees(
            {"torch": canonical(tm), "jax": to_canonical(nnx.state(jm, nnx.Param))},
            {"torch": canonical(source_t), "jax": to_canonical(nnx.state(source_j, nnx.Param))},
        )
        rows.append(Row(f"Adapter reset() restores the source exactly ({optimizer})", setup.dtype,
                        comparison.max_abs, comparison.rel, 0.0, comparison.passes(0.0), comparison))
    return rows


def adapter_tent_batchnorm(setup: Setup, steps: int = 20) -> list[Row]:
    """TENT: a BatchNorm classifier in train mode adapts only the BatchNorm affine parameters by
    minimising the entropy of its logits on shifted test batches; parameters, running statistics
    (``running_mean``, unbiased ``running_var``, ``num_batches_tracked``) and telemetry agree."""
    if TOLERANCES[setup.dtype]["adapter"] is None:
        return []
    features, hidden, classes = 6, 8, 3
    tm, jm = twin_tent_nets(features, hidden, classes, setup.dtype, setup.sizes.seed)
    config = AdaptationConfig(optimizer="adam", lr=0.01, allow="bn.*")
    t_adapter, j_adapter = TorchAdapter(tm.train(), config), JaxAdapter(jm, config)
    batches = [setup.array(16, features) * 1.5 + 0.7 for _ in range(steps)]  # a shifted test distribution
    t_info, j_info = [], []
    for x in batches:
        t_info.append(t_adapter.update_step(lambda m, b: torch_entropy(m(b)), torch.from_numpy(x)))
        j_info.append(j_adapter.update_step(lambda m, b: jax_entropy(m(b)), x))
    assert all(i["updated"] for i in t_info + j_info), "every TENT step must be taken"
    telemetry = ("loss", "grad_norm", "drift")
    comparison = compare_trees(
        {"state": jax_state(jm), "info": {k: np.array([i[k] for i in j_info]) for k in telemetry}},
        {"state": torch_state(tm), "info": {k: np.array([i[k] for i in t_info]) for k in telemetry}},
    )
    return [row(f"Adapter TENT, {steps} steps: BatchNorm affine + running statistics (entropy loss)",
                setup.dtype, "adapter", comparison)]


def adapter_ema_tent_batchnorm(setup: Setup, steps: int = 20) -> list[Row]:
    """TENT with an EMA teacher: after every step the model (BatchNorm affine parameters and running
    statistics) and the teacher, which averages the parameters and the running statistics alike
    (``ema_decay`` in ``AdaptationConfig``), agree between the backends."""
    if TOLERANCES[setup.dtype]["adapter"] is None:
        return []
    features, hidden, classes = 6, 8, 3
    tm, jm = twin_tent_nets(features, hidden, classes, setup.dtype, setup.sizes.seed)
    source = torch_state(tm)
    config = AdaptationConfig(optimizer="adam", lr=0.01, allow="bn.*", ema_decay=0.8)
    t_adapter, j_adapter = TorchAdapter(tm.train(), config), JaxAdapter(jm, config)
    t_steps, j_steps = {}, {}
    for step in range(steps):
        x = setup.array(16, features) * 1.5 + 0.7  # a shifted test distribution
        assert t_adapter.update_step(lambda m, b: torch_entropy(m(b)), torch.from_numpy(x))["updated"]
        assert j_adapter.update_step(lambda m, b: jax_entropy(m(b)), x)["updated"]
        t_steps[f"step {step}"] = {"model": torch_state(tm), "teacher": torch_state(t_adapter.teacher_model)}
        j_steps[f"step {step}"] = {"model": jax_state(jm), "teacher": jax_state(j_adapter.teacher_model)}
    teacher, model = t_steps[f"step {steps - 1}"]["teacher"], t_steps[f"step {steps - 1}"]["model"]
    for name in ("bn.weight", "bn.running_mean", "bn.running_var"):  # the teacher lags the model, statistics too
        assert not np.array_equal(teacher[name], model[name]) and not np.array_equal(teacher[name], source[name]), name
    return [row(f"Adapter with EMA teacher and BatchNorm (TENT), {steps} steps: model and teacher after each step",
                setup.dtype, "adapter", compare_trees(j_steps, t_steps))]


def recorded_rollouts(setup: Setup, task: str) -> tuple[list, list, Any]:
    """Episodes recorded once with numpy environments and a random policy: the raw support episodes,
    the (support, query) batches, and the task distribution."""
    meta_env = MetaEnvironment(task, seed=setup.sizes.seed)
    dist = meta_env.distribution
    width = dist.action_dim if dist.discrete else 2 * dist.action_dim
    rng = np.random.default_rng(setup.sizes.seed)

    def act(obs: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return 0.3 * rng.standard_normal((obs.shape[0], width)), state

    tasks = meta_env.sample_tasks(3)
    support = meta_env.rollout(tasks, 4, act, None)
    query = meta_env.rollout(tasks, 4, act, None)
    pairs = [(to_batch(s, dtype=setup.dtype), to_batch(q, dtype=setup.dtype))
             for s, q in zip(support, query, strict=True)]
    return support, pairs, dist


def rl_losses(setup: Setup) -> list[Row]:
    """MAML-RL on the same recorded rollouts: advantages, PG loss, adapted parameters, meta-gradient."""
    if TOLERANCES[setup.dtype]["rl"] is None:
        return []
    rows = []
    for task in ("nav2d", "bandit"):
        episodes, pairs, dist = recorded_rollouts(setup, task)
        args = (dist.obs_dim, dist.action_dim, dist.discrete, setup.sizes.state_dim, setup.sizes.hidden_dim, "cpu")
        torch.manual_seed(setup.sizes.seed)
        t_policy = torch_rl.SSMPolicy(*args, dtype=TORCH_DTYPES[setup.dtype])
        j_policy = jax_rl.SSMPolicy(*args, dtype=setup.dtype)
        from_canonical(j_policy, canonical(t_policy))
        t_rl, j_rl = torch_rl.MAMLRL(t_policy, inner_lr=0.1), jax_rl.MAMLRL(j_policy, inner_lr=0.1)
        first, support = episodes[0], pairs[0][0]
        as_jax = [jnp.asarray(a, setup.dtype) for a in (first.obs, first.rewards, first.mask)]
        rows.append(row(f"advantages: shared numpy vs JAX-native ({task})", setup.dtype, "pg_loss",
                        compare_trees(jax_advantages(*as_jax), to_batch(first, dtype=setup.dtype).advantages)))
        rows.append(row(f"policy-gradient loss ({task})", setup.dtype, "pg_loss",
                        compare_trees(np.array(j_rl.inner_loss(support)), np.array(t_rl.inner_loss(support)))))
        rows.append(row(f"MAML-RL adapted parameters ({task})", setup.dtype, "rl",
                        compare_trees(to_canonical(j_rl.adapt(support)), t_rl.adapt(support))))
        rows.append(row(f"MAML-RL meta-gradient, second order ({task})", setup.dtype, "rl",
                        compare_trees(to_canonical(j_rl.meta_gradient(pairs)), t_rl.meta_gradient(pairs))))
    return rows


def main_job_cases() -> dict[str, Callable[[Setup], list[Row]]]:
    from parity_tests.native_rl import adapt_tasks_rows, native_iterations

    return {"native_iterations": native_iterations, "adapt_tasks": adapt_tasks_rows}


CASES: dict[str, Callable[[Setup], list[Row]]] = {
    "weights_through_flax": weights_through_flax,
    "weights_through_safetensors": weights_through_safetensors,
    "ssm_outputs": ssm_outputs,
    "loss_gradients": loss_gradients,
    "adapted_parameters": adapted_parameters,
    "meta_gradients": meta_gradient_rows,
    "meta_gradients_compiled": compiled_meta_gradient_rows,
    "meta_update_trajectories": meta_update_trajectories,
    "adapter_trajectories": adapter_trajectories,
    "adapter_tent_batchnorm": adapter_tent_batchnorm,
    "adapter_ema_tent_batchnorm": adapter_ema_tent_batchnorm,
    "rl_losses": rl_losses,
    "incontext_losses": lambda setup: incontext_losses(setup),  # parity_tests/incontext.py
}
CASES.update(main_job_cases())  # whole native iterations and adapt_tasks (parity_tests/native_rl.py)


from parity_tests.incontext import incontext_losses  # noqa: E402 (it imports row and TOLERANCES from here)


def run_matrix(dtype: str, sizes: Sizes = Sizes(), cases: dict[str, Callable[[Setup], list[Row]]] = CASES) -> list[Row]:
    """Every row of the matrix for one dtype (``"float32"`` or ``"float64"``)."""
    if dtype not in TORCH_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(TORCH_DTYPES)}, got {dtype!r}")
    if dtype == "float64" and not jax.config.jax_enable_x64:
        raise RuntimeError("float64 parity needs parity_tests.models.set_high_precision() before any JAX work")
    return [r for case in cases.values() for r in case(Setup(dtype, sizes))]
