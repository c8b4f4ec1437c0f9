"""The GPU benchmark suite of issue 18: per method (IG, SmoothGrad, GradientSHAP, LRP,
occlusion, KernelSHAP, PGD) on a digits-size MLP, ResNet-18, ResNet-50 and ViT-B/16 (224x224,
batch 64, 32 samples/steps; ``gpu_models.py``), side by side in one run:

    floor              the bare model work over the same points, in the same model batches
    fastxai            the method as a user calls it (automatic backend), eager
    fastxai-graphed    ``cuda_graph=True`` (one CUDA graph per model batch, replayed)
    fastxai-compiled   ``compile=True`` (gradient methods: the per-chunk step compiled once);
                       ``torch.compile(model)`` for the others (LRP traces the original module:
                       no compiled form, skipped saying so)
    captum / zennit / torchattacks   the peers, with the same model batches where they have the option
    bfloat16 group     floor and fastxai with ``dtype=torch.bfloat16`` (a method without ``dtype=``
                       is skipped with that reason, so rows appear as methods gain it)

Every row records its CUDA peak memory (``torch.cuda.max_memory_allocated`` above what was in use
before, reset per row) and the time of its first, untimed call (compilation, capture) in
``extra_info``. Rows run in priority order (``_cases``: the rows the targets rest on first, the
compiled rows, which pay compilation, last): ``make gpu-check`` stops at its budget and keeps
what finished. ``scripts/gpu_results.py`` checks the
issue's targets on these rows (each method <= 1.10x the floor on the ResNets, >= 3x Captum on
the MLP with graphs).

Needs CUDA; ``FASTXAI_BENCH_SMALL=1`` runs CPU sizes (the ``gpu_check --dry-run`` selection).
"""

from __future__ import annotations

import importlib.util
import inspect
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from gpu_models import (
    DEVICE,
    METHODS,
    MODELS,
    PEERS,
    RESNETS,
    SIZES,
    SMALL,
    Floor,
    evaluations,
    floor_kind,
    model_case,
    settings,
)
from torch import nn

import fastxai as fx
from fastxai.lrp.core import lrp as lrp_function

pytestmark = pytest.mark.skipif(
    DEVICE != "cuda" and not SMALL,
    reason="the issue-18 sizes need CUDA (FASTXAI_BENCH_SMALL=1 runs CPU sizes)",
)

SIGNATURES = {
    name: inspect.signature(lrp_function if name == "lrp" else getattr(fx, name)).parameters
    for name in METHODS
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _cases() -> list[Any]:
    """(model, method, dtype, implementation) in priority order: what the targets rest on first.

    1. the digits MLP, every row (its peers: the >= 3x Captum target);
    2. ResNet-18, then ResNet-50: floor, fastxai, graphed (the <= 1.10x floor target);
    3. the ResNets' peers, then their bfloat16 rows; 4. ViT-B/16, every row;
    5. the compiled rows (each pays its compilation once), smallest model first.
    """
    mlp, vit = MODELS[0], MODELS[-1]
    cases: list[tuple[str, str, str, str]] = []

    def every_row(model: str) -> None:
        for method in METHODS:
            for implementation in ("floor", "fastxai", "fastxai-graphed", *PEERS[method]):
                cases.append((model, method, "float32", implementation))
            cases.extend((model, method, "bfloat16", name) for name in ("floor", "fastxai"))

    every_row(mlp)
    for implementations, dtype in (
        (("floor", "fastxai", "fastxai-graphed"), "float32"),
        (None, "float32"),  # the peers
        (("floor", "fastxai"), "bfloat16"),
    ):
        for model in RESNETS:
            for method in METHODS:
                names = PEERS[method] if implementations is None else implementations
                cases.extend((model, method, dtype, name) for name in names)
    every_row(vit)
    cases += [(model, method, "float32", "fastxai-compiled") for model in MODELS for method in METHODS]
    # gpu_check passes --timeout=90 where pytest-timeout is installed (against a hung test); a
    # compiled ResNet-50 or ViT-B row (Inductor compiling forward and backward) may need longer
    marks = [pytest.mark.timeout(400)] if importlib.util.find_spec("pytest_timeout") else []
    return [pytest.param(*case, id="-".join(case), marks=marks) for case in cases]


def _fastxai(
    method: str, implementation: str, dtype: torch.dtype, model: nn.Module, x: torch.Tensor,
    target: torch.Tensor, kwargs: dict[str, Any], chunk_rows: int,
) -> Callable[[], object]:  # fmt: skip
    """fastxai's call for one row, or a skip naming the option the method lacks."""
    parameters = SIGNATURES[method]
    options: dict[str, Any] = {"chunk_size": chunk_rows} if "chunk_size" in parameters else {}
    if dtype != torch.float32:
        if "dtype" not in parameters:
            pytest.skip(f"{method} takes no dtype= (yet)")
        options["dtype"] = dtype
    if implementation == "fastxai-graphed":
        if "cuda_graph" not in parameters:
            pytest.skip(f"{method} takes no cuda_graph=")
        if DEVICE != "cuda":
            pytest.skip("cuda_graph=True needs a CUDA device")
        options["cuda_graph"] = True
    if implementation == "fastxai-compiled":
        if method == "lrp":
            pytest.skip("lrp traces a compiled model's original module: no compiled form to time")
        if "compile" in parameters:
            options["compile"] = True
        else:
            model = torch.compile(model)  # type: ignore[assignment]
    function = fx.lrp if method == "lrp" else getattr(fx, method)
    options["labels" if method == "pgd" else "target"] = target
    return lambda: function(model, x, **kwargs, **options)


def _peer(
    peer: str, method: str, model_name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
    kwargs: dict[str, Any], copies: int,
) -> Callable[[], object]:  # fmt: skip
    """The peer's call with the same settings (and model batches where it has the option)."""
    if peer == "torchattacks":
        torchattacks = pytest.importorskip("torchattacks")
        attack = torchattacks.PGD(model, eps=kwargs["eps"], alpha=kwargs["alpha"], steps=kwargs["steps"])
        return lambda: attack(x, target)
    if peer == "zennit":
        if importlib.util.find_spec("zennit") is None:
            pytest.skip("zennit is not installed")
        if model_name == "vit_b_16":
            pytest.skip("Zennit has no rules for attention")
        return _zennit(model_name, model, x, target)
    captum_attr = pytest.importorskip("captum.attr")
    if method == "integrated_gradients":
        explainer = captum_attr.IntegratedGradients(model)
        return lambda: explainer.attribute(
            x, target=target, n_steps=kwargs["n_steps"], method="gausslegendre",
            internal_batch_size=copies * x.shape[0],
        )  # fmt: skip
    if method == "smoothgrad":
        tunnel = captum_attr.NoiseTunnel(captum_attr.Saliency(model))
        return lambda: tunnel.attribute(
            x, nt_type="smoothgrad", nt_samples=kwargs["n_samples"], nt_samples_batch_size=copies,
            stdevs=kwargs["stdevs"], target=target, abs=False,
        )  # fmt: skip
    if method == "gradient_shap":  # no batching option: every sample in one pass
        shap = captum_attr.GradientShap(model)
        return lambda: shap.attribute(
            x, kwargs["baselines"], n_samples=kwargs["n_samples"], stdevs=kwargs["stdevs"], target=target
        )
    if method == "lrp":
        if model_name != "digits_mlp":
            pytest.skip("Captum's LRP has no rule for residual sums or attention")
        explainer = captum_attr.LRP(model)
        return lambda: explainer.attribute(x, target=target)
    if method == "occlusion":
        occlusion = captum_attr.Occlusion(model)
        return lambda: occlusion.attribute(
            x, target=target, sliding_window_shapes=kwargs["sliding_window_shapes"],
            strides=kwargs["strides"], perturbations_per_eval=copies,
        )  # fmt: skip
    shap_k = captum_attr.KernelShap(model)  # one example at a time (Captum fits them one by one)
    mask = kwargs["feature_mask"].expand(x.shape)
    return lambda: shap_k.attribute(
        x, target=target, feature_mask=mask, n_samples=kwargs["n_samples"], perturbations_per_eval=copies
    )


def _zennit(model_name: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor) -> Callable[[], object]:
    import real_models

    real_models.zennit()  # its torchvision import needs the CPU-machine workaround
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonPlusFlat

    canonizers = []
    if model_name in ("resnet18", "resnet50"):
        from zennit.torchvision import ResNetCanonizer

        canonizers.append(ResNetCanonizer())
    classes = model(x[:1]).shape[1]
    onehot = nn.functional.one_hot(target, classes).to(x.dtype)

    def function() -> torch.Tensor:
        with Gradient(model, EpsilonPlusFlat(canonizers=canonizers)) as attributor:
            return attributor(x, onehot)[1]

    return function


def _first_call(function: Callable[[], object]) -> float:
    """Run once untimed (warm-up, compilation, capture); a clean refusal or running out of memory
    is this row's result, recorded as a skip with the reason, not a failure of the suite."""
    start = time.perf_counter()
    try:
        function()
    except torch.cuda.OutOfMemoryError as error:
        torch.cuda.empty_cache()
        pytest.skip(f"out of memory: {str(error).splitlines()[0][:200]}")
    except RuntimeError as error:
        if "cuda_graph=True" not in str(error):
            raise
        pytest.skip(f"refused: {str(error)[:300]}")
    return time.perf_counter() - start


@pytest.mark.parametrize(("model_name", "method", "dtype_name", "implementation"), _cases())
def test_gpu_models(benchmark, model_name: str, method: str, dtype_name: str, implementation: str) -> None:
    size, dtype = SIZES[model_name], DTYPES[dtype_name]
    if implementation == "floor" and dtype != torch.float32 and "dtype" not in SIGNATURES[method]:
        pytest.skip(f"{method} takes no dtype= (yet): no {dtype_name} row to compare with")
    model, x, target, background = model_case(model_name)
    kwargs = settings(method, model_name, x, background)
    points = evaluations(method, kwargs, tuple(x.shape[1:]))
    benchmark.group = f"{method}-{model_name}-{dtype_name}"
    benchmark.extra_info.update(
        suite="issue18", method=method, model=model_name, dtype=dtype_name, variant=implementation,
        batch=size.batch, points=points * size.batch, chunk_rows=size.chunk_rows,
    )  # fmt: skip
    if implementation == "floor":
        floor = Floor(model, x, target, floor_kind(method), points, size.chunk_rows, dtype)
        function: Callable[[], object] = floor.run
    elif implementation.startswith("fastxai"):
        function = _fastxai(method, implementation, dtype, model, x, target, kwargs, size.chunk_rows)
    else:
        function = _peer(implementation, method, model_name, model, x, target, kwargs, size.chunk_copies)
    if DEVICE == "cuda":
        inner = function
        function = lambda: (inner(), torch.cuda.synchronize())  # noqa: E731
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    benchmark.extra_info["first_call_s"] = _first_call(function)
    # Captum fits KernelSHAP one example at a time: one round shows it
    rounds = 1 if implementation == "captum" and method == "kernel_shap" else size.rounds
    benchmark.pedantic(function, rounds=rounds, warmup_rounds=0)
    if DEVICE == "cuda":
        benchmark.extra_info["peak_cuda_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
