"""Both backends have one public surface: the same names, importable from the package, and importing
one backend does not import the other framework."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"SSM", "MetaMAML", "Adapter", "AdaptationConfig", "MAMLRL", "SSMPolicy"}


def _exports(package: str, forbidden: str) -> tuple[list[str], bool]:
    """The package's ``__all__`` and whether importing it pulled in ``forbidden``, in a fresh process."""
    code = (f"import json, sys, {package}\n"
            f"for name in {package}.__all__: getattr({package}, name)\n"
            f"print(json.dumps(sorted({package}.__all__))); print({forbidden!r} in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.splitlines()
    return json.loads(out[0]), out[1] == "True"


@pytest.fixture(scope="module")
def exports() -> dict[str, tuple[list[str], bool]]:
    return {"torch_impl": _exports("torch_impl", "jax"), "jax_impl": _exports("jax_impl", "torch")}


def test_backends_export_the_same_names(exports: dict[str, tuple[list[str], bool]]) -> None:
    torch_names, jax_names = exports["torch_impl"][0], exports["jax_impl"][0]
    assert torch_names == jax_names
    assert set(torch_names) == NAMES


def test_importing_one_backend_does_not_import_the_other_framework(
        exports: dict[str, tuple[list[str], bool]]) -> None:
    assert not exports["torch_impl"][1], "import torch_impl imported jax"
    assert not exports["jax_impl"][1], "import jax_impl imported torch"


def test_adaptation_config_is_the_shared_schema() -> None:
    import jax_impl
    import torch_impl
    from shared.adaptation import AdaptationConfig

    assert torch_impl.AdaptationConfig is jax_impl.AdaptationConfig is AdaptationConfig
