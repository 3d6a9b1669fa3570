"""Safetensors weights: exact round trips within and across backends, atomic writes, clear errors."""

import json

import numpy as np
import pytest
from flax import nnx

from jax_impl.core.params import from_canonical, to_canonical
from shared.layout import check_layout, flax_to_torch, torch_to_flax
from shared.weights import load_weights, save_weights
from tests.backends import BACKENDS, JAX, TORCH


def params_of(backend, model):
    if backend is TORCH:
        return {k: v.detach().numpy() for k, v in model.state_dict().items()}
    return to_canonical(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("src", BACKENDS, ids=lambda b: b.name)
@pytest.mark.parametrize("dst", BACKENDS, ids=lambda b: b.name)
def test_round_trip_is_exact(tmp_path, src, dst, dtype):
    model = src.ssm(dtype=dtype)
    model.save(tmp_path / "m.safetensors")
    loaded = dst.SSM.load(tmp_path / "m.safetensors")
    original, back = params_of(src, model), params_of(dst, loaded)
    assert original.keys() == back.keys()
    for name in original:
        assert back[name].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(back[name], original[name])
    assert loaded.config == model.config


def test_layout_conversion_round_trip_is_exact():
    rng = np.random.default_rng(0)
    flat = {"a.weight": rng.normal(size=(3, 4)), "a.bias": rng.normal(size=3), "nu_log": rng.normal(size=5)}
    nested = torch_to_flax(flat)
    np.testing.assert_array_equal(nested["a"]["kernel"], flat["a.weight"].T)
    back = flax_to_torch(nested)
    assert back.keys() == flat.keys()
    for k in flat:
        np.testing.assert_array_equal(back[k], flat[k])


def test_missing_file(tmp_path):
    for backend in BACKENDS:
        with pytest.raises(FileNotFoundError, match="does not exist"):
            backend.SSM.load(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_truncated_file(tmp_path, backend):
    path = tmp_path / "m.safetensors"
    backend.ssm().save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        backend.SSM.load(path)


def test_foreign_safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    save_file({"x": np.zeros(3)}, tmp_path / "f.safetensors")
    with pytest.raises(ValueError, match="not an ssm-metarl weight file"):
        TORCH.SSM.load(tmp_path / "f.safetensors")


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_mismatched_file_lists_every_problem(tmp_path, backend):
    tensors = params_of(TORCH, TORCH.ssm())
    tensors.pop("B.bias")
    tensors["extra.weight"] = np.zeros((2, 2))
    tensors["W1.weight"] = np.zeros((9, 9))
    save_weights(tmp_path / "bad.safetensors", tensors, TORCH.ssm().config.to_dict())
    with pytest.raises(ValueError) as err:
        backend.SSM.load(tmp_path / "bad.safetensors")
    message = str(err.value)
    assert "missing keys ['B.bias']" in message
    assert "unexpected keys ['extra.weight']" in message
    assert "W1.weight: expected (5, 4), got (9, 9)" in message


def test_unknown_config_key_in_file(tmp_path):
    model = TORCH.ssm()
    tensors = params_of(TORCH, model)
    save_weights(tmp_path / "m.safetensors", tensors, {**model.config.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match=r"unknown SSMConfig field\(s\) \['colour'\]"):
        TORCH.SSM.load(tmp_path / "m.safetensors")


def test_jax_from_canonical_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="missing keys"):
        from_canonical(JAX.ssm(), {"nu_log": np.zeros(4)})


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    model = TORCH.ssm()
    model.save(path)
    original = path.read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("shared.weights.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        TORCH.ssm().save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_config_is_stored_in_metadata(tmp_path):
    model = TORCH.ssm()
    model.save(tmp_path / "m.safetensors")
    tensors, config = load_weights(tmp_path / "m.safetensors")
    assert config == model.config.to_dict()
    check_layout(tensors, {k: v.shape for k, v in params_of(TORCH, model).items()})
    json.dumps(config)


def test_scalars_and_non_contiguous_arrays_keep_their_shape(tmp_path):
    """0-d arrays (an optimizer's step count) stay 0-d; np.ascontiguousarray would make them (1,)."""
    tensors = {"count": np.asarray(np.int32(7)), "w": np.arange(6.0).reshape(2, 3).T}
    save_weights(tmp_path / "w.safetensors", tensors, {})
    loaded, _ = load_weights(tmp_path / "w.safetensors")
    assert loaded["count"].shape == () and int(loaded["count"]) == 7
    np.testing.assert_array_equal(loaded["w"], tensors["w"])
