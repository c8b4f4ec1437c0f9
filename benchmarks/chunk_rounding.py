"""How far results move across ``chunk_size`` on a real model, and why (issue 21, the README's
chunking sentence): a random-weight torchvision ResNet-18, 4 inputs of 3x64x64, target classes
1-4. For each method, the largest change between ``chunk_size`` 1 or 3 and 64, relative to the
largest attribution; and how repeatable one 3x32x32 row's input gradient is at a fixed batch
(the CPU convolution's backward with several threads need not be).

    PYTHONPATH=. .venv/bin/python benchmarks/chunk_rounding.py
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests"))  # real_models

import real_models

import fastxai as fx


def repeatability(model: torch.nn.Module) -> None:
    """How often one row's input gradient changes when computed again (same batch, same bits in)."""
    row = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def gradient() -> torch.Tensor:
        leaf = row.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(leaf)[0, 1], leaf)
        return grad

    threads_before = torch.get_num_threads()
    for threads in (threads_before, 1):
        if threads != torch.get_num_threads():
            torch.set_num_threads(threads)
        first = gradient()
        changes = [float((gradient() - first).abs().max()) for _ in range(30)]
        differ, largest = sum(change > 0 for change in changes), max(changes)
        print(f"{threads} thread(s): {differ}/30 repeats of one row's gradient differ, up to {largest:.1e}")
    torch.set_num_threads(threads_before)


def main() -> None:
    torch.manual_seed(0)
    model = real_models.torchvision().models.resnet18(num_classes=10).eval()
    x = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([1, 2, 3, 4])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    repeatability(model)
    methods = {
        "occlusion (8x8 windows)": lambda c: fx.occlusion(
            model, x, target, sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), chunk_size=c
        ),
        "integrated_gradients (8 steps)": lambda c: fx.integrated_gradients(
            model, x, target=target, n_steps=8, chunk_size=c
        ),
        "saliency": lambda c: fx.saliency(model, x, target, chunk_size=c),
    }
    with torch.no_grad():
        print(f"largest |logit|: {float(model(x).abs().max()):.3f}")
    for name, method in methods.items():
        reference = method(64)
        scale = float(reference.abs().max())
        worst = max(float((method(chunk) - reference).abs().max()) for chunk in (1, 3))
        print(f"{name}: largest |a| {scale:.3g}, moves by {worst / scale:.2e} of it across chunk_size")


if __name__ == "__main__":
    main()
