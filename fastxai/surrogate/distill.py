"""Global surrogates by distillation: an interpretable student trained on a model's soft labels,
and its fidelity (agreement with the model) on held-out data."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.nn import functional

from fastxai import _checks, _model
from fastxai._model import Model
from fastxai.surrogate.additive import fit_additive
from fastxai.surrogate.linear import fit_sparse_linear
from fastxai.surrogate.tree import fit_tree

STUDENTS = ("tree", "linear", "additive")


class Distillation(NamedTuple):
    """What ``distill`` returns: the student (a callable [N, *F] -> [N, C] scores whose argmax is
    its class), its fidelity on ``test_inputs`` (None without them) and on the training inputs."""

    student: Any
    fidelity: float | None
    train_fidelity: float


def teacher_logits(teacher: Model, inputs: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The teacher's logits [N, C] without gradients, in batches, the model left as found."""
    with _model.inference_state(teacher), torch.no_grad():
        return torch.cat(
            [
                _model.logits(teacher, inputs[start : start + batch_size])
                for start in range(0, len(inputs), batch_size)
            ]
        )


def fidelity(teacher: Model, student: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor) -> float:
    """The fraction of ``inputs`` [N, *F] on which the student's class is the teacher's class.

    >>> fidelity(model, result.student, x_test)
    """
    teacher = _model.check_model(teacher)
    x = _model.check_inputs(inputs).detach()
    expected = teacher_logits(teacher, x).argmax(1)
    with torch.no_grad():
        predicted = torch.as_tensor(student(x)).argmax(1).to(expected.device)
    return float((predicted == expected).double().mean())


def distill(
    teacher: Model,
    inputs: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    student: str = "tree",
    alpha: float = 1.0,
    temperature: float = 1.0,
    test_inputs: torch.Tensor | None = None,
    **options: Any,
) -> Distillation:
    """Train an interpretable ``student`` to mimic ``teacher`` on ``inputs`` [N, *F] with the
    distillation objective ``alpha * L_soft + (1 - alpha) * L_hard`` (Hinton et al. 2015):
    L_soft against the teacher's softened probabilities ``softmax(z / temperature)``, L_hard
    against ``labels`` [N] (the true classes; the teacher's own classes when None). Both losses
    are linear in the target, so the student fits one target per row, ``alpha * q + (1 - alpha)
    * onehot(y)``:

    - ``"tree"``: a depth-limited CART on that target with the squared-error criterion
      (``fit_tree``; options ``max_depth`` (default 3), ``min_samples_leaf``); ``.rules()``
      prints it as text;
    - ``"linear"``: multinomial logistic regression with an L1 penalty, by FISTA
      (``fit_sparse_linear``; options ``l1``, ``steps``, ``standardize``);
    - ``"additive"``: a neural additive model with cross-entropy (``fit_additive``; options
      ``hidden``, ``steps``, ``lr``, ...); inputs must be [N, D].

    Fidelity is the agreement of the student's class with the teacher's, on ``test_inputs``
    (held out) and on ``inputs``.

    >>> result = distill(model, x_train, y_train, student="tree", alpha=0.9, test_inputs=x_test, max_depth=4)
    >>> result.fidelity, print(result.student.rules())
    """
    teacher = _model.check_model(teacher)
    x = _model.check_inputs(inputs).detach()
    if student not in STUDENTS:
        raise ValueError(f"student must be one of {STUDENTS}, got {student!r}")
    alpha = _checks.check_number("alpha", alpha)
    if alpha > 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    temperature = _checks.check_number("temperature", temperature, strict=True)
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.shape != (len(x),):
            raise ValueError(f"labels must be None or [{len(x)}] integer classes, got {labels!r:.80}")
    held_out = None if test_inputs is None else _model.check_inputs(test_inputs).detach()
    if held_out is not None and held_out.shape[1:] != x.shape[1:]:
        raise ValueError(
            f"test_inputs must have the inputs' shape per row {tuple(x.shape[1:])}, "
            f"got {tuple(held_out.shape[1:])}"
        )
    if student == "additive" and x.dim() != 2:
        raise ValueError(f"the additive student needs inputs [N, D], got shape {tuple(x.shape)}")
    allowed = {
        "tree": {"max_depth", "min_samples_leaf", "min_gain"},
        "linear": {"l1", "steps", "tolerance", "standardize"},
        "additive": {"hidden", "activation", "steps", "lr", "batch_size", "weight_decay", "output_penalty",
                     "feature_dropout", "seed"},
    }[student]  # fmt: skip
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise TypeError(f"unknown options for the {student} student: {unknown} (allowed: {sorted(allowed)})")
    logits = teacher_logits(teacher, x)
    classes = logits.shape[1]
    if labels is not None and (int(labels.min()) < 0 or int(labels.max()) >= classes):
        raise ValueError(f"labels must be in [0, {classes}) for a teacher with {classes} outputs")
    soft = (logits.double() / temperature).softmax(1)
    hard = functional.one_hot(logits.argmax(1) if labels is None else labels.to(logits.device), classes)
    target = (alpha * soft + (1 - alpha) * hard.double()).cpu()
    flat = x.reshape(len(x), -1).cpu()
    model: Any
    if student == "tree":
        model = fit_tree(flat, target, **{"max_depth": 3} | options)
    elif student == "linear":
        model = fit_sparse_linear(flat, target, **options)
    else:
        model = fit_additive(flat, target.float(), loss="cross_entropy", **options)

    def agreement(points: torch.Tensor, expected: torch.Tensor) -> float:
        with torch.no_grad():
            predicted = model(points.reshape(len(points), -1).cpu()).argmax(1)
        return float((predicted == expected.cpu()).double().mean())

    test = None if held_out is None else agreement(held_out, teacher_logits(teacher, held_out).argmax(1))
    return Distillation(model, test, agreement(x, logits.argmax(1)))
