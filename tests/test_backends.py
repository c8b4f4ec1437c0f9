"""Backend discovery and selection."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

import fastxai as fx
from fastxai import _backends as backends_module


def test_every_backend_is_reported_with_a_reason_when_absent() -> None:
    info = fx.backends()
    assert set(info) == {"reference", "triton", "native"}
    assert info["reference"].available
    for entry in info.values():
        assert entry.available or entry.reason, entry
        assert str(entry).startswith(entry.name)


def test_native_is_built_when_required() -> None:
    """CI sets FASTXAI_REQUIRE_NATIVE=1: there, a missing extension is a failure, not a skip."""
    if os.environ.get("FASTXAI_REQUIRE_NATIVE") != "1":
        pytest.skip("FASTXAI_REQUIRE_NATIVE is not set")
    assert fx.backends()["native"].available, fx.backends()["native"].reason


def test_triton_runs_on_the_cpu_under_the_interpreter() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("TRITON_INTERPRET is not set")
    pytest.importorskip("triton")
    assert "cpu" in fx.backends()["triton"].devices


def test_selection_precedence() -> None:
    cpu = torch.device("cpu")
    assert fx.get_backend() == "auto"
    fx.set_backend("reference")
    try:
        assert fx.get_backend() == "reference"
        with fx.use_backend("auto"):
            assert fx.get_backend() == "auto"
            with fx.use_backend("reference"):
                assert backends_module.resolve(None, cpu, torch.float32) == "reference"
            assert fx.get_backend() == "auto"
        assert backends_module.resolve("reference", cpu, torch.float32) == "reference"
    finally:
        fx.set_backend("auto")
    assert fx.get_backend() == "auto"


def test_use_backend_is_restored_after_an_exception() -> None:
    with pytest.raises(KeyError), fx.use_backend("reference"):
        raise KeyError
    assert fx.get_backend() == "auto"


def test_auto_picks_an_available_backend_and_float64_goes_to_the_reference() -> None:
    cpu = torch.device("cpu")
    chosen = backends_module.resolve("auto", cpu, torch.float32)
    assert fx.backends()[chosen].available and "cpu" in fx.backends()[chosen].devices
    if fx.backends()["native"].available:
        assert chosen == "native"
    assert backends_module.resolve("auto", cpu, torch.float64) == "reference"


def test_unknown_or_unavailable_backends_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="backend must be one of"):
        fx.set_backend("fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        fx.use_backend("cuda").__enter__()
    for name, info in fx.backends().items():
        if not info.available:
            with pytest.raises(RuntimeError, match=f"backend '{name}' is not available"):
                fx.ops.path_points(torch.ones(1, 2), torch.zeros(1, 2), torch.ones(1), backend=name)


def test_the_package_works_and_says_why_without_the_extension() -> None:
    """With ``fastxai._C`` unimportable, ``native`` is reported missing with the build command,
    ``auto`` falls back to the reference, and asking for ``native`` is a clear error."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["fastxai._C"] = None  # makes `import fastxai._C` raise ImportError
        import torch, fastxai as fx
        info = fx.backends()["native"]
        assert not info.available and "pip install --no-build-isolation -e ." in info.reason, info
        x = torch.randn(2, 5)
        points = fx.ops.path_points(x, torch.zeros_like(x), torch.tensor([0.5]))
        torch.testing.assert_close(points[0], 0.5 * x)
        model = torch.nn.Linear(5, 3)
        fx.smoothgrad(model, x, target=1, n_samples=2, seed=0)
        try:
            fx.ops.path_points(x, torch.zeros_like(x), torch.tensor([0.5]), backend="native")
        except RuntimeError as error:
            assert "not available" in str(error)
        else:
            raise AssertionError("native ran without the extension")
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
