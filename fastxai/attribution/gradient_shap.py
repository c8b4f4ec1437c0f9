"""GradientSHAP / Expected Gradients: Integrated Gradients in expectation over baselines."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastxai import _backends, _budget, _checks, _graphs, _layer, _model, _precision, _scheduling, ops
from fastxai._model import Model
from fastxai._rows import Rows
from fastxai.attribution import adaptive_path
from fastxai.attribution.smoothgrad import _check_seed, _check_stdevs

METHODS = ("sampled", "adaptive")


def _check_distribution(baselines: object, inputs: torch.Tensor) -> torch.Tensor:
    """Baselines to draw from: [K, *F] (or one baseline [*F]) -> [K, *F] on the inputs' device."""
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(
            f"baselines must be a tensor [K, *F] of baselines to draw from, got {type(baselines).__name__}"
        )
    if not baselines.is_floating_point():
        raise TypeError(f"baselines must be a floating-point tensor, got {baselines.dtype}")
    features = tuple(inputs.shape[1:])
    if tuple(baselines.shape) == features and baselines.dim() == inputs.dim() - 1:
        baselines = baselines.unsqueeze(0)
    if baselines.dim() != inputs.dim() or tuple(baselines.shape[1:]) != features or baselines.shape[0] < 1:
        raise ValueError(
            f"baselines must have shape (K, *{features}) with K >= 1 (or {features} for one baseline), "
            f"got {tuple(baselines.shape)}"
        )
    if not _model.all_finite(baselines):
        raise ValueError("baselines contain NaN or infinity")
    return baselines.detach().to(device=inputs.device, dtype=inputs.dtype).contiguous()


def gradient_shap(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    baselines: torch.Tensor,
    n_samples: int = 5,
    stdevs: float | torch.Tensor = 0.0,
    seed: int | None = None,
    multiply_by_inputs: bool = True,
    return_convergence_delta: bool = False,
    method: str = "sampled",
    tolerance: float = 1e-3,
    max_steps: int = 1025,
    on_unconverged: str = "warn",
    return_evaluations: bool = False,
    layer: object = None,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | str = False,
    cuda_graph: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """GradientSHAP (Lundberg & Lee 2017; Captum's ``GradientShap``), which is Expected
    Gradients (Erion et al. 2021) when ``stdevs=0``.

    For each input ``x`` and sample ``s``: a baseline ``x'_s`` drawn uniformly from
    ``baselines``, a path position ``alpha_s ~ U(0, 1)``, noise ``x_s = x + stdevs * z_s``
    (``z_s ~ N(0, I)``), and

        attribution = mean_s grad f_target(x'_s + alpha_s (x_s - x'_s)) * (x_s - x'_s),

    a Monte-Carlo estimate of ``E[(x - x') * integral grad f]``: on a linear model its
    expectation is exactly ``w * (x - E[x'])``. The positions are stratified (the ``n_samples``
    positions of an input lie one in each of ``n_samples`` equal sub-intervals of [0, 1], in a
    random order), which keeps every position U(0, 1) and the estimate unbiased while its
    path-integral error shrinks like 1/n rather than 1/sqrt(n). Baseline indices and positions
    come from a generator seeded by ``seed``, the noise from the counter-based Philox op keyed by
    (seed, sample, row, element), so a seed gives the same result for every ``chunk_size``.
    The products are summed by ``fastxai.ops.moment_accumulate`` in float32.

    inputs: [B, *F]; baselines: [K, *F] (or one baseline [*F]); stdevs: float or [B];
    returns [B, *F] in the inputs' dtype. ``multiply_by_inputs=False`` drops the factor
    ``(x_s - x'_s)`` (the mean gradient: Captum's "local" attribution).
    ``return_convergence_delta=True`` also returns, per input and sample, the completeness gap
    of that sample's term, ``sum(grad_s * (x_s - x'_s)) - (f(x_s) - f(x'_s))``, as [B, n_samples]
    (two extra forward passes over the samples' end points, without gradients).

    ``method="adaptive"`` replaces the random position by the whole path: each sample's term is
    Integrated Gradients from ``x'_s`` to ``x_s``, integrated by ``adaptive_path`` (nested Gauss
    panels, per-path ``tolerance`` on completeness, ``max_steps`` evaluations per path, the
    floor and ``on_unconverged`` as for ``integrated_gradients(method="adaptive")``), all paths'
    points batched together; with ``stdevs=0`` that is Expected Gradients over the drawn
    baselines without the sampling error along the path. Same seed, same baselines and noise
    as ``"sampled"``. ``return_evaluations=True`` appends the model evaluations per input and
    sample [B, n_samples] (``"sampled"``: 1, or 3 with the delta).

    At a layer: ``layer`` (a module of the model or its dotted name) puts ``x`` above at the
    layer's output ``h`` [B, *A] (noise, baselines and path points live there; the model runs
    on the inputs with the layer's output replaced); ``baselines`` are then [K, *A] in the
    layer's output space or, for token-id inputs, an integer tensor of K token-id sequences
    [K, *F] whose layer outputs one forward pass computes (with per-example ``forward_kwargs``,
    K must equal B: baseline k runs with example k's arguments), or an int: one sequence of that id
    (the pad id), as ``deeplift_shap``. Integer inputs are accepted
    and ``layer=None`` means the model's input embedding (``model.get_input_embeddings()``,
    else its first ``nn.Embedding``); returns [B, *A]; per token: ``a.sum(-1)``.
    ``forward_kwargs``: extra keyword arguments to the model (an attention mask); tensors with
    one row per example are repeated with the rows of each model batch.

    ``dtype=torch.bfloat16`` (or ``torch.float16``): the path points and the differences
    ``x_s - x'_s`` go to the model and the fused op in that dtype, the model runs under autocast,
    and the products are summed in float32 (``fastxai._precision``). ``compile=True`` (or a
    ``torch.compile`` backend's name) compiles one chunk's path points, forward, backward and
    fused accumulation as one graph, once per call (``fastxai._compile``; attributions at the
    input; the noise and the deltas run outside it). ``cuda_graph=True`` (inputs on a CUDA
    device) captures that step as a CUDA graph once and replays it per chunk
    (``fastxai._graphs``; at the input, method ``"sampled"``).

    >>> a = fastxai.gradient_shap(model, x, target=y, baselines=background, n_samples=20, seed=0)
    >>> a = fastxai.gradient_shap(model, x, target=y, baselines=background, n_samples=8, method="adaptive")
    """
    model = _model.check_model(model)
    site, inputs = _layer.site_for(model, inputs, layer, forward_kwargs, dtype)
    compile_backend = _layer.check_compile(site, compile)
    graphed = _layer.check_graph(site, cuda_graph, inputs, compile_backend)
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")
    # the draws (baseline choice, stratum, position: ~56 bytes) and the deltas, per sample and row
    _budget.check_fits(
        "n_samples", n_samples, n_samples * inputs.shape[0] * (64 + 16 * bool(return_convergence_delta)),
        "the random draws" + (" and deltas" if return_convergence_delta is True else ""), inputs.device,
    )  # fmt: skip
    for flag, value in (
        ("multiply_by_inputs", multiply_by_inputs),
        ("return_convergence_delta", return_convergence_delta),
        ("return_evaluations", return_evaluations),
    ):
        _checks.check_flag(flag, value)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "adaptive":
        adaptive_path.check_options(tolerance, max_steps, on_unconverged)
        given = [name for name, on in (("compile", compile_backend is not None), ("dtype", dtype is not None),
                                       ("cuda_graph", graphed)) if on]  # fmt: skip
        if given:
            raise ValueError(
                f"{given[0]} applies to method='sampled'; with method='adaptive' leave compile=False, "
                "dtype=None and cuda_graph=False"
            )
    distribution = None
    if isinstance(site, _layer.InputSite):
        distribution = _check_distribution(baselines, inputs)
    elif _layer.is_integer(inputs) and isinstance(baselines, int) and not isinstance(baselines, bool):
        baselines = _layer.token_id_background(baselines, inputs)  # one sequence of that id, as deeplift_shap
    elif not isinstance(baselines, torch.Tensor):
        raise TypeError(
            "baselines must be a tensor [K, *A] of baselines to draw from (or, for token ids, an int: "
            f"one sequence of that id), got {type(baselines).__name__}"
        )
    else:
        _layer.check_layer_baselines(baselines, inputs)
    sigma = _check_stdevs(stdevs, inputs)
    if bool((sigma > 0).any()):
        _budget.check_philox_samples("n_samples", n_samples)
    seed = _check_seed(seed)
    if backend is not None:
        _backends.check_choice(backend)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)

    with _model.preserved_state(model):
        site.prepare(chunk)
        x = site.origin
        if distribution is None:
            assert isinstance(site, _layer.LayerSite) and isinstance(baselines, torch.Tensor)
            layer_values = _layer.layer_distribution(site, baselines, inputs, chunk)
            distribution = _check_distribution(layer_values, x)
        batch, view, unit = x.shape[0], (-1, *x.shape[1:]), [1] * (x.dim() - 1)
        choices, alphas = draws(distribution.shape[0], n_samples, batch, seed)
        choices, alphas = choices.to(x.device), alphas.to(device=x.device, dtype=x.dtype)
        noisy_inputs = bool((sigma > 0).any())
        if method == "adaptive":
            ends = (
                ops.gaussian_perturb(x, sigma, seed, 0, n_samples, 0, backend=backend)
                if noisy_inputs
                else x.unsqueeze(0).expand(n_samples, *x.shape)
            )
            target_t = site.forward.resolve_target(target_t, chunk)
            starts = distribution[choices]
            outcome = _adaptive_paths(site, ends, starts, target_t, chunk, tolerance, max_steps)
            adaptive_path.report_unconverged(
                outcome, float(tolerance), max_steps, on_unconverged, "adaptive gradient SHAP paths"
            )
            integral = outcome.integral.view(ends.shape)
            terms = (ends - starts).to(integral.dtype) * integral if multiply_by_inputs else integral
            result = [terms.mean(0).to(x.dtype)]
            if return_convergence_delta:
                result.append(outcome.delta.view(n_samples, batch).t().to(integral.dtype).contiguous())
            if return_evaluations:
                result.append(outcome.evaluations.view(n_samples, batch).t().contiguous())
            return result[0] if len(result) == 1 else tuple(result)
        points_dtype = _precision.points_dtype(x, site.forward.dtype)
        acc_dtype = _precision.accumulator_dtype(points_dtype)
        total = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
        delta = None
        if return_convergence_delta:
            delta = torch.zeros(n_samples, batch, dtype=acc_dtype, device=x.device)
        target_t = site.forward.resolve_target(target_t, chunk)
        step: Callable[..., torch.Tensor] | None = _graphs.make_step(
            _expectation_step, compile_backend, graphed
        )
        if step is not None:
            assert isinstance(site, _layer.InputSite)
            site.check_target()
            accumulate = ops._unchecked("moment_accumulate", backend, x.to(points_dtype))

        def body(sample: int, sample_stop: int, row: int, row_stop: int) -> None:
            count = sample_stop - sample
            if noisy_inputs:
                ends = ops.gaussian_perturb(
                    x[row:row_stop], sigma[row:row_stop], seed, sample, count, row, backend=backend
                )
            else:
                ends = x[row:row_stop].unsqueeze(0).expand(count, *x[row:row_stop].shape)
            starts = distribution[choices[sample:sample_stop, row:row_stop]]
            alpha = alphas[sample:sample_stop, row:row_stop].reshape(count, row_stop - row, *unit)
            rows_target = target_t[row:row_stop].repeat(count)
            if step is not None:
                forward, rows = site.forward, slice(row, row_stop)
                grads = step(
                    forward.plain, forward.dtype, accumulate, starts, ends, alpha, total[rows],
                    multiply_by_inputs, rows_target, forward.extras(rows, count),
                )  # fmt: skip
            else:
                differences = ends - starts
                points = (starts + alpha * differences).to(points_dtype)
                grads = site.gradients(points.reshape(view), slice(row, row_stop), count, rows_target)[0]
                ops.moment_accumulate(
                    grads.reshape(differences.shape),
                    total[row:row_stop],
                    None,
                    differences.to(points_dtype) if multiply_by_inputs else None,
                    backend=backend,
                )
            if delta is not None:
                differences = ends - starts
                products = (grads.reshape(differences.shape) * differences).flatten(2).sum(2)
                rows = slice(row, row_stop)
                end_scores = site.scores(ends.reshape(view), rows, count, rows_target)
                start_scores = site.scores(starts.reshape(view), rows, count, rows_target)
                gap = products - (end_scores - start_scores).view(count, -1)
                delta[sample:sample_stop, row:row_stop] = gap.to(delta.dtype)

        _scheduling.for_each_block(n_samples, batch, chunk, body, halve_on_oom=x.is_cuda)

    attributions = total.div_(n_samples).to(x.dtype)
    result = [attributions] if delta is None else [attributions, delta.t().contiguous()]
    if return_evaluations:
        per_path = 1 + 2 * return_convergence_delta
        result.append(torch.full((batch, n_samples), per_path, dtype=torch.long, device=x.device))
    return result[0] if len(result) == 1 else tuple(result)


def draws(baselines: int, n_samples: int, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline index [n_samples, B] (uniform over ``baselines``) and path position
    [n_samples, B] (float64) of each sample, from a CPU generator seeded by ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    choices = torch.randint(0, baselines, (n_samples, batch), generator=generator)
    # Stratified positions: sample s of an input falls in its own stratum [k/n, (k+1)/n) (k a
    # random permutation per input). Each alpha is still U(0, 1), so the expectation is
    # unchanged, but the path integral's sampling error falls like 1/n instead of 1/sqrt(n).
    strata = torch.rand(n_samples, batch, generator=generator).argsort(dim=0).to(torch.float64)
    alphas = (strata + torch.rand(n_samples, batch, generator=generator, dtype=torch.float64)) / n_samples
    return choices, alphas


class _Paths:
    """Many paths per row of a site: path ``p`` (origin ``origin[p]``) runs the model on row
    ``rows_of[p]`` of the site's inputs (and its per-example arguments)."""

    def __init__(self, site: _layer.Site, origin: torch.Tensor, rows_of: torch.Tensor) -> None:
        self.site, self.origin, self.rows_of = site, origin, rows_of

    def gradients(
        self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.site.gradients(points, self.rows_of[rows], count, target)

    def scores(self, points: torch.Tensor, rows: Rows, count: int, target: torch.Tensor) -> torch.Tensor:
        return self.site.scores(points, self.rows_of[rows], count, target)


def _adaptive_paths(
    site: _layer.Site,
    ends: torch.Tensor,
    starts: torch.Tensor,
    target: torch.Tensor,
    chunk: int,
    tolerance: float,
    max_steps: int,
) -> adaptive_path.AdaptiveResult:
    """``adaptive_path`` over the S x B paths ``starts[s, b] -> ends[s, b]`` ([S, B, *A]), path
    ``s * B + b`` on input row ``b``."""
    samples, batch = ends.shape[:2]
    flat = (samples * batch, *ends.shape[2:])
    rows_of = torch.arange(batch, device=ends.device).repeat(samples)
    paths = _Paths(site, ends.reshape(flat).contiguous(), rows_of)
    return adaptive_path.adaptive_path(
        paths, starts.reshape(flat).contiguous(), target.repeat(samples), chunk, float(tolerance), max_steps
    )


def _expectation_step(
    model: Callable[..., Any],
    dtype: torch.dtype | None,
    accumulate: Callable[..., None],
    starts: torch.Tensor,
    ends: torch.Tensor,
    alpha: torch.Tensor,
    total: torch.Tensor,
    multiply_by_inputs: bool,
    target: torch.Tensor,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """One chunk of GradientSHAP as one graph (``_compile.Step``): the points ``starts + alpha *
    (ends - starts)`` [n, B, *F] (in the model's precision ``dtype``), the target's gradients
    there, ``total += sum_s grad_s * (ends_s - starts_s)`` by the fused op's implementation
    ``accumulate`` (``ops._unchecked``). Returns the gradients [n * B, *F] (for the deltas)."""
    differences = ends - starts
    points = starts + alpha * differences
    if dtype is not None:
        points, differences = points.to(dtype), differences.to(dtype)
    grads, _ = _layer.point_gradients(model, dtype, points.reshape(-1, *points.shape[2:]), target, kwargs)
    accumulate(
        grads.reshape(points.shape).contiguous(),
        total,
        None,
        differences.contiguous() if multiply_by_inputs else None,
    )
    return grads


expected_gradients = gradient_shap
"""Expected Gradients (Erion et al. 2021): ``gradient_shap`` with baselines drawn from the data
and ``stdevs=0`` (the default)."""
