"""torchattacks 3.5's iterative gradient variants and noise baselines on fastxai: FFGSM, RFGSM,
TPGD, EOTPGD, UPGD, Jitter, VANILA, GN, PGDRS and PGDRSL2 (MultiAttack: ``_torchattacks_multiattack``).

Every update is one fused ``ops.pgd_step`` (sign step, projection onto the eps-ball, clamp);
each step's model call is one batch (EOT copies and randomised-smoothing noise samples
included). Random starts and noise are drawn from torch's global generator in torchattacks'
order, so the same ``torch.manual_seed`` gives the same adversarial examples as torchattacks on
a deterministic model (EOT copies run as one batch: a model that draws randomness itself draws
it in another order than torchattacks' one call per copy).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional

from fastxai import ops
from fastxai._checks import check_count, check_number
from fastxai.attacks import _core
from fastxai.compat._torchattacks_attack import Attack

Forward = Callable[[torch.Tensor], torch.Tensor]


def _gradient(cost: Callable[[torch.Tensor], torch.Tensor], point: torch.Tensor) -> torch.Tensor:
    """d cost(point) / d point, for a scalar cost."""
    point = point.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(cost(point), point)
    return grad


def _uniform_start(x: torch.Tensor, eps: float) -> torch.Tensor:
    """torchattacks' random start: ``clamp(x + U(-eps, eps), 0, 1)`` from the global generator."""
    return torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), 0, 1)


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """torchattacks' batch-mean cross-entropy, minus that with the targets in targeted mode."""
    if targets is None:
        return functional.cross_entropy(logits.float(), labels)
    return -functional.cross_entropy(logits.float(), targets)


class _Iterative(Attack):
    """What the classes share: argument checks, the inputs and labels, the sign-step loop."""

    eps: float
    alpha: float
    steps: int

    def _check(self) -> None:
        """The class's arguments, by name; run by the constructor and again before each attack
        (attributes may be changed in between), always before any model call."""
        check_number("eps", self.eps)
        check_number("alpha", self.alpha)
        check_count("steps", self.steps, minimum=0)

    def _check_target_labels(self, labels: torch.Tensor | None) -> None:
        """None labels mean the predicted classes, except where they are the targets."""
        if self.attack_mode == "targeted(label)" and labels is None:
            raise ValueError("labels are required in targeted(label) mode (they are the targets)")

    def _begin(
        self, images: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Forward]:
        """(inputs checked to lie in [0, 1], labels (None: the predicted classes), targets in
        targeted mode else None, forward = the model's logits of pixel-space points)."""
        self._check()
        self._check_target_labels(labels)
        _, x, label_t, forward = _core.prepare(
            self._attack_model(), images, labels, (0.0, 1.0), self._normalize_pair()
        )
        label_t = _core.resolve_labels(forward, x, label_t)
        targets = self.get_target_label(x, label_t) if self.targeted else None
        return x, label_t, targets, forward

    def _sign_steps(
        self,
        x: torch.Tensor,
        start: torch.Tensor,
        gradient: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """``steps`` of ``x' = clamp(x + clamp(x' + alpha sign(gradient(x')) - x, -eps, eps), 0, 1)``."""
        adv = start.detach()
        for _ in range(self.steps):
            grad = gradient(adv)
            adv = ops.pgd_step(adv, grad, x, self.alpha, self.eps, 0.0, 1.0, "linf", backend=self._backend)
        return adv


class FFGSM(_Iterative):
    """FGSM from a random start (Wong et al. 2020, "Fast is better than free"): from
    ``x0 = clamp(x + U(-eps, eps), 0, 1)`` one step ``alpha sign(grad)``, projected and clamped."""

    def __init__(self, model: torch.nn.Module, eps: float = 8 / 255, alpha: float = 10 / 255) -> None:
        super().__init__("FFGSM", model)
        self.eps, self.alpha, self.steps = eps, alpha, 1
        self.supported_mode = ["default", "targeted"]
        self._check()

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x, label_t, targets, forward = self._begin(images, labels)
        # torchattacks draws normal values and overwrites them with uniform ones: the same draws
        start = torch.clamp(x + torch.randn_like(x).uniform_(-self.eps, self.eps), 0, 1)
        return self._sign_steps(
            x, start, lambda point: _gradient(lambda p: _cross_entropy(forward(p), label_t, targets), point)
        )


class RFGSM(_Iterative):
    """R+FGSM (Tramer et al. 2018): from ``x0 = clamp(x + alpha sign(N(0, 1)), 0, 1)``, ``steps``
    L-inf steps of size ``alpha`` in the ``eps``-ball."""

    def __init__(
        self, model: torch.nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10
    ) -> None:
        super().__init__("RFGSM", model)
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.supported_mode = ["default", "targeted"]
        self._check()

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x, label_t, targets, forward = self._begin(images, labels)
        start = torch.clamp(x + self.alpha * torch.randn_like(x).sign(), 0, 1)
        return self._sign_steps(
            x, start, lambda point: _gradient(lambda p: _cross_entropy(forward(p), label_t, targets), point)
        )


class TPGD(_Iterative):
    """PGD on the TRADES loss (Zhang et al. 2019): ascend ``KL(softmax(f(x)) || softmax(f(x')))``
    (summed over the batch) from ``x0 = clamp(x + 0.001 N(0, 1), 0, 1)``; labels are not used."""

    def __init__(
        self, model: torch.nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10
    ) -> None:
        super().__init__("TPGD", model)
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.supported_mode = ["default"]
        self._check()

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check()
        _, x, _, forward = _core.prepare(
            self._attack_model(), images, None, (0.0, 1.0), self._normalize_pair()
        )
        with torch.no_grad():
            clean = functional.softmax(forward(x).float(), dim=1)
        start = torch.clamp(x + 0.001 * torch.randn_like(x), 0, 1)

        def kl(point: torch.Tensor) -> torch.Tensor:
            log_adv = functional.log_softmax(forward(point).float(), dim=1)
            return functional.kl_div(log_adv, clean, reduction="sum")

        return self._sign_steps(x, start, lambda point: _gradient(kl, point))


class EOTPGD(_Iterative):
    """PGD with expectation over transformation (Athalye et al. 2018; Zimmermann 2019): each
    step's gradient is the sum over ``eot_iter`` passes of the model (one batch of
    ``eot_iter x B``), for models that draw randomness at each call."""

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        eot_iter: int = 2,
        random_start: bool = True,
    ) -> None:
        super().__init__("EOTPGD", model)
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.eot_iter, self.random_start = eot_iter, random_start
        self.supported_mode = ["default", "targeted"]
        self._check()

    def _check(self) -> None:
        super()._check()
        check_count("eot_iter", self.eot_iter)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x, label_t, targets, forward = self._begin(images, labels)
        start = _uniform_start(x, self.eps) if self.random_start else x
        copies, batch = self.eot_iter, x.shape[0]
        wanted = (label_t if targets is None else targets).repeat(copies)

        def cost(point: torch.Tensor) -> torch.Tensor:
            # the sum over copies of torchattacks' batch-mean cross-entropy
            logits = forward(point.repeat(copies, *([1] * (point.dim() - 1)))).float()
            value = functional.cross_entropy(logits, wanted, reduction="sum") / batch
            return value if targets is None else -value

        return self._sign_steps(x, start, lambda point: _gradient(cost, point))


def _dlr(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """torchattacks' DLR loss (Croce and Hein 2020) per sample, [N]: minus the margin of the
    label over the best other logit (the target's logit when targeted), scaled by the spread of
    the sorted logits."""
    z = logits.float()
    ordered, order = z.sort(dim=1)
    label_logit = z.gather(1, labels.view(-1, 1)).squeeze(1)
    if targets is not None:
        target_logit = z.gather(1, targets.view(-1, 1)).squeeze(1)
        spread = ordered[:, -1] - 0.5 * ordered[:, -3] - 0.5 * ordered[:, -4] + 1e-12
        return -(label_logit - target_logit) / spread
    top_is_label = (order[:, -1] == labels).float()
    best_other = ordered[:, -2] * top_is_label + ordered[:, -1] * (1.0 - top_is_label)
    return -(label_logit - best_other) / (ordered[:, -1] - ordered[:, -3] + 1e-12)


def _margin(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None) -> torch.Tensor:
    """Carlini-Wagner's margin with kappa = 0 per sample, [N]: ``-max(z_y - max_{j != y} z_j, 0)``,
    targeted ``-max(max_{j != t} z_j - z_t, 0)`` (the true best other logit)."""
    z = logits.float()
    wanted = labels if targets is None else targets
    own = z.gather(1, wanted.view(-1, 1)).squeeze(1)
    others = z.scatter(1, wanted.view(-1, 1), float("-inf")).amax(dim=1)
    return -torch.clamp(own - others if targets is None else others - own, min=0)


class UPGD(_Iterative):
    """torchattacks' "ultimate" PGD: L-inf PGD with a choice of loss (``"ce"``, ``"dlr"``,
    ``"margin"`` or a callable ``loss(images, labels, target_labels) -> scalar``), MI-FGSM
    momentum (``g <- grad / mean|grad| + decay g``) and ``eot_iter`` gradient samples. A sample
    whose gradient is ever all zero (the margin loss once it is misclassified) stops moving, as
    in torchattacks (where 0 / 0 makes its momentum NaN and sign(NaN) = 0)."""

    LOSSES = ("ce", "dlr", "margin")

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = False,
        loss: str | Callable[..., torch.Tensor] = "ce",
        decay: float = 1.0,
        eot_iter: int = 1,
    ) -> None:
        super().__init__("UPGD", model)
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha, steps, random_start
        self.loss, self.decay, self.eot_iter = loss, decay, eot_iter
        self.supported_mode = ["default", "targeted"]
        self._check()

    def _check(self) -> None:
        super()._check()
        check_count("eot_iter", self.eot_iter)
        check_number("decay", self.decay)
        if not callable(self.loss) and self.loss not in self.LOSSES:
            raise ValueError(f"loss must be one of {self.LOSSES} or a callable, got {self.loss!r}")

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x, label_t, targets, forward = self._begin(images, labels)
        start = _uniform_start(x, self.eps) if self.random_start else x
        copies, batch = self.eot_iter, x.shape[0]
        momentum = torch.zeros_like(x)
        stopped = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)

        def cost(point: torch.Tensor) -> torch.Tensor:
            """The sum over the copies of torchattacks' loss (cross-entropy: the batch mean)."""
            logits = forward(point.repeat(copies, *([1] * (point.dim() - 1)))).float()
            many = label_t.repeat(copies)
            wanted = None if targets is None else targets.repeat(copies)
            if self.loss == "ce":
                value = functional.cross_entropy(logits, many if wanted is None else wanted, reduction="sum")
                return (value if wanted is None else -value) / batch
            if self.loss == "dlr" and logits.shape[1] < (4 if self.targeted else 3):
                raise ValueError("loss='dlr' needs at least 3 classes (4 when targeted)")
            per_sample = _dlr if self.loss == "dlr" else _margin
            return per_sample(logits, many, wanted).sum()

        def gradient(point: torch.Tensor) -> torch.Tensor:
            nonlocal momentum
            if callable(self.loss):
                user_loss = self.loss
                grad = sum(
                    (_gradient(lambda p: user_loss(p, label_t, targets), point) for _ in range(copies)),
                    torch.zeros_like(point),
                )
            else:
                grad = _gradient(cost, point)
            grad = grad / copies
            scale = grad.abs().flatten(1).mean(dim=1)
            stopped.logical_or_(scale == 0)
            shape = (-1,) + (1,) * (x.dim() - 1)
            momentum = grad / scale.clamp_min(1e-30).view(shape) + self.decay * momentum
            return momentum.masked_fill(stopped.view(shape), 0.0)

        return self._sign_steps(x, start, gradient)


class Jitter(_Iterative):
    """Jitter (Schwinn et al. 2021): PGD on the squared distance between the one-hot label and
    ``softmax(scale z / ||z||_inf) + std N(0, 1)`` (z the logits); for a sample already
    misclassified the loss is divided by ``||x' - x||_inf``, favouring small perturbations."""

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        scale: float = 10,
        std: float = 0.1,
        random_start: bool = True,
    ) -> None:
        super().__init__("Jitter", model)
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha, steps, random_start
        self.scale, self.std = scale, std
        self.supported_mode = ["default", "targeted"]
        self._check()

    def _check(self) -> None:
        super()._check()
        check_number("scale", self.scale, strict=True)
        check_number("std", self.std)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x, label_t, targets, forward = self._begin(images, labels)
        start = _uniform_start(x, self.eps) if self.random_start else x

        def cost(point: torch.Tensor) -> torch.Tensor:
            logits = forward(point).float()
            wrong = logits.argmax(dim=1) != label_t
            largest = logits.abs().amax(dim=1, keepdim=True)
            jittered = functional.softmax(self.scale * logits / largest, dim=1)
            if self.std != 0:
                jittered = jittered + self.std * torch.randn_like(jittered)
            wanted = label_t if targets is None else targets
            one_hot = functional.one_hot(wanted, num_classes=logits.shape[1]).float()
            per_sample = (jittered - one_hot).pow(2).mean(dim=1)
            if targets is not None:
                per_sample = -per_sample
            distance = (point - x).flatten(1).abs().amax(dim=1)
            divide = wrong & (distance != 0)
            per_sample = torch.where(divide, per_sample / distance.where(divide, 1.0), per_sample)
            return per_sample.mean()

        return self._sign_steps(x, start, lambda point: _gradient(cost, point))


class VANILA(_Iterative):
    """No attack: returns the inputs (a baseline for MultiAttack and robustness tables)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__("VANILA", model)
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return _core.check_attack_inputs(images, (0.0, 1.0)).detach().clone()


class GN(_Iterative):
    """Gaussian noise: ``clamp(x + std N(0, 1), 0, 1)``, from torch's global generator."""

    def __init__(self, model: torch.nn.Module, std: float = 0.1) -> None:
        super().__init__("GN", model)
        self.std = std
        self.supported_mode = ["default"]
        self._check()

    def _check(self) -> None:
        check_number("std", self.std)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check()
        x = _core.check_attack_inputs(images, (0.0, 1.0)).detach()
        return torch.clamp(x + self.std * torch.randn_like(x), 0, 1)


class PGDRS(_Iterative):
    """PGD against a randomised-smoothing classifier (Salman et al. 2019): the loss is the
    cross-entropy of the softmax averaged over ``noise_batch_size`` noisy copies of each point
    (``noise_type`` ``"guassian"``: N(0, noise_sd^2), torchattacks' spelling, ``"gaussian"``
    accepted; ``"uniform"``: U(-noise_sd, noise_sd)); the perturbation is stepped and projected
    before the clamp to [0, 1]. Inputs go in chunks of ``batch_max // noise_batch_size`` when
    ``B x noise_batch_size > batch_max``; each step's model call is one batch of
    ``chunk x noise_batch_size``."""

    _NORM = "linf"
    NOISE_TYPES = ("guassian", "gaussian", "uniform")

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        noise_type: str = "guassian",
        noise_sd: float = 0.5,
        noise_batch_size: int = 5,
        batch_max: int = 2048,
    ) -> None:
        super().__init__(type(self).__name__, model)
        self.eps, self.alpha, self.steps = eps, alpha, steps
        self.noise_type, self.noise_sd = noise_type, noise_sd
        self.noise_batch_size, self.batch_max = noise_batch_size, batch_max
        self.supported_mode = ["default", "targeted"]
        self._check()

    def _check(self) -> None:
        super()._check()
        if self.noise_type not in self.NOISE_TYPES:
            raise ValueError(f"noise_type must be one of {self.NOISE_TYPES}, got {self.noise_type!r}")
        check_number("noise_sd", self.noise_sd)
        check_count("noise_batch_size", self.noise_batch_size)
        check_count("batch_max", self.batch_max)
        if self.batch_max < self.noise_batch_size:
            raise ValueError(
                f"batch_max must be >= noise_batch_size ({self.noise_batch_size}), got {self.batch_max}"
            )

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x, label_t, _, forward = self._begin_without_targets(images, labels)
        copies = self.noise_batch_size
        if x.shape[0] * copies <= self.batch_max:
            return self._smoothed(x, label_t, forward)
        chunk = self.batch_max // copies
        return torch.cat(
            [
                self._smoothed(x[start : start + chunk], label_t[start : start + chunk], forward)
                for start in range(0, x.shape[0], chunk)
            ]
        )

    def _begin_without_targets(
        self, images: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor, None, Forward]:
        """As ``_begin``, the targets left to each chunk (torchattacks' order)."""
        self._check()
        self._check_target_labels(labels)
        _, x, label_t, forward = _core.prepare(
            self._attack_model(), images, labels, (0.0, 1.0), self._normalize_pair()
        )
        return x, _core.resolve_labels(forward, x, label_t), None, forward

    def _noise(self, points: torch.Tensor) -> torch.Tensor:
        flat = (points.shape[0], points[0].numel())
        if self.noise_type == "uniform":
            noise = (torch.rand(flat, device=points.device) - 0.5) * 2 * self.noise_sd
        else:
            noise = torch.randn(flat, device=points.device) * self.noise_sd
        return noise.view(points.shape).to(points.dtype)

    def _smoothed(self, x: torch.Tensor, labels: torch.Tensor, forward: Forward) -> torch.Tensor:
        targets = self.get_target_label(x, labels) if self.targeted else None
        copies = self.noise_batch_size
        expanded = x.repeat_interleave(copies, dim=0)
        zero = torch.zeros_like(x)

        def cost(delta: torch.Tensor) -> torch.Tensor:
            points = torch.clamp(expanded + delta.repeat_interleave(copies, dim=0), 0, 1)
            logits = forward(points + self._noise(points)).float()
            probabilities = functional.softmax(logits, dim=1).view(-1, copies, logits.shape[1]).mean(dim=1)
            log_probabilities = torch.log(probabilities.clamp(min=1e-20))
            if targets is None:
                return functional.nll_loss(log_probabilities, labels)
            return -functional.nll_loss(log_probabilities, targets)

        delta = zero
        for _ in range(self.steps):
            grad = _gradient(cost, delta)
            delta = ops.pgd_step(
                delta,
                grad,
                zero,
                self.alpha,
                self.eps,
                float("-inf"),
                float("inf"),
                self._NORM,
                backend=self._backend,
            )
        return torch.clamp(x + delta, 0, 1)


class PGDRSL2(PGDRS):
    """PGDRS in the L2 ball: steps ``alpha grad / (||grad||_2 + 1e-10)``, the perturbation scaled
    back to norm ``eps`` when it leaves the ball."""

    _NORM = "l2"

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 1.0,
        alpha: float = 0.2,
        steps: int = 10,
        noise_type: str = "guassian",
        noise_sd: float = 0.5,
        noise_batch_size: int = 5,
        batch_max: int = 2048,
        eps_for_division: float = 1e-10,
    ) -> None:
        super().__init__(model, eps, alpha, steps, noise_type, noise_sd, noise_batch_size, batch_max)
        if eps_for_division != 1e-10:
            self._unsupported("eps_for_division other than 1e-10")
        self.eps_for_division = eps_for_division
