"""torchattacks-shaped sparse, L1 and black-box attacks: JSMA (Papernot et al. 2016), EADL1
and EADEN (Chen et al. 2018), SparseFool (Modas et al. 2019), OnePixel (Su et al. 2019) and
SPSA (Uesato et al. 2018), with torchattacks 3.5's arguments. Exported by
``fastxai.compat.torchattacks``.

Inside ``forward`` the inputs are in pixel space and ``get_logits`` normalises them, so the
loops below call ``self.get_logits`` as torchattacks does, but on whole batches.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional

from fastxai.attacks.jsma import jsma
from fastxai.compat._torchattacks_attack import Attack


def _count(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _number(name: str, value: object, minimum: float = 0.0, strict: bool = False) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
        or (strict and value == minimum)
    ):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")
    return float(value)


def _labels(attack: Attack, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    if labels is None:
        with torch.no_grad():
            return attack.get_logits(images).argmax(dim=1)
    return labels.to(images.device).long()


class JSMA(Attack):
    """Jacobian saliency map attack (Papernot et al. 2016), L0: ``fastxai.jsma`` with
    torchattacks' search (features at 0.99 or more, 0.01 or less for ``theta < 0``, are never
    picked; ``ceil(gamma * features / 2)`` iterations). In the default mode the target is
    ``(label + 1) % 10``, as torchattacks'."""

    def __init__(self, model: torch.nn.Module, theta: float = 1.0, gamma: float = 0.1) -> None:
        super().__init__("JSMA", model)
        if (
            isinstance(theta, bool)
            or not isinstance(theta, (int, float))
            or not math.isfinite(theta)
            or theta == 0
        ):
            raise ValueError(f"theta must be a finite non-zero number, got {theta!r}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
        self.theta, self.gamma = theta, gamma
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = _labels(self, images, labels)
        targets = self.get_target_label(images, labels) if self.targeted else (labels + 1) % 10
        features = images[0].numel()
        return jsma(
            self._attack_model(),
            images,
            targets,
            theta=self.theta,
            gamma=self.gamma,
            normalize=self._normalize_pair(),
            max_iterations=math.ceil(features * self.gamma / 2),
            search_mask=images < 0.99 if self.theta > 0 else images > 0.01,
        )


class EADL1(Attack):
    """Elastic-net attack (Chen et al. 2018), keeping the example of least L1 distance.

    For each of ``binary_search_steps`` values of the constant ``c`` (per sample, bisected as
    in Carlini-Wagner, starting at ``initial_const``), ``max_iterations`` steps of FISTA on
    ``c * max(z_y - max_{j != y} z_j, -kappa) + ||x - x0||_2^2 + beta ||x - x0||_1`` with the
    learning rate ``lr * sqrt(1 - k / max_iterations)``: a gradient step on the smooth part at
    the momentum point ``y``, then the shrinkage ``x = S_beta(y)`` (coordinates within ``beta``
    of the input go back to it, the others move ``beta`` towards it, in [0, 1]), then
    ``y = x + k / (k + 3) (x - x_prev)``. torchattacks' choices are kept: the label logit in
    the loss is ``max(z_y, 0)``, ``x`` and ``y`` carry over from one constant to the next,
    ``abort_early`` stops the whole batch when its summed loss stops falling (checked every
    ``max_iterations // 10`` steps). One difference: torchattacks' first gradient step also
    moves its copy of the input (``y = nn.Parameter(images)`` shares its memory); here the
    input stays where it is.
    """

    _ELASTIC = False

    def __init__(
        self,
        model: torch.nn.Module,
        kappa: float = 0,
        lr: float = 0.01,
        binary_search_steps: int = 9,
        max_iterations: int = 100,
        abort_early: bool = True,
        initial_const: float = 0.001,
        beta: float = 0.001,
    ) -> None:
        super().__init__(type(self).__name__, model)
        self.kappa = _number("kappa", kappa)
        self.lr = _number("lr", lr, strict=True)
        self.binary_search_steps = _count("binary_search_steps", binary_search_steps)
        self.max_iterations = _count("max_iterations", max_iterations)
        if abort_early and max_iterations < 10:
            raise ValueError(
                f"max_iterations must be >= 10 with abort_early=True (the loss is checked every "
                f"max_iterations // 10 steps), got {max_iterations}"
            )
        self.abort_early = bool(abort_early)
        self.initial_const = _number("initial_const", initial_const, strict=True)
        self.beta = _number("beta", beta)
        self.repeat = binary_search_steps >= 10
        self.supported_mode = ["default", "targeted"]

    def _margin(self, logits: torch.Tensor, one_hot: torch.Tensor) -> torch.Tensor:
        other = ((1 - one_hot) * logits - one_hot * 1e4).amax(dim=1)
        real = (one_hot * logits).amax(dim=1)
        gap = other - real if self.targeted else real - other
        return gap.clamp(min=-self.kappa)

    def _fooled(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        shift = -self.kappa if self.targeted else self.kappa
        predicted = logits.scatter_add(1, labels.view(-1, 1), torch.full_like(logits[:, :1], shift)).argmax(1)
        return predicted == labels if self.targeted else predicted != labels

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = _labels(self, images, labels)
        if self.targeted:
            labels = self.get_target_label(images, labels)
        images = images.detach()
        batch = images.shape[0]
        with torch.no_grad():
            classes = self.get_logits(images).shape[1]
        one_hot = functional.one_hot(labels, classes).to(images.dtype)
        const = torch.full((batch,), self.initial_const, device=images.device)
        lower_bound = torch.zeros(batch, device=images.device)
        upper_bound = torch.full((batch,), 1e10, device=images.device)
        best_cost = torch.full((batch,), 1e10, device=images.device)
        best_adversarial = images.clone()
        x_k, y_k = images.clone(), images.clone()
        check_every = max(1, self.max_iterations // 10)

        def distances(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            delta = (points - images).flatten(1)
            return delta.square().sum(1), delta.abs().sum(1)

        for outer_step in range(self.binary_search_steps):
            step_fooled = torch.zeros(batch, dtype=torch.bool, device=images.device)
            step_cost = torch.full((batch,), 1e10, device=images.device)
            previous_loss = 1e6
            if self.repeat and outer_step == self.binary_search_steps - 1:
                const = upper_bound.clone()
            lr = self.lr
            for iteration in range(self.max_iterations):
                y_k = y_k.detach().requires_grad_(True)
                with torch.enable_grad():
                    logits = self.get_logits(y_k)
                    smooth = (const * self._margin(logits, one_hot)).sum() + distances(y_k)[0].sum()
                    (gradient,) = torch.autograd.grad(smooth, y_k)
                with torch.no_grad():
                    y_k = y_k.detach() - lr * gradient
                    global_step = iteration + 1
                    lr = self.lr * (1 - global_step / self.max_iterations) ** 0.5
                    difference = y_k - images
                    shrunk = torch.where(
                        difference > self.beta,
                        (y_k - self.beta).clamp(max=1),
                        torch.where(difference < -self.beta, (y_k + self.beta).clamp(min=0), images),
                    )
                    y_k = shrunk + global_step / (global_step + 3) * (shrunk - x_k)
                    x_k = shrunk
                    logits = self.get_logits(x_k)
                    l2, l1 = distances(x_k)
                    loss = float(
                        (const * self._margin(logits, one_hot)).sum() + l2.sum() + (self.beta * l1).sum()
                    )
                    if self.abort_early and iteration % check_every == 0:
                        if loss > previous_loss * 0.999999:
                            break
                        previous_loss = loss
                    cost = l2 + self.beta * l1 if self._ELASTIC else l1
                    fooled = self._fooled(logits, labels)
                    better = fooled & (cost < step_cost)
                    step_cost = torch.where(better, cost, step_cost)
                    step_fooled |= better
                    better = fooled & (cost < best_cost)
                    best_cost = torch.where(better, cost, best_cost)
                    best_adversarial[better] = x_k[better]
            upper_bound = torch.where(step_fooled, torch.minimum(upper_bound, const), upper_bound)
            lower_bound = torch.where(step_fooled, lower_bound, torch.maximum(lower_bound, const))
            bounded = upper_bound < 1e9
            const = torch.where(bounded, (lower_bound + upper_bound) / 2, const * 10)
        return best_adversarial


class EADEN(EADL1):
    """Elastic-net attack (Chen et al. 2018) keeping the example of least elastic-net distance
    ``||x - x0||_2^2 + beta ||x - x0||_1``; otherwise ``EADL1``."""

    _ELASTIC = True
