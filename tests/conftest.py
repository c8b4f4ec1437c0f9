"""Which (backend, device) pairs this machine can run: every equivalence test is
parametrized over them, so a test here runs on every backend that is available."""

from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # the shared test models in tests/models.py

import fastxai


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def kernel_backends() -> list[tuple[str, str]]:
    """(backend, device) pairs other than the reference that can run here."""
    pairs = []
    for name, info in fastxai.backends().items():
        if name == "reference" or not info.available:
            continue
        pairs.extend((name, device) for device in _devices() if device in info.devices)
    return pairs


def backend_params(include_reference: bool = False) -> list:
    pairs = ([("reference", d) for d in _devices()] if include_reference else []) + kernel_backends()
    return [
        pytest.param(name, device, id=f"{name}-{device}", marks=[pytest.mark.gpu] if device == "cuda" else [])
        for name, device in pairs
    ]


def pytest_report_header(config: pytest.Config) -> list[str]:
    return ["fastxai backends: " + "; ".join(str(info) for info in fastxai.backends().values())]


@pytest.fixture(scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """For modules of tiny tensors: one intra-op thread avoids synchronisation stalls on a busy
    CPU (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
