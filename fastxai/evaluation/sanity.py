"""The model-parameter randomisation test (Adebayo et al. 2018, "Sanity checks for saliency maps").

An explanation that stays the same when the model's weights are replaced by random ones does
not explain the model. The test re-initialises the layers from the output towards the input
(cascading) or one at a time (independent) and measures, after each, how similar the new
explanations are to the original ones.

>>> steps = ev.randomization_check(model, x, lambda m, x, t: fx.saliency(m, x, t), target=y)
>>> [(step.layer, step.similarity.mean().item()) for step in steps]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fastxai import _model
from fastxai.evaluation import similarity as _similarity

SIMILARITIES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "rank_correlation": _similarity.rank_correlation,
    "rank_correlation_abs": lambda a, b: _similarity.rank_correlation(a.abs(), b.abs()),
    "cosine": _similarity.cosine,
}


@dataclass(frozen=True)
class RandomizationStep:
    """One step of the test: ``layer`` (dotted name) was randomised (with every layer after it
    when cascading), and ``similarity`` [B] compares the explanations then with the originals."""

    layer: str
    similarity: torch.Tensor


def _parametrised_layers(model: nn.Module, layers: Sequence[str] | None) -> list[tuple[str, nn.Module]]:
    named = dict(model.named_modules())
    if layers is None:
        found = [
            (name, module)
            for name, module in model.named_modules()
            if name and any(True for _ in module.parameters(recurse=False))
        ]
        if not found:
            raise ValueError("model has no layers with parameters to randomise")
        return found[::-1]  # output first
    chosen = []
    for name in layers:
        if name not in named:
            valid = [n for n in named if n][:8]
            raise ValueError(f"layers: the model has no module {name!r}; some valid names: {valid}")
        chosen.append((name, named[name]))
    return chosen


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    """Fresh weights as at construction: ``reset_parameters`` under a seeded RNG, or a normal
    draw with each tensor's own standard deviation for modules without one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (), generator=generator)))
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
            return
        for parameter in module.parameters(recurse=False):
            std = float(parameter.detach().float().std()) if parameter.numel() > 1 else 1.0
            parameter.normal_(0.0, std if std > 0 else 1.0)


def randomization_check(
    model: nn.Module,
    inputs: torch.Tensor,
    explain: Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor],
    target: object = None,
    *,
    layers: Sequence[str] | None = None,
    cascading: bool = True,
    similarity: str = "rank_correlation_abs",
    seed: int = 0,
) -> list[RandomizationStep]:
    """Cascading (or independent) model-parameter randomisation (Adebayo et al. 2018).

    ``explain(model, inputs, target) -> [B, *F]`` computes the explanation (any method).
    ``layers``: dotted names to randomise, in order (default: every module with its own
    parameters, output first). ``similarity``: ``"rank_correlation_abs"`` (Spearman of the
    magnitudes, the paper's main measure), ``"rank_correlation"`` or ``"cosine"``.
    The target is fixed to the original model's prediction when None, so every step explains
    the same class. The model's parameters and buffers are restored exactly afterwards (also
    on error). Returns one :class:`RandomizationStep` per layer.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"model must be an nn.Module (its parameters are randomised), got {type(model).__name__}"
        )
    if not callable(explain):
        raise TypeError(f"explain must be callable, got {type(explain).__name__}")
    inputs = _model.check_inputs(inputs)
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {similarity!r}")
    chosen = _parametrised_layers(model, layers)
    compare = SIMILARITIES[similarity]
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    with _model.preserved_state(model):
        target_t = _model.resolve_target(model, inputs, target_t, 512)
    saved = _snapshot(model)
    generator = torch.Generator().manual_seed(seed)
    steps = []
    try:
        original = explain(model, inputs, target_t).detach()
        for name, module in chosen:
            if not cascading:
                _restore(saved)
            with torch.no_grad():
                _randomise(module, generator)
            explanation = explain(model, inputs, target_t).detach()
            steps.append(RandomizationStep(name, compare(original, explanation)))
    finally:
        _restore(saved)
    return steps


Snapshot = list[tuple[nn.Module, str, dict[str, torch.Tensor | None], dict[str, torch.Tensor]]]


def _snapshot(model: nn.Module) -> Snapshot:
    """Every module's parameter and buffer dictionaries (the objects themselves, and a copy of
    each value): a ``reset_parameters`` may assign new ``Parameter`` objects rather than write
    into the old ones, and the model must end up holding its own objects again."""
    saved: Snapshot = []
    for module in model.modules():
        for kind in ("_parameters", "_buffers"):
            entries = dict(getattr(module, kind))
            values = {name: tensor.detach().clone() for name, tensor in entries.items() if tensor is not None}
            saved.append((module, kind, entries, values))
    return saved


def _restore(saved: Snapshot) -> None:
    with torch.no_grad():
        for module, kind, entries, values in saved:
            current = getattr(module, kind)
            if current.keys() != entries.keys() or any(current[n] is not t for n, t in entries.items()):
                current.clear()
                current.update(entries)
            for name, value in values.items():
                tensor = entries[name]
                assert tensor is not None
                tensor.copy_(value)
