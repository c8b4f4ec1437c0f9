"""The feature-squeezing detector (Xu, Evans and Qi 2018): an input is flagged when squeezing
changes the model's prediction too much.

``score(x) = max_s || softmax(f(x)) - softmax(f(s(x))) ||_1`` over the squeezers ``s``; the
threshold is set on clean inputs so that at most a fraction ``fpr`` of them score above it
(the paper's choice of a target false positive rate on legitimate examples).

``dtype=torch.bfloat16`` (or ``torch.float16``): the model runs under ``torch.autocast`` in that
dtype (``fastxai._precision``), its logits are taken to float64 before the softmax as without
it; a detector fitted with a ``dtype`` scores in it.

>>> detector = fastxai.fit_squeezing_detector(model, x_clean, fpr=0.05)
>>> flags, scores = detector.detect(x_test)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from fastxai import _model, _precision, _scheduling
from fastxai._model import Model
from fastxai.defences.squeezing import median_smooth, reduce_bit_depth

Squeezer = Callable[[torch.Tensor], torch.Tensor]


def default_squeezers() -> tuple[Squeezer, ...]:
    """The paper's joint detector for MNIST-like greyscale images in [0, 1]: 1-bit depth and
    2x2 median smoothing."""
    return (functools.partial(reduce_bit_depth, bits=1), functools.partial(median_smooth, size=2))


def check_squeezers(squeezers: object) -> tuple[Squeezer, ...]:
    if squeezers is None:
        return default_squeezers()
    if not isinstance(squeezers, (tuple, list)) or not squeezers:
        raise ValueError(
            f"squeezers must be a non-empty sequence of input transforms, got {type(squeezers).__name__}"
        )
    for index, squeezer in enumerate(squeezers):
        if not callable(squeezer):
            raise TypeError(f"squeezers[{index}] must be callable, got {type(squeezer).__name__}")
    return tuple(squeezers)


def _scores(model: Model, x: torch.Tensor, squeezers: Sequence[Squeezer], chunk: int) -> torch.Tensor:
    rows = []
    with torch.no_grad():
        for start in range(0, x.shape[0], chunk):
            part = x[start : start + chunk]
            reference = _model.logits(model, part).double().softmax(dim=1)
            distances = []
            for index, squeeze in enumerate(squeezers):
                squeezed = squeeze(part)
                if not isinstance(squeezed, torch.Tensor) or squeezed.dim() < 1 or len(squeezed) != len(part):
                    # the model reads the squeezed batch: it may change the image size (resizing),
                    # not the number of inputs
                    got = (
                        tuple(squeezed.shape)
                        if isinstance(squeezed, torch.Tensor)
                        else type(squeezed).__name__
                    )
                    raise ValueError(
                        f"squeezers[{index}] must return a batch of {len(part)} inputs, got {got}"
                    )
                probabilities = _model.logits(model, squeezed).double().softmax(dim=1)
                distances.append((reference - probabilities).abs().sum(dim=1))
            rows.append(torch.stack(distances).amax(dim=0))
    return torch.cat(rows).cpu()


def squeezing_scores(
    model: Model,
    inputs: torch.Tensor,
    *,
    squeezers: Sequence[Squeezer] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``max_s || softmax(f(x)) - softmax(f(s(x))) ||_1`` per input, [B] float64 in [0, 2].

    ``squeezers``: input transforms [B, *F] -> [B, *F'] (e.g. ``functools.partial(
    fastxai.reduce_bit_depth, bits=4)``, or a defence wrapper's ``.transform``); default: 1-bit
    depth and 2x2 median, the paper's MNIST detector. ``dtype``: the model's precision (module
    docstring).

    >>> squeezing_scores(model, x)
    """
    model = _model.check_model(model)
    squeezers = check_squeezers(squeezers)
    x = _model.check_inputs(inputs).detach()
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x, forward_only=True)
    scored = _precision.autocast_model(model, _precision.check_dtype(dtype, x.device), x.device.type)
    with _model.preserved_state(model):
        return _scores(scored, x, squeezers, chunk)


@dataclass(frozen=True)
class SqueezingDetector:
    """Flags inputs whose ``squeezing_scores`` exceed ``threshold`` (chosen on clean inputs at a
    false positive rate ``fpr``; ``calibration_fpr`` is the rate reached there, <= ``fpr``), the
    model run in ``dtype`` as when it was fitted."""

    model: Model
    squeezers: tuple[Squeezer, ...]
    threshold: float
    fpr: float
    calibration_fpr: float
    dtype: torch.dtype | None = None

    def scores(self, inputs: torch.Tensor, *, chunk_size: int | None = None) -> torch.Tensor:
        return squeezing_scores(
            self.model, inputs, squeezers=self.squeezers, chunk_size=chunk_size, dtype=self.dtype
        )

    def detect(
        self, inputs: torch.Tensor, *, chunk_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(flags [B] bool: score > threshold, scores [B] float64)."""
        scores = self.scores(inputs, chunk_size=chunk_size)
        return scores > self.threshold, scores


def threshold_at_fpr(clean_scores: torch.Tensor, fpr: float) -> float:
    """The smallest clean score such that at most ``floor(fpr * N)`` clean scores exceed it
    (``score > threshold`` flags; ties at the threshold are not flagged)."""
    allowed = math.floor(fpr * clean_scores.numel() + 1e-9)
    ordered = clean_scores.sort(descending=True).values
    return float(ordered[min(allowed, ordered.numel() - 1)])


def fit_squeezing_detector(
    model: Model,
    clean: torch.Tensor,
    *,
    squeezers: Sequence[Squeezer] | None = None,
    fpr: float = 0.05,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> SqueezingDetector:
    """Calibrate the feature-squeezing detector on clean inputs [N, *F]: the threshold lets
    through all but at most ``floor(fpr * N)`` of them, so the false positive rate on ``clean``
    is <= ``fpr`` (0 <= fpr < 1). ``dtype``: the model's precision, here and in the detector's
    scores (module docstring).

    >>> detector = fit_squeezing_detector(model, x_clean, fpr=0.05)
    >>> flags, scores = detector.detect(x_adv)
    """
    model = _model.check_model(model)
    squeezers = check_squeezers(squeezers)
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float)) or not 0 <= fpr < 1:
        raise ValueError(f"fpr must be a number in [0, 1), got {fpr!r}")
    x = _model.check_inputs(clean).detach()
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x, forward_only=True)
    model_dtype = _precision.check_dtype(dtype, x.device)
    scored = _precision.autocast_model(model, model_dtype, x.device.type)  # model itself for None
    with _model.preserved_state(model):
        scores = _scores(scored, x, squeezers, chunk)
    threshold = threshold_at_fpr(scores, float(fpr))
    reached = float((scores > threshold).double().mean())
    return SqueezingDetector(model, squeezers, threshold, float(fpr), reached, model_dtype)
