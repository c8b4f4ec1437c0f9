"""Faithfulness of attributions: deletion and insertion curves, infidelity, sensitivity-max,
completeness.

Every metric sends all of its perturbed inputs through the model in chunks of ``chunk_size``
(samples x steps or samples x perturbations flattened into model batches); the perturbed
inputs are built by the fused ops (``masked_blend`` for the curves, ``gaussian_perturb`` for
infidelity's noise), so results do not depend on the chunk size.

``dtype=torch.bfloat16`` (or ``torch.float16``) on the metrics that call the model (deletion,
insertion, infidelity, completeness): every model call runs under ``torch.autocast`` in that
dtype (``fastxai._precision``); the perturbed inputs the curves and infidelity build are made
in it, the scores are taken in float32 and the sums in float64, as without it. The metric is
then of the model run in that precision.

>>> from fastxai import evaluation as ev
>>> curve, auc = ev.deletion(model, x, fx.saliency(model, x, target=y), target=y)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

from fastxai import _backends, _budget, _model, _precision, _scheduling, ops
from fastxai._checks import check_count
from fastxai._model import Model

REPLACEMENTS = ("zero", "mean", "blur")
SCORES = ("probability", "logit")
_SEED_STRIDE = 1_000_003
"""sensitivity_max draws perturbation s of seed k from a generator seeded with k * stride + s."""


class Curve(NamedTuple):
    """A deletion or insertion curve: ``scores`` [B, n_steps + 1] at the fractions
    ``0, 1/n_steps, ..., 1`` of features removed (inserted), and its area ``auc`` [B]
    (trapezoid rule over the fraction, so a constant score s has area s)."""

    scores: torch.Tensor
    auc: torch.Tensor

    @property
    def fractions(self) -> torch.Tensor:
        steps = self.scores.shape[1] - 1
        return torch.linspace(0.0, 1.0, steps + 1, device=self.scores.device)


def _check_attributions(attributions: object, inputs: torch.Tensor) -> torch.Tensor:
    if not isinstance(attributions, torch.Tensor) or not attributions.is_floating_point():
        raise TypeError(
            f"attributions must be a floating-point torch.Tensor, got {type(attributions).__name__}"
        )
    if attributions.shape != inputs.shape:
        raise ValueError(
            f"attributions must have the inputs' shape {tuple(inputs.shape)}, got {tuple(attributions.shape)}"
        )
    if not _model.all_finite(attributions):
        raise ValueError("attributions contain NaN or infinity")
    return attributions.to(inputs.device)


def _feature_groups(
    inputs: torch.Tensor, feature_mask: object, per_pixel: bool | None
) -> tuple[torch.Tensor, int]:
    """Group ids [*F] (int64, 0..M-1) of the features that are removed together, and M."""
    shape = inputs.shape[1:]
    if feature_mask is not None:
        if not isinstance(feature_mask, torch.Tensor) or feature_mask.dtype not in (
            torch.int32,
            torch.int64,
        ):
            raise TypeError("feature_mask must be an integer torch.Tensor of group ids")
        if feature_mask.shape != shape:
            raise ValueError(
                f"feature_mask must have the shape of one input {tuple(shape)}, "
                f"got {tuple(feature_mask.shape)}"
            )
        mask = feature_mask.to(inputs.device, torch.long)
        ids = torch.unique(mask)
        if int(ids[0]) != 0 or int(ids[-1]) != ids.numel() - 1:
            raise ValueError("feature_mask must use the group ids 0..M-1, each at least once")
        return mask, ids.numel()
    if per_pixel is None:
        per_pixel = inputs.dim() == 4
    if per_pixel:
        if inputs.dim() < 3:
            raise ValueError(f"per_pixel needs inputs [B, C, *spatial], got shape {tuple(inputs.shape)}")
        pixels = math.prod(shape[1:])
        mask = torch.arange(pixels, device=inputs.device).view(1, *shape[1:]).expand(shape).contiguous()
        return mask, pixels
    return torch.arange(math.prod(shape), device=inputs.device).view(shape), math.prod(shape)


def replacement_values(inputs: torch.Tensor, replacement: object, blur_sigma: float = 2.0) -> torch.Tensor:
    """What a removed feature becomes: ``"zero"``, ``"mean"`` (the per-sample mean of each
    channel), ``"blur"`` (a Gaussian blur of the image with ``blur_sigma`` pixels; inputs
    [B, C, H, W]), or a tensor of the inputs' shape or of one input's shape: [B, *F]."""
    if isinstance(replacement, torch.Tensor):
        if replacement.shape == inputs.shape[1:]:
            replacement = replacement.expand_as(inputs)
        if replacement.shape != inputs.shape:
            raise ValueError(
                f"replacement must have the inputs' shape {tuple(inputs.shape)} or one input's "
                f"{tuple(inputs.shape[1:])}, got {tuple(replacement.shape)}"
            )
        return replacement.to(inputs.device, inputs.dtype).contiguous()
    if replacement == "zero":
        return torch.zeros_like(inputs)
    if replacement == "mean":
        dims = tuple(range(2, inputs.dim())) if inputs.dim() >= 3 else (1,)
        return inputs.mean(dim=dims, keepdim=True).expand_as(inputs).contiguous()
    if replacement == "blur":
        if inputs.dim() != 4:
            raise ValueError(f"replacement='blur' needs images [B, C, H, W], got shape {tuple(inputs.shape)}")
        if not blur_sigma > 0:
            raise ValueError(f"blur_sigma must be > 0, got {blur_sigma}")
        radius = max(1, math.ceil(3 * blur_sigma))
        offsets = torch.arange(-radius, radius + 1, device=inputs.device, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / blur_sigma) ** 2)
        kernel = (kernel / kernel.sum()).to(inputs.dtype)
        channels = inputs.shape[1]
        mode = "reflect" if min(inputs.shape[2:]) > radius else "replicate"
        blurred = F.pad(inputs, (radius, radius, 0, 0), mode=mode)
        blurred = F.conv2d(blurred, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
        blurred = F.pad(blurred, (0, 0, radius, radius), mode=mode)
        return F.conv2d(blurred, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
    raise ValueError(f"replacement must be one of {REPLACEMENTS} or a tensor, got {replacement!r}")


def _target_score(output: torch.Tensor, target: torch.Tensor, score: str) -> torch.Tensor:
    if score == "probability":
        output = output.float().softmax(dim=1)
    return output.gather(1, target.view(-1, 1)).squeeze(1).float()


def _curve(
    model: Model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: object,
    insertion: bool,
    n_steps: int,
    replacement: object,
    blur_sigma: float,
    feature_mask: object,
    per_pixel: bool | None,
    score: str,
    chunk_size: int | None,
    backend: str | None,
    dtype: object = None,
) -> Curve:
    model = _model.check_model(model)
    inputs = _model.check_inputs(inputs)
    attributions = _check_attributions(attributions, inputs)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    n_steps = check_count("n_steps", n_steps)
    # held for the whole curve: the step sizes (two int64 per step) and the scores [B, n_steps + 1]
    _budget.check_fits(
        "n_steps", n_steps, (n_steps + 1) * (16 + 4 * inputs.shape[0]), "the curve's steps and scores",
        inputs.device,
    )  # fmt: skip
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    points = _precision.points_dtype(inputs, model_dtype)  # the copies' dtype
    _backends.resolve(backend, inputs.device, points)  # one that cannot blend them: before the model
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    mask, groups = _feature_groups(inputs, feature_mask, per_pixel)
    removed = replacement_values(inputs, replacement, blur_sigma)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    batch = inputs.shape[0]

    # Rank of each group by its summed attribution, most relevant first (ties: lower id first).
    group_scores = torch.zeros(batch, groups, device=inputs.device, dtype=torch.float64)
    group_scores.scatter_add_(
        1, mask.reshape(1, -1).expand(batch, -1), attributions.reshape(batch, -1).double()
    )
    order = group_scores.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(groups, device=inputs.device).expand(batch, -1)
    )
    # Groups changed after step s: the first round(s * M / n_steps) of the ranking.
    steps = torch.arange(n_steps + 1, device=inputs.device)
    changed = (2 * steps * groups + n_steps) // (2 * n_steps)
    base, start = (removed, inputs) if insertion else (inputs, removed)
    if model_dtype is not None:  # the copies built in the precision the model runs in
        base, start = base.to(model_dtype), start.to(model_dtype)
    scores = torch.empty(batch, n_steps + 1, device=inputs.device, dtype=torch.float32)
    scored = _precision.autocast_model(model, model_dtype, inputs.device.type)  # model itself for None

    with _model.preserved_state(model):
        target_t = _model.resolve_target(scored, inputs.to(points), target_t, chunk)

        def body(step: int, step_stop: int, row: int, row_stop: int) -> None:
            # keep = 1: the feature shows ``start`` (the input for deletion); 0: ``base``.
            keep = (rank[row:row_stop, None, :] >= changed[None, step:step_stop, None]).to(torch.float32)
            perturbed = ops.masked_blend(
                base[row:row_stop], start[row:row_stop], mask, keep, backend=backend
            ).flatten(0, 1)
            with torch.no_grad():
                output = _model.logits(scored, perturbed)
            rows = target_t[row:row_stop].repeat_interleave(step_stop - step)
            scores[row:row_stop, step:step_stop] = _target_score(output, rows, score).view(
                row_stop - row, step_stop - step
            )

        _plan(n_steps + 1, batch, chunk, body)
    auc = (scores[:, :-1] + scores[:, 1:]).sum(dim=1) / (2 * n_steps)
    return Curve(scores, auc)


def _plan(n_points: int, batch: int, chunk: int, body: Callable[[int, int, int, int], None]) -> None:
    """``body(point, point_stop, row, row_stop)`` over rows x points blocks of <= ``chunk`` inputs,
    all points of a row together when they fit (one ranking per row, many steps per pass)."""
    points_per_block = min(n_points, chunk)
    rows_per_block = max(1, chunk // points_per_block)
    for row in range(0, batch, rows_per_block):
        row_stop = min(batch, row + rows_per_block)
        for point in range(0, n_points, points_per_block):
            body(point, min(n_points, point + points_per_block), row, row_stop)


def deletion(
    model: Model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: object = None,
    *,
    n_steps: int = 32,
    replacement: str | torch.Tensor = "zero",
    blur_sigma: float = 2.0,
    feature_mask: torch.Tensor | None = None,
    per_pixel: bool | None = None,
    score: str = "probability",
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
) -> Curve:
    """Deletion curve (pixel flipping, Bach et al. 2015; Samek et al. 2017; Petsiuk et al. 2018):
    the features are removed (set to ``replacement``) most relevant first, in ``n_steps`` equal
    steps, and the target's score is recorded after each; a faithful attribution makes the
    score fall fast, so a lower AUC is better.

    Features are ranked by their attribution (summed over channels when ``per_pixel``, the
    default for images [B, C, H, W]; summed over groups given by ``feature_mask`` [*F]).
    ``score``: the target's softmax ``"probability"`` or its ``"logit"``. ``dtype``: the model's
    precision (module docstring: the copies in it, the scores float32).
    inputs, attributions: [B, *F]; returns ``Curve(scores [B, n_steps + 1], auc [B])``.

    >>> curve, auc = ev.deletion(model, x, fx.integrated_gradients(model, x, target=y), target=y)
    """
    return _curve(
        model, inputs, attributions, target, False, n_steps, replacement, blur_sigma,
        feature_mask, per_pixel, score, chunk_size, backend, dtype,
    )  # fmt: skip


def insertion(
    model: Model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: object = None,
    *,
    n_steps: int = 32,
    replacement: str | torch.Tensor = "blur",
    blur_sigma: float = 2.0,
    feature_mask: torch.Tensor | None = None,
    per_pixel: bool | None = None,
    score: str = "probability",
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
) -> Curve:
    """Insertion curve (Petsiuk et al. 2018): start from ``replacement`` (a blurred image by
    default) and put the input's features back most relevant first; a higher AUC is better.
    Arguments and result as :func:`deletion`.

    >>> curve, auc = ev.insertion(model, x, attributions, target=y, replacement="blur")
    """
    return _curve(
        model, inputs, attributions, target, True, n_steps, replacement, blur_sigma,
        feature_mask, per_pixel, score, chunk_size, backend, dtype,
    )  # fmt: skip


def random_attributions(inputs: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Uniform random attributions [B, *F]: the random-ordering reference of deletion and
    insertion curves (a method worth using must beat it)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(inputs.shape, generator=generator).to(inputs.device, torch.float32)


def infidelity(
    model: Model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: object = None,
    *,
    noise_std: float = 0.003,
    perturb_func: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    n_perturb_samples: int = 10,
    normalize: bool = False,
    seed: int | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Infidelity (Yeh et al. 2019): ``E_I[(I . attributions - (f(x) - f(x - I)))^2]`` over
    perturbations ``I``, estimated with ``n_perturb_samples`` of them; lower is better.

    By default ``I ~ N(0, noise_std^2)`` per element, drawn in-kernel (``ops.gaussian_perturb``:
    same ``seed``, same noise whatever the chunking). ``perturb_func(x) -> (I, x - I)`` replaces
    it (Captum's convention; called on chunks of inputs repeated per perturbation, rows ordered
    sample-major). ``normalize=True`` rescales the attributions by the least-squares optimal
    ``beta`` first, as Captum does. ``f`` is the target's logit. inputs, attributions: [B, *F];
    returns [B] (fp32).

    ``dtype=torch.bfloat16`` (or ``torch.float16``): the model runs under autocast in that
    dtype on the inputs rounded to it, the noisy copies are drawn in it, and ``I`` is the
    difference of the two as the model sees them (in float32: bf16 rounds a perturbation of
    ``noise_std=0.003`` at inputs near 1 to a multiple of 2^-8, and the metric is of that one);
    ``perturb_func``'s ``I`` is taken as given, its ``x - I`` rounded by autocast.

    >>> ev.infidelity(model, x, fx.integrated_gradients(model, x, target=y), target=y, seed=0)
    """
    from fastxai.attribution.smoothgrad import _check_seed

    model = _model.check_model(model)
    inputs = _model.check_inputs(inputs)
    attributions = _check_attributions(attributions, inputs)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    n_perturb_samples = check_count("n_perturb_samples", n_perturb_samples)
    if perturb_func is None:
        if not (isinstance(noise_std, (int, float)) and not isinstance(noise_std, bool)) or not (
            0 < noise_std < math.inf
        ):
            raise ValueError(f"noise_std must be a finite float > 0, got {noise_std!r}")
        seed_value = _check_seed(seed)
        _budget.check_philox_samples("n_perturb_samples", n_perturb_samples)
    elif not callable(perturb_func):
        raise TypeError(f"perturb_func must be callable, got {type(perturb_func).__name__}")
    points = _precision.points_dtype(inputs, model_dtype)  # what the default noise is drawn in
    if perturb_func is None:  # a backend that cannot draw the noise in that dtype: before the model
        _backends.resolve(backend, inputs.device, points)
    elif backend is not None:
        _backends.check_choice(backend)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    batch = inputs.shape[0]
    # Per sample: sum (aI)^2, sum aI * diff, sum diff^2 over the perturbations, in fp64.
    sums = torch.zeros(3, batch, device=inputs.device, dtype=torch.float64)
    flat_attributions = attributions.reshape(batch, -1).double()

    scored = _precision.autocast_model(model, model_dtype, inputs.device.type)  # model itself for None
    # the inputs as the model sees them: rounded to ``dtype`` (the noise is drawn around them)
    source = inputs if model_dtype is None or perturb_func is not None else inputs.to(model_dtype)

    with _model.preserved_state(model):
        target_t = _model.resolve_target(scored, source, target_t, chunk)
        clean = _model.target_scores(scored, source, target_t, chunk).double()

        def body(sample: int, sample_stop: int, row: int, row_stop: int) -> None:
            rows, count = row_stop - row, sample_stop - sample
            x = source[row:row_stop]
            if perturb_func is None:
                sigma = torch.full((rows,), float(noise_std), device=inputs.device)
                perturbed = ops.gaussian_perturb(x, sigma, seed_value, sample, count, row, backend=backend)
                perturbed = perturbed.transpose(0, 1).reshape(rows * count, *x.shape[1:])
                if model_dtype is None:
                    perturbation = x.repeat_interleave(count, dim=0) - perturbed
                else:  # the half-precision copies' differences, exact in float32
                    wide = _precision.accumulator_dtype(inputs.dtype)
                    perturbation = x.to(wide).repeat_interleave(count, dim=0) - perturbed.to(wide)
            else:
                perturbation, perturbed = perturb_func(x.repeat_interleave(count, dim=0))
                for name, tensor in (("perturbation", perturbation), ("perturbed input", perturbed)):
                    if not isinstance(tensor, torch.Tensor) or tensor.shape != (rows * count, *x.shape[1:]):
                        raise ValueError(
                            f"perturb_func must return two tensors [{rows * count}, *F]: bad {name}"
                        )
            targets = target_t[row:row_stop].repeat_interleave(count)
            scores = _model.target_scores(scored, perturbed, targets, perturbed.shape[0]).double()
            difference = (clean[row:row_stop].repeat_interleave(count) - scores).view(rows, count)
            dot = (
                perturbation.reshape(rows, count, -1).double() * flat_attributions[row:row_stop, None]
            ).sum(dim=2)
            sums[0, row:row_stop] += dot.square().sum(dim=1)
            sums[1, row:row_stop] += (dot * difference).sum(dim=1)
            sums[2, row:row_stop] += difference.square().sum(dim=1)

        _scheduling.for_each_block(n_perturb_samples, batch, chunk, body)
    if normalize:
        beta = torch.where(sums[0] > 0, sums[1] / sums[0].clamp(min=1e-300), 0.0)
    else:
        beta = torch.ones(batch, device=inputs.device, dtype=torch.float64)
    value = beta.square() * sums[0] - 2 * beta * sums[1] + sums[2]
    return (value / n_perturb_samples).float()


def sensitivity_max(
    explain: Callable[..., torch.Tensor],
    inputs: torch.Tensor,
    target: object = None,
    *,
    perturb_radius: float = 0.02,
    n_perturb_samples: int = 10,
    seed: int = 0,
    chunk_size: int | None = None,
    **explain_kwargs: Any,
) -> torch.Tensor:
    """Max-sensitivity (Yeh et al. 2019): ``max_d ||E(x + d) - E(x)|| / ||E(x)||`` over
    ``n_perturb_samples`` draws of ``d ~ U[-r, r]^F`` (``r = perturb_radius``, Captum's default
    perturbation); ``||.||`` is the Frobenius norm, and ``||E(x)|| = 0`` counts as 1.

    ``explain(inputs, target=..., **explain_kwargs) -> [N, *F]`` is called on chunks holding
    many perturbations at once (e.g. ``lambda x, target: fx.saliency(model, x, target)``);
    ``target`` is given per row. The noise of perturbation s is drawn from a generator seeded
    with (``seed``, s), so results do not depend on ``chunk_size``. inputs: [B, *F]; returns [B].

    >>> ev.sensitivity_max(lambda x, target: fx.saliency(model, x, target), x, target=y)
    """
    if not callable(explain):
        raise TypeError(f"explain must be callable, got {type(explain).__name__}")
    inputs = _model.check_inputs(inputs)
    n_perturb_samples = check_count("n_perturb_samples", n_perturb_samples)
    if (
        isinstance(perturb_radius, bool)
        or not isinstance(perturb_radius, (int, float))
        or not (0 < perturb_radius < math.inf)
    ):
        raise ValueError(f"perturb_radius must be a finite float > 0, got {perturb_radius!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if seed * _SEED_STRIDE + n_perturb_samples > 2**64:  # else torch fails at the first draw, late
        raise ValueError(
            f"seed must be at most {(2**64 - n_perturb_samples) // _SEED_STRIDE} with "
            f"n_perturb_samples={n_perturb_samples} (perturbation s is drawn with the 64-bit "
            f"seed seed * {_SEED_STRIDE} + s), got {seed!r}"
        )
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    batch = inputs.shape[0]

    def run(x: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        result = explain(x, target=rows, **explain_kwargs)
        if not isinstance(result, torch.Tensor) or result.shape != x.shape:
            raise ValueError(
                f"explain must return attributions of its inputs' shape {tuple(x.shape)}, "
                f"got {getattr(result, 'shape', type(result).__name__)}"
            )
        return result.reshape(x.shape[0], -1).double()

    reference = torch.cat(
        [
            run(inputs[row : row + chunk], None if target_t is None else target_t[row : row + chunk])
            for row in range(0, batch, chunk)
        ]
    )
    norms = reference.norm(dim=1)
    norms = torch.where(norms == 0, torch.ones_like(norms), norms)
    worst = torch.zeros(batch, device=inputs.device, dtype=torch.float64)

    def noise(sample: int) -> torch.Tensor:
        generator = torch.Generator(device=inputs.device).manual_seed(seed * _SEED_STRIDE + sample)
        uniform = torch.rand(inputs.shape, generator=generator, device=inputs.device, dtype=torch.float32)
        return ((2 * uniform - 1) * perturb_radius).to(inputs.dtype)

    def body(sample: int, sample_stop: int, row: int, row_stop: int) -> None:
        # Perturbations sample..sample_stop of rows row..row_stop in one call, sample-major.
        perturbed = torch.cat(
            [inputs[row:row_stop] + noise(s)[row:row_stop] for s in range(sample, sample_stop)]
        )
        rows = None if target_t is None else target_t[row:row_stop].repeat(sample_stop - sample)
        change = (run(perturbed, rows) - reference[row:row_stop].repeat(sample_stop - sample, 1)).norm(dim=1)
        ratio = (change.view(sample_stop - sample, row_stop - row) / norms[row:row_stop]).amax(dim=0)
        worst[row:row_stop] = torch.maximum(worst[row:row_stop], ratio)

    _scheduling.for_each_block(n_perturb_samples, batch, chunk, body)
    return worst.float()


def completeness_error(
    model: Model,
    inputs: torch.Tensor,
    attributions: torch.Tensor,
    target: object = None,
    *,
    baselines: torch.Tensor | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Completeness error (Sundararajan et al. 2017): ``sum(attributions) - (f(x) - f(baseline))``
    per sample, with ``f`` the target's logit and a zero baseline by default: [B]. Zero for an
    exact Integrated Gradients (or SHAP) attribution. ``dtype``: ``f`` is the model run under
    autocast in that dtype (the default None: as given; a bf16 attribution is best judged
    against the float32 model, README "bf16")."""
    model = _model.check_model(model)
    inputs = _model.check_inputs(inputs)
    attributions = _check_attributions(attributions, inputs)
    model_dtype = _precision.check_dtype(dtype, inputs.device)
    if baselines is None:
        baselines = torch.zeros_like(inputs)
    elif not isinstance(baselines, torch.Tensor) or baselines.shape != inputs.shape:
        raise ValueError(
            f"baselines must be a tensor of the inputs' shape {tuple(inputs.shape)}, "
            f"got {getattr(baselines, 'shape', type(baselines).__name__)}"
        )
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)
    scored = _precision.autocast_model(model, model_dtype, inputs.device.type)  # model itself for None
    baselines = baselines.to(inputs.device, inputs.dtype)
    with _model.preserved_state(model):
        target_t = _model.resolve_target(scored, inputs, target_t, chunk)
        gap = (
            _model.target_scores(scored, inputs, target_t, chunk).double()
            - _model.target_scores(scored, baselines, target_t, chunk).double()
        )
    return (attributions.reshape(inputs.shape[0], -1).double().sum(dim=1) - gap).float()
