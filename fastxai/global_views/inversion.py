"""Feature inversion (Mahendran and Vedaldi 2015): the input that a layer's representation of an
input describes, found by gradient descent under natural-image priors."""

from __future__ import annotations

from typing import NamedTuple

import torch

from fastxai import _compile, _model, _scheduling
from fastxai._checks import check_count, check_number
from fastxai._model import Model
from fastxai.global_views import _layers
from fastxai.global_views.activation_maximisation import _check_bounds

_TV_EPSILON = 1e-8
"""Added under the TV root, whose gradient at a flat patch is infinite for beta < 2."""


class InversionResult(NamedTuple):
    """What ``feature_inversion`` returns (unpacks as ``inputs, error``).

    inputs: the reconstructions [B, *F] (the inputs' shape and dtype); error: the normalised
    representation error ``||phi(x) - phi_0||^2 / ||phi_0||^2`` of each reconstruction [B],
    float32, without the priors.
    """

    inputs: torch.Tensor
    error: torch.Tensor


def alpha_norm(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """``mean_i |x_i|^alpha`` per input [B, *F] -> [B]: the alpha-norm prior to the power alpha,
    normalised by the number of elements (the paper's ``N_alpha`` with ``B = 1``)."""
    return x.abs().pow(alpha).flatten(1).mean(1)


def total_variation(x: torch.Tensor, beta: float) -> torch.Tensor:
    """``mean_{c,p} (sum_d (x_{c,p+e_d} - x_{c,p})^2)^(beta/2)`` per input [B, C, *spatial] -> [B]:
    the TV^beta prior over every spatial dimension ``d`` (the paper's ``R_{V^beta}`` with
    ``V = 1``, normalised by the number of positions). Borders are replicated (a position
    without a forward neighbour along ``d`` adds no difference there), so every difference
    between neighbours counts once and only constant inputs have TV 0. [B, F] inputs: 0."""
    if x.dim() < 3:
        return x.new_zeros(x.shape[0])
    squares = torch.zeros_like(x)
    for dim in range(2, x.dim()):
        difference = x.diff(dim=dim, append=x.narrow(dim, x.shape[dim] - 1, 1))
        squares = squares + difference.square()
    return (squares + _TV_EPSILON).pow(beta / 2).flatten(1).mean(1)


def feature_inversion(
    model: Model,
    inputs: torch.Tensor,
    *,
    layer: object,
    n_steps: int = 300,
    lr: float = 0.05,
    alpha: float = 6.0,
    lambda_alpha: float = 0.0,
    beta: float = 2.0,
    lambda_tv: float = 0.0,
    bounds: tuple[float, float] | None = None,
    init: torch.Tensor | None = None,
    seed: int | None = None,
    chunk_size: int | None = None,
) -> InversionResult:
    """Feature inversion (Mahendran and Vedaldi 2015, "Understanding Deep Image Representations
    by Inverting Them"): for each input ``x_0`` with representation ``phi_0 = phi(x_0)`` (the
    output of ``layer``), Adam minimises::

        ||phi(x) - phi_0||^2 / ||phi_0||^2 + lambda_alpha * N_alpha(x) + lambda_tv * TV_beta(x)

    with ``N_alpha(x) = mean |x|^alpha`` (``alpha_norm``; the paper takes alpha = 6) and
    ``TV_beta(x) = mean_p (sum_d (x_{p+e_d} - x_p)^2)^(beta/2)`` over the spatial dimensions
    (``total_variation``; beta = 2 smooths, beta = 1 keeps edges). The priors are means over
    elements, as the paper normalises by the image size: scale ``lambda_*`` to the data's range
    (the paper's ``B`` and ``V``). The start is ``init`` or seeded noise of std 0.01 (around the
    middle of ``bounds``), the step size decays linearly to lr / 10, and ``x`` is clamped to
    ``bounds`` after each step. Each input's objective depends on its row alone, so the whole
    batch descends together (in passes of ``chunk_size`` rows); ``phi_0 = 0`` is divided by 1.

    An invertible layer (an orthogonal map) gives ``x_0`` back without priors; a lossy one gives
    an input the layer cannot tell from ``x_0``, which is what the layer keeps of it.
    inputs: [B, *F]; returns ``(inputs [B, *F], error [B])``. The model is left as found.

    >>> rec, err = fastxai.feature_inversion(model, x, layer="8", lambda_tv=0.05, bounds=(0, 1), seed=0)
    >>> model(rec).argmax(1) == model(x).argmax(1)
    """
    model = _compile.original(_model.check_model(model))  # hooked: a compiled model's module
    x0 = _model.check_inputs(inputs).detach()
    n_steps = check_count("n_steps", n_steps, 1)
    lr = check_number("lr", lr, strict=True)
    alpha = check_number("alpha", alpha, minimum=1.0)
    lambda_alpha = check_number("lambda_alpha", lambda_alpha)
    beta = check_number("beta", beta, minimum=1.0)
    lambda_tv = check_number("lambda_tv", lambda_tv)
    if lambda_tv and x0.dim() < 3:
        raise ValueError(
            f"lambda_tv needs inputs with spatial dimensions [B, C, *spatial], got shape {tuple(x0.shape)}"
        )
    box = _check_bounds(bounds)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    if init is not None:
        if not isinstance(init, torch.Tensor) or not init.is_floating_point():
            raise TypeError(f"init must be None or a floating-point tensor, got {type(init).__name__}")
        if init.shape != x0.shape:
            raise ValueError(f"init must have the inputs' shape {tuple(x0.shape)}, got {tuple(init.shape)}")
        if not _model.all_finite(init):
            raise ValueError("init contains NaN or infinity")
    layer_module, layer_name = _layers.resolve_layer(model, layer)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x0)
    generator = torch.Generator(device=x0.device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))
    if init is None:
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=torch.float32)
        centre = 0.0 if box is None else 0.5 * (box[0] + box[1])
        start = (centre + 0.01 * (1.0 if box is None else box[1] - box[0]) * noise).to(x0.dtype)
    else:
        start = init.detach().to(device=x0.device, dtype=x0.dtype)
    if box is not None:
        start = start.clamp(*box)

    def represent(batch: torch.Tensor) -> torch.Tensor:
        return _layers.layer_output(model, layer_module, layer_name, batch).flatten(1).float()

    reconstructions, errors = [], []
    with _model.preserved_state(model):
        for begin in range(0, x0.shape[0], chunk):
            with torch.no_grad():
                target = represent(x0[begin : begin + chunk])
            scale = target.square().sum(1).clamp_min(1e-30)
            scale = torch.where(scale > 1e-30, scale, torch.ones_like(scale))
            x = start[begin : begin + chunk].clone().requires_grad_(True)
            optimiser = torch.optim.Adam([x], lr=lr)
            schedule = torch.optim.lr_scheduler.LambdaLR(
                optimiser, lambda step: 1.0 - 0.9 * step / max(1, n_steps - 1)
            )
            for _ in range(n_steps):
                optimiser.zero_grad(set_to_none=True)
                with torch.enable_grad():
                    error = (represent(x) - target).square().sum(1) / scale
                    loss = error
                    if lambda_alpha:
                        loss = loss + lambda_alpha * alpha_norm(x, alpha)
                    if lambda_tv:
                        loss = loss + lambda_tv * total_variation(x, beta)
                    # rows are independent: the sum's gradient is each row's own gradient
                    loss.sum().backward()
                optimiser.step()
                schedule.step()
                if box is not None:
                    with torch.no_grad():
                        x.clamp_(*box)
            with torch.no_grad():
                errors.append(((represent(x) - target).square().sum(1) / scale).float())
            reconstructions.append(x.detach())
    return InversionResult(torch.cat(reconstructions), torch.cat(errors))
