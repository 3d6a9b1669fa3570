"""Environments, task distributions, the rollout runner, and the numpy <-> JAX dynamics twins."""

import gymnasium as gym
import jax.numpy as jnp
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from jax_impl.meta_rl import native
from shared.env_runner import DISTRIBUTIONS, Environment, MetaEnvironment, get_distribution
from shared.env_runner.envs import ENV_IDS, Nav2DEnv, bandit_transition, nav2d_transition
from shared.rl import discounted_returns, normalize, to_batch


@pytest.mark.parametrize("name", sorted(ENV_IDS))
def test_every_env_we_ship_passes_check_env(name):
    for task in get_distribution(name).sample(2, np.random.default_rng(0)):
        env = gym.make(ENV_IDS[name], **task)
        check_env(env.unwrapped)


@pytest.mark.parametrize("name", ["nav2d", "bandit"])
def test_numpy_vector_env_equals_single_envs(name):
    dist = get_distribution(name)
    tasks = dist.sample(3, np.random.default_rng(1))
    vector = dist.make_vector(tasks, 1)
    singles = [gym.make(ENV_IDS[name], **t) for t in tasks]
    obs, _ = vector.reset(seed=0)
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(env.reset(seed=0)[0], obs[i])
    rng = np.random.default_rng(2)
    for _ in range(dist.horizon):
        actions = (rng.integers(dist.action_dim, size=3) if dist.discrete
                   else rng.normal(scale=0.2, size=(3, dist.action_dim)))
        if name == "bandit":  # the vector env draws one uniform per env per step; give singles the same
            vector_rng_state = vector.np_random.bit_generator.state
            uniforms = vector.np_random.random(3)
            vector.np_random.bit_generator.state = vector_rng_state
        obs, rewards, _, truncated, _ = vector.step(actions)
        for i, env in enumerate(singles):
            if name == "bandit":
                env.unwrapped.np_random = _FixedUniform(uniforms[i])
            o, r, _, t, _ = env.step(actions[i])
            np.testing.assert_allclose(o, obs[i], rtol=1e-6)
            assert r == pytest.approx(rewards[i])
            assert t == truncated[i]
    assert truncated.all()


class _FixedUniform:
    def __init__(self, value):
        self.value = value

    def random(self, *args):
        return self.value


def test_nav2d_dynamics_numpy_equals_jax():
    rng = np.random.default_rng(0)
    position, goal = rng.normal(size=(6, 2)), rng.uniform(-0.5, 0.5, (6, 2))
    action = rng.normal(scale=0.3, size=(6, 2))
    np_pos, np_reward = nav2d_transition(position, action, goal)
    jax_pos, jax_reward = native.nav2d_transition(jnp.asarray(position), jnp.asarray(action), jnp.asarray(goal))
    np.testing.assert_allclose(jax_pos, np_pos, rtol=1e-12)
    np.testing.assert_allclose(jax_reward, np_reward, rtol=1e-12)
    assert np.abs(np_pos - position).max() <= 0.1 + 1e-12  # actions are clipped to +-0.1


def test_bandit_dynamics_numpy_equals_jax():
    rng = np.random.default_rng(0)
    means, actions, uniforms = rng.uniform(size=(50, 5)), rng.integers(5, size=50), rng.uniform(size=50)
    np.testing.assert_array_equal(
        native.bandit_transition(jnp.asarray(means), jnp.asarray(actions), jnp.asarray(uniforms)),
        bandit_transition(means, actions, uniforms),
    )


@pytest.mark.parametrize("backend", ["torch", "jax"])
@pytest.mark.parametrize("task", ["nav2d", "bandit"])
def test_native_rollouts_follow_the_numpy_dynamics(backend, task):
    """Replay each backend's native rollout (its own actions) through the numpy env: the same observations and
    rewards, and the actions are the runner's samples for the same noise."""
    from shared.env_runner.environment import sample_actions
    from shared.native_noise import draw_noise, task_parameters
    from ssm_metarl.train import TrainConfig, initial_weights, make_learner

    dist = get_distribution(task)
    config = TrainConfig(backend=backend, task=task, state_dim=4, hidden_dim=8)
    weights = {k: v.astype(np.float64) for k, v in initial_weights(config, dist).items()}
    learner = make_learner(config, dist, weights)
    native = learner.native(dist, 3, **({"compile": False} if backend == "torch" else {}))
    rng = np.random.default_rng(0)
    tasks = dist.sample(2, rng)
    noise = draw_noise(dist, rng, 2, 3)
    tasks_array, action_noise, reward_noise = native.arrays(tasks, noise)
    if backend == "torch":
        obs, actions, rewards, _ = native.rollouts(learner.meta_params(), tasks_array, action_noise[0],
                                                   None if reward_noise is None else reward_noise[0])
    else:
        obs, actions, rewards, _ = native.rollouts(learner.meta_params(), learner.rest(), tasks_array,
                                                   action_noise[0], None if reward_noise is None else reward_noise[0])
    obs, actions, rewards = (np.asarray(a) for a in (obs, actions, rewards))
    assert np.isfinite(obs).all() and obs.shape[:3] == (2, 3, dist.horizon)
    params = task_parameters(dist, tasks)
    for k in range(2):
        env = dist.make_vector([tasks[k]], 3)
        env_obs, _ = env.reset(seed=0)
        for t in range(dist.horizon):
            np.testing.assert_allclose(obs[k, :, t], env_obs, rtol=1e-5, atol=1e-6)
            if task == "bandit":  # the env draws its own uniforms: step the transition with the injected ones
                from shared.env_runner.envs import bandit_transition

                expected = bandit_transition(np.repeat(params[k:k + 1], 3, 0), actions[k, :, t],
                                             noise.rewards[0, k, :, t])
                np.testing.assert_array_equal(rewards[k, :, t], expected)
                env_obs = np.concatenate([np.eye(dist.arms)[actions[k, :, t]], expected[:, None]], -1)
            else:
                env_obs, env_rewards, *_ = env.step(actions[k, :, t])
                np.testing.assert_allclose(rewards[k, :, t], env_rewards, rtol=1e-6, atol=1e-6)
    # the first action of every episode is the runner's sample from the same noise
    first_params = np.asarray(learner.act_fn([learner.meta_params()] * 2, 3)(
        np.zeros((6, dist.obs_dim), np.float32), learner.initial_state(2, 3))[0])

    class Replay:  # a numpy Generator stand-in that hands out the injected noise
        def random(self, shape):
            return noise.actions[0, :, :, 0].reshape(shape)

        def standard_normal(self, shape):
            return noise.actions[0, :, :, 0].reshape(shape)

    np.testing.assert_allclose(sample_actions(first_params, dist.discrete, Replay()).reshape(actions[:, :, 0].shape),
                               actions[:, :, 0], rtol=1e-6, atol=1e-6)


def test_unknown_names_and_bad_task_parameters_are_clear_errors():
    with pytest.raises(ValueError, match="unknown environment"):
        Environment("ssm_metarl/Nope-v0")
    with pytest.raises(ValueError, match="unknown task family 'mars'"):
        MetaEnvironment("mars")
    with pytest.raises(ValueError, match="goal must be finite with last dimension 2"):
        Nav2DEnv(goal=(0.1, 0.2, 0.3))
    with pytest.raises(ValueError, match="probabilities in"):
        gym.make(ENV_IDS["bandit"], means=(0.5, 1.5))
    with pytest.raises(ValueError, match="masspole must be a positive"):
        gym.make(ENV_IDS["cartpole"], masspole=-1.0)
    with pytest.raises(ValueError, match="m must be a positive"):
        gym.make(ENV_IDS["pendulum"], m=0.0)


def test_held_out_sets_are_fixed_and_distinct_from_training_draws():
    for name, dist in DISTRIBUTIONS.items():
        assert dist.held_out(5) == dist.held_out(5), name
        assert dist.held_out(5) != dist.sample(5, np.random.default_rng(0)), name


def test_flip_changes_the_dynamics():
    plain = gym.make(ENV_IDS["cartpole"], flip=False)
    flipped = gym.make(ENV_IDS["cartpole"], flip=True)
    a, _ = plain.reset(seed=3)
    b, _ = flipped.reset(seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(plain.step(0)[0], flipped.step(1)[0])


def test_environment_rollout_statistics_and_masks():
    env = Environment(ENV_IDS["cartpole"], seed=0)
    episodes = env.rollout(lambda obs, state: (np.zeros((obs.shape[0], 2)), state), None, horizon=200)
    length = int(episodes.mask.sum())
    assert 0 < length < 200  # a random policy drops the pole
    assert episodes.returns[0] == pytest.approx(length)  # +1 per step survived
    assert env.episode_lengths == [length]


def test_advantages_are_normalised_over_valid_steps():
    rng = np.random.default_rng(0)
    meta_env = MetaEnvironment("cartpole", seed=0)
    (episodes,) = meta_env.rollout(meta_env.sample_tasks(1), 6, lambda o, s: (rng.normal(size=(o.shape[0], 2)), s),
                                   None)
    batch = to_batch(episodes, dtype="float64")
    valid = episodes.mask.astype(bool)
    assert abs(batch.advantages[valid].mean()) < 1e-9
    assert batch.advantages[valid].std() == pytest.approx(1.0, rel=1e-6)
    assert (batch.advantages[~valid] == 0).all()
    returns = discounted_returns(np.ones((1, 3)), np.array([[1.0, 1.0, 0.0]]), gamma=0.5)
    np.testing.assert_allclose(returns, [[1.5, 1.0, 0.0]])
    np.testing.assert_allclose(normalize(np.array([[1.0, 3.0]]), np.ones((1, 2))), [[-1.0, 1.0]], atol=1e-7)
