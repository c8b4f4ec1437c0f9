"""The cases of the issue-18 GPU benchmark suite (``benchmarks/test_gpu_models.py``): models,
sizes, each method's settings and the floor it is measured against.

Models: a digits-size MLP (64 -> 64 -> 10 on flattened 8x8 digits), torchvision's ResNet-18,
ResNet-50 and ViT-B/16 (random weights, nothing downloaded) at 224x224. Every case runs a batch
of 64 with 32 samples / steps / coalitions / PGD steps per input (``SIZES``), in model batches
of ``chunk_copies`` copies of the batch (256 rows on the large models: what fits the activations
of a ResNet-50 or ViT-B backward comfortably), the same for the floor, fastxai and, where it
has the option, the peer.

The floor is the least a method can pay for its points (``Floor``): for the gradient methods
one forward+backward of the target scores over ``points x batch`` rows (``x`` repeated, built
once, untimed), in the same model batches; for LRP one forward+backward of the batch; for
occlusion and KernelSHAP forward passes without gradients over the rows they score; for PGD
``steps`` forward+backward passes of the batch's cross-entropy. With ``dtype=torch.bfloat16``
the floor runs its rows in bfloat16 under autocast, as fastxai's ``dtype=`` does.

``FASTXAI_BENCH_SMALL=1`` (what ``scripts/gpu_check.py --dry-run`` sets) shrinks every case to
CPU size (batch 4, 32x32 images, 4 points, a two-layer ViT) so the suite runs end to end there.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

# appended, not prepended: tests/models.py must not shadow benchmarks/models.py
sys.path.append(os.path.join(os.path.dirname(__file__), "..", "tests"))
import real_models

SMALL = os.environ.get("FASTXAI_BENCH_SMALL") == "1"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODELS = ("digits_mlp", "resnet18", "resnet50", "vit_b_16")
RESNETS = ("resnet18", "resnet50")
CLASSES = 10  # targets are drawn from the first 10 classes (the large models have 1000)


@dataclass(frozen=True)
class Size:
    batch: int
    points: int  # samples (SmoothGrad, GradientSHAP), steps (IG, PGD), coalitions (KernelSHAP)
    image: int  # side of the square image (0: the MLP's flat 64 features)
    chunk_copies: int  # copies of the batch per model batch
    rounds: int  # timed rounds (after one untimed call)

    @property
    def chunk_rows(self) -> int:
        return self.chunk_copies * self.batch


SIZES = {
    # ResNet-50 b64 forward+backward is ~60 ms on an H200: one 32-point call ~2 s; rounds kept small
    "digits_mlp": Size(batch=64, points=32, image=0, chunk_copies=32, rounds=10),
    "resnet18": Size(batch=64, points=32, image=224, chunk_copies=4, rounds=2),
    "resnet50": Size(batch=64, points=32, image=224, chunk_copies=4, rounds=2),
    "vit_b_16": Size(batch=64, points=32, image=224, chunk_copies=4, rounds=2),
}
if SMALL:
    SIZES = {
        name: Size(batch=4, points=4, image=0 if name == "digits_mlp" else 32, chunk_copies=2, rounds=1)
        for name in MODELS
    }


def digits_mlp() -> nn.Module:
    """Digits-size: 64 features (8x8 flattened) -> 64 -> 10; flat input so every peer's LRP applies."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def build(name: str) -> nn.Module:
    """The model in eval mode on ``DEVICE``, random weights seeded 0."""
    if name == "digits_mlp":
        return digits_mlp().eval().to(DEVICE)
    models = real_models.torchvision().models
    torch.manual_seed(0)
    if name == "vit_b_16" and SMALL:
        model = models.VisionTransformer(
            image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64
        )
    else:
        model = getattr(models, name)(weights=None)
    return model.eval().to(DEVICE)


@functools.cache  # each model built once (all four together: < 1 GB of weights)
def model_case(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(model, inputs [B, *F] in [0, 1], targets [B], GradientSHAP background [8, *F])."""
    size = SIZES[name]
    shape = (64,) if size.image == 0 else (3, size.image, size.image)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(size.batch, *shape, generator=generator)
    target = torch.randint(0, CLASSES, (size.batch,), generator=generator)
    background = torch.rand(8, *shape, generator=generator)
    return build(name), x.to(DEVICE), target.to(DEVICE), background.to(DEVICE)


def blocks(shape: tuple[int, ...]) -> tuple[tuple[int, ...], torch.Tensor]:
    """(occlusion window = stride, KernelSHAP feature mask [1, *F]): 4 features on the MLP
    (16 windows and groups); 32x32 squares over all channels on an image (49 of each at 224)."""
    if len(shape) == 1:
        return (4,), (torch.arange(shape[0]) // 4).unsqueeze(0)
    channels, height, width = shape
    side = max(1, height // 7)
    rows, cols = torch.arange(height) // side, torch.arange(width) // side
    ids = rows.view(-1, 1) * math.ceil(width / side) + cols.view(1, -1)
    return (channels, side, side), ids.expand(shape).unsqueeze(0).contiguous()


METHODS = (
    "integrated_gradients",
    "smoothgrad",
    "gradient_shap",
    "lrp",
    "occlusion",
    "kernel_shap",
    "pgd",
)
PEERS = {
    "integrated_gradients": ("captum",),
    "smoothgrad": ("captum",),
    "gradient_shap": ("captum",),
    "lrp": ("captum", "zennit"),
    "occlusion": ("captum",),
    "kernel_shap": ("captum",),
    "pgd": ("torchattacks",),
}


def settings(method: str, model_name: str, x: torch.Tensor, background: torch.Tensor) -> dict[str, Any]:
    """fastxai's keyword arguments for ``method`` on this case (the peers take the same values)."""
    size = SIZES[model_name]
    window, mask = blocks(tuple(x.shape[1:]))
    return {
        "integrated_gradients": {"n_steps": size.points, "method": "gausslegendre"},
        "smoothgrad": {"n_samples": size.points, "stdevs": 0.15, "seed": 0},
        "gradient_shap": {"baselines": background, "n_samples": size.points, "stdevs": 0.1, "seed": 0},
        "lrp": {"composite": "epsilon_plus_flat"},
        "occlusion": {"sliding_window_shapes": window, "strides": window},
        "kernel_shap": {"feature_mask": mask.to(x.device), "n_samples": size.points, "seed": 0},
        "pgd": {"eps": 8 / 255, "alpha": 2 / 255, "steps": size.points, "seed": 0},
    }[method]


def evaluations(method: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> int:
    """Model evaluations per input (points for the gradient methods, steps for PGD)."""
    if method == "lrp":
        return 1
    if method == "occlusion":
        window = kwargs["sliding_window_shapes"]
        return math.prod(math.ceil((f - w) / w) + 1 for f, w in zip(shape, window, strict=True)) + 1
    if method == "kernel_shap":
        groups = int(kwargs["feature_mask"].max()) + 1
        return min(kwargs["n_samples"], 2**groups - 2) + 2
    return int(kwargs.get("n_steps") or kwargs.get("n_samples") or kwargs["steps"])


def floor_kind(method: str) -> str:
    return {"occlusion": "forward", "kernel_shap": "forward", "pgd": "pgd"}.get(method, "gradient")


@contextlib.contextmanager
def precision(dtype: torch.dtype) -> Iterator[None]:
    """Autocast to ``dtype`` (nothing for float32), as fastxai's ``dtype=`` runs the model."""
    if dtype == torch.float32:
        yield
    else:
        with torch.autocast(DEVICE, dtype=dtype):
            yield


class Floor:
    """The floor of one case (module docstring): ``run()`` does the bare model work.

    kind: ``"gradient"`` (forward+backward of the target scores over ``points`` copies of the
    batch), ``"forward"`` (the same rows, forward only, no gradients) or ``"pgd"`` (``points``
    forward+backward passes of the batch's summed cross-entropy); rows in model batches of at
    most ``chunk_rows``, built once here so the floor times the model and nothing else.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        kind: str,
        points: int,
        chunk_rows: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.model, self.kind, self.points, self.dtype = model, kind, points, dtype
        batch = x.shape[0]
        if kind == "pgd":
            self.sizes = [batch] * points  # one step at a time: each needs the last one's result
        else:  # whole copies of the batch per model batch, as fastxai's chunking takes them
            rows, step = points * batch, max(batch, chunk_rows - chunk_rows % batch)
            self.sizes = [step] * (rows // step) + ([rows % step] if rows % step else [])
        largest = max(self.sizes)
        copies = -(-largest // batch)
        self.inputs = x.repeat(copies, *([1] * (x.dim() - 1)))[:largest].to(dtype)
        self.targets = target.repeat(copies)[:largest]

    def run(self) -> None:
        with precision(self.dtype):
            for rows in self.sizes:
                inputs, target = self.inputs[:rows], self.targets[:rows]
                if self.kind == "forward":
                    with torch.no_grad():
                        self.model(inputs).gather(1, target.view(-1, 1))
                    continue
                leaf = inputs.detach().requires_grad_(True)
                if self.kind == "pgd":
                    loss = nn.functional.cross_entropy(self.model(leaf).float(), target, reduction="sum")
                else:
                    loss = self.model(leaf).gather(1, target.view(-1, 1)).sum()
                torch.autograd.grad(loss, leaf)
