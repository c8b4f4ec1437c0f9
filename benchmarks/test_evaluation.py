"""Faithfulness metrics: each against the floor of its model evaluations, and against Captum's
infidelity and sensitivity_max.

Floors: deletion — one forward over all B x (n_steps + 1) perturbed inputs in one batch;
infidelity — one forward over the B x n perturbed inputs and the B clean ones;
sensitivity_max — the explanation (saliency) of the B x n perturbed inputs in one call plus the
clean B.
"""

from __future__ import annotations

import pytest
import torch
from models import CASES, ROUNDS, case

from fastxai import evaluation as ev
from fastxai.attribution import saliency

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 32
PERTURBATIONS = 16


def _has_captum() -> bool:
    try:
        import captum.metrics  # noqa: F401
    except ImportError:
        return False
    return True


PEERS = ["captum"] if _has_captum() else []


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("implementation", ["floor", "fastxai"])
@pytest.mark.parametrize("model_name", list(CASES))
def test_deletion(benchmark, model_name: str, implementation: str) -> None:
    model, x, target = case(model_name)
    model, x, target = model.to(DEVICE), x.to(DEVICE), target.to(DEVICE)
    attributions = torch.randn_like(x)
    benchmark.group = f"deletion-{model_name}"
    benchmark.extra_info.update(points=(STEPS + 1) * x.shape[0], batch=x.shape[0])
    if implementation == "floor":
        inputs = x.repeat(STEPS + 1, *([1] * (x.dim() - 1)))

        def function() -> None:
            with torch.no_grad():
                model(inputs).softmax(dim=1)
            _sync()

    else:

        def function() -> None:
            ev.deletion(model, x, attributions, target, n_steps=STEPS, per_pixel=False)
            _sync()

    benchmark.pedantic(function, rounds=ROUNDS[model_name], warmup_rounds=2)


@pytest.mark.parametrize("implementation", ["floor", "fastxai", *PEERS])
@pytest.mark.parametrize("model_name", list(CASES))
def test_infidelity(benchmark, model_name: str, implementation: str) -> None:
    model, x, target = case(model_name)
    model, x, target = model.to(DEVICE), x.to(DEVICE), target.to(DEVICE)
    attributions = torch.randn_like(x)
    benchmark.group = f"infidelity-{model_name}"
    benchmark.extra_info.update(points=(PERTURBATIONS + 1) * x.shape[0], batch=x.shape[0])
    if implementation == "floor":
        inputs = x.repeat(PERTURBATIONS + 1, *([1] * (x.dim() - 1)))

        def function() -> None:
            with torch.no_grad():
                model(inputs)
            _sync()

    elif implementation == "fastxai":

        def function() -> None:
            ev.infidelity(
                model, x, attributions, target, noise_std=0.01, n_perturb_samples=PERTURBATIONS, seed=0
            )
            _sync()

    else:
        from captum.metrics import infidelity

        def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            noise = 0.01 * torch.randn_like(inputs)
            return noise, inputs - noise

        def function() -> None:
            with torch.no_grad():
                infidelity(model, perturb, x, attributions, target=target, n_perturb_samples=PERTURBATIONS)
            _sync()

    benchmark.pedantic(function, rounds=ROUNDS[model_name], warmup_rounds=2)


@pytest.mark.parametrize("implementation", ["floor", "fastxai", *PEERS])
@pytest.mark.parametrize("model_name", list(CASES))
def test_sensitivity_max(benchmark, model_name: str, implementation: str) -> None:
    model, x, target = case(model_name)
    model, x, target = model.to(DEVICE), x.to(DEVICE), target.to(DEVICE)
    benchmark.group = f"sensitivity_max-{model_name}"
    benchmark.extra_info.update(points=(PERTURBATIONS + 1) * x.shape[0], batch=x.shape[0])
    if implementation == "floor":
        inputs = x.repeat(PERTURBATIONS + 1, *([1] * (x.dim() - 1)))
        targets = target.repeat(PERTURBATIONS + 1)

        def function() -> None:
            saliency(model, inputs + 0.01, targets)
            _sync()

    elif implementation == "fastxai":

        def function() -> None:
            ev.sensitivity_max(
                lambda inputs, target: saliency(model, inputs, target),
                x,
                target,
                n_perturb_samples=PERTURBATIONS,
                chunk_size=PERTURBATIONS * x.shape[0],
            )
            _sync()

    else:
        from captum.attr import Saliency
        from captum.metrics import sensitivity_max

        explainer = Saliency(model)

        def function() -> None:
            sensitivity_max(explainer.attribute, x, target=target, n_perturb_samples=PERTURBATIONS)
            _sync()

    benchmark.pedantic(function, rounds=ROUNDS[model_name], warmup_rounds=2)
