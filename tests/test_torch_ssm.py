"""The PyTorch SSM: shapes, the three equal entry points, differentiability, no hidden state."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torch_impl import SSM

F64 = torch.float64


def make(state=6, inp=3, out=2, hidden=5, dtype=F64) -> SSM:
    return SSM(state, inp, out, hidden, "cpu", dtype=dtype)


def step_by_step(model: SSM, xs, state, starts):
    ys, hs = [], []
    for t in range(xs.shape[1]):
        y, state = model.step(xs[:, t], state, starts[:, t])
        ys.append(y)
        hs.append(state)
    return torch.stack(ys, 1), torch.stack(hs, 1)


def test_seed_usage_example():
    model = SSM(state_dim=128, input_dim=64, output_dim=32, hidden_dim=128, device="cpu")
    output = model(torch.randn(32, 64))
    assert isinstance(output, torch.Tensor)
    assert output.shape == torch.Size([32, 32])


def test_constructor_needs_all_five_arguments():
    with pytest.raises(TypeError):
        SSM(4, 3, 2, 5)  # type: ignore[call-arg]


@pytest.mark.parametrize("length", [1, 7, 64])
def test_step_equals_sequential_equals_parallel_with_resets(length):
    model = make()
    rng = np.random.default_rng(length)
    xs = torch.from_numpy(rng.normal(size=(3, length, 3)))
    starts = torch.from_numpy((rng.random((3, length)) < 0.2).astype(np.float64))
    h0 = torch.from_numpy(rng.normal(size=(3, 6)))
    ys_step, hs_step = step_by_step(model, xs, h0, starts)
    for mode in ("sequential", "parallel"):
        ys, last = model.scan(xs, h0, starts, mode=mode)
        hs = model.hidden_states(xs, h0, starts, mode=mode)
        torch.testing.assert_close(ys, ys_step, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(hs, hs_step, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(last, hs_step[:, -1], rtol=1e-10, atol=1e-12)


def test_reset_forgets_the_past():
    model = make()
    xs = torch.randn(2, 10, 3, dtype=F64)
    starts = torch.zeros(2, 10, dtype=F64)
    starts[:, 6] = 1.0
    ys, _ = model.scan(xs, torch.randn(2, 6, dtype=F64), starts)
    fresh, _ = model.scan(xs[:, 6:])
    torch.testing.assert_close(ys[:, 6:], fresh, rtol=1e-12, atol=1e-12)


def test_forward_dispatches_on_rank():
    model = make()
    x = torch.randn(4, 3, dtype=F64)
    torch.testing.assert_close(model(x), model.step(x, model.init_state(4))[0])
    xs = torch.randn(4, 5, 3, dtype=F64)
    assert model(xs).shape == (4, 5, 2)
    torch.testing.assert_close(model(xs), model.scan(xs)[0])


def test_no_hidden_state_between_calls():
    model = make()
    x = torch.randn(4, 3, dtype=F64)
    first = model(x)
    model(torch.randn(4, 3, dtype=F64))
    torch.testing.assert_close(model(x), first, rtol=0, atol=0)
    assert not list(model.buffers())


def test_decays_stay_in_unit_interval_for_any_parameters():
    model = make()
    with torch.no_grad():
        model.nu_log.copy_(torch.tensor([-30.0, -5.0, 0.0, 2.0, 3.0, 30.0], dtype=F64))
    decay, gain = model.decay_and_gain()
    assert bool(((decay >= 0) & (decay <= 1)).all())
    # gamma = sqrt(1 - lambda^2) to full precision even where lambda is within 1e-13 of 1,
    # where the naive formula loses 5 digits.
    assert bool((gain > 0).all())
    torch.testing.assert_close(gain**2 + decay**2, torch.ones(6, dtype=F64), rtol=0, atol=4e-16)
    torch.testing.assert_close(gain[0], torch.sqrt(2 * torch.exp(torch.tensor(-30.0, dtype=F64))), rtol=1e-12, atol=0)
    init = make(state=64, dtype=F64)
    with torch.no_grad():
        decay, _ = init.decay_and_gain()
    assert float(decay.min()) >= 0.9 - 1e-12 and float(decay.max()) <= 0.999 + 1e-12


def test_gradients_of_both_scans_agree():
    model = make()
    xs = torch.randn(2, 13, 3, dtype=F64)
    starts = (torch.rand(2, 13) < 0.2).to(F64)
    h0 = torch.randn(2, 6, dtype=F64, requires_grad=True)
    grads = {}
    for mode in ("sequential", "parallel"):
        loss = model.scan(xs, h0, starts, mode=mode)[0].pow(2).sum()
        grads[mode] = torch.autograd.grad(loss, [h0, *model.parameters()])
    for g_seq, g_par in zip(grads["sequential"], grads["parallel"], strict=True):
        torch.testing.assert_close(g_par, g_seq, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_gradgradcheck(mode):
    model = make(state=3, inp=2, out=2, hidden=3)
    xs = torch.randn(2, 5, 2, dtype=F64, requires_grad=True)
    starts = torch.tensor([[0, 0, 1, 0, 0], [0, 1, 0, 0, 0]], dtype=F64)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def fn(xs, *params):
        out = torch.func.functional_call(model, dict(zip(names, params, strict=True)), (xs,), {"starts": starts})
        return out

    assert torch.autograd.gradcheck(fn, (xs, *params))
    assert torch.autograd.gradgradcheck(fn, (xs, *params))


@settings(max_examples=25, deadline=None)
@given(
    state=st.integers(1, 6), inp=st.integers(1, 4), out=st.integers(1, 4), hidden=st.integers(1, 6),
    batch=st.integers(1, 3), length=st.integers(1, 20), seed=st.integers(0, 2**16),
)
def test_property_shapes_and_scan_equality(state, inp, out, hidden, batch, length, seed):
    model = make(state, inp, out, hidden)
    rng = np.random.default_rng(seed)
    xs = torch.from_numpy(rng.normal(size=(batch, length, inp)))
    starts = torch.from_numpy((rng.random((batch, length)) < 0.3).astype(np.float64))
    ys, last = model.scan(xs, None, starts, mode="sequential")
    ys_par, last_par = model.scan(xs, None, starts, mode="parallel")
    assert ys.shape == (batch, length, out) and last.shape == (batch, state)
    torch.testing.assert_close(ys_par, ys, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(last_par, last, rtol=1e-10, atol=1e-12)
    assert model(xs[:, 0]).shape == (batch, out)


def test_wrong_device_is_named():
    from torch_impl import MetaMAML

    model = make()
    with pytest.raises(ValueError, match="device cpu"):
        model(torch.empty(2, 3, dtype=F64, device="meta"))
    with pytest.raises(ValueError, match="device cpu"):
        MetaMAML(model).adapt(torch.empty(2, 5, 3, dtype=F64, device="meta"), torch.zeros(2, 5, 2, dtype=F64))


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("call", ["forward", "scan", "hidden_states"])
def test_sequences_of_length_zero_are_refused(call):
    model = SSM(8, 3, 2, 16, "cpu")
    with pytest.raises(ValueError, match="expected at least one time step"):
        getattr(model, call)(torch.randn(4, 0, 3))


@pytest.mark.parametrize("bad", [float("nan"), 2.0, -1.0, 0.5])
@pytest.mark.parametrize("mode", ["sequential", "parallel"])
def test_starts_must_hold_only_zero_or_one(bad, mode):
    model = make()
    starts = torch.zeros(2, 5, dtype=F64)
    starts[1, 3] = bad
    with pytest.raises(ValueError, match="starts must hold only 0 or 1"):
        model.scan(torch.randn(2, 5, 3, dtype=F64), starts=starts, mode=mode)
    with pytest.raises(ValueError, match="starts must hold only 0 or 1"):
        model.step(torch.randn(2, 3, dtype=F64), model.init_state(2), starts[:, 3])


def test_bool_and_integer_starts_are_accepted():
    model = make()
    xs = torch.randn(2, 5, 3, dtype=F64)
    flags = torch.zeros(2, 5, dtype=torch.bool)
    flags[0, 2] = True
    ys = model.scan(xs, starts=flags)[0]
    torch.testing.assert_close(model.scan(xs, starts=flags.to(torch.int64))[0], ys, rtol=0, atol=0)
    torch.testing.assert_close(model.scan(xs, starts=flags.to(F64))[0], ys, rtol=0, atol=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "bogus"])
def test_unavailable_or_unknown_devices_name_the_valid_ones(device):
    with pytest.raises(ValueError, match=r"expected one of \['cpu'|must be one of \['cpu'"):
        SSM(8, 3, 2, 16, device)


# ------------------------------------------------------------ the forward under torch.func and torch.compile
def test_forward_runs_under_vmap_and_equals_a_loop():
    model = make()
    params = {n: p.detach() for n, p in model.named_parameters()}
    stacked = {n: torch.stack([p, 1.1 * p, 0.9 * p]) for n, p in params.items()}
    xs = torch.randn(3, 2, 5, 3, dtype=F64)
    starts = (torch.rand(3, 2, 5) < 0.3).to(F64)

    def run(p, x, s):
        return torch.func.functional_call(model, p, (x,), {"starts": s})

    mapped = torch.func.vmap(run)(stacked, xs, starts)
    for i in range(3):
        one = run({n: v[i] for n, v in stacked.items()}, xs[i], starts[i])
        torch.testing.assert_close(mapped[i], one, rtol=1e-12, atol=1e-14)


def test_forward_runs_under_grad_of_grad():
    model = make()
    params = {n: p.detach() for n, p in model.named_parameters()}
    xs = torch.randn(2, 5, 3, dtype=F64)

    def loss(p):
        return torch.func.functional_call(model, p, (xs,)).pow(2).mean()

    def inner(p):
        g = torch.func.grad(loss)(p)
        return loss({n: v - 0.1 * g[n] for n, v in p.items()})

    grads = torch.func.grad(inner)(params)
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    first = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
    adapted = {n: v - 0.1 * g for (n, v), g in zip(leaves.items(), first, strict=True)}
    expected = torch.autograd.grad(loss(adapted), list(leaves.values()))
    for (name, g), e in zip(grads.items(), expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-14, msg=name)


def test_forward_compiles_without_graph_breaks():
    model = SSM(3, 2, 1, 4, "cpu")
    xs = torch.randn(2, 3, 2)
    compiled = torch.compile(model, fullgraph=True, dynamic=False)
    torch.testing.assert_close(compiled(xs), model(xs), rtol=1e-5, atol=1e-6)


def test_public_checks_still_run_outside_transforms():
    model = make()
    xs = torch.randn(2, 5, 3, dtype=F64)
    xs[0, 1, 2] = float("nan")
    with pytest.raises(ValueError, match="input contains NaN or Inf"):
        model(xs)


# ------------------------------------------------------------ the parallel mode without resets (decay-power matrix)
@pytest.mark.parametrize("length", [1, 2, 7, 100, 900])
def test_parallel_without_resets_equals_sequential(length):
    """Up to S*T*T = 4M the parallel mode uses the (S, T, T) matrix of decay powers; beyond, Hillis-Steele."""
    model = make()
    xs = torch.randn(2, length, 3, dtype=F64)
    h0 = torch.randn(2, 6, dtype=F64)
    seq = model.hidden_states(xs, h0, mode="sequential")
    par = model.hidden_states(xs, h0, mode="parallel")
    torch.testing.assert_close(par, seq, rtol=1e-11, atol=1e-12)


def test_gradgradcheck_parallel_without_resets():
    model = make(state=3, inp=2, out=2, hidden=3)
    xs = torch.randn(2, 5, 2, dtype=F64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=F64, requires_grad=True)
    names = [n for n, _ in model.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def parallel(xs, h0, *params):
        return _scan_parallel(model, dict(zip(names, params, strict=True)), xs, h0)

    assert torch.autograd.gradcheck(parallel, (xs, h0, *params))
    assert torch.autograd.gradgradcheck(parallel, (xs, h0, *params))


def _scan_parallel(model, params, xs, h0):
    class Scan(torch.nn.Module):
        def __init__(self, ssm):
            super().__init__()
            self.ssm = ssm

        def forward(self, xs, h0):
            return self.ssm.scan(xs, h0, mode="parallel")[0]

    return torch.func.functional_call(Scan(model), {f"ssm.{n}": p for n, p in params.items()}, (xs, h0))
