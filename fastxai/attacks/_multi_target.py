"""The multi-target loop of APGD-T and FAB-T (Croce and Hein 2020): attack each sample towards
its 2nd, 3rd, ... most likely class in turn, each round only on the samples still robust."""

from __future__ import annotations

from collections.abc import Callable

import torch

from fastxai._checks import check_count

Forward = Callable[[torch.Tensor], torch.Tensor]
TargetedAttack = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``(sample indices [A], target classes [A]) -> adversarial candidates [A, *F]``."""


def by_target_rank(
    forward: Forward, x: torch.Tensor, labels: torch.Tensor, n_target_classes: int, attack: TargetedAttack
) -> torch.Tensor:
    """Per sample, the first candidate that is misclassified, over the targets ranked 2 to
    ``n_target_classes + 1`` by the clean logits; the input where none is."""
    check_count("n_target_classes", n_target_classes)
    with torch.no_grad():
        logits = forward(x)
    if n_target_classes > logits.shape[1] - 1:
        raise ValueError(
            f"n_target_classes must be at most classes - 1 = {logits.shape[1] - 1}, got {n_target_classes}"
        )
    ranked = logits.argsort(dim=1, descending=True)
    robust = logits.argmax(dim=1) == labels
    result = x.clone()
    for rank in range(1, n_target_classes + 1):
        index = robust.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        candidates = attack(index, ranked[index, rank])
        with torch.no_grad():
            fooled = forward(candidates).argmax(dim=1) != labels[index]
        result[index[fooled]] = candidates[fooled]
        robust[index[fooled]] = False
    return result
