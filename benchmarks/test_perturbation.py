"""Perturbation attributions: floor vs fastxai per backend vs Captum with its defaults.

The floor is what any perturbation method pays: one forward pass (no gradients) over all the
perturbed inputs the method scores, in the very batches (of fastxai's automatic chunk size) one
fastxai call scores, recorded beforehand. Captum runs
with its defaults: ``perturbations_per_eval=1`` (one copy of the batch per forward pass) for
Occlusion and FeatureAblation, KernelShap / Lime / ShapleyValueSampling with the same number of
samples as fastxai (Captum fits one example at a time).

On a GPU each backend also runs graphed (``fastxai-<backend>-graphed``: ``cuda_graph=True``,
``GRAPH_COPIES`` copies of the batch per model batch, one CUDA graph replayed per batch).

Cases: the small ResNet on 3x32x32 (benchmarks/models.py, width 16), and digits-size models on
1x8x8 (the CNN of fastxai.digits and an MLP 64-64-10).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from conftest import implementations
from models import PairedFloor, digits_cnn_model, digits_mlp, small_resnet
from torch import nn

from fastxai.attribution.lime import lime
from fastxai.attribution.perturbation import feature_ablation, occlusion
from fastxai.attribution.shapley import kernel_shap, shapley_value_sampling

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    # name: (model factory, input shape of one sample, batch)
    "resnet": (small_resnet, (3, 32, 32), 8),
    "digits-cnn": (digits_cnn_model, (1, 8, 8), 32),
    "digits-mlp": (digits_mlp, (1, 8, 8), 32),
}
ROUNDS = {"resnet": 5, "digits-cnn": 10, "digits-mlp": 20}
CAPTUM_ROUNDS = 1
"""Captum's per-copy and per-example loops are slow: one timed round is enough to see them."""
GRAPH_COPIES = 8
"""Perturbed copies of the batch in one graphed model batch (``cuda_graph=True`` replays one
graph per model batch; the automatic chunk on a GPU would hold every copy in one batch)."""


def _superpixels(shape: tuple[int, ...], size: int) -> torch.Tensor:
    """Square superpixels of ``size`` pixels, shared by the channels: ids [1, C, H, W]."""
    _, height, width = shape
    rows = torch.arange(height) // size
    cols = torch.arange(width) // size
    ids = rows.view(-1, 1) * math.ceil(width / size) + cols.view(1, -1)
    return ids.expand(shape).unsqueeze(0).contiguous()


def _settings(model_name: str, shape: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Per method: fastxai's keyword arguments (and Captum's, the same names)."""
    big = model_name == "resnet"
    window = (shape[0], 4, 4) if big else (1, 2, 2)
    groups_mask = _superpixels(shape, 8 if big else 2)  # 16 groups
    return {
        "occlusion": {"sliding_window_shapes": window, "strides": (shape[0], 4, 4) if big else 1},
        "feature_ablation": {"feature_mask": _superpixels(shape, 8 if big else 1)},  # 16 / 64 groups
        "kernel_shap": {"feature_mask": groups_mask, "n_samples": 64 if big else 200},
        "lime": {"feature_mask": groups_mask, "n_samples": 64 if big else 200},
        "shapley_value_sampling": {"feature_mask": groups_mask, "n_samples": 4},
    }


def _evaluations(method: str, kwargs: dict[str, Any], shape: tuple[int, ...]) -> int:
    """Perturbed copies fastxai scores per input (the floor's work)."""
    if method == "occlusion":
        window, strides = kwargs["sliding_window_shapes"], kwargs["strides"]
        strides = strides if isinstance(strides, tuple) else (strides,) * len(shape)
        windows = math.prod(
            math.ceil((f - w) / s) + 1 for f, w, s in zip(shape, window, strides, strict=True)
        )
        return windows + 1
    groups = int(kwargs["feature_mask"].max()) + 1
    if method == "feature_ablation":
        return groups + 1
    if method == "kernel_shap":
        return min(kwargs["n_samples"], 2**groups - 2) + 2
    if method == "lime":
        return kwargs["n_samples"]
    return kwargs["n_samples"] * (groups - 1) + 2


class _Recorder(nn.Module):
    """Passes inputs to the model and keeps a copy of every batch."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.batches: list[torch.Tensor] = []

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        self.batches.append(inputs.clone())
        return self.model(inputs)


def perturbed_batches(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, method: str, kwargs: dict[str, Any]
) -> list[torch.Tensor]:
    """The model batches of perturbed inputs one fastxai call scores (recorded, untimed)."""
    recorder = _Recorder(model)
    seeded = {"seed": 0} if method in SEEDED else {}
    FASTXAI[method](recorder, x, target, **kwargs, **seeded)
    return recorder.batches


class ForwardFloor(PairedFloor):
    """The floor of perturbation methods as the issue defines it: a forward pass (no gradients)
    over all the perturbed inputs the method scores, in large batches: the very batches of one
    fastxai call, recorded beforehand (``perturbed_batches``), so the floor pays for the model
    and nothing else. Not the batch repeated: a CNN runs ``x.repeat(P)`` measurably faster than
    P distinct inputs on the CPU (15-20% on the digits CNN), which no method can exploit.
    """

    def __init__(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, batches: list[torch.Tensor]
    ) -> None:
        super().__init__(model, x, target, sum(rows.shape[0] for rows in batches) // x.shape[0])
        if any(rows.shape[0] % x.shape[0] for rows in batches):
            raise ValueError("every recorded batch must hold whole copies of the inputs")
        self.batches = batches
        self.targets = [target.repeat(rows.shape[0] // x.shape[0]).view(-1, 1) for rows in batches]

    def run(self) -> None:
        with torch.no_grad():
            for rows, target in zip(self.batches, self.targets, strict=True):
                self.model(rows).gather(1, target)


FASTXAI = {
    "occlusion": occlusion,
    "feature_ablation": feature_ablation,
    "kernel_shap": kernel_shap,
    "lime": lime,
    "shapley_value_sampling": shapley_value_sampling,
}
SEEDED = ("kernel_shap", "lime", "shapley_value_sampling")
CAPTUM = {
    "occlusion": "Occlusion",
    "feature_ablation": "FeatureAblation",
    "kernel_shap": "KernelShap",
    "lime": "Lime",
    "shapley_value_sampling": "ShapleyValueSampling",
}


@pytest.mark.parametrize("implementation", implementations(graphed=True))
@pytest.mark.parametrize("method", list(FASTXAI))
@pytest.mark.parametrize("model_name", list(CASES))
def test_perturbation(benchmark, model_name: str, method: str, implementation: str) -> None:
    factory, shape, batch = CASES[model_name]
    model = factory().to(DEVICE)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(batch, *shape, generator=generator).to(DEVICE)
    target = torch.randint(0, 10, (batch,), generator=generator).to(DEVICE)
    kwargs = {
        key: value.to(DEVICE) if isinstance(value, torch.Tensor) else value
        for key, value in _settings(model_name, shape)[method].items()
    }
    points = _evaluations(method, kwargs, shape)
    benchmark.group = f"{method}-{model_name}"
    benchmark.extra_info.update(points=points * batch, batch=batch)
    rounds = ROUNDS[model_name]
    batches = perturbed_batches(model, x, target, method, kwargs)
    assert sum(rows.shape[0] for rows in batches) == points * batch
    if implementation == "floor":
        floor = ForwardFloor(model, x, target, batches)
        function = floor.run
    elif implementation == "captum":
        import captum.attr

        explainer = getattr(captum.attr, CAPTUM[method])(model)
        if method in ("kernel_shap", "lime"):
            kwargs = {**kwargs, "feature_mask": kwargs["feature_mask"].expand(batch, *shape)}
        function = lambda: explainer.attribute(x, target=target, **kwargs)  # noqa: E731
        rounds = CAPTUM_ROUNDS
    else:
        backend = implementation.removeprefix("fastxai-").removesuffix("-graphed")
        method_function = FASTXAI[method]
        seeded: dict[str, Any] = {"seed": 0} if method in SEEDED else {}
        if implementation.endswith("-graphed"):
            seeded.update(cuda_graph=True, chunk_size=GRAPH_COPIES * batch)
        function = lambda: method_function(model, x, target, backend=backend, **kwargs, **seeded)  # noqa: E731
    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    paired = ForwardFloor(model, x, target, batches)
    benchmark.pedantic(function, setup=paired, rounds=rounds, warmup_rounds=1 if rounds > 1 else 0)
    benchmark.extra_info["paired_floor_median"] = paired.median


COMPAT_DEFAULTS: dict[str, dict[str, Any]] = {
    # Captum's default arguments: perturbations_per_eval=1, n_samples=25, no feature mask (every
    # pixel its own feature, 64); Occlusion needs a window: 2x2, stride 1 (49 windows)
    "Occlusion": {"sliding_window_shapes": (1, 2, 2)},
    "FeatureAblation": {},
    "ShapleyValueSampling": {},
    "KernelShap": {},
    "Lime": {},
}
COMPAT_ROUNDS = 5


@pytest.mark.parametrize("implementation", ["fastxai-compat", "captum"])
@pytest.mark.parametrize("name", list(COMPAT_DEFAULTS))
def test_compat_captum_defaults(benchmark, name: str, implementation: str) -> None:
    """The drop-in classes against Captum's, both as a user calls them with Captum's defaults,
    on the digits MLP (64 -> 64 -> 10, batch 32): the ratio is Captum's time over fastxai's."""
    captum_attr = pytest.importorskip("captum.attr")
    import fastxai.compat.captum as compat

    model = digits_mlp().to(DEVICE)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 8, 8, generator=generator).to(DEVICE)
    target = torch.randint(0, 10, (32,), generator=generator).to(DEVICE)
    module = compat if implementation == "fastxai-compat" else captum_attr
    explainer = getattr(module, name)(model)
    kwargs = COMPAT_DEFAULTS[name]
    benchmark.group = f"compat-{name}-digits-mlp"
    rounds = COMPAT_ROUNDS if implementation == "fastxai-compat" else CAPTUM_ROUNDS
    function = lambda: explainer.attribute(x, target=target, **kwargs)  # noqa: E731
    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
    benchmark.pedantic(function, rounds=rounds, warmup_rounds=1 if rounds > 1 else 0)
