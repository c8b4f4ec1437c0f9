"""Black-box attack through a substitute (Papernot et al., AsiaCCS 2017): train a model of
your own on the target's answers only, then attack the substitute and transfer."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fastxai import _budget, _model
from fastxai._model import Model
from fastxai.attacks.gradient_attacks import pgd


def _oracle_labels(oracle: Model, inputs: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The only thing the attacker sees: the target model's predicted labels."""
    with torch.no_grad():
        return torch.cat(
            [
                _model.logits(oracle, inputs[i : i + batch_size]).argmax(1)
                for i in range(0, len(inputs), batch_size)
            ]
        )


def train_substitute(
    oracle: Model,
    seed_inputs: torch.Tensor,
    substitute: nn.Module,
    *,
    rounds: int = 4,
    step: float = 0.1,
    epochs: int = 10,
    lr: float = 1e-2,
    batch_size: int = 64,
    bounds: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Jacobian-based dataset augmentation: label ``seed_inputs`` with the oracle, train
    ``substitute`` on them, then add ``x + step * sign(d s_{O(x)} / d x)`` for every x (the
    direction in which the substitute's score of the oracle's label changes most) and repeat
    for ``rounds`` rounds; the data set doubles each round. ``step`` alternates sign every
    round (Papernot et al.'s periodic step size) so that points do not drift out of range.

    Returns the trained substitute (in eval mode) and ``{"queries": oracle queries made,
    "dataset_size": final number of training points}``.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"rounds must be an int >= 0, got {rounds!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(step, (int, float)) or isinstance(step, bool) or step <= 0:
        raise ValueError(f"step must be a number > 0, got {step!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    data = _model.check_inputs(seed_inputs).detach()
    # the data set doubles each round; growing it to N * 2**rounds points holds it, the points
    # added, their gradient and the concatenated copy: about 3 copies of the final set
    final_points = data.shape[0] * float(2 ** min(rounds, 64))
    _budget.check_fits(
        "rounds", rounds, final_points * (3 * math.prod(data.shape[1:]) * data.element_size() + 8),
        f"the augmented data set ({data.shape[0]} x 2**{rounds} points) and its copies", data.device,
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    with _model.preserved_state(oracle):
        labels = _oracle_labels(oracle, data, batch_size)
    queries = len(data)
    optimizer = torch.optim.Adam(substitute.parameters(), lr=lr)
    for round_index in range(rounds + 1):
        substitute.train()
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=generator).to(data.device)
            for start in range(0, len(data), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad(set_to_none=True)
                nn.functional.cross_entropy(substitute(data[batch]), labels[batch]).backward()
                optimizer.step()
        if round_index == rounds:
            break
        substitute.eval()
        leaf = data.clone().requires_grad_(True)
        with torch.enable_grad():
            score = substitute(leaf).gather(1, labels.view(-1, 1)).sum()
            (grad,) = torch.autograd.grad(score, leaf)
        direction = step if round_index % 2 == 0 else -step
        new_points = (data + direction * grad.sign()).clamp(*bounds)
        with _model.preserved_state(oracle):
            new_labels = _oracle_labels(oracle, new_points, batch_size)
        queries += len(new_points)
        data, labels = torch.cat([data, new_points]), torch.cat([labels, new_labels])
    substitute.eval()
    return substitute, {"queries": float(queries), "dataset_size": float(len(data))}


def transfer_attack(
    target: Model,
    substitute: Model,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    attack: Callable[..., torch.Tensor] = pgd,
    **attack_kwargs: Any,
) -> tuple[torch.Tensor, float]:
    """Attack ``substitute`` white-box and hand the examples to ``target``; returns the examples
    and the transfer rate (fraction of them that the target misclassifies).

    >>> x_adv, rate = fastxai.transfer_attack(model, substitute, x, y, eps=0.3, alpha=0.05, steps=10)
    """
    adversarial = attack(substitute, inputs, labels, **attack_kwargs)
    with torch.no_grad(), _model.preserved_state(target):
        fooled = _model.logits(target, adversarial).argmax(1) != labels
    return adversarial, float(fooled.float().mean())
