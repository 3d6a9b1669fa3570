"""Porting kit, pairing real ports: renamed paths, tied weights, override tables and a user's own copy
functions, each exact both ways and each with a readable plan or error."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from shared.porting import CustomCopy, PairingError, glob_table, regex_table
from ssm_metarl.porting import copy_flax_to_torch, copy_torch_to_flax
from ssm_metarl.porting.trees import flax_index, torch_tree
from tests.test_porting_rules import assert_exact_both_ways

F64 = torch.float64
D, HEADS, HEAD_DIM, VOCAB, FF = 4, 2, 2, 7, 6


def rngs() -> nnx.Rngs:
    return nnx.Rngs(0)


# --------------------------------------------------------------------------- a Hugging Face-style decoder
class LlamaRMSNorm(torch.nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(dim, dtype=F64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class TorchAttention(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q_proj = torch.nn.Linear(D, HEADS * HEAD_DIM, bias=False, dtype=F64)
        self.k_proj = torch.nn.Linear(D, HEADS * HEAD_DIM, bias=False, dtype=F64)
        self.v_proj = torch.nn.Linear(D, HEADS * HEAD_DIM, bias=False, dtype=F64)
        self.o_proj = torch.nn.Linear(HEADS * HEAD_DIM, D, bias=False, dtype=F64)


class TorchMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = torch.nn.Linear(D, FF, bias=False, dtype=F64)
        self.up_proj = torch.nn.Linear(D, FF, bias=False, dtype=F64)
        self.down_proj = torch.nn.Linear(FF, D, bias=False, dtype=F64)


class TorchLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(D)
        self.self_attn = TorchAttention()
        self.post_attention_layernorm = LlamaRMSNorm(D)
        self.mlp = TorchMLP()


class TorchInner(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(VOCAB, D, dtype=F64)
        self.layers = torch.nn.ModuleList([TorchLayer(), TorchLayer()])
        self.norm = LlamaRMSNorm(D)


class TorchDecoder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = TorchInner()
        self.lm_head = torch.nn.Linear(D, VOCAB, bias=False, dtype=F64)
        self.lm_head.weight = self.model.embed_tokens.weight  # tied


class FlaxAttention(nnx.Module):
    def __init__(self) -> None:
        self.q = nnx.Einsum("BTD,DNH->BTNH", (D, HEADS, HEAD_DIM), param_dtype=jnp.float64, rngs=rngs())
        self.k = nnx.Einsum("BTD,NDH->BTNH", (HEADS, D, HEAD_DIM), param_dtype=jnp.float64, rngs=rngs())
        self.v = nnx.LinearGeneral(D, (HEADS, HEAD_DIM), use_bias=False, param_dtype=jnp.float64, rngs=rngs())
        self.o = nnx.Einsum("BTNH,NHD->BTD", (HEADS, HEAD_DIM, D), param_dtype=jnp.float64, rngs=rngs())


class FlaxMLP(nnx.Module):
    def __init__(self) -> None:
        self.gate = nnx.Linear(D, FF, use_bias=False, param_dtype=jnp.float64, rngs=rngs())
        self.up = nnx.Linear(D, FF, use_bias=False, param_dtype=jnp.float64, rngs=rngs())
        self.down = nnx.Linear(FF, D, use_bias=False, param_dtype=jnp.float64, rngs=rngs())


class FlaxBlock(nnx.Module):
    def __init__(self) -> None:
        self.pre_attention_norm = nnx.RMSNorm(D, param_dtype=jnp.float64, rngs=rngs())
        self.attn = FlaxAttention()
        self.pre_ffw_norm = nnx.RMSNorm(D, param_dtype=jnp.float64, rngs=rngs())
        self.mlp = FlaxMLP()


class FlaxDecoder(nnx.Module):
    def __init__(self) -> None:
        self.embedder = nnx.Embed(VOCAB, D, param_dtype=jnp.float64, rngs=rngs())
        self.layers = nnx.List([FlaxBlock(), FlaxBlock()])
        self.final_norm = nnx.RMSNorm(D, param_dtype=jnp.float64, rngs=rngs())


def test_renamed_decoder_pairs_automatically_and_prints_its_plan() -> None:
    t, f = TorchDecoder(), FlaxDecoder()
    with torch.no_grad():
        for p in t.parameters():
            p.normal_()
    plan = copy_torch_to_flax(t, f)
    text = plan.describe()
    for line in ("model.embed_tokens -> embedder (Embedding -> Embed)",
                 "model.layers.1.self_attn.q_proj -> layers.1.attn.q (Linear -> Einsum)  rule linear<->einsum "
                 "BTD,DNH->BTNH  [renamed path",
                 "model.layers.0.post_attention_layernorm -> layers.0.pre_ffw_norm (LlamaRMSNorm -> RMSNorm)",
                 "model.norm -> final_norm", "model.layers.0.mlp.down_proj -> layers.0.mlp.down",
                 "lm_head.weight is tied to model.embed_tokens.weight"):
        assert line in text, (line, text)
    assert_exact_both_ways(t, f)
    assert t.lm_head.weight is t.model.embed_tokens.weight  # the tie survives flax -> torch
    # the head-shaped kernels hold torch's rows per head
    w = t.model.layers[0].self_attn.k_proj.weight.detach().numpy()  # (N*H, D)
    np.testing.assert_array_equal(np.asarray(f.layers[0].attn.k.kernel[...])[1, :, 0], w[HEAD_DIM])


def test_tied_head_without_a_tie_in_the_port_is_named() -> None:
    class Untied(nnx.Module):
        def __init__(self) -> None:
            self.embed_tokens = nnx.Embed(VOCAB, D, param_dtype=jnp.float64, rngs=rngs())
            self.lm_head = nnx.Linear(D, VOCAB, use_bias=False, param_dtype=jnp.float64, rngs=rngs())

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed_tokens = torch.nn.Embedding(VOCAB, D, dtype=F64)
            self.lm_head = torch.nn.Linear(D, VOCAB, bias=False, dtype=F64)
            self.lm_head.weight = self.embed_tokens.weight

    with pytest.raises(PairingError, match=r"the torch model ties \['lm_head.weight -> embed_tokens.weight'\]: "
                                           r"tie it in the port too"):
        copy_torch_to_flax(Tied(), Untied())


def test_same_shaped_siblings_pair_in_definition_order_and_are_flagged() -> None:
    class TorchTwo(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = torch.nn.Linear(3, 3, dtype=F64)
            self.decoder = torch.nn.Linear(3, 3, dtype=F64)
            self.readout = torch.nn.Linear(3, 2, dtype=F64)

    class FlaxTwo(nnx.Module):
        def __init__(self) -> None:  # names unrelated to torch's; attribute order = definition order
            self.zeta = nnx.Linear(3, 3, param_dtype=jnp.float64, rngs=rngs())
            self.alpha = nnx.Linear(3, 3, param_dtype=jnp.float64, rngs=rngs())
            self.out = nnx.Linear(3, 2, param_dtype=jnp.float64, rngs=rngs())

    t, f = TorchTwo(), FlaxTwo()
    plan = copy_torch_to_flax(t, f)
    text = plan.describe()
    assert "encoder -> zeta (Linear -> Linear)  rule linear  [by shape and order within its module: check it]" \
        in text, text
    assert "decoder -> alpha" in text and "readout -> out" in text and "[only fit by shape" in text
    np.testing.assert_array_equal(np.asarray(f.alpha.kernel[...]), t.decoder.weight.detach().numpy().T)
    with pytest.raises(PairingError, match=r"did you mean|it fits flax"):
        copy_torch_to_flax(t, f, auto=False)


# --------------------------------------------------------------------------- override tables
@pytest.mark.parametrize("table", ["regex", "glob"])
def test_override_tables_cover_families_of_paths(table: str) -> None:
    t, f = TorchDecoder(), FlaxDecoder()
    if table == "regex":
        overrides = regex_table([
            (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj", r"layers.\1.attn.\2"),
            (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj", r"layers.\1.mlp.\2", "linear"),
            (r"model\.layers\.(\d+)\.input_layernorm", r"layers.\1.pre_attention_norm", "norm_by_structure"),
            (r"model\.layers\.(\d+)\.post_attention_layernorm", r"layers.\1.pre_ffw_norm"),
            (r"model\.embed_tokens", "embedder"), (r"model\.norm", "final_norm"),
        ])
    else:
        overrides = glob_table([
            ("model.layers.*.self_attn.*_proj", "layers.*.attn.*"),
            ("model.layers.*.mlp.*_proj", "layers.*.mlp.*", "linear"),
            ("model.layers.*.input_layernorm", "layers.*.pre_attention_norm"),
            ("model.layers.*.post_attention_layernorm", "layers.*.pre_ffw_norm"),
            ("model.embed_tokens", "embedder"), ("model.norm", "final_norm"),
        ])
    plan = copy_torch_to_flax(t, f, overrides=overrides, auto=False)
    assert "model.layers.1.self_attn.o_proj -> layers.1.attn.o" in plan.describe()
    assert all(pair.how == "override" for pair in plan.pairs)
    back = plan.to_torch(flax_index(f).tree.tensors)
    for name, value in torch_tree(t).tensors.items():
        np.testing.assert_array_equal(back[name], value)


def test_override_table_errors_name_the_row() -> None:
    with pytest.raises(ValueError, match=r"unknown rule name 'lineer'.*known"):
        regex_table([("a", "b", "lineer")])
    with pytest.raises(ValueError, match="not a regular expression"):
        regex_table([("(", "b")])


# --------------------------------------------------------------------------- a user's own copy functions
class TorchFC(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, 2, dtype=F64)


class FlaxDense(nnx.Module):
    def __init__(self) -> None:
        self.dense = nnx.Linear(3, 2, param_dtype=jnp.float64, rngs=rngs())


def _to_flax(t: dict) -> dict:
    return {"dense.kernel": t["fc.weight"].T, "dense.bias": t["fc.bias"]}


def test_custom_copy_is_checked_by_the_round_trip() -> None:
    t, f = TorchFC(), FlaxDense()
    good = CustomCopy(_to_flax, lambda g: {"fc.weight": g["dense.kernel"].T, "fc.bias": g["dense.bias"]})
    plan = copy_torch_to_flax(t, f, overrides=good)
    assert "round trip torch -> flax -> torch checked exact" in plan.describe()
    np.testing.assert_array_equal(np.asarray(f.dense.kernel[...]), t.fc.weight.detach().numpy().T)
    with torch.no_grad():
        t.fc.weight.zero_()
    copy_flax_to_torch(f, t, overrides=good)
    np.testing.assert_array_equal(t.fc.weight.detach().numpy(), np.asarray(f.dense.kernel[...]).T)
    lossy = CustomCopy(_to_flax, lambda g: {"fc.weight": g["dense.kernel"].T * 1.5, "fc.bias": g["dense.bias"]})
    with pytest.raises(PairingError, match=r"round trip torch -> flax -> torch changes 'fc.weight'"):
        copy_torch_to_flax(t, f, overrides=lossy)
    partial = CustomCopy(lambda t: {"dense.kernel": t["fc.weight"].T})
    with pytest.raises(PairingError, match=r"leaves flax \['dense.bias'\] unset"):
        copy_torch_to_flax(t, f, overrides=partial)
    one_way = copy_torch_to_flax(t, f, overrides=CustomCopy(_to_flax))
    assert "not checked" in one_way.describe()
    with pytest.raises(PairingError, match="has no to_torch"):
        copy_flax_to_torch(f, t, overrides=CustomCopy(_to_flax))


# --------------------------------------------------------------------------- ties through the parity rows
class TorchTiedLM(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, D, dtype=F64)
        self.mix = torch.nn.Linear(D, D, dtype=F64)
        self.head = torch.nn.Linear(D, VOCAB, bias=False, dtype=F64)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))))


class FlaxTiedLM(nnx.Module):
    def __init__(self) -> None:
        self.embed = nnx.Embed(VOCAB, D, param_dtype=jnp.float64, rngs=rngs())
        self.mix = nnx.Linear(D, D, param_dtype=jnp.float64, rngs=rngs())

    def __call__(self, ids: jnp.ndarray) -> jnp.ndarray:
        return self.embed.attend(jnp.tanh(self.mix(self.embed(ids))))


def test_tied_embedding_and_head_pass_the_weight_forward_and_gradient_rows() -> None:
    from ssm_metarl.porting import compare_models

    ids = np.random.default_rng(0).integers(0, VOCAB, size=(3, 5))
    report = compare_models(TorchTiedLM(), FlaxTiedLM(), ids, rows=("weights", "forward", "gradients"))
    assert report.passed, report.table()


# --------------------------------------------------------------------------- scale
def decoder_trees(layers: int, dim: int = 16, heads: int = 2, ff: int = 32, vocab: int = 50) -> tuple:
    """Two numpy-only ``ModelTree``s: a Hugging Face-style torch decoder and a renamed NNX port."""
    from shared.porting import ModelTree

    head_dim = dim // heads
    torch_modules, torch_tensors = {"": ("Decoder",), "model.embed_tokens": ("Embedding",)}, {}
    flax_modules, flax_tensors = {"": ("Decoder",), "embedder": ("Embed",)}, {}
    attributes = {}
    torch_tensors["model.embed_tokens.weight"] = np.zeros((vocab, dim))
    flax_tensors["embedder.embedding"] = np.zeros((vocab, dim))
    for layer in range(layers):
        t, f = f"model.layers.{layer}", f"layers.{layer}"
        shapes = {"q": (dim, dim), "k": (dim, dim), "v": (dim, dim), "o": (dim, dim)}
        for name, shape in shapes.items():
            torch_modules[f"{t}.self_attn.{name}_proj"] = ("Linear",)
            torch_tensors[f"{t}.self_attn.{name}_proj.weight"] = np.zeros(shape)
            flax_modules[f"{f}.attn.{name}"] = ("Einsum",)
            kernel = (heads, head_dim, dim) if name == "o" else (dim, heads, head_dim)
            flax_tensors[f"{f}.attn.{name}.kernel"] = np.zeros(kernel)
            attributes[f"{f}.attn.{name}"] = {"einsum_str": "BTNH,NHD->BTD" if name == "o" else "BTD,DNH->BTNH"}
        for name, (out, inp) in {"gate": (ff, dim), "up": (ff, dim), "down": (dim, ff)}.items():
            torch_modules[f"{t}.mlp.{name}_proj"] = ("Linear",)
            torch_tensors[f"{t}.mlp.{name}_proj.weight"] = np.zeros((out, inp))
            flax_modules[f"{f}.mlp.{name}"] = ("Linear",)
            flax_tensors[f"{f}.mlp.{name}.kernel"] = np.zeros((inp, out))
        for torch_name, flax_name in (("input_layernorm", "pre_attention_norm"),
                                      ("post_attention_layernorm", "pre_ffw_norm")):
            torch_modules[f"{t}.{torch_name}"] = ("LlamaRMSNorm",)
            torch_tensors[f"{t}.{torch_name}.weight"] = np.zeros(dim)
            flax_modules[f"{f}.{flax_name}"] = ("RMSNorm",)
            flax_tensors[f"{f}.{flax_name}.scale"] = np.zeros(dim)
    return ModelTree(torch_modules, torch_tensors), ModelTree(flax_modules, flax_tensors, attributes)


def test_a_32_layer_decoder_pairs_every_layer_by_its_renamed_path() -> None:
    from shared.porting import plan_pairing

    torch_side, flax_side = decoder_trees(32)
    plan = plan_pairing(torch_side, flax_side)
    assert len(plan.pairs) == 1 + 32 * 9
    assert all(pair.how == "alias" for pair in plan.pairs)
    pairs = {pair.torch.path: pair.flax.path for pair in plan.pairs}
    assert pairs["model.layers.31.self_attn.o_proj"] == "layers.31.attn.o"
    assert pairs["model.layers.17.post_attention_layernorm"] == "layers.17.pre_ffw_norm"
