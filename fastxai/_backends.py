"""Which backends this machine has, and which one a call uses.

Backends: ``reference`` (plain PyTorch, always there), ``triton`` (kernels in
``fastxai.kernels``; on the CPU only under ``TRITON_INTERPRET=1``) and ``native``
(``fastxai._C``: C++ for the CPU, CUDA when built against a CUDA torch).

Selection, most specific first: the ``backend=`` argument of a call, the innermost
``use_backend(...)`` block, ``set_backend(...)``, then ``"auto"`` — the fastest backend
available for the tensor's device and dtype.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

BACKEND_NAMES = ("reference", "triton", "native")
_CHOICES = ("auto", *BACKEND_NAMES)
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_global_choice = "auto"
_block_choice: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastxai_backend", default=None)


@dataclass(frozen=True)
class BackendInfo:
    """Availability of one backend: on which devices it runs, or why it does not."""

    name: str
    available: bool
    devices: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        if self.available:
            return f"{self.name}: available on {', '.join(self.devices)}"
        return f"{self.name}: unavailable ({self.reason})"


def check_choice(name: object) -> str:
    """``name`` if it is a backend choice (``"auto"`` or a backend's name), else a ValueError;
    a backend not available on this machine is a RuntimeError saying why."""
    if not isinstance(name, str) or name not in _CHOICES:
        raise ValueError(f"backend must be one of {_CHOICES}, got {name!r}")
    if name in ("triton", "native"):
        # said here, with the arguments, not at the first fused op (after model calls)
        info = _triton_info() if name == "triton" else _native_info()
        if not info.available:
            raise RuntimeError(f"backend {name!r} is not available: {info.reason}")
    return name


def _triton_interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@functools.cache
def _triton_installed() -> bool:
    """Looked up once: a per-call find_spec costs more than a small fused op."""
    return importlib.util.find_spec("triton") is not None


def _triton_info() -> BackendInfo:
    if not _triton_installed():
        return BackendInfo("triton", False, (), "Triton is not installed (pip install 'fastxai[triton]')")
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if _triton_interpreter():
        devices.append("cpu")
    if not devices:
        return BackendInfo(
            "triton", False, (), "no GPU, and TRITON_INTERPRET=1 was not set to run Triton on the CPU"
        )
    return BackendInfo("triton", True, tuple(devices), "")


def _native_info() -> BackendInfo:
    from fastxai import _native

    ok, reason = _native.available()
    if not ok:
        return BackendInfo("native", False, (), reason)
    devices = ["cpu"]
    if _native.cuda_available() and torch.cuda.is_available():
        devices.append("cuda")
    elif torch.cuda.is_available():
        reason = "built without CUDA: GPU tensors use another backend"
    return BackendInfo("native", True, tuple(devices), reason)


def backends() -> dict[str, BackendInfo]:
    """Every backend with its availability on this machine (and the reason when absent)."""
    return {
        "reference": BackendInfo("reference", True, ("cpu", "cuda", "any"), ""),
        "triton": _triton_info(),
        "native": _native_info(),
    }


def set_backend(name: str) -> None:
    """Set the process-wide default backend (``"auto"`` restores automatic choice)."""
    global _global_choice
    _global_choice = check_choice(name)


def get_backend() -> str:
    """The backend choice in force here: a ``use_backend`` block's, else the global one."""
    block = _block_choice.get()
    return block if block is not None else _global_choice


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Use ``name`` for every fused op inside the ``with`` block."""
    token = _block_choice.set(check_choice(name))
    try:
        yield
    finally:
        _block_choice.reset(token)


def resolve(choice: str | None, device: torch.device, dtype: torch.dtype) -> str:
    """The concrete backend for a tensor on ``device`` of ``dtype``; raises if the choice cannot run it."""
    name = get_backend() if choice is None else check_choice(choice)
    if name == "auto":
        return _auto(device, dtype)
    if name == "reference":
        return name
    if dtype not in KERNEL_DTYPES:
        raise TypeError(
            f"backend {name!r} supports {[str(d) for d in KERNEL_DTYPES]}, got {dtype}; "
            "use backend='reference' (or 'auto') for this dtype"
        )
    info = _triton_info() if name == "triton" else _native_info()
    if not info.available:
        raise RuntimeError(f"backend {name!r} is not available: {info.reason}")
    if device.type not in info.devices:
        raise RuntimeError(
            f"backend {name!r} cannot run tensors on {device.type} here "
            f"(it runs on {', '.join(info.devices)})"
            + (
                "; set TRITON_INTERPRET=1 before starting Python to run Triton on the CPU"
                if name == "triton"
                else ""
            )
        )
    return name


def _auto(device: torch.device, dtype: torch.dtype) -> str:
    if dtype not in KERNEL_DTYPES:
        return "reference"
    from fastxai import _native

    if device.type == "cpu":
        return "native" if _native.available()[0] else "reference"
    if device.type == "cuda":
        if _native.available()[0] and _native.cuda_available():
            return "native"
        if importlib.util.find_spec("triton") is not None:
            return "triton"
    return "reference"
