"""DeepFool (Moosavi-Dezfooli, Fawzi and Frossard, "DeepFool: a simple and accurate method to
fool deep neural networks", CVPR 2016): the minimal L2 step to the nearest linearised boundary.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastxai import _model
from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.attacks._boundary import logits_and_jacobian
from fastxai.attacks._core import prepare, resolve_labels


def deepfool(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    steps: int = 50,
    overshoot: float = 0.02,
    candidates: int | None = None,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """DeepFool, batched: while a sample is still classified as its label ``y`` (at most
    ``steps`` rounds), linearise every logit ``f_k`` at the current point ``x`` and step to the
    nearest linearised boundary, with ``f'_k = f_k - f_y`` and ``w'_k = grad f_k - grad f_y``:

        l = argmin_{k != y} |f'_k| / ||w'_k||_2,
        x <- clamp(x + (1 + overshoot) * |f'_l| w'_l / ||w'_l||_2^2, bounds).

    On an affine model one step lands ``(1 + overshoot)`` times the exact distance to the
    nearest decision boundary away. The overshoot scales each step (as torchattacks 3.5 does;
    the paper scales the accumulated perturbation): same iterates as ``torchattacks.DeepFool``.

    - ``labels``: true classes [B] or None (the predicted classes).
    - ``candidates``: linearise only the ``candidates`` classes that score highest at the clean
      input (the label among them), as the DeepFool authors' code and Foolbox do (their
      default: 10), fixed for the whole attack; None (default, torchattacks'): every class.
      With 1000 ImageNet classes, 10 candidates make each round 100x cheaper; the boundary
      found is the nearest among those classes, so it can be farther than with every class.
    - Cost per round: one model call on C copies of the samples still correctly classified
      (C candidate classes, or K, every class), for those Jacobian rows in one backward pass.

    inputs: [B, *F] within ``bounds``; returns [B, *F]. A sample already misclassified is
    returned unchanged. The model is left as found. ``dtype``: the model (the Jacobian's
    forward and backward) under autocast in that dtype, the steps in the inputs' dtype
    (``fastxai.pgd``'s ``dtype``). DeepFool stops just past the boundary of the model it runs,
    the bf16 one: a fraction of its examples do not fool the float32 model (README "bf16").

    >>> x_adv = fastxai.deepfool(model, x, y, steps=50, overshoot=0.02)
    """
    if isinstance(overshoot, bool) or not isinstance(overshoot, (int, float)) or not overshoot >= 0:
        raise ValueError(f"overshoot must be a number >= 0, got {overshoot!r}")
    if candidates is not None and (
        isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 2
    ):
        raise ValueError(
            f"candidates must be None or an int >= 2 (the label and one other), got {candidates!r}"
        )
    steps = check_count("steps", steps)
    model, x, label_t, forward = prepare(model, inputs, labels, bounds, normalize, dtype)
    low, high = float(bounds[0]), float(bounds[1])
    with _model.preserved_state(model):
        label_t = resolve_labels(forward, x, label_t)
        classes = None
        if candidates is not None:
            with torch.no_grad():
                clean = forward(x)
            if candidates < clean.shape[1]:
                # The top classes hold the label of every sample still to attack (its argmax).
                classes = clean.topk(candidates, dim=1).indices
        adversarial = x.clone()
        active = torch.arange(x.shape[0], device=x.device)
        for _ in range(steps):
            points = adversarial[active]
            rows_classes = None if classes is None else classes[active]
            logits, jacobian = logits_and_jacobian(forward, points, rows_classes)
            labels_now = label_t[active]
            correct = logits.argmax(dim=1) == labels_now
            if rows_classes is not None:
                logits = logits.gather(1, rows_classes)  # [A, C]: the candidates' logits
                labels_now = (rows_classes == labels_now.unsqueeze(1)).int().argmax(dim=1)  # column
            if not bool(correct.all()):
                active, points, logits, jacobian, labels_now = (
                    t[correct] for t in (active, points, logits, jacobian, labels_now)
                )
            if active.numel() == 0:
                break
            rows = torch.arange(active.numel(), device=x.device)
            logit_gaps = logits.float() - logits.float()[rows, labels_now].unsqueeze(1)  # [A, C]
            directions = (jacobian - jacobian[rows, labels_now].unsqueeze(1)).flatten(2).float()
            lengths = directions.norm(dim=2)  # [A, C]
            distances = logit_gaps.abs() / lengths
            distances[rows, labels_now] = torch.inf
            nearest = distances.argmin(dim=1)
            direction = directions[rows, nearest]
            step = logit_gaps[rows, nearest].abs() / lengths[rows, nearest].square()
            delta = (step.unsqueeze(1) * direction).view_as(points)
            adversarial[active] = torch.clamp(points + (1 + overshoot) * delta.to(x.dtype), low, high)
        return adversarial
