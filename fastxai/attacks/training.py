"""Adversarial training (Madry et al. 2018): train on PGD examples of each batch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastxai.attacks.gradient_attacks import pgd


def adversarial_training_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = nn.functional.cross_entropy,
    clean_weight: float = 0.0,
    **pgd_kwargs: Any,
) -> dict[str, float]:
    """One optimisation step on ``(1 - clean_weight) * loss(x_adv) + clean_weight * loss(x)``.

    The PGD examples are made with the model in eval mode (``fastxai.pgd`` with
    ``pgd_kwargs``: ``eps``, ``alpha``, ``steps``, ``norm``, ...); the step itself runs in
    the mode the model was given (train mode for a training loop). Returns the loss and the
    accuracy on the adversarial batch. ``dtype=torch.bfloat16`` among ``pgd_kwargs`` makes the
    examples under autocast (``fastxai.pgd``); the training step runs as you set it up (wrap
    the call in your own ``torch.autocast`` for mixed-precision training).

    >>> for x, y in loader:
    ...     fastxai.adversarial_training_step(model, optimizer, x, y, eps=0.1, alpha=0.025, steps=7)
    """
    if not 0.0 <= clean_weight <= 1.0:
        raise ValueError(f"clean_weight must be in [0, 1], got {clean_weight!r}")
    adversarial = pgd(model, inputs, labels, **pgd_kwargs)
    optimizer.zero_grad(set_to_none=True)
    logits = model(adversarial)
    loss = loss_fn(logits, labels)
    if clean_weight > 0:
        loss = (1 - clean_weight) * loss + clean_weight * loss_fn(model(inputs), labels)
    loss.backward()
    optimizer.step()
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return {"loss": float(loss.detach()), "adversarial_accuracy": accuracy}
