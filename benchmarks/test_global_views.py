"""Global views: activation maximisation (floor: steps x forward+backward of the batch) and TCAV
(floor: forward passes over the concept and random examples plus one forward+backward over the
inputs) vs fastxai vs Captum's TCAV (default SGD classifier, CAVs written to a fresh folder)."""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import warnings

import pytest
import torch
from models import CASES, PairedFloor, case, floor

from fastxai.global_views import activation_maximisation, tcav

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
STEPS = 16
ROUNDS = {"mlp": 5, "resnet": 3}
CONCEPT_EXAMPLES = 24
RANDOM_SETS = 4
LAYERS = {"mlp": "2", "resnet": "4"}


def _sync(function):  # type: ignore[no-untyped-def]
    if DEVICE != "cuda":
        return function
    return lambda: (function(), torch.cuda.synchronize())


def maximisation_floor(model: torch.nn.Module, x: torch.Tensor, units: torch.Tensor, steps: int) -> None:
    for _ in range(steps):
        floor(model, x, units, 1)


class PairedMaximisationFloor(PairedFloor):
    def run(self) -> None:
        maximisation_floor(self.model, self.x, self.target, self.points)


@pytest.mark.parametrize("implementation", ["floor", "fastxai"])
@pytest.mark.parametrize("model_name", list(CASES))
def test_activation_maximisation(benchmark, model_name: str, implementation: str) -> None:
    model, x, _ = case(model_name)
    model, x = model.to(DEVICE), x.to(DEVICE)
    units = torch.arange(x.shape[0], device=DEVICE) % 10
    benchmark.group = f"activation_maximisation-{model_name}"
    benchmark.extra_info.update(steps=STEPS, batch=x.shape[0])
    if implementation == "floor":
        function = lambda: maximisation_floor(model, x, units, STEPS)  # noqa: E731
    else:
        function = lambda: activation_maximisation(  # noqa: E731
            model, unit=units.tolist(), input_shape=x.shape[1:], n_steps=STEPS, bounds=(0.0, 1.0), seed=0,
            jitter=1 if x.dim() > 2 else 0, blur_every=4 if x.dim() > 2 else 0,
        )  # fmt: skip
    paired = PairedMaximisationFloor(model, x, units, STEPS)
    benchmark.pedantic(_sync(function), setup=paired, rounds=ROUNDS[model_name], warmup_rounds=1)
    benchmark.extra_info["paired_floor_median"] = paired.median


def tcav_case(model_name: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, list]:
    model, x, target = case(model_name)
    generator = torch.Generator().manual_seed(2)
    shape = x.shape[1:]
    concept = (torch.rand(CONCEPT_EXAMPLES, *shape, generator=generator) * 0.5 + 0.5).to(DEVICE)
    randoms = [
        torch.rand(CONCEPT_EXAMPLES, *shape, generator=generator).to(DEVICE) for _ in range(RANDOM_SETS)
    ]
    return model.to(DEVICE), x.to(DEVICE), target.to(DEVICE), concept, randoms


def tcav_floor(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, examples: torch.Tensor) -> None:
    with torch.no_grad():
        model(examples)
    floor(model, x, target, 1)


class PairedTcavFloor(PairedFloor):
    def __init__(self, model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, examples: torch.Tensor):
        super().__init__(model, x, target, 1)
        self.examples = examples

    def run(self) -> None:
        tcav_floor(self.model, self.x, self.target, self.examples)


def captum_tcav(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor, concept, randoms, layer: str):  # type: ignore[no-untyped-def]
    from captum.concept import TCAV, Concept
    from torch.utils.data import DataLoader

    folder = tempfile.mkdtemp(prefix="captum-tcav-")
    try:
        concepts = [Concept(0, "concept", DataLoader(concept, batch_size=64))] + [
            Concept(i + 1, f"random{i}", DataLoader(r, batch_size=64)) for i, r in enumerate(randoms)
        ]
        sets = [[concepts[0], r] for r in concepts[1:]]
        sets += [[concepts[1 + i], concepts[1 + (i + 1) % RANDOM_SETS]] for i in range(RANDOM_SETS)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            explainer = TCAV(model, layers=[layer], save_path=folder)
            return explainer.interpret(x, experimental_sets=sets, target=target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _tcav_implementations() -> list[str]:
    names = ["floor", "fastxai"]
    if importlib.util.find_spec("captum") is not None and importlib.util.find_spec("sklearn") is not None:
        names.append("captum")
    return names


@pytest.mark.parametrize("implementation", _tcav_implementations())
@pytest.mark.parametrize("model_name", list(CASES))
def test_tcav(benchmark, model_name: str, implementation: str) -> None:
    model, x, target, concept, randoms = tcav_case(model_name)
    layer = LAYERS[model_name]
    benchmark.group = f"tcav-{model_name}"
    benchmark.extra_info.update(inputs=x.shape[0], concept_examples=CONCEPT_EXAMPLES, random_sets=RANDOM_SETS)
    if implementation == "floor":
        examples = torch.cat([concept, *randoms])
        function = lambda: tcav_floor(model, x, target, examples)  # noqa: E731
    elif implementation == "captum":
        function = lambda: captum_tcav(model, x, target, concept, randoms, layer)  # noqa: E731
    else:
        function = lambda: tcav(  # noqa: E731
            model, x, target, layer=layer, concepts={"concept": concept}, random_concepts=randoms
        )
    paired = PairedTcavFloor(model, x, target, torch.cat([concept, *randoms]))
    benchmark.pedantic(_sync(function), setup=paired, rounds=ROUNDS[model_name], warmup_rounds=1)
    benchmark.extra_info["paired_floor_median"] = paired.median
