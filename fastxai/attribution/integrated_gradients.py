"""Integrated Gradients (Sundararajan et al. 2017) on fused path kernels, fixed or adaptive."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from fastxai import (
    _backends,
    _budget,
    _checks,
    _compile,
    _graphs,
    _layer,
    _model,
    _precision,
    _scheduling,
    ops,
)
from fastxai._model import Model
from fastxai.attribution import adaptive_path, exact_path, quadrature

METHODS = (*quadrature.FIXED_METHODS, "adaptive", "exact")
NotConverged = adaptive_path.NotConverged


def check_baselines(baselines: object, inputs: torch.Tensor) -> torch.Tensor:
    """A baseline per sample, [B, *F], from a scalar, a tensor broadcastable to one input
    ([*F]-like, fewer dims than inputs) or one per sample ([B, *F] or [1, *F])."""
    if isinstance(baselines, bool):
        raise TypeError("baselines must be a number or a tensor, got bool")
    if isinstance(baselines, (int, float)):
        if not math.isfinite(baselines):
            raise ValueError(f"baselines contain NaN or infinity: {baselines}")
        return torch.full_like(inputs, float(baselines))
    if not isinstance(baselines, torch.Tensor):
        raise TypeError(f"baselines must be a number or a tensor, got {type(baselines).__name__}")
    if not baselines.is_floating_point():
        raise TypeError(f"baselines must be a floating-point tensor, got {baselines.dtype}")
    target_shape = inputs.shape if baselines.dim() == inputs.dim() else inputs.shape[1:]
    try:
        fits = (
            baselines.dim() <= inputs.dim()
            and torch.broadcast_shapes(baselines.shape, target_shape) == target_shape
        )
    except RuntimeError:
        fits = False
    if not fits:
        raise ValueError(
            f"baselines of shape {tuple(baselines.shape)} fit neither one input {tuple(inputs.shape[1:])} "
            f"nor the batch {tuple(inputs.shape)}"
        )
    if not _model.all_finite(baselines):
        raise ValueError("baselines contain NaN or infinity")
    converted = baselines.to(device=inputs.device, dtype=inputs.dtype)
    if converted.dtype != baselines.dtype and not _model.all_finite(converted):
        # finite in float64, out of range of the inputs' float32 (or half) where the model runs
        raise ValueError(
            f"baselines overflow in the inputs' dtype {inputs.dtype} (finite as {baselines.dtype}, "
            f"largest magnitude {float(baselines.abs().max()):.3g})"
        )
    return converted.expand(inputs.shape).contiguous()


def integrated_gradients(
    model: Model,
    inputs: torch.Tensor,
    baselines: float | torch.Tensor = 0.0,
    target: object = None,
    *,
    n_steps: int = 50,
    method: str = "gausslegendre",
    return_convergence_delta: bool = False,
    tolerance: float = 1e-3,
    max_steps: int = 1025,
    return_evaluations: bool = False,
    max_pieces: int = 4096,
    on_unconverged: str = "warn",
    multiply_by_inputs: bool = True,
    layer: object = None,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    compile: bool | str = False,
    cuda_graph: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Integrated Gradients: ``(x - x') * integral_0^1 grad f_target(x' + a (x - x')) da``.

    Fixed rules (``riemann_left/right/middle``, ``riemann_trapezoid``, ``gausslegendre``)
    use ``n_steps`` points placed as in Captum. ``method="adaptive"`` (``adaptive_path``)
    integrates nested Gauss panels (midpoint -> 3-point Gauss-Legendre -> 7-point Kronrod,
    nodes interior: no gradient at ``a = 0`` or ``1``) and refines those where free local error
    indicators (misfits of the forward values, gradient jumps) are largest, many samples' new
    points per model batch, until the completeness error ``|sum(attr) - (f(x) - f(x'))|`` is at
    most ``tolerance * |f(x) - f(x')|`` per sample, with the misfits' root-sum-square within
    2x that and the attributions' estimated L1 error within ``10 * tolerance`` of their L1
    norm. A sample that stops at ``max_steps`` evaluations, at the rounding floor of the
    scores ``8 eps (|f(x)| + |f(x')|)``, or with its error in panels at the rounding width of
    ``a`` (new points would coincide), is reported per ``on_unconverged``: ``"warn"`` (a
    RuntimeWarning), ``"raise"`` (``NotConverged``) or ``"ignore"``; its delta says how far.
    ``method="exact"``, for piecewise-linear networks (linear, convolution, eval batch norm,
    pooling, ReLU family, max pooling, residual sums), sums the gradient over the linear pieces
    of the path (``exact_path``): exact to float rounding; more than ``max_pieces`` pieces is a
    RuntimeError, a layer that is not piecewise linear a ValueError naming it.

    inputs: [B, *F]; baselines: scalar, one input, or [B, *F]; returns [B, *F], and the
    signed delta ``sum(attr) - (f(x) - f(x'))`` [B] with ``return_convergence_delta``, and
    the model evaluations per sample [B] with ``return_evaluations`` (for ``adaptive`` the
    gradient points plus the two end values, for ``exact`` the linear pieces, one probe each:
    a forward with forward-mode AD and a backward). ``multiply_by_inputs=False`` returns the
    path integral alone, without the factor ``(x - x')`` (Captum's option; the delta is of the
    attributions with it).

    At a layer (Captum's ``LayerIntegratedGradients``): ``layer`` (a module of the model or its
    dotted name) puts ``x`` above at the layer's output ``h`` [B, *A]: the model runs on the
    inputs with the layer's output replaced by the path points ``h' + a (h - h')``, the steps
    of the path batched together as at the input; attributions are [B, *A] and complete at the
    layer (``sum = f(h) - f(h')``). Integer inputs (token ids) are then accepted, and
    ``layer=None`` means the model's input embedding (``model.get_input_embeddings()``, else its
    first ``nn.Embedding``). ``baselines`` at a layer: a number or a float tensor in the layer's
    output space ([*A] or [B, *A]), or, for token-id inputs, token ids: an int (a pad id) or an
    integer tensor [B, *F] / [1, *F], whose layer output one forward pass computes. Per token:
    ``a.sum(-1)``. ``forward_kwargs``: extra keyword arguments to the model (an attention
    mask); tensors with one row per example are repeated with the rows of each model batch.

    Fixed rules only: ``dtype=torch.bfloat16`` (or ``torch.float16``) runs the model in that
    precision (the path points in it, every model call under autocast, the gradients summed in
    float32 by the fused op: ``fastxai._precision``; the delta is then of the model run so).
    ``compile=True`` (or a ``torch.compile`` backend's name) compiles one chunk's step, path
    points, forward, backward and fused accumulation, as one graph once and reuses it
    (``fastxai._compile``; attributions at the input). ``cuda_graph=True`` (inputs on a CUDA
    device) captures that step as a CUDA graph once and replays it per chunk (``fastxai._graphs``;
    at the input). A compiled model (``torch.compile(model)``)
    runs compiled as given, except for ``layer=`` and ``method="exact"``, which hook and trace
    its original module.

    >>> a, delta = fastxai.integrated_gradients(model, x, target=y, return_convergence_delta=True)
    >>> a = fastxai.integrated_gradients(model, x, target=y, dtype=torch.bfloat16, compile=True)
    >>> a = fastxai.integrated_gradients(bert, ids, baselines=pad_id, target=1,
    ...                                  forward_kwargs={"attention_mask": mask})   # [B, T, D]
    """
    model = _model.check_model(model)
    if method == "exact":
        model = _compile.original(model)  # forward-mode AD under a mode: a compiled model's module
    site, inputs = _layer.site_for(model, inputs, layer, forward_kwargs, dtype)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    compile_backend = _layer.check_compile(site, compile)
    graphed = _layer.check_graph(site, cuda_graph, inputs, compile_backend)
    given = [name for name, on in (("compile", compile_backend is not None), ("dtype", dtype is not None),
                                   ("cuda_graph", graphed)) if on]  # fmt: skip
    if method in ("adaptive", "exact") and given:
        raise ValueError(
            f"{given[0]} applies to the fixed rules; method={method!r} integrates to a tolerance (or "
            "exactly) with its own model passes: leave compile=False, dtype=None and cuda_graph=False"
        )
    for flag, value in (
        ("return_convergence_delta", return_convergence_delta),
        ("return_evaluations", return_evaluations),
        ("multiply_by_inputs", multiply_by_inputs),
    ):
        _checks.check_flag(flag, value)
    if method == "exact":
        if isinstance(max_pieces, bool) or not isinstance(max_pieces, int) or max_pieces < 1:
            raise ValueError(f"max_pieces must be an int >= 1, got {max_pieces!r}")
    elif method != "adaptive":
        quadrature.check_steps(method, n_steps)
        _budget.check_fits(
            "n_steps", n_steps, n_steps * quadrature.bytes_per_step(inputs.shape[0]),
            "the quadrature points, weights and per-step scores", inputs.device,
        )  # fmt: skip
    else:
        adaptive_path.check_options(tolerance, max_steps, on_unconverged)
    if backend is not None:
        _backends.check_choice(backend)
    input_baseline = None
    if isinstance(site, _layer.InputSite):
        input_baseline = check_baselines(baselines, site.origin)
    else:
        _layer.check_layer_baselines(baselines, inputs)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), inputs)
    target_t = _model.check_target(target, inputs.shape[0], inputs.device)

    with _model.preserved_state(model):
        site.prepare(chunk)
        x = site.origin
        baseline = (
            input_baseline if input_baseline is not None else layer_baselines(site, baselines, inputs, chunk)
        )
        target_t = site.forward.resolve_target(target_t, chunk)
        delta: torch.Tensor | None
        if method == "exact":
            integral, evaluations = exact_path.exact_path(site, model, baseline, target_t, chunk, max_pieces)
            attributions = (x.to(torch.float64) - baseline.to(torch.float64)) * integral
            ends = _layer.chunk_scores(site, torch.stack([x, baseline]), target_t, chunk)
            delta = _PathRun.delta(attributions, ends[0] - ends[1])
            exact_path.check_complete(delta, ends, x.dtype)
            delta = delta.to(x.dtype)
            if not multiply_by_inputs:
                attributions = integral
        elif method == "adaptive":
            outcome = adaptive_path.adaptive_path(
                site, baseline, target_t, chunk, float(tolerance), max_steps
            )
            adaptive_path.report_unconverged(
                outcome, float(tolerance), max_steps, on_unconverged, "adaptive integrated gradients"
            )
            attributions = _PathRun(site, baseline, target_t, chunk, backend).attributions(outcome.integral)
            delta, evaluations = outcome.delta.to(x.dtype), outcome.evaluations
            if not multiply_by_inputs:
                attributions = outcome.integral
        else:
            attributions, delta = fixed_path(
                site,
                baseline,
                target_t,
                method,
                n_steps,
                chunk,
                backend,
                return_convergence_delta,
                multiply_by_inputs=multiply_by_inputs,
                compile_backend=compile_backend,
                cuda_graph=graphed,
            )
            evaluations = torch.full((x.shape[0],), n_steps + 2 * return_convergence_delta, dtype=torch.long)

    result: list[torch.Tensor] = [attributions.to(x.dtype)]
    if return_convergence_delta:
        assert delta is not None
        result.append(delta)
    if return_evaluations:
        result.append(evaluations)
    return result[0] if len(result) == 1 else tuple(result)


def layer_baselines(site: _layer.Site, baselines: object, inputs: torch.Tensor, chunk: int) -> torch.Tensor:
    """Baselines [B, *A] where the site's values live: at the input, ``check_baselines``; at a
    layer, token ids (for integer inputs) through one forward pass, else values in its output space."""
    if isinstance(site, _layer.LayerSite):
        ids = _layer.token_id_baselines(baselines, inputs)
        if ids is not None:
            return site.activations((ids,), chunk)
    return check_baselines(baselines, site.origin)


def fixed_path(
    site: _layer.Site,
    baseline: torch.Tensor,
    target: torch.Tensor,
    method: str,
    n_steps: int,
    chunk: int,
    backend: str | None,
    return_convergence_delta: bool,
    *,
    captum_trapezoid: bool = False,
    multiply_by_inputs: bool = True,
    compile_backend: str | None = None,
    cuda_graph: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """IG with a fixed rule at a site (inside the model's state guard): attributions [B, *A]
    (the path integral alone without ``multiply_by_inputs``) and the delta [B] or None. The
    model's precision is the site's (``RowForward.dtype``); ``compile_backend`` compiles the step,
    ``cuda_graph`` captures it as a CUDA graph."""
    x = site.origin
    alphas, weights = quadrature.points_and_weights(method, n_steps, captum_trapezoid=captum_trapezoid)
    run = _PathRun(site, baseline, target, chunk, backend, compile_backend, cuda_graph)
    run.accumulate(torch.arange(x.shape[0], device=x.device), alphas.tolist(), weights.tolist())
    attributions = run.attributions(run.acc) if multiply_by_inputs else run.acc
    if not return_convergence_delta:
        return attributions, None
    ends = _layer.chunk_scores(site, torch.stack([x, baseline]), target, chunk)
    return attributions, run.delta(attributions, ends[0] - ends[1])


class _PathRun:
    """The state of one IG computation: inputs, baselines, targets and the gradient sums.

    The path's ends are also kept in the precision the model runs in (``ends``: the inputs'
    dtype, or the site's ``dtype``), where the path points are built; the sums are float32
    (float64 for float64 points)."""

    def __init__(
        self,
        site: _layer.Site,
        baseline: torch.Tensor,
        target: torch.Tensor,
        chunk: int,
        backend: str | None,
        compile_backend: str | None = None,
        cuda_graph: bool = False,
    ) -> None:
        x = site.origin
        self.site, self.x, self.baseline, self.target = site, x, baseline, target
        self.chunk, self.backend = chunk, backend
        points = _precision.points_dtype(x, site.forward.dtype)
        self.ends = (x.to(points), baseline.to(points))
        acc_dtype = _precision.accumulator_dtype(points)
        self.acc = torch.zeros(x.shape, dtype=acc_dtype, device=x.device)
        self.step: Callable[..., torch.Tensor] | None = _graphs.make_step(
            _path_step, compile_backend, cuda_graph
        )
        if self.step is not None:
            assert isinstance(site, _layer.InputSite)
            site.check_target()

    def accumulate(
        self, rows: torch.Tensor, alphas: list[float], weights: list[float], acc: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``acc[rows] += sum_k weights[k] * grad f(path(alphas[k]))``.

        Returns the target score at each point, [K, len(rows)].
        """
        acc = self.acc if acc is None else acc
        subset = rows.numel() != self.x.shape[0]
        x = self.ends[0][rows] if subset else self.ends[0]
        baseline = self.ends[1][rows] if subset else self.ends[1]
        target = self.target[rows] if subset else self.target
        sub_acc = acc[rows] if subset else acc
        alpha_t = torch.tensor(alphas, dtype=sub_acc.dtype, device=x.device)
        weight_t = torch.tensor(weights, dtype=sub_acc.dtype, device=x.device)
        scores = torch.empty(len(alphas), x.shape[0], dtype=sub_acc.dtype, device=x.device)

        if self.step is not None:
            fused = (
                ops._unchecked("path_points", self.backend, x),
                ops._unchecked("weighted_path_accumulate", self.backend, x),
            )

        def compiled(step: int, step_stop: int, row: int, row_stop: int) -> None:
            assert self.step is not None
            count = step_stop - step
            weights = weight_t[step:step_stop].view(count, 1).expand(count, row_stop - row).contiguous()
            values = self.step(
                self.site.forward.plain,
                self.site.forward.dtype,
                *fused,
                x[row:row_stop],
                baseline[row:row_stop],
                alpha_t[step:step_stop],
                weights,
                sub_acc[row:row_stop],
                target[row:row_stop].repeat(count),
                self.site.forward.extras(rows[row:row_stop] if subset else slice(row, row_stop), count),
            )
            scores[step:step_stop, row:row_stop] = values.view(count, -1)

        def body(step: int, step_stop: int, row: int, row_stop: int) -> None:
            points = ops.path_points(
                x[row:row_stop], baseline[row:row_stop], alpha_t[step:step_stop], backend=self.backend
            )
            count = step_stop - step
            grads, values = self.site.gradients(
                points.view(-1, *x.shape[1:]),
                rows[row:row_stop] if subset else slice(row, row_stop),
                count,
                target[row:row_stop].repeat(count),
            )
            ops.weighted_path_accumulate(
                grads.reshape(points.shape),
                weight_t[step:step_stop],
                sub_acc[row:row_stop],
                backend=self.backend,
            )
            scores[step:step_stop, row:row_stop] = values.view(count, -1)

        run = body if self.step is None else compiled
        _scheduling.for_each_block(len(alphas), x.shape[0], self.chunk, run, halve_on_oom=x.is_cuda)
        if subset:
            acc[rows] = sub_acc
        return scores

    def attributions(self, path_integral: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        x = self.x if rows is None else self.x[rows]
        baseline = self.baseline if rows is None else self.baseline[rows]
        return (x.to(path_integral.dtype) - baseline.to(path_integral.dtype)) * path_integral

    @staticmethod
    def delta(attributions: torch.Tensor, score_difference: torch.Tensor) -> torch.Tensor:
        return attributions.flatten(1).sum(1) - score_difference.to(attributions.dtype)


def _path_step(
    model: Callable[..., Any],
    dtype: torch.dtype | None,
    path_points: Callable[..., torch.Tensor],
    accumulate: Callable[..., None],
    x: torch.Tensor,
    baseline: torch.Tensor,
    alphas: torch.Tensor,
    weights: torch.Tensor,
    acc: torch.Tensor,
    target: torch.Tensor,
    kwargs: dict[str, Any],
) -> torch.Tensor:
    """One chunk of IG as one graph (``_compile.Step``): the path points [K, n, *F] of ``x`` and
    ``baseline`` [n, *F] at ``alphas`` [K], the target's gradients there, ``acc += sum_k
    weights[k] * grad_k`` (weights [K, n]); returns the scores [K * n]. ``path_points`` and
    ``accumulate`` are the fused ops' implementations (``ops._unchecked``), called with
    arguments in the form the public ops hand on."""
    points = path_points(x, baseline, alphas)
    grads, scores = _layer.point_gradients(model, dtype, points.view(-1, *x.shape[1:]), target, kwargs)
    accumulate(grads.reshape(points.shape).contiguous(), weights, acc)
    return scores
