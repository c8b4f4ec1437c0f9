"""LIME (Ribeiro et al. 2016) with Captum's defaults: random on/off feature groups, an exponential
kernel on the cosine distance, a Lasso surrogate; every input's surrogate fitted together."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from fastxai import _backends, _budget, _graphs, _model, _precision
from fastxai._model import Model
from fastxai.attribution import _perturbation, surrogate
from fastxai.attribution.integrated_gradients import check_baselines

INTERPRETABLE_MODELS = ("lasso", "linear")
DISTANCE_MODES = ("cosine", "euclidean")
_COSINE_EPS = 1e-8
"""``torch.nn.CosineSimilarity``'s default eps, as in Captum's kernel."""


def _similarities(
    x: torch.Tensor,
    baseline: torch.Tensor,
    mask: torch.Tensor,
    groups: int,
    samples: torch.Tensor,
    distance_mode: str,
    kernel_width: float,
) -> torch.Tensor:
    """``exp(-d(x, x_z)^2 / (2 kernel_width^2))`` for every perturbed input ``x_z`` [B, P].

    Computed from per-group sums of ``x*x``, ``x*b``, ``b*b``, ``(x-b)^2`` without building
    ``x_z``: with ``z`` in {0,1}^M, ``x_z . x = z . S_xx + (1 - z) . S_xb = z . (S_xx - S_xb) +
    sum S_xb`` and so on, so every sample's terms come out of one batched matrix product.
    """
    xd, bd = x.double(), baseline.double()
    z = _perturbation.as_dtype(samples, torch.float64)
    if distance_mode == "euclidean":
        gap = _perturbation.group_sums((xd - bd) ** 2, mask, groups)
        # sum over the groups z drops: sum(gap) - z . gap
        distance_sq = gap.sum(1, keepdim=True) - (z @ gap.unsqueeze(2)).squeeze(2)
    else:
        s_xx = _perturbation.group_sums(xd * xd, mask, groups)
        s_xb = _perturbation.group_sums(xd * bd, mask, groups)
        s_bb = _perturbation.group_sums(bd * bd, mask, groups)
        terms = z @ torch.stack([s_xx - s_xb, s_xx - s_bb], dim=2)  # [B, P, 2]
        dot = terms[..., 0] + s_xb.sum(1, keepdim=True)
        norm_z = (terms[..., 1] + s_bb.sum(1, keepdim=True)).clamp_min(0).sqrt()
        norm_x = s_xx.sum(1, keepdim=True).sqrt()
        cosine = dot / (norm_x.clamp_min(_COSINE_EPS) * norm_z.clamp_min(_COSINE_EPS))
        distance_sq = (1 - cosine) ** 2
    return torch.exp(-distance_sq / (2 * kernel_width**2))


_BITS_PER_DRAW = 62
"""Fair coin flips taken from one random int64 in [0, 2**62)."""


def _coin_flips(
    batch: int, n_samples: int, groups: int, rng: torch.Generator, device: torch.device
) -> torch.Tensor:
    """``z ~ Bernoulli(1/2)^M`` for every sample: [B, P, M] bool, from the bits of uniform random
    integers (one draw per 62 groups instead of one float per group: 16x fewer draws at M = 16)."""
    draws = -(-groups // _BITS_PER_DRAW)
    codes = torch.randint(0, 2**_BITS_PER_DRAW, (batch, n_samples, draws), generator=rng, device=device)
    position = torch.arange(groups, device=device)
    if draws > 1:
        codes = codes[:, :, position // _BITS_PER_DRAW]
    return ((codes >> (position % _BITS_PER_DRAW)) & 1).bool()


def lime(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    baselines: float | torch.Tensor | None = None,
    feature_mask: torch.Tensor | None = None,
    n_samples: int = 25,
    kernel_width: float = 1.0,
    distance_mode: str = "cosine",
    interpretable_model: str | Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] = "lasso",
    alpha: float = 0.01,
    samples: torch.Tensor | None = None,
    similarity: Callable[[torch.Tensor], torch.Tensor] | None = None,
    seed: int | None = None,
    return_input_shape: bool = True,
    forward_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """LIME: the coefficients of a weighted linear surrogate of the coalition game
    ``v(z) = f_t(baseline + z[mask] * (x - baseline))``.

    ``z ~ Bernoulli(1/2)^M`` (n_samples per input, drawn on the device from ``seed``); sample
    weights ``pi(z) = exp(-d(x, x_z)^2 / (2 kernel_width^2))`` with ``d`` the cosine distance
    ``1 - cos(x, x_z)`` (or the euclidean one) between the flattened input and perturbed input;
    the surrogate, per input, with ``W = sum_z pi(z)``:

    - ``"lasso"`` (default, Captum's ``SkLearnLasso(alpha=0.01)``): ``argmin_{beta, c}
      1/(2W) sum_z pi(z) (v(z) - c - z . beta)^2 + alpha ||beta||_1`` (``surrogate.lasso``);
    - ``"linear"``: ``argmin_{beta, c} sum_z pi(z) (v(z) - c - z . beta)^2`` (needs n_samples > M).

    Your own parts replace fastxai's: ``samples`` (the interpretable samples, bool or 0/1
    [B, n_samples, M], instead of the coin flips), ``similarity`` (a function of those samples
    [B, P, M] bool returning the weights [B, P], instead of the kernel), ``interpretable_model``
    a function ``fit(z [B, P, M] float64, scores [B, P], weights [B, P]) -> coef [B, M]``.

    ``feature_mask`` ids of -1 (elements left as in the input: they count in the distances
    as unchanged), token ids and ``forward_kwargs`` as in ``feature_ablation``.

    These are Captum's ``Lime`` defaults (kernel width 1, cosine distance, alpha 0.01,
    25 samples: too few for a stable fit, ask for hundreds); Captum draws the samples and fits
    one input at a time with scikit-learn.

    ``cuda_graph=True`` (inputs on a CUDA device): each model batch's blend, forward and gather
    is one replayed CUDA graph (``_graphed_scores``). ``dtype=torch.bfloat16`` (or
    ``torch.float16``): the copies are blended in that dtype and scored under autocast; the
    distances, the scores and the fit stay float32 / float64 (``fastxai._precision``).

    inputs: [B, *F]; returns beta as [B, *F] (each element its group's coefficient) or [B, M]
    when not ``return_input_shape``.

    >>> coef = fastxai.lime(model, x, target=y, feature_mask=superpixels, n_samples=1000, seed=0)
    """
    floating = isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
    model, inputs, baselines = _perturbation.integer_inputs(model, inputs, baselines)
    model, x, target_t, chunk, kwargs = _perturbation.prepare(
        model, inputs, target, chunk_size, forward_kwargs
    )
    model_dtype = _precision.check_dtype(dtype, x.device)
    baseline = check_baselines(0.0 if baselines is None else baselines, x)
    mask, groups = _perturbation.check_feature_mask(feature_mask, x)
    mask, baseline, fixed = _perturbation.fixed_elements(mask, x, baseline)
    custom_fit = callable(interpretable_model)
    if not custom_fit and interpretable_model not in INTERPRETABLE_MODELS:
        raise ValueError(
            f"interpretable_model must be one of {INTERPRETABLE_MODELS}, got {interpretable_model!r}"
        )
    if distance_mode not in DISTANCE_MODES:
        raise ValueError(f"distance_mode must be one of {DISTANCE_MODES}, got {distance_mode!r}")
    if samples is not None:
        samples = _check_samples(samples, x.shape[0], groups)
        n_samples = samples.shape[1]
    if similarity is not None and not callable(similarity):
        raise TypeError(f"similarity must be callable or None, got {type(similarity).__name__}")
    if interpretable_model == "linear":
        n_samples = _perturbation.check_count(
            "n_samples",
            n_samples,
            groups + 1,
            f" (the linear surrogate has {groups} coefficients and an intercept)",
        )
    else:
        n_samples = _perturbation.check_count("n_samples", n_samples, 1)
    if samples is None:
        # per sample and row: the random bits (int64), the coin flips as bool, the model's dtype
        # and the float64 design, a score and a similarity
        _budget.check_fits(
            "n_samples", n_samples, n_samples * x.shape[0] * (25 * groups + 16),
            "the coin flips and the surrogate's design", x.device,
        )  # fmt: skip
    if isinstance(kernel_width, bool) or not isinstance(kernel_width, (int, float)) or not kernel_width > 0:
        raise ValueError(f"kernel_width must be a number > 0, got {kernel_width!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha >= 0 or math.isinf(alpha):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    seed = _perturbation.check_seed(seed)
    if backend is not None:
        _backends.check_choice(backend)
    graphed = _graphs.check_cuda_graph(cuda_graph, x, None)
    dtype = _perturbation.compute_dtype(x)
    rng = _perturbation.generator(seed, x.device)
    if samples is None:
        samples = _coin_flips(x.shape[0], n_samples, groups, rng, x.device)

    keep_all = _perturbation.as_dtype(samples, dtype)

    def keep(p0: int, p1: int, r0: int, r1: int) -> torch.Tensor:
        return keep_all[r0:r1, p0:p1]

    source, replacement = _perturbation.model_sources(x, baseline, model_dtype, floating)
    with _model.inference_state(model):
        perturb = _perturbation.blend(source, replacement, mask, keep, backend)
        scores, _ = _perturbation.perturbed_scores(
            model, source, target_t, n_samples, perturb, chunk, forward_kwargs=kwargs, cuda_graph=graphed,
            dtype=model_dtype,
        )  # fmt: skip
    design = _perturbation.as_dtype(samples, torch.float64)
    if similarity is None:
        weights = _similarities(x, baseline, mask, groups, design, distance_mode, float(kernel_width))
    else:
        weights = torch.as_tensor(similarity(samples), dtype=torch.float64, device=x.device)
        if weights.shape != scores.shape:
            raise ValueError(
                f"similarity must return weights of shape {tuple(scores.shape)}, got {tuple(weights.shape)}"
            )
    if callable(interpretable_model):
        fitted = interpretable_model(design, scores.double(), weights)
        coef = torch.as_tensor(fitted, dtype=torch.float64, device=x.device).reshape(x.shape[0], groups)
    elif interpretable_model == "lasso":
        coef, _ = surrogate.lasso(design, scores, weights, float(alpha))
    else:
        coef, _ = surrogate.weighted_least_squares(design, scores, weights)
    coef = coef.to(dtype)
    if return_input_shape:
        coef = _perturbation.zero_fixed(_perturbation.to_input_shape(coef, mask, x.shape), fixed)
    return coef.to(inputs.dtype)


def _check_samples(samples: object, batch: int, groups: int) -> torch.Tensor:
    """Given interpretable samples: [B, P, M] of 0/1 (any dtype), as bool."""
    if not isinstance(samples, torch.Tensor):
        raise TypeError(f"samples must be a torch.Tensor or None, got {type(samples).__name__}")
    if samples.dim() != 3 or samples.shape[0] != batch or samples.shape[2] != groups or samples.shape[1] < 1:
        raise ValueError(
            f"samples must have shape ({batch}, n_samples, {groups}), got {tuple(samples.shape)}"
        )
    binary = samples.bool()
    if not bool((binary.to(samples.dtype) == samples).all()):
        raise ValueError("samples must hold 0/1 (on/off) entries")
    return binary
