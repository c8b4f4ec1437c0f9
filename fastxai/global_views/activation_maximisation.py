"""Activation maximisation: the inputs a unit of the model responds to most."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.nn import functional

from fastxai import _compile, _model, _scheduling
from fastxai._checks import check_count, check_number
from fastxai._model import Model
from fastxai.global_views import _layers


class MaximisationResult(NamedTuple):
    """What ``activation_maximisation`` returns (unpacks as ``inputs, activations``).

    inputs: [batch, *input_shape] for one unit, [len(unit), batch, *input_shape] for several;
    activations: the objective's unit activation at those inputs (no regulariser, no jitter),
    [batch] or [len(unit), batch], float32.
    """

    inputs: torch.Tensor
    activations: torch.Tensor


def _check_units(unit: object) -> tuple[list[int], bool]:
    """The unit indices and whether one int was given (the result then has no unit dimension)."""
    if isinstance(unit, int) and not isinstance(unit, bool):
        return [unit], True
    if isinstance(unit, Sequence) and not isinstance(unit, str) and len(unit) > 0:
        if all(isinstance(u, int) and not isinstance(u, bool) for u in unit):
            return list(unit), False
    raise TypeError(f"unit must be an int or a non-empty sequence of ints, got {unit!r}")


def _check_bounds(bounds: object) -> tuple[float, float] | None:
    if bounds is None:
        return None
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not all(math.isfinite(b) for b in bounds)
    ):
        raise ValueError(f"bounds must be None or (lo, hi) finite numbers, got {bounds!r}")
    if not bounds[0] < bounds[1]:
        raise ValueError(f"bounds must have lo < hi, got {tuple(bounds)!r}")
    return float(bounds[0]), float(bounds[1])


def _check_input_shape(input_shape: object) -> tuple[int, ...]:
    if (
        not isinstance(input_shape, (tuple, list, torch.Size))
        or len(input_shape) == 0
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in input_shape)
    ):
        raise ValueError(
            f"input_shape must be the shape of one input, a non-empty tuple of ints >= 1, got {input_shape!r}"
        )
    return tuple(input_shape)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``x`` [N, C, *spatial] over its spatial dimensions
    (kernel radius ``ceil(3 sigma)``, reflected borders, replicated where a side is too short)."""
    radius = max(1, math.ceil(3 * sigma))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(x.dtype).view(1, 1, -1)
    out = x
    for dim in range(2, x.dim()):
        moved = out.movedim(dim, -1)
        length = moved.shape[-1]
        flat = moved.reshape(-1, 1, length)
        mode = "reflect" if radius < length else "replicate"
        flat = functional.conv1d(functional.pad(flat, (radius, radius), mode=mode), kernel)
        out = flat.reshape(moved.shape).movedim(-1, dim)
    return out


def _start_point(
    rows: int,
    input_shape: tuple[int, ...],
    bounds: tuple[float, float] | None,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """Small noise around the middle of the box (around 0 without bounds)."""
    noise = torch.randn((rows, *input_shape), generator=generator, device=device, dtype=torch.float32)
    if bounds is None:
        return noise * 0.01
    lo, hi = bounds
    return (0.5 * (lo + hi) + 0.01 * (hi - lo) * noise).clamp_(lo, hi)


def _model_placement(model: Model) -> tuple[torch.device, torch.dtype]:
    parameters = [p for p in getattr(model, "parameters", lambda: [])() if p.is_floating_point()]
    if parameters:
        return parameters[0].device, parameters[0].dtype
    return torch.device("cpu"), torch.float32


def activation_maximisation(
    model: Model,
    *,
    layer: object = None,
    unit: int | Sequence[int],
    input_shape: Sequence[int],
    n_steps: int = 256,
    lr: float = 0.05,
    l2: float = 1e-3,
    jitter: int = 0,
    blur_every: int = 0,
    blur_sigma: float = 0.5,
    bounds: tuple[float, float] | None = None,
    seed: int | None = None,
    init: torch.Tensor | None = None,
    batch: int = 1,
    chunk_size: int | None = None,
) -> MaximisationResult:
    """Activation maximisation (Erhan et al. 2009; Olah et al. 2017, "Feature Visualization").

    For every unit ``u`` and each of ``batch`` restarts, Adam ascends
    ``a_u(roll(x, s_t)) - l2 * ||x||^2`` from a seeded start (or ``init``), where ``a_u`` is the
    class logit ``u`` (``layer=None``), neuron ``u`` of a [N, F] layer output, or the mean over
    positions of channel ``u`` of a [N, C, *spatial] output; ``s_t`` is a random shift of at
    most ``jitter`` positions per spatial dimension, drawn anew each step. Every ``blur_every``
    steps ``x`` is blurred with a Gaussian of ``blur_sigma`` positions; after every step it is
    clamped to ``bounds``. All units and restarts are optimised together as one batch of
    ``len(unit) * batch`` inputs, in model passes of at most ``chunk_size``.

    For a linear unit ``w . x`` the maximiser is ``w / (2 l2)`` without bounds and the box corner
    picked by ``sign(w)`` with them. layer: a module of ``model`` or its dotted name.
    Returns ``(inputs, activations)``: [batch, *input_shape] and [batch] for one int ``unit``,
    with a leading ``len(unit)`` dimension for a sequence; ``init`` must have that shape.

    >>> x, act = fastxai.global_views.activation_maximisation(model, unit=[3, 7], input_shape=(1, 8, 8),
    ...                                                       bounds=(0, 1), batch=4, seed=0)
    """
    model = _compile.original(_model.check_model(model))
    units, single = _check_units(unit)
    shape = _check_input_shape(input_shape)
    n_steps = check_count("n_steps", n_steps, 1)
    lr = check_number("lr", lr, strict=True)
    l2 = check_number("l2", l2)
    jitter = check_count("jitter", jitter, 0)
    blur_every = check_count("blur_every", blur_every, 0)
    blur_sigma = check_number("blur_sigma", blur_sigma, strict=True)
    box = _check_bounds(bounds)
    restarts = check_count("batch", batch, 1)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    if (jitter or blur_every) and len(shape) < 2:
        raise ValueError(
            f"jitter and blur_every need spatial dimensions (input_shape (C, *spatial)), got {shape}"
        )
    if any(u < 0 for u in units):
        raise ValueError(f"unit must be >= 0, got {units}")
    layer_module, layer_name = (None, "") if layer is None else _layers.resolve_layer(model, layer)
    rows = len(units) * restarts
    result_shape = ((restarts,) if single else (len(units), restarts)) + shape
    device, dtype = _model_placement(model)
    if init is not None:
        if not isinstance(init, torch.Tensor) or not init.is_floating_point():
            raise TypeError(f"init must be None or a floating-point tensor, got {type(init).__name__}")
        if tuple(init.shape) != result_shape:
            raise ValueError(f"init must have shape {result_shape}, got {tuple(init.shape)}")
        if not _model.all_finite(init):
            raise ValueError("init contains NaN or infinity")
        device, dtype = init.device, init.dtype
    chunk = _scheduling.check_chunk_size(chunk_size)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))
    if init is None:
        x = _start_point(rows, shape, box, generator, device)
    else:
        x = init.detach().reshape(rows, *shape).to(torch.float32, copy=True)
        if box is not None:
            x.clamp_(*box)
    chunk = _scheduling.auto_chunk_size(chunk, x)
    row_units = torch.tensor(units, device=device).repeat_interleave(restarts)
    spatial_dims = tuple(range(2, 1 + len(shape)))

    def unit_values(inputs: torch.Tensor, row_unit: torch.Tensor) -> torch.Tensor:
        if layer_module is None:
            outputs = _model.logits(model, inputs)
        else:
            outputs = _layers.unit_activations(_layers.layer_output(model, layer_module, layer_name, inputs))
        return outputs.gather(1, row_unit.view(-1, 1)).squeeze(1).float()

    with _model.preserved_state(model):
        with torch.no_grad():
            probe = _layers.unit_activations(
                _model.logits(model, x[:1].to(dtype))
                if layer_module is None
                else _layers.layer_output(model, layer_module, layer_name, x[:1].to(dtype))
            )
        if max(units) >= probe.shape[1]:
            where = "classes of the model" if layer_module is None else f"units of layer {layer_name!r}"
            raise ValueError(f"unit must be in [0, {probe.shape[1]}) (the {where}), got {max(units)}")

        # Adam (Kingma and Ba 2015) with torch.optim.Adam's defaults, in float32, written out.
        first_moment, second_moment = torch.zeros_like(x), torch.zeros_like(x)
        beta1, beta2, epsilon = 0.9, 0.999, 1e-8
        for step in range(n_steps):
            shifts = (
                torch.randint(-jitter, jitter + 1, (len(spatial_dims),), generator=generator, device=device)
                if jitter
                else None
            )
            ascent = torch.empty_like(x)
            for start in range(0, rows, chunk):
                leaf = x.detach()[start : start + chunk].requires_grad_(True)
                with torch.enable_grad():
                    moved = leaf if shifts is None else torch.roll(leaf, shifts.tolist(), spatial_dims)
                    values = unit_values(moved.to(dtype), row_units[start : start + chunk])
                    objective = values.sum() - l2 * leaf.square().sum()
                    (ascent[start : start + chunk],) = torch.autograd.grad(objective, leaf)
            first_moment.mul_(beta1).add_(ascent, alpha=1 - beta1)
            second_moment.mul_(beta2).addcmul_(ascent, ascent, value=1 - beta2)
            denominator = (second_moment / (1 - beta2 ** (step + 1))).sqrt_().add_(epsilon)
            x.addcdiv_(first_moment, denominator, value=lr / (1 - beta1 ** (step + 1)))
            with torch.no_grad():
                if blur_every and (step + 1) % blur_every == 0:
                    x.copy_(gaussian_blur(x, blur_sigma))
                if box is not None:
                    x.clamp_(*box)

        final = x
        with torch.no_grad():
            activations = torch.cat(
                [
                    unit_values(final[start : start + chunk].to(dtype), row_units[start : start + chunk])
                    for start in range(0, rows, chunk)
                ]
            )
    return MaximisationResult(
        final.to(dtype).reshape(result_shape), activations.reshape(result_shape[: 1 if single else 2])
    )
