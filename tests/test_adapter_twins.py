"""The two Adapters are twins at their boundary: the same bad input raises the same exception type with
the same message in both backends (only the frameworks' own names differ), and the EMA teacher means
the same thing in both (parameters and running statistics averaged)."""

from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from jax_impl.adaptation import Adapter as JaxAdapter
from shared.adaptation import AdaptationConfig
from tests.backends import BACKENDS, JAX, TORCH, Backend
from tests.test_adapter_reliability import bn_adapter, entropy_fn, features
from torch_impl.adaptation import Adapter as TorchAdapter

# each backend's own words, replaced by placeholders before the messages are compared
FRAMEWORK_WORDS = {
    "torch": {"torch.nn.Module": "<module>", "torch.Tensor": "<array>", "jax.Array": "<other array>"},
    "jax": {"flax.nnx.Module": "<module>", "jax.Array": "<array>", "torch.Tensor": "<other array>"},
}


def neutral(backend: Backend, message: str) -> str:
    for word, placeholder in FRAMEWORK_WORDS[backend.name].items():
        message = message.replace(word, placeholder)
    return message


def adapter_class(backend: Backend) -> type:
    return TorchAdapter if backend is TORCH else JaxAdapter


def ssm_adapter(backend: Backend, **config: Any) -> Any:
    torch.manual_seed(0)
    return adapter_class(backend)(backend.ssm(), AdaptationConfig(**config))


def ssm_batch(backend: Backend) -> tuple:
    rng = np.random.default_rng(0)
    return backend.array(rng.normal(size=(3, 5, 3))), backend.array(rng.normal(size=(3, 5, 2)))


def other_framework_batch(backend: Backend) -> tuple:
    other = JAX if backend is TORCH else TORCH
    return ssm_batch(backend)[0], ssm_batch(other)[1]


def int32(backend: Backend, x: Any) -> Any:
    return x.to(torch.int32) if backend is TORCH else x.astype(jnp.int32)


def mse(model: Any, b: tuple) -> Any:
    return ((model(b[0]) - b[1]) ** 2).mean()


# label -> a call that must raise, given a backend
BAD_INPUTS: dict[str, Callable[[Backend], Any]] = {
    "model is not a module": lambda be: adapter_class(be)({"W1.weight": 1.0}, AdaptationConfig()),
    "config is a dict": lambda be: adapter_class(be)(be.ssm(), {"lr": 0.1}),
    "allow pattern matches nothing": lambda be: ssm_adapter(be, allow="C.*"),
    "allow and deny leave nothing": lambda be: ssm_adapter(be, allow="B.*", deny="B*"),
    "loss_fn is not callable": lambda be: ssm_adapter(be).update_step("mse", ssm_batch(be)),
    "batch holds the other framework's array": lambda be: ssm_adapter(be).update_step(mse, other_framework_batch(be)),
    "loss is a Python float": lambda be: ssm_adapter(be).update_step(lambda m, b: 1.0, ssm_batch(be)),
    "loss is not a scalar": lambda be: ssm_adapter(be).update_step(
        lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(-1), ssm_batch(be)),
    "loss is an integer array": lambda be: ssm_adapter(be).update_step(
        lambda m, b: int32(be, (m(b[0]) > 0).sum()), ssm_batch(be)),
    "entropy_weight without logits": lambda be: ssm_adapter(be, entropy_weight=0.1).update_step(mse, ssm_batch(be)),
    "logits are integers": lambda be: ssm_adapter(be, entropy_weight=0.1).update_step(
        lambda m, b: (mse(m, b), int32(be, m(b[0]))), ssm_batch(be)),
    "loss does not depend on the selection": lambda be: ssm_adapter(be, allow="B.weight").update_step(
        lambda m, b: (b[1] ** 2).mean(), ssm_batch(be)),
}


def raised(backend: Backend, call: Callable[[Backend], Any]) -> tuple[type, str]:
    with pytest.raises(Exception) as info:
        call(backend)
    return info.type, neutral(backend, str(info.value))


@pytest.mark.parametrize("label", sorted(BAD_INPUTS))
def test_the_same_bad_input_raises_the_same_error_in_both_backends(label):
    torch_type, torch_message = raised(TORCH, BAD_INPUTS[label])
    jax_type, jax_message = raised(JAX, BAD_INPUTS[label])
    assert torch_type in (TypeError, ValueError), (torch_type, torch_message)
    assert (jax_type, jax_message) == (torch_type, torch_message)


def test_the_table_names_what_was_expected():
    """Spot checks that the shared wording says what was expected and what came."""
    assert raised(TORCH, BAD_INPUTS["batch holds the other framework's array"]) == (
        TypeError, "expected a <array> or numpy array, got <other array> (batch[1])")
    assert raised(JAX, BAD_INPUTS["loss is an integer array"]) == (
        TypeError, "loss_fn must return a floating 0-d <array> (or (loss, logits)), got a <array> of dtype int32 "
                   "and shape ()")
    assert raised(TORCH, BAD_INPUTS["loss is not a scalar"]) == (
        ValueError, "loss_fn must return a scalar (0-d) loss, got shape (3, 5)")


# ---------------------------------------------------------------------------- one meaning for the EMA teacher
def module_state(backend: Backend, module: Any) -> dict[str, np.ndarray]:
    """Every parameter and every other variable, as numpy, under the backend's own names."""
    if backend is TORCH:
        return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}
    from flax import nnx

    return {".".join(map(str, path)): np.array(v[...]) for path, v in nnx.to_flat_state(nnx.state(module))}


@pytest.mark.parametrize("backend", BACKENDS, ids=lambda b: b.name)
def test_ema_teacher_averages_parameters_and_running_statistics(backend):
    adapter = bn_adapter(backend, AdaptationConfig(optimizer="adam", lr=0.05, allow="bn.*", ema_decay=0.75))
    source = module_state(backend, adapter.model)
    assert all(np.array_equal(v, source[k]) for k, v in module_state(backend, adapter.teacher_model).items())
    adapter.update_step(entropy_fn(backend), features(backend))
    current = module_state(backend, adapter.model)
    teacher = module_state(backend, adapter.teacher_model)
    assert teacher.keys() == source.keys()
    statistics = [k for k in source if "mean" in k or "var" in k]
    assert len(statistics) == 2 and all(not np.array_equal(source[k], current[k]) for k in statistics)
    for name in source:
        if np.issubdtype(source[name].dtype, np.floating):
            np.testing.assert_allclose(teacher[name], 0.75 * source[name] + 0.25 * current[name], rtol=1e-14,
                                       atol=1e-15, err_msg=name)
        else:  # counters follow the model
            np.testing.assert_array_equal(teacher[name], current[name], err_msg=name)
    if backend is TORCH:  # ``teacher``, the state, holds what ``teacher_model`` holds
        held = {k: v.numpy() for k, v in adapter.teacher.items()}
    else:
        from flax import nnx

        held = {".".join(map(str, path)): np.array(v[...]) for path, v in nnx.to_flat_state(adapter.teacher)}
    assert held.keys() == teacher.keys() and all(np.array_equal(held[k], teacher[k]) for k in teacher)
    adapter.reset()
    assert all(np.array_equal(v, source[k]) for k, v in module_state(backend, adapter.teacher_model).items())
