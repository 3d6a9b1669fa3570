"""PyTorch MAML-RL on the torch.func MetaMAML: acting with stacked per-task parameters, the
meta-gradient in each mode, and the learner's public surface."""

import numpy as np
import pytest
import torch

from torch_impl.core.ssm import ssm_step
from torch_impl.meta_rl.maml_rl import MAMLRL, SSMPolicy, policy_gradient_loss

F64 = torch.float64


def policy(discrete=False):
    torch.manual_seed(0)
    return SSMPolicy(2, 3, discrete, 4, 8, "cpu", dtype=F64)


@pytest.mark.parametrize("discrete", [False, True])
def test_act_with_stacked_per_task_parameters_equals_acting_task_by_task(discrete):
    learner = MAMLRL(policy(discrete))
    base = learner.meta_params()
    params = [{n: v * (1 + 0.1 * i) for n, v in base.items()} for i in range(3)]
    act = learner.act_fn(params, 2)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(6, 2))
    state = learner.initial_state(3, 2) + torch.from_numpy(rng.normal(size=(3, 2, 4)))
    out, new_state = act(obs, state)
    for i in range(3):
        expected, expected_state = learner.policy.act_step(params[i], torch.from_numpy(obs[2 * i:2 * i + 2]), state[i])
        np.testing.assert_allclose(out[2 * i:2 * i + 2], expected.numpy(), rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(new_state[i], expected_state, rtol=1e-13, atol=1e-14)


def test_stacked_ssm_step_equals_the_step_of_each_set():
    ssm = policy().ssm
    sets = [{n: p.detach() * (1 + 0.05 * i) for n, p in ssm.named_parameters()} for i in range(3)]
    stacked = {n: torch.stack([s[n] for s in sets]) for n in sets[0]}
    x, h = torch.randn(3, 5, 2, dtype=F64), torch.randn(3, 5, 4, dtype=F64)
    ys, hs = ssm_step(stacked, x, h)
    for i in range(3):
        y, new_h = ssm_step(sets[i], x[i], h[i])
        torch.testing.assert_close(ys[i], y, rtol=1e-13, atol=1e-14)
        torch.testing.assert_close(hs[i], new_h, rtol=1e-13, atol=1e-14)


def rl_tasks(n=3, seed=0):
    rng = np.random.default_rng(seed)

    def batch():
        obs = torch.from_numpy(rng.normal(size=(4, 6, 2)))
        labels = (torch.from_numpy(rng.normal(size=(4, 6, 3))), torch.from_numpy(rng.normal(size=(4, 6))),
                  torch.ones(4, 6, dtype=F64))
        return obs, labels

    return [(*batch(), *batch()) for _ in range(n)]


def test_the_learner_meta_gradient_is_the_same_in_every_eager_mode():
    tasks = rl_tasks()
    grads = {}
    for vectorize in (True, False):
        learner = MAMLRL(policy(), inner_lr=0.1)
        learner.maml.vectorize = vectorize
        grads[vectorize] = learner.maml.meta_gradient(tasks)
    for name in grads[True]:
        torch.testing.assert_close(grads[True][name], grads[False][name], rtol=1e-12, atol=1e-14, msg=name)


def test_the_learner_keeps_its_public_surface():
    learner = MAMLRL(policy(), inner_lr=0.1, outer_lr=1e-3)
    assert isinstance(learner.maml.optimizer, torch.optim.Adam)
    assert learner.maml.loss_fn is policy_gradient_loss
    assert learner.maml.vectorize is True and learner.maml.compile is False
    before = {n: p.detach().clone() for n, p in learner.policy.named_parameters()}
    loss = learner.maml.meta_update(rl_tasks())
    assert np.isfinite(loss)
    assert any(not torch.equal(p, before[n]) for n, p in learner.policy.named_parameters())
    state = learner.maml.optimizer.state_dict()
    assert state["state"], "Adam state is there to checkpoint"


def test_the_learner_passes_the_mode_options_through():
    learner = MAMLRL(policy(), vectorize=False, compile=False)
    assert learner.maml.vectorize is False and learner.maml.compile is False
