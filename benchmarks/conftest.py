from __future__ import annotations

import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

import fastxai


def implementations(graphed: bool = False) -> list[str]:
    """floor, fastxai on each backend that can be timed here, and the peers that are installed.

    Interpreted Triton on a CPU is a correctness tool, not a speed: it is timed on GPUs only.
    ``graphed``: on a GPU also ``fastxai-<backend>-graphed`` (``cuda_graph=True``) for each.
    """
    names = ["floor"]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, info in fastxai.backends().items():
        if info.available and device in info.devices and not (name == "triton" and device == "cpu"):
            names.append(f"fastxai-{name}")
            if graphed and device == "cuda":
                names.append(f"fastxai-{name}-graphed")
    try:
        import captum  # noqa: F401

        names.append("captum")
    except ImportError:
        pass
    return names


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    machine_info["torch"] = torch.__version__
    machine_info["threads"] = torch.get_num_threads()
    machine_info["fastxai_backends"] = {name: str(info) for name, info in fastxai.backends().items()}
    if torch.cuda.is_available():
        machine_info["gpu"] = torch.cuda.get_device_name()
        machine_info["cuda"] = torch.version.cuda
