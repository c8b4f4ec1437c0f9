"""The iterative gradient attack that PGD, BIM, FGSM and MI-FGSM share, on the fused PGD step.

One loop serves them all: restarts run as one larger batch, early stopping shrinks the batch
to the samples that are not yet adversarial, and every update is one ``ops.pgd_step``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional

from fastxai import _backends, _budget, _model, _precision, ops
from fastxai._checks import check_count, check_positive
from fastxai._model import Model
from fastxai.attacks import _cuda_graph

NORMS = ("linf", "l2")
LOSSES = ("ce", "margin")


@dataclass(frozen=True)
class ThreatModel:
    """What the attacker may do: an ``eps``-ball in ``norm`` around the input, inside ``bounds``."""

    eps: float
    norm: str
    bounds: tuple[float, float]


def check_threat_model(eps: object, norm: object, bounds: object) -> ThreatModel:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise ValueError(f"bounds must be (lower, upper) numbers with lower < upper, got {bounds!r}")
    return ThreatModel(float(eps), str(norm), (float(bounds[0]), float(bounds[1])))


def check_attack_inputs(inputs: object, bounds: tuple[float, float]) -> torch.Tensor:
    x = _model.check_inputs(inputs)
    low, high = float(x.min()), float(x.max())
    if low < bounds[0] or high > bounds[1]:
        raise ValueError(
            f"inputs must lie within bounds {bounds}, got values in [{low:.6g}, {high:.6g}]"
            " (pass bounds=..., or normalize=(mean, std) if the model expects normalised inputs)"
        )
    return x


def normalizer(normalize: object, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``(x - mean) / std`` per channel (dimension 1), or None."""
    if normalize is None:
        return None
    if not isinstance(normalize, (tuple, list)) or len(normalize) != 2:
        raise ValueError(f"normalize must be (mean, std), got {normalize!r}")
    channels = x.shape[1] if x.dim() > 1 else 1
    shape = (1, channels) + (1,) * max(0, x.dim() - 2)
    tensors = []
    for name, value in zip(("mean", "std"), normalize, strict=True):
        tensor = torch.as_tensor(value, dtype=x.dtype, device=x.device).flatten()
        if tensor.numel() == 1:
            tensor = tensor.expand(channels)
        if tensor.numel() != channels:
            raise ValueError(
                f"normalize {name} must have one value per channel ({channels}), got {tensor.numel()}"
            )
        tensors.append(tensor.reshape(shape))
    mean, std = tensors
    if bool((std <= 0).any()):
        raise ValueError("normalize std must be > 0")
    return lambda inputs: (inputs - mean) / std


def model_logits(
    model: Model,
    normalise: Callable[[torch.Tensor], torch.Tensor] | None,
    dtype: torch.dtype | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The attacks' ``forward``: the model's logits [N, C] at points [N, *F] (normalised first
    when ``normalise``). With ``dtype`` (``fastxai._precision``) the model runs under autocast
    in it, on the points as they are (the iterate stays in the inputs' dtype: autocast rounds
    it where a matrix product or convolution reads it), and its logits come back in float32
    (float64 for float64 points), so the losses, their gradients' way back to the point and
    the success checks are not taken in half precision."""

    def forward(points: torch.Tensor) -> torch.Tensor:
        values = points if normalise is None else normalise(points)
        if dtype is None:
            return _model.logits(model, values)
        with _precision.autocast(dtype, points.device.type):
            logits = _model.logits(model, values)
        return logits.to(_precision.accumulator_dtype(points.dtype))

    return forward


def check_labels(labels: object, batch: int, device: torch.device) -> torch.Tensor | None:
    try:
        return _model.check_target(labels, batch, device)
    except (TypeError, ValueError) as error:
        raise type(error)(str(error).replace("target", "labels")) from None


def objective(logits: torch.Tensor, labels: torch.Tensor, loss: str, targeted: bool) -> torch.Tensor:
    """Per-sample quantity the attacker maximises, [N] float32.

    ``ce``: cross-entropy with the true label (untargeted) or minus that with the target label.
    ``margin``: ``max_{j != y} z_j - z_y`` (untargeted) or ``z_t - max_{j != t} z_j`` (targeted),
    the logit margin of Carlini and Wagner (2017).
    """
    z = logits.float()
    if loss == "ce":
        value = functional.cross_entropy(z, labels, reduction="none")
        return -value if targeted else value
    label_logit = z.gather(1, labels.view(-1, 1)).squeeze(1)
    others = z.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return label_logit - others if targeted else others - label_logit


def succeeded(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    predicted = logits.argmax(dim=1)
    return predicted == labels if targeted else predicted != labels


def random_start(x: torch.Tensor, threat: ThreatModel, generator: torch.Generator) -> torch.Tensor:
    """A uniform point of the L-inf ball, or (L2) a random direction at a uniform radius, as
    torchattacks draws them; clamped to the bounds."""
    if threat.norm == "linf":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        delta = (noise * 2 - 1) * threat.eps
    else:
        direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=torch.float32)
        norms = direction.flatten(1).norm(dim=1).clamp_min(1e-12)
        radius = torch.rand(x.shape[0], generator=generator, device=x.device) * threat.eps
        delta = direction * (radius / norms).view(-1, *([1] * (x.dim() - 1)))
    return torch.clamp(x + delta.to(x.dtype), *threat.bounds)


def check_options(
    *,
    eps: object,
    alpha: object,
    steps: object,
    norm: object,
    restarts: object,
    loss: object,
    bounds: object,
    momentum_decay: float | None,
    seed: object,
    backend: str | None,
    eot_samples: object = 1,
) -> tuple[ThreatModel, float, int, int]:
    """The iterative attack's settings checked, without inputs (``robust_accuracy`` checks them
    before the first batch, also when no sample is ever attacked): the threat model, the step
    size, the step and restart counts."""
    threat = check_threat_model(eps, norm, tuple(bounds) if isinstance(bounds, (list, tuple)) else bounds)
    step_size = check_positive("alpha", alpha)
    step_count = check_count("steps", steps)
    restart_count = check_count("restarts", restarts)
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if momentum_decay is not None and (not math.isfinite(momentum_decay) or momentum_decay < 0):
        raise ValueError(f"decay must be a finite number >= 0, got {momentum_decay!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    if backend is not None:
        _backends.check_choice(backend)
    check_count("eot_samples", eot_samples)
    return threat, step_size, step_count, restart_count


def expected_gradient(
    forward: Callable[[torch.Tensor], torch.Tensor],
    point: torch.Tensor,
    samples: int,
    value: Callable[[torch.Tensor, int], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits [N, C], values [N], gradient of ``values.sum()`` w.r.t. ``point`` [N, *F]), the
    expectation over ``samples`` forward/backward passes: EOT (Athalye et al. 2018) against a
    model that draws randomness at each call. ``value(logits, repeats)`` is the per-row
    objective of logits for ``repeats`` stacked copies of the rows.

    One pass when ``samples == 1`` (bit for bit the plain gradient); otherwise the copies run as
    one batch of ``samples x N`` rows (each copy gets its own draws) and logits, values and
    gradient are their means.
    """
    with torch.enable_grad():
        if samples == 1:
            logits = forward(point)
            values = value(logits, 1)
            (grad,) = torch.autograd.grad(values.sum(), point)
            return logits, values, grad
        rows = point.shape[0]
        logits = forward(point.repeat(samples, *([1] * (point.dim() - 1))))
        values = value(logits, samples)
        (grad,) = torch.autograd.grad(values.sum(), point)
    mean_logits = logits.detach().view(samples, rows, -1).mean(dim=0)
    return mean_logits, values.detach().view(samples, rows).mean(dim=0), grad / samples


def check_restarts_fit(restarts: int, x: torch.Tensor, momentum: bool = False) -> None:
    """Refuse, before any model call, restarts that cannot fit: they run as one batch of
    ``restarts x B`` inputs, whose start points, iterates, gradients and steps (4 copies of the
    inputs, and MI-FGSM's float32 momentum) are held for the whole attack; the model's
    activations for that batch come on top. (``steps`` are a loop: many are only slow.)"""
    nbytes = restarts * x.numel() * (4 * x.element_size() + 4 * momentum)
    what = f"{restarts} restarts of {x.shape[0]} inputs, run as one batch,"
    _budget.check_fits("restarts", restarts, nbytes, what, x.device, "use fewer restarts")


def iterative_attack(
    model: Model,
    inputs: object,
    labels: object,
    *,
    eps: float,
    alpha: float,
    steps: int,
    norm: str = "linf",
    random_start_: bool = False,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    early_stop: bool = False,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: object = None,
    momentum_decay: float | None = None,
    seed: int | None = None,
    backend: str | None = None,
    cuda_graph: bool = False,
    eot_samples: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Run the attack; see ``fastxai.attacks.pgd`` for the meaning of every argument."""
    model = _model.check_model(model)
    threat, step_size, steps, restarts = check_options(
        eps=eps,
        alpha=alpha,
        steps=steps,
        norm=norm,
        restarts=restarts,
        loss=loss,
        bounds=bounds,
        momentum_decay=momentum_decay,
        seed=seed,
        backend=backend,
        eot_samples=eot_samples,
    )
    if cuda_graph is True and eot_samples > 1:
        raise ValueError(
            "cuda_graph=True replays the draws recorded once, which defeats eot_samples > 1 (fresh "
            "draws at every step): use one or the other"
        )
    x = check_attack_inputs(inputs, threat.bounds).detach().contiguous()
    model_dtype = _precision.check_dtype(dtype, x.device)
    check_restarts_fit(restarts, x, momentum_decay is not None)
    _backends.resolve(backend, x.device, x.dtype)  # a backend that cannot step x, before the model runs
    graphed = _cuda_graph.check_cuda_graph(cuda_graph, x, early_stop)
    batch = x.shape[0]
    label_t = check_labels(labels, batch, x.device)
    if targeted and label_t is None:
        raise ValueError("labels are required for a targeted attack (they are the target classes)")
    forward = model_logits(model, normalizer(normalize, x), model_dtype)

    with _model.preserved_state(model):
        try:
            label_t = _model.resolve_target(forward, x, label_t, batch)
        except ValueError as error:
            raise ValueError(str(error).replace("target", "labels")) from None
        generator = torch.Generator(device=x.device)
        generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))
        origin = x.repeat(restarts, *([1] * (x.dim() - 1)))
        row_labels = label_t.repeat(restarts)
        adv = random_start(origin, threat, generator) if random_start_ else origin.clone()
        momentum = torch.zeros_like(origin, dtype=torch.float32) if momentum_decay is not None else None
        active = torch.arange(batch * restarts, device=x.device)
        done = torch.zeros(batch, dtype=torch.bool, device=x.device)
        rows = adv.shape[0]

        def gradient(point: torch.Tensor, labels_now: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            def value(logits: torch.Tensor, repeats: int) -> torch.Tensor:
                stacked = labels_now if repeats == 1 else labels_now.repeat(repeats)
                return objective(logits, stacked, loss, targeted)

            logits, _, grad = expected_gradient(forward, point, eot_samples, value)
            return logits, grad

        def with_momentum(grad: torch.Tensor, active: torch.Tensor | None) -> torch.Tensor:
            """MI-FGSM: ``g <- grad / mean|grad| + decay * g`` for the rows ``active`` (None: all)."""
            assert momentum is not None and momentum_decay is not None
            scale = grad.float().abs().flatten(1).mean(dim=1).clamp_min(1e-30)
            scale = scale.view(-1, *([1] * (x.dim() - 1)))
            if active is None:
                momentum.mul_(momentum_decay).add_(grad.float() / scale)
                return momentum.to(x.dtype)
            update = grad.float() / scale + momentum_decay * momentum[active]
            momentum[active] = update
            return update.to(x.dtype)

        if graphed:
            fused = _cuda_graph.fused_step(
                adv, origin, step_size, threat.eps, threat.norm, threat.bounds, backend
            )

            def whole_step(current: torch.Tensor) -> torch.Tensor:
                point = current.detach().requires_grad_(True)
                _, grad = gradient(point, row_labels)
                grad = grad if momentum is None else with_momentum(grad, None)
                return fused(point.detach(), grad)

            adv = _cuda_graph.replay(whole_step, adv, steps, momentum)
            steps = 0  # the loop below has nothing left to do
        for _ in range(steps):
            everyone = active.numel() == rows  # no gathers or scatters until early stopping drops rows
            point = (adv if everyone else adv.index_select(0, active)).detach().requires_grad_(True)
            labels_now = row_labels if everyone else row_labels[active]
            logits, grad = gradient(point, labels_now)
            if early_stop:
                fooled = succeeded(logits.detach(), labels_now, targeted)
                done[active[fooled] % batch] = True
                keep = ~done[active % batch]
                if not bool(keep.all()):
                    active, point, grad = active[keep], point[keep], grad[keep]
                    everyone = False
                if active.numel() == 0:
                    break
            if momentum is not None:
                grad = with_momentum(grad, None if everyone else active)
            stepped = ops.pgd_step(
                point.detach(),
                grad,
                origin if everyone else origin[active],
                step_size,
                threat.eps,
                *threat.bounds,
                threat.norm,
                backend=backend,
            )
            if everyone:
                adv = stepped
            else:
                adv[active] = stepped
        if restarts == 1:
            return adv
        with torch.no_grad():
            logits = torch.cat(
                [forward(adv[start : start + batch]) for start in range(0, adv.shape[0], batch)]
            )
        # Per sample, a restart that fools the model (the largest objective among them), else the
        # restart with the largest objective: failures are pushed below every success.
        score = objective(logits, row_labels, loss, targeted)
        score[~succeeded(logits, row_labels, targeted)] -= float(score.max() - score.min()) + 1.0
        best = score.view(restarts, batch).argmax(dim=0)
        return adv.view(restarts, batch, *x.shape[1:])[best, torch.arange(batch, device=x.device)]


def check_bounds(bounds: object) -> tuple[float, float]:
    if (
        not isinstance(bounds, (tuple, list))
        or len(bounds) != 2
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in bounds)
        or not bounds[0] < bounds[1]
    ):
        raise ValueError(f"bounds must be (lower, upper) numbers with lower < upper, got {bounds!r}")
    return float(bounds[0]), float(bounds[1])


def check_seed(seed: object) -> int | None:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ValueError(f"seed must be None or an int >= 0, got {seed!r}")
    return seed


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (None: a fresh seed from torch's global one)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, ())))
    return generator


def prepare(
    model: Model, inputs: object, labels: object, bounds: object, normalize: object, dtype: object = None
) -> tuple[Model, torch.Tensor, torch.Tensor | None, Callable[[torch.Tensor], torch.Tensor]]:
    """The checks every attack starts with: (model, inputs [B, *F] within ``bounds``, labels [B]
    or None, forward = model logits of normalised inputs, under autocast in ``dtype``:
    ``model_logits``). Runs no model call."""
    model = _model.check_model(model)
    low_high = check_bounds(bounds)
    x = check_attack_inputs(inputs, low_high).detach().contiguous()
    model_dtype = _precision.check_dtype(dtype, x.device)
    label_t = check_labels(labels, x.shape[0], x.device)
    return model, x, label_t, model_logits(model, normalizer(normalize, x), model_dtype)


def resolve_labels(
    forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, labels: torch.Tensor | None
) -> torch.Tensor:
    """Labels checked against the number of classes, or the predicted classes when None."""
    try:
        return _model.resolve_target(forward, x, labels, x.shape[0])
    except ValueError as error:
        raise ValueError(str(error).replace("target", "labels")) from None


def predict(forward: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return forward(points).argmax(dim=1)
