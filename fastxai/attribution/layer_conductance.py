"""Layer conductance (Dhamdhere et al. 2018): how much of Integrated Gradients flows through a layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from fastxai import _backends, _compile, _layer, _model, _precision, _scheduling, ops
from fastxai._model import Model
from fastxai.attribution import quadrature
from fastxai.attribution.integrated_gradients import check_baselines

ToInputs = Callable[[torch.Tensor], Sequence[torch.Tensor]]


def conductance_at(
    site: _layer.LayerSite,
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    to_inputs: ToInputs,
    target: torch.Tensor,
    alphas: Sequence[float],
    chunk: int,
    backend: str | None = None,
) -> torch.Tensor:
    """``sum_k dF/dh(x_k) * (h(x_{k+1}) - h(x_k))`` over input-space path points
    ``x_k = x' + alpha_k (x - x')`` (inside the model's state guard; ``site.prepare`` done).
    With the site's ``dtype`` (``_precision``) the caller passes the path's ends in it: the
    points are built in it, the layer's half-precision values and gradients are multiplied and
    summed in float32.

    inputs, baselines: [B, *F] (``to_inputs`` turns [N, *F] points into the model's inputs);
    returns [B, *A] like ``site.origin``. The path's points go through the model in blocks of
    steps (the fused ``path_points`` builds them); the gradient and the layer value of the
    last point of a block are kept per row, so nothing grows with ``len(alphas)``.
    """
    origin = site.origin
    batch, shape = inputs.shape[0], tuple(origin.shape[1:])
    acc_dtype = torch.float64 if origin.dtype == torch.float64 else torch.float32
    total = torch.zeros(origin.shape, dtype=acc_dtype, device=origin.device)
    last_grad = torch.zeros_like(total)
    last_value = torch.zeros_like(total)
    # half-precision ends (``dtype=``): the step sizes in float32, as IG's (rounded, close alphas merge)
    alpha_dtype = inputs.dtype if site.forward.dtype is None else acc_dtype
    alpha_t = torch.tensor(list(alphas), dtype=alpha_dtype, device=inputs.device)

    def body(step: int, step_stop: int, row: int, row_stop: int) -> None:
        count, rows = step_stop - step, slice(row, row_stop)
        points = ops.path_points(inputs[rows], baselines[rows], alpha_t[step:step_stop], backend=backend)
        grads, values, _ = site.gradients_and_activations(
            rows, count, target[rows].repeat(count), to_inputs(points.view(-1, *inputs.shape[1:]))
        )
        grads = grads.view(count, row_stop - row, *shape).to(acc_dtype)
        values = values.view(count, row_stop - row, *shape).to(acc_dtype)
        if step > 0:  # the step from the previous block's last point to this block's first
            total[rows] += last_grad[rows] * (values[0] - last_value[rows])
        # one step at a time, in path order: summing a block first would make the result's
        # last bits depend on how the steps were blocked, i.e. on chunk_size
        for k in range(count - 1):
            total[rows] += grads[k] * (values[k + 1] - values[k])
        last_grad[rows], last_value[rows] = grads[-1], values[-1]

    _scheduling.for_each_block(len(alphas), batch, chunk, body)
    return total


def end_scores(
    site: _layer.LayerSite,
    baselines: torch.Tensor,
    to_inputs: ToInputs,
    target: torch.Tensor,
    chunk: int,
) -> torch.Tensor:
    """``f_target(x) - f_target(x')`` with the plain model (no replacement), in chunks: [B]."""
    parts = []
    with torch.no_grad():
        for start in range(0, baselines.shape[0], chunk):
            rows = slice(start, start + chunk)
            index = target[rows].view(-1, 1)
            end = site.forward.logits(rows, 1).gather(1, index)
            begin = site.forward.logits(rows, 1, to_inputs(baselines[rows])).gather(1, index)
            parts.append((end - begin).squeeze(1))
    return torch.cat(parts)


def check_path(method: object, n_steps: object) -> None:
    """The path of ``n_steps`` steps (``n_steps + 1`` points of rule ``method``); a ValueError
    naming the argument otherwise."""
    quadrature.check_method(method)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got {n_steps!r}")
    if method == "gausslegendre" and n_steps + 1 > quadrature.GAUSS_LEGENDRE_MAX_STEPS:
        raise ValueError(
            f"n_steps={n_steps}: Gauss-Legendre takes at most {quadrature.GAUSS_LEGENDRE_MAX_STEPS - 1} "
            "steps here (n_steps + 1 points); use fewer steps or a riemann_* method"
        )


def layer_conductance(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    layer: object,
    baselines: float | torch.Tensor = 0.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    return_convergence_delta: bool = False,
    forward_kwargs: dict | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Layer conductance (Dhamdhere et al. 2018; Captum's ``LayerConductance``).

    Along the straight path ``x_k = x' + alpha_k (x - x')`` in input space (``n_steps + 1``
    points placed by ``method`` as Captum does), with ``h`` the layer's output:
    ``cond = sum_k dF_target/dh(x_k) * (h(x_{k+1}) - h(x_k))``, the share of Integrated
    Gradients that flows through each unit of the layer; ``sum(cond) ~ f(x) - f(x')``.

    inputs: [B, *F] floating point; layer: a module of the model or its dotted name;
    baselines as ``integrated_gradients``'s at the input; returns [B, *A] (the layer output's
    shape), and the delta ``sum(cond) - (f(x) - f(x'))`` [B] with ``return_convergence_delta``.
    ``forward_kwargs``: extra keyword arguments to the model, one row per example repeated
    with the rows of each model batch.

    ``dtype=torch.bfloat16`` (or ``torch.float16``): the path points are made in that dtype and
    every model call runs under autocast in it (``fastxai._precision``); the layer's values and
    gradients come in it and are multiplied and summed in float32, the result is float32 (the
    delta is then of the model run so).

    >>> c = fastxai.attribution.layer_conductance(model, x, target=y, layer="4", n_steps=100)
    """
    model = _compile.original(_model.check_model(model))
    inputs = _model.check_inputs(inputs)
    check_path(method, n_steps)
    if backend is not None:
        _backends.check_choice(backend)
    site, inputs = _layer.site_for(model, inputs, layer, forward_kwargs, dtype)
    if not isinstance(site, _layer.LayerSite):
        raise TypeError("layer must be an nn.Module of the model or its dotted name, got None")
    x = inputs.detach().contiguous()
    baseline = check_baselines(baselines, x)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x)
    target_t = _model.check_target(target, x.shape[0], x.device)
    alphas, _ = quadrature.points_and_weights(method, n_steps + 1)

    def to_inputs(points: torch.Tensor) -> tuple[torch.Tensor]:
        return (points,)

    ends = x, baseline  # the path's ends, in the precision the model runs in
    if site.forward.dtype is not None and x.is_floating_point():
        ends = x.to(site.forward.dtype), baseline.to(site.forward.dtype)

    with _model.preserved_state(model):
        site.prepare(chunk)
        # a layer's half-precision output under autocast: the result in float32
        out_dtype = site.origin.dtype
        if site.forward.dtype is not None:
            out_dtype = _precision.accumulator_dtype(out_dtype)
        target_t = site.forward.resolve_target(target_t, chunk)
        result = conductance_at(site, *ends, to_inputs, target_t, alphas.tolist(), chunk, backend)
        if not return_convergence_delta:
            return result.to(out_dtype)
        difference = end_scores(site, ends[1], to_inputs, target_t, chunk)
    delta = result.flatten(1).sum(1) - difference.to(result.dtype)
    return result.to(out_dtype), delta


__all__ = ["conductance_at", "end_scores", "layer_conductance"]
