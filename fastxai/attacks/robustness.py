"""Clean and robust accuracy of a model over a data set."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch

from fastxai import _backends, _model, _precision
from fastxai._model import Model
from fastxai.attacks import _core
from fastxai.attacks.gradient_attacks import pgd

Attack = Callable[[Model, torch.Tensor, torch.Tensor], torch.Tensor]


def _batches(data: object, batch_size: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        inputs, labels = data
        if inputs.shape[0] != labels.shape[0]:
            raise ValueError(f"data holds {inputs.shape[0]} inputs but {labels.shape[0]} labels")
        for start in range(0, inputs.shape[0], batch_size):
            yield inputs[start : start + batch_size], labels[start : start + batch_size]
        return
    if not isinstance(data, Iterable):
        raise TypeError("data must be (inputs, labels) tensors or an iterable of (inputs, labels) batches")
    for batch in data:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError("each batch of data must be (inputs, labels, ...)")
        yield batch[0], batch[1]


def _check_pgd_options(options: dict[str, Any]) -> dict[str, Any]:
    """The default PGD's keyword arguments checked before the first batch: a bad ``eps`` must not
    pass unnoticed because no sample happened to be classified correctly (and so attacked).
    Returns every setting, defaults included."""
    signature = inspect.signature(pgd)
    try:
        bound = signature.bind_partial(**options)
    except TypeError as error:
        raise TypeError(f"attack_kwargs for the default PGD: {error}") from None
    settings = {name: p.default for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}
    settings.update(bound.arguments)
    _core.check_options(
        eps=settings["eps"],
        alpha=settings["alpha"],
        steps=settings["steps"],
        norm=settings["norm"],
        restarts=settings["restarts"],
        loss=settings["loss"],
        bounds=settings["bounds"],
        momentum_decay=None,
        seed=settings["seed"],
        backend=settings["backend"],
        eot_samples=settings["eot_samples"],
    )
    # the type and value here; the device's own support when PGD meets the first batch
    _precision.check_dtype(settings["dtype"], torch.device("cpu"))
    return settings


def _check_labels(labels: object, batch: int, classes: int, offset: int) -> torch.Tensor:
    """A batch's labels as [batch] class indices in [0, classes): a label the model cannot
    output would silently count as a clean error."""
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1 or labels.shape[0] != batch:
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(
            f"labels must be a tensor [{batch}] of class indices for {batch} inputs, got {shape}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class indices, got {labels.dtype}")
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= classes:
        raise ValueError(
            f"labels must be in [0, {classes}) for a model with {classes} outputs, got values in "
            f"[{low}, {high}] (in the batch starting at sample {offset})"
        )
    return labels.long()


def robust_accuracy(
    model: Model,
    data: object,
    attack: Attack | None = None,
    *,
    batch_size: int = 256,
    device: torch.device | str | None = None,
    **attack_kwargs: Any,
) -> dict[str, float]:
    """Clean accuracy, and accuracy under ``attack`` (default: ``fastxai.pgd`` with
    ``attack_kwargs`` and ``early_stop=True``, or ``early_stop=False`` when they ask for
    ``cuda_graph=True``, which replays fixed shapes, or for a half ``dtype``, see below).

    ``data``: a pair of tensors (inputs [N, *F], labels [N]) or an iterable of batches (a
    DataLoader). Only correctly classified samples are attacked — the others already count as
    errors — and with early stopping a sample costs nothing once it is fooled, which is why a
    robustness evaluation runs well below steps x (forward+backward) of the data.
    ``attack``: any ``attack(model, inputs, labels) -> adversarial inputs``. ``dtype`` among
    ``attack_kwargs`` (``torch.bfloat16``) runs the default PGD's steps under autocast; the
    clean and the robust predictions are the model's own, in its precision. Early stopping is
    then off unless asked for: it would stop a sample at its first iterate that fools the bf16
    model, a few of which the model itself still classifies correctly, and overstate robust
    accuracy (digits CNN, 64 inputs: 0.297 against float32's 0.203; without it 0.219; README
    "bf16").

    Returns ``{"clean_accuracy", "robust_accuracy", "samples"}``.

    >>> fastxai.robust_accuracy(model, (x_test, y_test), eps=8/255, alpha=2/255, steps=10)
    """
    model = _model.check_model(model)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if attack is not None and attack_kwargs:
        raise ValueError(
            f"attack_kwargs {sorted(attack_kwargs)} are for the default PGD; pass them to your attack"
        )
    settings: dict[str, Any] | None = None
    if attack is None:
        exact = not attack_kwargs.get("cuda_graph", False) and attack_kwargs.get("dtype") is None
        options = {"early_stop": exact, **attack_kwargs}
        settings = _check_pgd_options(options)

        def attack(model_: Model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return pgd(model_, x, y, **options)

    samples = clean_correct = robust_correct = 0
    with _model.preserved_state(model):
        for inputs, labels in _batches(data, batch_size):
            if device is not None:
                inputs, labels = inputs.to(device), labels.to(device)
            if settings is not None and isinstance(inputs, torch.Tensor) and inputs.is_floating_point():
                # what the default PGD would refuse on this batch, said before its clean pass
                _core.check_restarts_fit(settings["restarts"], inputs)
                _backends.resolve(settings["backend"], inputs.device, inputs.dtype)
            with torch.no_grad():
                logits = _model.logits(model, inputs)
            labels = _check_labels(labels, inputs.shape[0], logits.shape[1], samples)
            correct = logits.argmax(1) == labels
            samples += labels.shape[0]
            clean_correct += int(correct.sum())
            if not bool(correct.any()):
                continue
            adversarial = attack(model, inputs[correct], labels[correct])
            with torch.no_grad():
                robust_correct += int((_model.logits(model, adversarial).argmax(1) == labels[correct]).sum())
    if samples == 0:
        raise ValueError("data is empty")
    return {
        "clean_accuracy": clean_correct / samples,
        "robust_accuracy": robust_correct / samples,
        "samples": float(samples),
    }
