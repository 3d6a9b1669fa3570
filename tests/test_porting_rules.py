"""Porting kit, weight mapping: every rule exact both ways, the right layout (same outputs), clear errors."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx
from hypothesis import given, settings
from hypothesis import strategies as st

from jax_impl.core.ssm import SSM as JaxSSM
from shared.porting import PairingError, Rule, recurrent, register_rule, rules, unregister_rule
from ssm_metarl.porting import copy_flax_to_torch, copy_torch_to_flax, torch_compatible_gru_cell
from ssm_metarl.porting.trees import flax_index, torch_tree
from torch_impl.core.ssm import SSM as TorchSSM

F64 = torch.float64
SETTINGS = settings(max_examples=3, deadline=None)  # CI budget: the sizes vary, a few draws suffice


def assert_exact_both_ways(torch_model: torch.nn.Module, flax_model: nnx.Module) -> None:
    """torch -> flax -> torch and flax -> torch -> flax give back every tensor bit for bit, dtype included."""
    plan = copy_torch_to_flax(torch_model, flax_model)
    t = torch_tree(torch_model).tensors
    f = flax_index(flax_model).tree.tensors
    for source, back in ((t, plan.to_torch(plan.to_flax(t), torch_fill=t)), (f, plan.to_flax(plan.to_torch(f, t)))):
        assert back.keys() == source.keys()
        for name in source:
            assert back[name].dtype == source[name].dtype, name
            np.testing.assert_array_equal(back[name], source[name], err_msg=name)
    # and through the live models: a fresh torch twin loaded from flax holds the original weights
    torch_copy = {k: v.clone() for k, v in torch_model.state_dict().items()}
    with torch.no_grad():
        for p in torch_model.parameters():
            p.add_(1.0)
    copy_flax_to_torch(flax_model, torch_model)
    for name, value in torch_model.state_dict().items():
        assert torch.equal(value, torch_copy[name]), name


def assert_close(flax_out: jnp.ndarray, torch_out: torch.Tensor, moveaxis: bool = False) -> None:
    expected = torch_out.detach().numpy()
    if moveaxis:
        expected = np.moveaxis(expected, 1, -1)
    np.testing.assert_allclose(np.asarray(flax_out), expected, rtol=1e-10, atol=1e-12)


def rngs() -> nnx.Rngs:
    return nnx.Rngs(0)


# --------------------------------------------------------------------------- pure numpy: both directions
@SETTINGS
@given(st.integers(1, 5), st.integers(1, 5), st.lists(st.integers(1, 4), min_size=1, max_size=3))
def test_numpy_rules_are_exact_inverses(out_dim: int, in_dim: int, kernel: list[int]) -> None:
    rng = np.random.default_rng(0)
    cases = [
        (rules.LINEAR, {"weight": rng.normal(size=(out_dim, in_dim)), "bias": rng.normal(size=out_dim)}),
        (rules.CONV, {"weight": rng.normal(size=(out_dim, in_dim, *kernel)), "bias": rng.normal(size=out_dim)}),
        (rules.NORM, {"weight": rng.normal(size=out_dim), "bias": rng.normal(size=out_dim)}),
        (rules.EMBEDDING, {"weight": rng.normal(size=(out_dim, in_dim))}),
        (rules.BATCH_NORM, {"weight": rng.normal(size=in_dim), "bias": rng.normal(size=in_dim),
                            "running_mean": rng.normal(size=in_dim), "running_var": rng.random(size=in_dim)}),
        (recurrent.GRU, {"weight_ih_l0": rng.normal(size=(3 * out_dim, in_dim)),
                     "weight_hh_l0": rng.normal(size=(3 * out_dim, out_dim)),
                     "bias_ih_l0": rng.normal(size=3 * out_dim), "bias_hh_l0": rng.normal(size=3 * out_dim)}),
    ]
    for rule, tensors in cases:
        shapes = {"dense_i.kernel": (in_dim, 3 * out_dim), "dense_i.bias": (3 * out_dim,),
                  "dense_h.kernel": (out_dim, 3 * out_dim), "dense_h.bias": (3 * out_dim,)} \
            if rule is recurrent.GRU else {}
        flax = rule.to_flax(tensors, shapes)
        back = rule.to_torch(flax, {})
        assert back.keys() == tensors.keys(), rule.name
        for name in tensors:
            np.testing.assert_array_equal(back[name], tensors[name])
        again = rule.to_flax(back, shapes)
        for name in flax:
            np.testing.assert_array_equal(again[name], flax[name])


def test_conv_kernel_layout_is_spatial_then_in_then_out() -> None:
    weight = np.arange(2 * 3 * 4 * 5, dtype=np.float64).reshape(2, 3, 4, 5)  # (out, in, kh, kw)
    kernel = rules.CONV.to_flax({"weight": weight}, {})["kernel"]
    assert kernel.shape == (4, 5, 3, 2)
    assert kernel[1, 2, 0, 1] == weight[1, 0, 1, 2]


# --------------------------------------------------------------------------- real layers: exact and same outputs
@SETTINGS
@given(st.integers(1, 6), st.integers(1, 6), st.booleans())
def test_linear(in_dim: int, out_dim: int, bias: bool) -> None:
    t = torch.nn.Linear(in_dim, out_dim, bias=bias, dtype=F64)
    f = nnx.Linear(in_dim, out_dim, use_bias=bias, param_dtype=jnp.float64, rngs=rngs())
    assert_exact_both_ways(t, f)
    x = np.random.default_rng(1).normal(size=(3, in_dim))
    assert_close(f(x), t(torch.from_numpy(x)))


@SETTINGS
@given(st.integers(1, 3), st.sampled_from([1, 2]), st.integers(1, 3), st.integers(1, 2), st.integers(0, 2),
       st.booleans())
def test_conv2d_and_conv1d(groups_in: int, groups: int, kernel: int, stride: int, padding: int, two_d: bool) -> None:
    cin, cout = groups_in * groups, 2 * groups
    kw = {"stride": stride, "padding": padding, "groups": groups, "dtype": F64}
    t = (torch.nn.Conv2d if two_d else torch.nn.Conv1d)(cin, cout, kernel, **kw)
    dims = 2 if two_d else 1
    f = nnx.Conv(cin, cout, (kernel,) * dims, strides=stride, padding=[(padding, padding)] * dims,
                 feature_group_count=groups, param_dtype=jnp.float64, rngs=rngs())
    assert_exact_both_ways(t, f)
    x = np.random.default_rng(2).normal(size=(2, cin, *(7,) * dims))
    assert_close(f(np.moveaxis(x, 1, -1)), t(torch.from_numpy(x)), moveaxis=True)


@SETTINGS
@given(st.integers(1, 8))
def test_layer_norm_rms_norm_embedding(dim: int) -> None:
    x = np.random.default_rng(3).normal(size=(4, dim))
    for t, f in ((torch.nn.LayerNorm(dim, dtype=F64), nnx.LayerNorm(dim, epsilon=1e-5, param_dtype=jnp.float64,
                                                                      rngs=rngs())),
                 (torch.nn.RMSNorm(dim, eps=1e-6, dtype=F64), nnx.RMSNorm(dim, epsilon=1e-6, param_dtype=jnp.float64,
                                                                          rngs=rngs()))):
        with torch.no_grad():
            t.weight.uniform_(0.5, 1.5)
            if getattr(t, "bias", None) is not None:
                t.bias.normal_()
        assert_exact_both_ways(t, f)
        assert_close(f(x), t(torch.from_numpy(x)))
    t = torch.nn.Embedding(dim + 2, 3, dtype=F64)
    f = nnx.Embed(dim + 2, 3, param_dtype=jnp.float64, rngs=rngs())
    assert_exact_both_ways(t, f)
    ids = np.arange(dim + 2)[None]
    assert_close(f(ids), t(torch.from_numpy(ids)))


@SETTINGS
@given(st.integers(1, 5), st.booleans())
def test_batch_norm_with_running_statistics(features: int, two_d: bool) -> None:
    from ssm_metarl.porting import TorchBatchNorm

    t = (torch.nn.BatchNorm2d if two_d else torch.nn.BatchNorm1d)(features, dtype=F64)
    with torch.no_grad():
        t.running_mean.normal_()
        t.running_var.uniform_(0.5, 2.0)
        t.weight.normal_()
        t.bias.normal_()
        t.num_batches_tracked.fill_(7)
    f = TorchBatchNorm(features, param_dtype=jnp.float64, rngs=rngs())
    assert_exact_both_ways(t, f)
    assert int(t.num_batches_tracked) == 7  # torch-only: flax -> torch keeps the torch model's own value
    x = np.random.default_rng(4).normal(size=(5, features, 3, 3) if two_d else (5, features))
    t.eval()
    f.eval()
    assert_close(f(np.moveaxis(x, 1, -1)), t(torch.from_numpy(x)), moveaxis=True)
    t.train()
    f.train()
    assert_close(f(np.moveaxis(x, 1, -1)), t(torch.from_numpy(x)), moveaxis=True)
    # the statistics update: torch momentum 0.1 and unbiased variance, flax momentum 0.9
    np.testing.assert_allclose(np.asarray(f.mean[...]), t.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(f.var[...]), t.running_var.numpy(), rtol=1e-12)


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 5))
def test_gru(in_dim: int, hidden: int) -> None:
    t = torch.nn.GRU(in_dim, hidden, batch_first=True, dtype=F64)
    f = nnx.RNN(torch_compatible_gru_cell(in_dim, hidden, param_dtype=jnp.float64, rngs=rngs()))
    assert_exact_both_ways(t, f)
    x = np.random.default_rng(5).normal(size=(2, 5, in_dim))
    assert_close(f(x), t(torch.from_numpy(x))[0])


def test_stock_gru_cell_cannot_hold_torch_hidden_bias() -> None:
    t = torch.nn.GRU(3, 4, batch_first=True, dtype=F64)
    f = nnx.RNN(nnx.GRUCell(3, 4, param_dtype=jnp.float64, rngs=rngs()))
    with pytest.raises(PairingError, match=r"dense_h has no bias.*torch_compatible_gru_cell"):
        copy_torch_to_flax(t, f)
    two_layers = torch.nn.GRU(3, 4, num_layers=2, batch_first=True, dtype=F64)
    with pytest.raises(PairingError, match="holds layer 0, layer 1; the flax side holds cells for layer 0"):
        copy_torch_to_flax(two_layers, nnx.RNN(torch_compatible_gru_cell(3, 4, param_dtype=jnp.float64, rngs=rngs())))


def test_our_ssm() -> None:
    torch.manual_seed(0)
    t = TorchSSM(4, 3, 2, 8, "cpu", dtype=F64)
    f = JaxSSM(4, 3, 2, 8, "cpu", dtype=jnp.float64)
    assert_exact_both_ways(t, f)
    x = np.random.default_rng(6).normal(size=(2, 3))  # one step: the sequence modes are the parity matrix's job
    assert_close(f(x), t(torch.from_numpy(x)))


# --------------------------------------------------------------------------- pairing, overrides, errors
class TorchBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 4, dtype=F64)
        self.scale = torch.nn.Parameter(torch.ones(4, 3, dtype=F64))  # used as x @ scale.T in torch
        self.mix = torch.nn.Bilinear(4, 4, 2, dtype=F64)


class MyMix(nnx.Module):
    def __init__(self) -> None:
        self.w = nnx.Param(jnp.zeros((2, 4, 4), jnp.float64))
        self.b = nnx.Param(jnp.zeros((2,), jnp.float64))


class FlaxBlock(nnx.Module):
    def __init__(self) -> None:
        self.enc = nnx.Linear(3, 4, param_dtype=jnp.float64, rngs=rngs())
        self.scale = nnx.Param(jnp.zeros((3, 4), jnp.float64))  # used as x @ scale in flax
        self.mix = MyMix()


def test_unpaired_tensors_and_unknown_layers_name_path_shapes_and_the_fix() -> None:
    with pytest.raises(PairingError) as err:
        copy_torch_to_flax(TorchBlock(), FlaxBlock(), auto=False)
    message = str(err.value)
    for expected in ("torch 'encoder' (Linear: weight (4, 3), bias (4,)) has no flax counterpart",
                     "did you mean overrides={'encoder': 'enc'}?",
                     "flax 'enc' (Linear: bias (4,), kernel (3, 4)) has no torch counterpart",
                     "torch tensor 'scale' (4, 3) and flax tensor 'scale' (3, 4)", "TRANSPOSE",
                     "unknown layer: no rule pairs torch 'mix' (Bilinear: bias (2,), weight (2, 4, 4)) with flax "
                     "'mix' (MyMix: b (2,), w (2, 4, 4)); register one with register_rule('Bilinear', 'MyMix', "
                     "Rule(...)) or pass overrides={'mix': ('mix', rule)}"):
        assert expected in message, (expected, message)


@pytest.mark.parametrize("callable_overrides", [False, True])
def test_overrides_and_registered_rules_pair_everything(callable_overrides: bool) -> None:
    table = {"encoder": "enc", "scale": ("scale", rules.TRANSPOSE)}
    overrides = table.get if callable_overrides else table
    register_rule("Bilinear", "MyMix", rules.renaming("bilinear", {"weight": "w", "bias": "b"}))
    try:
        t, f = TorchBlock(), FlaxBlock()
        assert_exact_both_ways_with(t, f, overrides)
        np.testing.assert_array_equal(np.asarray(f.scale[...]), t.scale.detach().numpy().T)
        np.testing.assert_array_equal(np.asarray(f.mix.w[...]), t.mix.weight.detach().numpy())
    finally:
        unregister_rule("Bilinear", "MyMix")


def assert_exact_both_ways_with(t: torch.nn.Module, f: nnx.Module, overrides: object) -> None:
    plan = copy_torch_to_flax(t, f, overrides=overrides)
    tensors = torch_tree(t).tensors
    back = plan.to_torch(flax_index(f).tree.tensors, tensors)
    for name, value in tensors.items():
        np.testing.assert_array_equal(back[name], value)


def test_rule_producing_wrong_shapes_and_bad_overrides_are_clear() -> None:
    untransposed = Rule("untransposed", lambda t, s: {"kernel": t["weight"], "bias": t["bias"]},
                        lambda f, s: {"weight": f["kernel"], "bias": f["bias"]})
    t = torch.nn.Linear(3, 4, dtype=F64)
    f = nnx.Linear(3, 4, param_dtype=jnp.float64, rngs=rngs())
    with pytest.raises(PairingError, match=r"produced \{bias: \(4,\), kernel: \(4, 3\)\}, the flax model holds "
                                           r"\{bias: \(4,\), kernel: \(3, 4\)\}"):
        copy_torch_to_flax(t, f, overrides={"": ("", untransposed)})
    with pytest.raises(PairingError, match="flax path 'nowhere'"):
        copy_torch_to_flax(t, f, overrides={"": "nowhere"})
    with pytest.raises(TypeError, match="overrides must be a dict or a callable"):
        copy_torch_to_flax(t, f, overrides=[("", "")])
    with pytest.raises(TypeError, match=r"must be a shared\.porting\.Rule"):
        register_rule("Linear", "Linear", "linear")


def test_dtype_mismatch_is_a_type_error() -> None:
    t = torch.nn.Linear(3, 4, dtype=F64)
    f = nnx.Linear(3, 4, param_dtype=jnp.float32, rngs=rngs())
    with pytest.raises(TypeError, match="dtype float32, the torch tensor float64"):
        copy_torch_to_flax(t, f)
