"""AutoAttack, standard version (Croce and Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020): APGD-CE, APGD-T, FAB-T and
Square in turn, each on the samples that every earlier attack left robust."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from fastxai import _model
from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.attacks._core import check_seed, check_threat_model, predict, prepare, resolve_labels
from fastxai.attacks.apgd_targeted import apgd_targeted
from fastxai.attacks.auto_pgd import apgd
from fastxai.attacks.fab import fab_targeted
from fastxai.attacks.square import square_attack

VERSIONS = ("standard",)


def autoattack(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    norm: str = "linf",
    eps: float = 8 / 255,
    version: str = "standard",
    steps: int = 100,
    n_target_classes: int = 9,
    fab_steps: int = 100,
    square_queries: int = 5000,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    seed: int | None = 0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """AutoAttack (standard): robust accuracy is the share of samples that survive all four.

    1. APGD-CE (``fastxai.apgd``, cross-entropy, ``steps`` iterations);
    2. APGD-T (``fastxai.apgd_targeted``, targeted DLR towards each of the ``n_target_classes``
       most likely wrong classes, ``steps`` iterations each);
    3. FAB-T (``fastxai.fab`` towards the same targets, ``fab_steps`` iterations, kept only
       within ``eps``);
    4. Square (``fastxai.square_attack``, ``square_queries`` queries, black-box).

    Each attack runs only on the samples still correctly classified, so the result is
    misclassified wherever any component succeeded: robust accuracy <= each component's on
    its own. The paper's budgets are the defaults (100 iterations, 9 targets, 5000 queries);
    ``n_target_classes`` is capped at classes - 1; with fewer than 4 classes APGD-T is
    skipped (its targeted DLR loss needs 4).

    inputs: [B, C, H, W] within ``bounds`` (Square needs images); returns [B, C, H, W] within
    ``eps`` of the inputs in ``norm``. ``dtype``: every component, and the checks between them,
    run the model under autocast in that dtype (``fastxai.pgd``'s ``dtype``).

    >>> x_adv = fastxai.autoattack(model, x, y, norm="linf", eps=8/255, seed=0)
    >>> robust_accuracy = (model(x_adv).argmax(1) == y).float().mean()
    """
    threat = check_threat_model(eps, norm, tuple(bounds) if isinstance(bounds, (list, tuple)) else bounds)
    if version not in VERSIONS:
        raise NotImplementedError(
            f"version={version!r}: fastxai implements AutoAttack's 'standard' version only"
        )
    for name, value in (("steps", steps), ("fab_steps", fab_steps), ("square_queries", square_queries)):
        check_count(name, value, 2 if name == "steps" else 1)
    check_count("n_target_classes", n_target_classes)
    seed = check_seed(seed)
    model, x, label_t, forward = prepare(model, inputs, labels, bounds, normalize, dtype)
    if x.dim() != 4:
        raise ValueError(f"inputs must be images [B, C, H, W], got shape {tuple(x.shape)}")
    common: dict[str, Any] = dict(bounds=bounds, normalize=normalize, seed=seed, dtype=dtype)
    with _model.preserved_state(model):
        label_t = resolve_labels(forward, x, label_t)
        with torch.no_grad():
            classes = forward(x[:1]).shape[1]
        targets = min(n_target_classes, classes - 1)

        components: list[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = [
            lambda p, t: apgd(
                model, p, t, eps=threat.eps, steps=steps, norm=threat.norm, loss="ce", **common
            ),
            lambda p, t: apgd_targeted(
                model,
                p,
                t,
                eps=threat.eps,
                steps=steps,
                norm=threat.norm,
                n_target_classes=targets,
                **common,
            ),
            lambda p, t: fab_targeted(
                model,
                p,
                t,
                norm=threat.norm,
                eps=threat.eps,
                steps=fab_steps,
                n_target_classes=targets,
                **common,
            ),
            lambda p, t: square_attack(
                model,
                p,
                t,
                eps=threat.eps,
                norm=threat.norm,
                n_queries=square_queries,
                **common,
            ),
        ]
        if classes < 4:  # the targeted DLR loss needs 4 classes; run APGD-CE, FAB-T and Square
            del components[1]
        result = x.clone()
        robust = predict(forward, x) == label_t
        for component in components:
            index = robust.nonzero().squeeze(1)
            if index.numel() == 0:
                break
            candidates = component(x[index], label_t[index])
            fooled = predict(forward, candidates) != label_t[index]
            result[index[fooled]] = candidates[fooled]
            robust[index[fooled]] = False
        return result
