"""The MAML-RL learner protocol in both backends: guarded commits on both rollout paths, the canonical Adam
state, resume across backends, and the bad-input errors of ``--rollouts`` and ``--resume``."""

import dataclasses

import numpy as np
import pytest

from shared.env_runner import MetaEnvironment
from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals
from shared.learner import MetaRLLearner
from shared.native_noise import draw_noise
from ssm_metarl import checkpoint
from ssm_metarl.rl_loop import meta_iteration
from ssm_metarl.rundir import staging_dir
from ssm_metarl.train import TrainConfig, TrainingInterrupted, initial_weights, make_learner, train

SHORT = {"nav2d": Nav2DGoals(horizon=6), "bandit": BernoulliBandits(arms=3, pulls=6)}
TINY = {"task": "nav2d", "rollouts": "runner", "iterations": 2, "meta_batch": 2, "episodes": 2, "state_dim": 4,
        "hidden_dim": 8, "eval_tasks": 2, "eval_episodes": 1}


def learner_for(backend, distribution, outer_lr=3e-3):
    config = TrainConfig(backend=backend, task=distribution.name, state_dim=4, hidden_dim=8, outer_lr=outer_lr)
    return make_learner(config, distribution, initial_weights(config, distribution))


def same_state(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_both_learners_implement_the_protocol_under_the_same_names(backend):
    learner = learner_for(backend, SHORT["nav2d"])
    assert isinstance(learner, MetaRLLearner) and learner.backend == backend


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the overflow is the point
@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("path", ["runner", "native"])
def test_a_step_that_would_make_the_parameters_non_finite_leaves_the_model_unchanged(backend, path):
    """An outer_lr that overflows float32 makes Adam's result infinite: every path refuses the commit."""
    distribution = SHORT["nav2d"]
    learner = learner_for(backend, distribution, outer_lr=1e39)
    meta_env = MetaEnvironment(distribution, seed=0)
    before, adam = learner.canonical_weights(), learner.optimizer_state()
    if path == "runner":
        step = lambda: meta_iteration(learner, meta_env, 2, 2)  # noqa: E731
    else:
        native = learner.native(distribution, 2, **({"compile": False} if backend == "torch" else {}))
        step = lambda: native.iteration(meta_env.sample_tasks(2), draw_noise(distribution, meta_env.rng, 2, 2))  # noqa: E731
    with pytest.raises(ValueError, match="not changed"):
        step()
    assert same_state(learner.canonical_weights(), before) and same_state(learner.optimizer_state(), adam)


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_a_non_finite_loss_on_the_native_path_leaves_the_model_unchanged(backend):
    distribution = SHORT["nav2d"]
    learner = learner_for(backend, distribution)
    weights = learner.canonical_weights()
    weights["ssm.D.bias"] = np.full_like(weights["ssm.D.bias"], np.nan)
    learner.load_canonical_weights(weights)
    native = learner.native(distribution, 2, **({"compile": False} if backend == "torch" else {}))
    meta_env = MetaEnvironment(distribution, seed=0)
    with pytest.raises(ValueError, match="not changed"):
        native.iteration(meta_env.sample_tasks(2), draw_noise(distribution, meta_env.rng, 2, 2))
    after = learner.canonical_weights()
    assert all(np.array_equal(after[k], weights[k], equal_nan=True) for k in weights)


@pytest.mark.parametrize("source", ["torch", "jax"])
def test_the_canonical_adam_state_moves_between_backends_bit_for_bit(source):
    distribution = SHORT["bandit"]
    learner = learner_for(source, distribution)
    meta_iteration(learner, MetaEnvironment(distribution, seed=0), 2, 2)
    state = learner.optimizer_state()
    assert int(state["adam.step"]) == 1 and any(np.any(v != 0) for k, v in state.items() if k != "adam.step")
    other = learner_for("jax" if source == "torch" else "torch", distribution)
    other.load_canonical_weights(learner.canonical_weights())
    other.load_optimizer_state(state)
    assert same_state(other.optimizer_state(), state)
    assert same_state(other.canonical_weights(), learner.canonical_weights())
    with pytest.raises(ValueError, match="canonical Adam layout"):
        other.load_optimizer_state({k: v for k, v in state.items() if k != "adam.exp_avg.ssm.B.bias"})


@pytest.mark.parametrize(("first", "then"), [("torch", "jax"), ("jax", "torch")])
def test_a_run_resumes_in_the_other_backend_with_its_exact_state(tmp_path, first, then):
    output = tmp_path / "run"
    config = TrainConfig(backend=first, **TINY)

    def stop_after_first(iteration):
        if iteration == 0:
            import signal

            signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(config, output, checkpoint_every=100, on_iteration=stop_after_first)
    saved = checkpoint.load(staging_dir(output) / checkpoint.RESUME_FILE)
    # the other backend loads the saved state bit for bit
    resumed = make_learner(dataclasses.replace(config, backend=then), Nav2DGoals(), saved.params)
    resumed.load_optimizer_state(saved.optimizer)
    assert same_state(resumed.canonical_weights(), saved.params) and same_state(resumed.optimizer_state(),
                                                                                 saved.optimizer)
    report = train(config, output, resume=True, backend=then)
    assert report["config"]["backend"] == then and (output / "evaluation.json").is_file()
    import json

    metrics = json.loads((output / "metrics.json").read_text())["iterations"]
    assert [(m["iteration"], m["backend"]) for m in metrics] == [(0, first), (1, then)]


def test_resume_refuses_an_incompatible_configuration_and_a_corrupt_file(tmp_path):
    from ssm_metarl.train import TrainingSession

    output = tmp_path / "run"
    config = TrainConfig(backend="torch", **TINY)

    def stop(iteration):
        import signal

        signal.raise_signal(signal.SIGINT)

    with pytest.raises(TrainingInterrupted):
        train(config, output, checkpoint_every=100, on_iteration=stop)
    staged = staging_dir(output)
    with pytest.raises(ValueError, match=r"incompatible configuration.*hidden_dim"):
        TrainingSession(dataclasses.replace(config, hidden_dim=16), staged)
    resume = staged / checkpoint.RESUME_FILE
    resume.write_bytes(resume.read_bytes()[:100])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        TrainingSession(config, staged)


@pytest.mark.parametrize("task", ["cartpole", "pendulum"])
def test_native_rollouts_for_a_family_without_native_dynamics_name_the_families_that_have_them(task):
    with pytest.raises(ValueError, match=r"\['nav2d', 'bandit'\].*--rollouts runner"):
        TrainConfig(task=task, rollouts="native")
    assert TrainConfig(task=task).rollouts == "runner" and TrainConfig(task="bandit").rollouts == "native"


def test_the_compiled_torch_native_iteration_equals_its_eager_form():
    """torch.compile (the default on a GPU) computes the eager program's numbers: three iterations, float64."""
    distribution = SHORT["nav2d"]
    config = TrainConfig(task="nav2d", state_dim=4, hidden_dim=8)
    weights = {k: v.astype(np.float64) for k, v in initial_weights(config, distribution).items()}
    runs = {}
    for compiled in (False, True):
        learner = make_learner(config, distribution, weights)
        native, meta_env = learner.native(distribution, 2, compile=compiled), MetaEnvironment(distribution, seed=0)
        metrics = [native.iteration(meta_env.sample_tasks(2), draw_noise(distribution, meta_env.rng, 2, 2))
                   for _ in range(3)]
        runs[compiled] = (learner.canonical_weights(), metrics)
    for name, value in runs[False][0].items():
        np.testing.assert_allclose(runs[True][0][name], value, rtol=1e-12, atol=1e-14, err_msg=name)
    assert runs[True][0]["ssm.B.weight"].tolist() != weights["ssm.B.weight"].tolist()  # the steps were taken
    for a, b in zip(runs[True][1], runs[False][1], strict=True):
        assert a == pytest.approx(b, rel=1e-12)


def test_a_checkpoint_from_before_the_rollouts_field_reads_as_the_path_it_ran():
    from ssm_metarl.train_config import saved_config

    assert saved_config({"backend": "jax", "task": "nav2d", "native": True}).rollouts == "native"
    assert saved_config({"backend": "torch", "task": "nav2d", "native": True}).rollouts == "runner"
    assert saved_config({"backend": "jax", "task": "bandit", "native": False}).rollouts == "runner"
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        saved_config({"task": "nav2d", "nope": 1})
