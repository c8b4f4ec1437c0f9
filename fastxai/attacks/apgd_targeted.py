"""APGD-T (Croce and Hein, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML 2020): targeted APGD with the targeted DLR loss, towards
each of the most likely wrong classes in turn."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastxai import _model
from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.attacks._core import check_seed, check_threat_model, prepare, resolve_labels
from fastxai.attacks._multi_target import by_target_rank
from fastxai.attacks.auto_pgd import apgd


def apgd_targeted(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    eps: float = 8 / 255,
    steps: int = 100,
    norm: str = "linf",
    n_target_classes: int = 9,
    rho: float = 0.75,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    seed: int | None = 0,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """APGD-T: for t the 2nd, 3rd, ... (``n_target_classes`` in all) most likely class at the
    clean input, run ``fastxai.apgd`` with the targeted DLR loss
    ``-(z_y - z_t) / (z_(1) - (z_(3) + z_(4)) / 2)`` on the samples not yet misclassified.

    - ``labels``: true classes [B] (None: predicted); needs at least 4 classes.
    - Returns per sample the first misclassified point found, else the input; within ``eps``.
      One APGD run (``steps`` forward+backward passes) per target on the samples still robust.
    - ``dtype``: every model call under autocast in that dtype, as ``fastxai.apgd``.

    >>> x_adv = fastxai.apgd_targeted(model, x, y, eps=8/255, steps=100, n_target_classes=9)
    """
    check_threat_model(eps, norm, tuple(bounds) if isinstance(bounds, (list, tuple)) else bounds)
    seed = check_seed(seed)
    check_count("steps", steps, 2)
    check_count("n_target_classes", n_target_classes)
    if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    model, x, label_t, forward = prepare(model, inputs, labels, bounds, normalize, dtype)
    with _model.preserved_state(model):
        label_t = resolve_labels(forward, x, label_t)

        def attack(index: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return apgd(
                model,
                x[index],
                label_t[index],
                eps=eps,
                steps=steps,
                norm=norm,
                loss="dlr",
                rho=rho,
                targeted=True,
                target_labels=targets,
                bounds=bounds,
                normalize=normalize,
                seed=seed,
                dtype=dtype,
            )

        return by_target_rank(forward, x, label_t, n_target_classes, attack)
