"""In-context meta-RL: the trial layout, the memory across episodes, the trainers of both backends, the
classical baselines, the CLI options and the test-time compute study (tiny sizes)."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
import torch

from jax_impl.meta_rl import incontext as jax_ic
from shared import baselines
from shared.env_runner.tasks import BernoulliBandits, Nav2DGoals
from shared.incontext import TrialConfig, augment, augmented_obs_dim
from ssm_metarl import cli, incontext, study
from torch_impl.meta_rl import incontext as torch_ic

FAMILIES = {"nav2d": Nav2DGoals(horizon=4), "bandit": BernoulliBandits(arms=3, pulls=4)}


def task_of(dist, seed: int = 0) -> np.ndarray:
    task = dist.sample(1, np.random.default_rng(seed))[0]
    return np.array(task["goal" if dist.name == "nav2d" else "means"], np.float32)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_rollouts_of_both_backends_build_the_documented_augmented_observation(family: str) -> None:
    dist = FAMILIES[family]
    j_policy = jax_ic.InContextPolicy(dist.obs_dim, dist.action_dim, dist.discrete, 4, 8, "cpu")
    x, a, r = map(np.asarray, jax_ic.trial_rollout(j_policy, dist, jax.numpy.asarray(task_of(dist)),
                                                   jax.random.PRNGKey(0), 2, 3))
    assert x.shape == (2, 12, augmented_obs_dim(dist.obs_dim, dist.action_dim, dist.discrete))
    # float32 rollouts against the float64 reference layout: the reward change rounds differently
    np.testing.assert_allclose(augment(x[..., :dist.obs_dim], a, r, 4, dist.action_dim, dist.discrete), x, atol=1e-6)
    assert (x[:, ::4, -1] == 1).all() and x[:, 1::4, -1].sum() == 0  # the boundary flag
    t_policy = torch_ic.InContextPolicy(dist.obs_dim, dist.action_dim, dist.discrete, 4, 8, "cpu")
    params = {n: p.detach().expand(1, *p.shape) for n, p in t_policy.named_parameters()}
    x, a, r = (t.numpy()[0] for t in torch_ic.trial_rollout(
        t_policy, params, dist, torch.as_tensor(task_of(dist))[None],
        torch_ic.trial_noise(dist, torch.Generator().manual_seed(0), 1, 2, 12, torch.float32), 2, 3))
    np.testing.assert_allclose(augment(x[..., :dist.obs_dim], a, r, 4, dist.action_dim, dist.discrete), x, atol=1e-6)


def test_the_memory_carries_across_episode_boundaries() -> None:
    dist = FAMILIES["nav2d"]
    policy = jax_ic.InContextPolicy(dist.obs_dim, dist.action_dim, dist.discrete, 4, 8, "cpu")
    x, _, _ = jax_ic.trial_rollout(policy, dist, jax.numpy.asarray(task_of(dist)), jax.random.PRNGKey(1), 1, 2)
    whole_trial, _ = policy(x)
    second_episode_alone, _ = policy(x[:, 4:])
    assert not np.allclose(np.asarray(whole_trial[:, 4:]), np.asarray(second_episode_alone))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_entropy_bonus_subtracts_its_weight_times_the_mean_entropy(family: str) -> None:
    dist = FAMILIES[family]
    policy = torch_ic.InContextPolicy(dist.obs_dim, dist.action_dim, dist.discrete, 4, 8, "cpu",
                                      dtype=torch.float64)
    params = dict(policy.named_parameters())
    x = torch.randn(2, 8, policy.augmented_dim, dtype=torch.float64)
    actions = torch.randint(dist.action_dim, (2, 8)) if dist.discrete else torch.randn(2, 8, 2, dtype=torch.float64)
    adv = torch.randn(2, 8, dtype=torch.float64)
    dist_params, _ = policy(x)
    entropy = torch_ic.entropy(dist_params, dist.discrete)
    if dist.discrete:  # against torch.distributions
        expected = torch.distributions.Categorical(logits=dist_params).entropy()
    else:
        mean, log_std = dist_params.chunk(2, -1)
        expected = torch.distributions.Normal(mean, log_std.exp()).entropy().sum(-1)
    torch.testing.assert_close(entropy, expected)
    plain = torch_ic.trial_loss(policy, params, x, actions, adv)
    torch.testing.assert_close(torch_ic.trial_loss(policy, params, x, actions, adv, 0.3),
                               plain - 0.3 * entropy.mean())


@pytest.mark.parametrize("field, value, message", [
    ("objective", "rl2", "objective must be one of"), ("episodes", 0, "episodes"),
    ("discount", 0.0, "discount"), ("baseline", "critic", "baseline must be one of"),
    ("entropy", -0.1, "entropy must be")])
def test_trial_config_refuses_bad_values_by_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrialConfig(**{field: value})


@pytest.mark.parametrize("backend", ["jax", "torch"])
@pytest.mark.parametrize("objective", ["incontext", "both"])
def test_one_meta_iteration_changes_the_policy(backend: str, objective: str) -> None:
    dist = FAMILIES["bandit"]
    module = jax_ic if backend == "jax" else torch_ic
    policy = module.InContextPolicy(dist.obs_dim, dist.action_dim, dist.discrete, 4, 8, "cpu")
    config = TrialConfig(objective, 2, 0.99, "state", 2)
    trainer = module.InContextRL(policy, dist, config, outer_lr=1e-2)
    before = trainer.canonical_weights()
    metrics = trainer.iteration(dist.sample(2, np.random.default_rng(0)), incontext.backend_key(backend, 0))
    after = trainer.canonical_weights()
    assert np.isfinite(metrics["loss"]) and (metrics["post_return"] != 0) == (objective == "both")
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert trainer.optimizer_state()["adam.step"] == 1


def test_trainers_refuse_what_they_do_not_train() -> None:
    policy = jax_ic.InContextPolicy(2, 2, False, 4, 8, "cpu")
    with pytest.raises(ValueError, match="'maml' is MAMLRL's"):
        jax_ic.InContextRL(policy, FAMILIES["nav2d"], TrialConfig("maml"))
    with pytest.raises(ValueError, match="does not fit 'bandit'"):
        jax_ic.InContextRL(policy, FAMILIES["bandit"], TrialConfig())


def test_adam_state_moves_between_backends_in_the_canonical_layout() -> None:
    dist = FAMILIES["nav2d"]
    config = TrialConfig("incontext", 1, 0.99, "time", 2)
    j = jax_ic.InContextRL(jax_ic.InContextPolicy(2, 2, False, 4, 8, "cpu"), dist, config)
    j.iteration(dist.sample(2, np.random.default_rng(0)), jax.random.PRNGKey(0))
    t = torch_ic.InContextRL(torch_ic.InContextPolicy(2, 2, False, 4, 8, "cpu"), dist, config)
    t.load_canonical_weights(j.canonical_weights())
    t.load_optimizer_state(j.optimizer_state())
    saved, loaded = j.optimizer_state(), t.optimizer_state()
    assert saved.keys() == loaded.keys()
    for key in saved:
        np.testing.assert_array_equal(saved[key], loaded[key])


def test_bandit_baselines_order_as_expected_and_regret_is_zero_on_the_best_arm() -> None:
    means = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
    random = baselines.pseudo_regret(means, baselines.bandit_random(means, 50, 20, seed=0)).mean()
    for name, policy in baselines.BANDIT_BASELINES.items():
        arms = policy(means, 50, 20, seed=0)
        assert arms.shape == (2, 20, 50) and arms.min() >= 0 and arms.max() < 3, name
        if name != "random":
            assert baselines.pseudo_regret(means, arms).mean() < random, name
    best = np.broadcast_to(means.argmax(1)[:, None, None], (2, 1, 7))
    np.testing.assert_array_equal(baselines.pseudo_regret(means, best), 0.0)
    with pytest.raises(ValueError, match="probabilities"):
        baselines.bandit_thompson(np.array([[0.5, 1.5]]), 10)


def test_nav2d_oracle_beats_random() -> None:
    goals = np.array([[0.3, -0.2], [-0.4, 0.4]])
    oracle, random = baselines.nav2d_oracle(goals), baselines.nav2d_random(goals, episodes=2)
    assert oracle.shape == (2,) and random.shape == (2, 2) and (oracle > random.max(1)).all()


@pytest.mark.parametrize("flags, message", [
    (["--objective", "reptile"], "--objective"), (["--objective", "incontext", "--trial-episodes", "0"],
                                                 "--trial-episodes"),
    (["--objective", "both", "--trial-episodes", "-2"], "--trial-episodes"),
    (["--objective", "incontext", "--trial-entropy", "-1"], "--trial-entropy")])
def test_train_refuses_bad_objectives_and_trial_lengths_naming_the_flag(flags: list[str], message: str, tmp_path,
                                                                       capsys) -> None:
    assert cli.main(["train", *flags, "--output", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def incontext_run(tmp_path_factory) -> tuple:
    """One tiny in-context training run through the CLI (bandits, PyTorch: no compile), shared below."""
    out = tmp_path_factory.mktemp("incontext") / "run"
    code = cli.main(["train", "--backend", "torch", "--task", "bandit", "--objective", "incontext", "--trial-episodes",
                     "2", "--iterations", "2", "--meta-batch", "2", "--episodes", "2", "--state-dim", "4",
                     "--hidden-dim", "8", "--eval-tasks", "2", "--output", str(out)])
    return code, out


def test_train_with_the_incontext_objective_writes_a_checkpoint_and_an_evaluation(incontext_run) -> None:
    code, out = incontext_run
    assert code == 0
    report = json.loads((out / "evaluation.json").read_text())
    for key in ("episode_1", "episode_2", "after_0_steps", "after_3_steps", "regret"):
        assert report[key]["n"] == 2, key
    assert report["config"]["objective"] == "incontext" and report["config"]["trial_episodes"] == 2
    assert 'objective = "incontext"' in (out / "config.toml").read_text()
    policy, spec, trial, _ = incontext.load_checkpoint(out / "checkpoint.safetensors", "jax")
    assert spec.family == "bandit" and trial.episodes == 2 and isinstance(policy, jax_ic.InContextPolicy)


def test_evaluate_reruns_the_incontext_evaluation_of_a_train_checkpoint(incontext_run, tmp_path) -> None:
    _, out = incontext_run
    assert cli.main(["evaluate", str(out / "checkpoint.safetensors"), "--output", str(tmp_path)]) == 0
    trained = json.loads((out / "evaluation.json").read_text())
    again = json.loads((tmp_path / "evaluation_torch.json").read_text())
    for key in ("episode_1", "episode_2", "after_0_steps", "after_3_steps", "regret"):
        assert again[key] == trained[key], key  # same backend, same seeds: the same numbers


def test_study_measures_each_supported_axis_and_skips_the_others_with_a_reason(incontext_run, tmp_path,
                                                                              capsys) -> None:
    _, out = incontext_run
    bogus = tmp_path / "not_a_checkpoint.safetensors"
    from shared.weights import save_weights
    save_weights(bogus, {"w": np.zeros(2, np.float32)}, {"kind": "something else"})
    config = study.StudyConfig("torch", tasks=2, trials=1, max_inner_steps=1, max_episodes=2, adapter_steps=1)
    report = study.run([out / "checkpoint.safetensors", bogus], tmp_path / "study", config)
    said = capsys.readouterr().out
    assert "adapter axis skipped" in said and "neither an in-context" in report["skipped"][0]
    mechanisms = {r["mechanism"] for r in report["rows"]}
    assert {"episodes of context (in-context)", "inner gradient steps (on the in-context policy)",
            "baseline: Thompson sampling", "baseline: random"} <= mechanisms
    context = sorted((r for r in report["rows"] if r["mechanism"].startswith("episodes")), key=lambda r: r["compute"])
    assert [r["env_steps"] for r in context] == [0, 100]
    for name in ("study.json", "study.csv", "study.md", "study.png"):
        assert (tmp_path / "study" / name).stat().st_size > 0


def test_an_interrupted_incontext_run_resumes_in_the_other_backend(tmp_path) -> None:
    import signal

    from ssm_metarl.train import TrainConfig, TrainingInterrupted, train

    config = TrainConfig(backend="torch", task="bandit", objective="incontext", trial_episodes=1, iterations=2,
                         meta_batch=2, episodes=1, state_dim=4, hidden_dim=8, eval_tasks=2)
    output = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        train(config, output, checkpoint_every=100, on_iteration=lambda i: signal.raise_signal(signal.SIGINT))
    report = train(config, output, resume=True, backend="jax")
    assert report["config"]["backend"] == "jax" and report["config"]["objective"] == "incontext"
    metrics = json.loads((output / "metrics.json").read_text())["iterations"]
    assert [(m["iteration"], m["backend"]) for m in metrics] == [(0, "torch"), (1, "jax")]
