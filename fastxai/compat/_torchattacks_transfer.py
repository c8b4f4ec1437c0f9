"""torchattacks 3.5's transfer-oriented momentum attacks: NI-FGSM, SI-NI-FGSM, VMI-FGSM,
VNI-FGSM, DI-FGSM, TI-FGSM, PI-FGSM and PI-FGSM++.

The first six are MI-FGSM (``g <- grad / mean|grad| + decay * g``, an L-inf step along
``sign(g)``, projected onto the eps-ball and clamped to [0, 1] by the fused ``ops.pgd_step``)
with one change each to where and how the gradient is taken; one loop (``_MomentumLoop``)
serves them all, and every step's gradients (the ``m`` scale copies, the ``N`` neighbours) come
from one model batch. The patch-wise pair has its own loop (``_PatchWise``).

Random draws (VMI/VNI neighbours, DI/TI resizing and padding, the random start) come from
torch's global generator in torchattacks' order, so with the same ``torch.manual_seed`` the
results are torchattacks' to float tolerance (while the model itself draws nothing).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.nn import functional

from fastxai import _budget, _model, ops
from fastxai._checks import check_count, check_number, check_positive
from fastxai.attacks._core import check_attack_inputs, prepare, resolve_labels
from fastxai.compat._torchattacks_attack import Attack

Forward = Callable[[torch.Tensor], torch.Tensor]
KERNELS = ("gaussian", "linear", "uniform")


def _per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def _mean_abs(grad: torch.Tensor) -> torch.Tensor:
    """mean |grad| per sample, shaped to divide grad (1e-30 floor: an all-zero gradient stays 0)."""
    return _per_sample(grad.abs().flatten(1).mean(dim=1).clamp_min(1e-30), grad)


def smoothing_kernel(name: str, size: int, nsig: float) -> torch.Tensor:
    """TI-FGSM's 2-D kernel [size, size], float32, summing to 1: ``gaussian`` (the normal pdf
    at ``size`` points of [-nsig, nsig], outer product), ``linear`` (a tent), ``uniform``."""
    if name == "gaussian":
        points = torch.linspace(-nsig, nsig, size, dtype=torch.float64)
        profile = torch.exp(-(points**2) / 2) / math.sqrt(2 * math.pi)
    elif name == "linear":
        half = (size - 1) / 2
        points = torch.linspace(-half, half, size, dtype=torch.float64)
        profile = 1 - (points / (size + 1) * 2).abs()
    else:
        profile = torch.ones(size, dtype=torch.float64)
    kernel = torch.outer(profile, profile)
    return (kernel / kernel.sum()).float()


def _channel_kernel(kernel: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """One copy of a 2-D kernel per channel of ``like``, for a depthwise (grouped) convolution."""
    channels = like.shape[1]
    return kernel.to(like.device, like.dtype).expand(channels, 1, *kernel.shape[-2:]).contiguous()


class _MomentumTransfer(Attack):
    """What the MI-FGSM variants share: the checks, the loss and the step loop.

    Each step: the gradient of the cross-entropy (minus it, targeted) at ``lookahead`` (Nesterov:
    ``x_adv + decay * alpha * g``), averaged over the scale copies ``lookahead / 2**i``, i < m,
    after input diversity; smoothed by a kernel (TI); plus the variance term ``v`` (VMI/VNI);
    ``g <- grad / mean|grad| + decay * g``; ``x_adv <- clip(x_adv + alpha sign(g))``. ``v`` is the
    mean gradient at ``N`` points of ``x_adv + U(-beta eps, beta eps)`` minus this step's gradient.
    """

    eps: float
    alpha: float
    steps: int
    decay: float
    _nesterov = False
    _scales = 1
    _neighbours = 0
    _beta = 0.0
    _diversity: tuple[float, float] | None = None  # (resize_rate, diversity_prob)
    _kernel: torch.Tensor | None = None
    _random_start = False

    def _check_momentum_options(self) -> None:
        check_number("eps", self.eps)
        check_positive("alpha", self.alpha)
        check_count("steps", self.steps, 0)
        check_number("decay", self.decay)

    def _check_options(self) -> None:
        self._check_momentum_options()

    def _check_diversity(self, x: torch.Tensor) -> None:
        if self._diversity is None:
            return
        size = x.shape[-1]
        resized = int(size * self._diversity[0])
        if resized < 1 or resized == size:
            raise ValueError(
                f"resize_rate={self._diversity[0]!r} leaves no sizes to draw for images of width {size} "
                f"(int(width * resize_rate) = {resized}, must be >= 1 and differ from {size})"
            )

    def _check_batch_fits(self, x: torch.Tensor) -> None:
        """Refuse, before any model call, scale copies or neighbours that cannot fit: each step's
        (m + N) x B rows, their gradient and the neighbours' noise are held at once (the model's
        activations for that batch come on top)."""
        copies = self._scales + self._neighbours
        if copies > 1:
            name, value = ("m", self._scales) if self._scales > 1 else ("N", self._neighbours)
            nbytes = 3.0 * copies * x.numel() * x.element_size()
            what = f"{copies} copies of {x.shape[0]} inputs, run as one batch,"
            _budget.check_fits(name, value, nbytes, what, x.device)

    def _diverse(self, point: torch.Tensor) -> torch.Tensor:
        """Input diversity (Xie et al. 2019): with probability ``diversity_prob``, resize to a random
        width between ``width * resize_rate`` and ``width`` and zero-pad at a random offset back to
        the larger one. Draws from torch's global generator, in torchattacks' order."""
        assert self._diversity is not None
        resize_rate, probability = self._diversity
        size = point.shape[-1]
        resized = int(size * resize_rate)
        low, high = (resized, size) if resize_rate < 1 else (size, resized)
        width = int(torch.randint(low=low, high=high, size=(1,), dtype=torch.int32))
        room = high - width
        top = int(torch.randint(low=0, high=room, size=(1,), dtype=torch.int32))
        left = int(torch.randint(low=0, high=room, size=(1,), dtype=torch.int32))
        if not bool(torch.rand(1) < probability):
            return point
        rescaled = functional.interpolate(point, size=[width, width], mode="bilinear", align_corners=False)
        return functional.pad(rescaled, [left, room - left, top, room - top], value=0)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_options()
        x = check_attack_inputs(images, (0.0, 1.0))
        if x.dim() != 4:
            raise ValueError(f"images must be [batch, channels, height, width], got shape {tuple(x.shape)}")
        self._check_diversity(x)
        self._check_batch_fits(x)
        model, x, label_t, forward = prepare(
            self._attack_model(), x, self._targets(x, labels), (0.0, 1.0), self._normalize_pair()
        )
        with _model.preserved_state(model):
            return self._attack(forward, x, resolve_labels(forward, x, label_t))

    def _gradients(
        self,
        forward: Forward,
        leaf: torch.Tensor,
        momentum: torch.Tensor,
        neighbours: torch.Tensor | None,
        labels: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(mean gradient over the scale copies at ``leaf``, summed gradient at the neighbours
        [N, B, ...]), from one model batch; the loss is torchattacks' batch-mean cross-entropy."""
        point = leaf + self.decay * self.alpha * momentum if self._nesterov else leaf
        if self._diversity is not None:
            point = self._diverse(point)
        rows = [point * 2.0**-i for i in range(self._scales)]
        if neighbours is not None:
            rows.append(neighbours.flatten(0, 1))
        batch = torch.cat(rows) if len(rows) > 1 else rows[0]
        logits = forward(batch).float()
        copies = batch.shape[0] // labels.shape[0]
        cost = functional.cross_entropy(logits, labels.repeat(copies), reduction="sum") / labels.shape[0]
        if self.targeted:
            cost = -cost
        leaves = [leaf] if neighbours is None else [leaf, neighbours]
        grads = torch.autograd.grad(cost, leaves)
        grad = grads[0] / self._scales if self._scales > 1 else grads[0]
        return grad, (grads[1].sum(dim=0) if neighbours is not None else None)

    def _attack(self, forward: Forward, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        adv = x.clone()
        if self._random_start:
            adv = torch.clamp(adv + torch.empty_like(adv).uniform_(-self.eps, self.eps), 0, 1)
        momentum = torch.zeros_like(x)
        variance = torch.zeros_like(x)
        kernel = None if self._kernel is None else _channel_kernel(self._kernel, x)
        spread = self.eps * self._beta
        for _ in range(self.steps):
            leaf = adv.detach().requires_grad_(True)
            neighbours = None
            if self._neighbours:
                # torchattacks draws (and discards) a normal sample before each uniform one
                noise = [torch.randn_like(x).uniform_(-spread, spread) for _ in range(self._neighbours)]
                neighbours = (adv.detach() + torch.stack(noise)).requires_grad_(True)
            with torch.enable_grad():
                grad, neighbour_sum = self._gradients(forward, leaf, momentum, neighbours, labels)
            if kernel is not None:
                grad = functional.conv2d(grad, kernel, stride=1, padding="same", groups=x.shape[1])
            direction = grad + variance
            momentum = direction / _mean_abs(direction) + momentum * self.decay
            if neighbour_sum is not None:
                variance = neighbour_sum / self._neighbours - grad
            adv = ops.pgd_step(adv.detach(), momentum, x, self.alpha, self.eps, 0.0, 1.0, "linf",
                               backend=self._backend)  # fmt: skip
        return adv.detach()


class NIFGSM(_MomentumTransfer):
    """Nesterov iterative FGSM (Lin et al., ICLR 2020): MI-FGSM with the gradient taken at the
    look-ahead point ``x_adv + decay * alpha * g``.

    >>> x_adv = NIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0)(x, y)
    """

    _nesterov = True

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 1.0,
    ) -> None:
        super().__init__(type(self).__name__, model)
        self.eps, self.alpha, self.steps, self.decay = eps, alpha, steps, decay
        self.supported_mode = ["default", "targeted"]
        self._check_options()


class SINIFGSM(NIFGSM):
    """Scale-invariant NI-FGSM (Lin et al., ICLR 2020): each step's gradient is the mean over the
    ``m`` copies ``lookahead / 2**i`` (run as one batch of m x B).

    >>> x_adv = SINIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0, m=5)(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 1.0,
        m: int = 5,
    ) -> None:
        self.m = m
        super().__init__(model, eps, alpha, steps, decay)

    @property
    def _scales(self) -> int:  # type: ignore[override]
        return self.m

    def _check_options(self) -> None:
        self._check_momentum_options()
        check_count("m", self.m)


class VMIFGSM(_MomentumTransfer):
    """Variance-tuned MI-FGSM (Wang & He, CVPR 2021): the momentum takes ``grad + v``, where ``v``
    is the previous step's mean gradient at ``N`` uniform neighbours within ``beta * eps`` minus
    its gradient (the step's point and its neighbours in one batch of (1 + N) x B).

    >>> x_adv = VMIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0, N=5, beta=3/2)(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 1.0,
        N: int = 5,
        beta: float = 3 / 2,
    ) -> None:
        super().__init__(type(self).__name__, model)
        self.eps, self.alpha, self.steps, self.decay, self.N, self.beta = eps, alpha, steps, decay, N, beta
        self.supported_mode = ["default", "targeted"]
        self._check_options()

    @property
    def _neighbours(self) -> int:  # type: ignore[override]
        return self.N

    @property
    def _beta(self) -> float:  # type: ignore[override]
        return self.beta

    def _check_options(self) -> None:
        self._check_momentum_options()
        check_count("N", self.N)
        check_number("beta", self.beta)


class VNIFGSM(VMIFGSM):
    """Variance-tuned NI-FGSM (Wang & He, CVPR 2021): VMI-FGSM with the gradient at the Nesterov
    look-ahead point (the neighbours stay around ``x_adv``).

    >>> x_adv = VNIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=1.0, N=5, beta=3/2)(x, y)
    """

    _nesterov = True


class DIFGSM(_MomentumTransfer):
    """Diverse-input (M-)I-FGSM (Xie et al., CVPR 2019): the gradient is taken through a random
    resize-and-pad of the iterate (``_diverse``), applied with probability ``diversity_prob``.

    >>> x_adv = DIFGSM(model, eps=8/255, alpha=2/255, steps=10, decay=0.0)(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 0.0,
        resize_rate: float = 0.9,
        diversity_prob: float = 0.5,
        random_start: bool = False,
    ) -> None:
        super().__init__(type(self).__name__, model)
        self.eps, self.alpha, self.steps, self.decay = eps, alpha, steps, decay
        self.resize_rate, self.diversity_prob, self.random_start = resize_rate, diversity_prob, random_start
        self.supported_mode = ["default", "targeted"]
        self._check_options()

    @property
    def _diversity(self) -> tuple[float, float]:  # type: ignore[override]
        return (self.resize_rate, self.diversity_prob)

    @property
    def _random_start(self) -> bool:  # type: ignore[override]
        return self.random_start

    def _check_options(self) -> None:
        self._check_momentum_options()
        check_positive("resize_rate", self.resize_rate)
        probability = check_number("diversity_prob", self.diversity_prob)
        if probability > 1:
            raise ValueError(f"diversity_prob must be in [0, 1], got {self.diversity_prob!r}")
        if not isinstance(self.random_start, bool):
            raise TypeError(f"random_start must be a bool, got {self.random_start!r}")


class TIFGSM(DIFGSM):
    """Translation-invariant DI-FGSM (Dong et al., CVPR 2019): DI-FGSM whose gradient is smoothed,
    channel by channel, by a ``len_kernel`` x ``len_kernel`` kernel (``gaussian`` of ``nsig``
    standard deviations, ``linear`` or ``uniform``) before the momentum update.

    >>> x_adv = TIFGSM(model, eps=8/255, alpha=2/255, steps=10, kernel_name="gaussian")(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 0.0,
        kernel_name: str = "gaussian",
        len_kernel: int = 15,
        nsig: float = 3,
        resize_rate: float = 0.9,
        diversity_prob: float = 0.5,
        random_start: bool = False,
    ) -> None:
        self.kernel_name, self.len_kernel, self.nsig = kernel_name, len_kernel, nsig
        if kernel_name not in KERNELS:
            raise ValueError(f"kernel_name must be one of {KERNELS}, got {kernel_name!r}")
        check_count("len_kernel", len_kernel)
        check_positive("nsig", nsig)
        super().__init__(model, eps, alpha, steps, decay, resize_rate, diversity_prob, random_start)
        # torchattacks' attribute: the kernel stacked for three channels [3, 1, k, k]
        self.stacked_kernel = smoothing_kernel(kernel_name, len_kernel, nsig).expand(3, 1, -1, -1).clone()

    @property
    def _kernel(self) -> torch.Tensor:  # type: ignore[override]
        return self.stacked_kernel[0, 0]


class _PatchWise(Attack):
    """Patch-wise iterative FGSM (Gao et al., ECCV 2020), torchattacks' form. With
    ``alpha = max_epsilon / num_iter_set`` and ``beta alpha = amplification * alpha``, each step:
    ``a <- a + beta alpha sign(grad)``; the part of ``a`` beyond ``max_epsilon`` (``cut``) is
    spread to the 8 neighbours of each pixel, ``p = gamma sign(conv(cut, ring))``; ``a <- a + p``
    (PI-FGSM only);
    ``x_adv <- clip(x_adv + beta alpha sign(grad) + p)`` into ``[x - max_epsilon, x + max_epsilon]``
    and [0, 1]. ``momentum`` and ``prob`` are accepted and, as in torchattacks, unused.
    """

    max_epsilon: float
    num_iter_set: int
    amplification: float
    _project_factor = 1.0
    _accumulate_projection = True  # PI-FGSM++ (torchattacks) leaves p out of ``a``

    def _check_options(self) -> None:
        check_number("max_epsilon", self.max_epsilon)
        check_count("num_iter_set", self.num_iter_set)
        check_number("amplification", self.amplification)

    def _gradient_filter(self, grad: torch.Tensor) -> torch.Tensor:
        return grad

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self._check_options()
        x = check_attack_inputs(images, (0.0, 1.0))
        if x.dim() != 4:
            raise ValueError(f"images must be [batch, channels, height, width], got shape {tuple(x.shape)}")
        self._check_channels(x)
        model, x, label_t, forward = prepare(
            self._attack_model(), x, self._targets(x, labels), (0.0, 1.0), self._normalize_pair()
        )
        with _model.preserved_state(model):
            return self._attack(forward, x, resolve_labels(forward, x, label_t))

    def _check_channels(self, x: torch.Tensor) -> None:
        pass

    def _attack(self, forward: Forward, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        eps = self.max_epsilon
        step = eps / self.num_iter_set * self.amplification
        gamma = step * self._project_factor
        ring = torch.full((3, 3), 1 / 8, dtype=x.dtype, device=x.device)
        ring[1, 1] = 0.0
        ring = _channel_kernel(ring, x)
        lower, upper = torch.clamp(x - eps, 0, 1), torch.clamp(x + eps, 0, 1)
        adv = x.clone()
        accumulated = torch.zeros_like(x)
        for _ in range(self.num_iter_set):
            leaf = adv.detach().requires_grad_(True)
            with torch.enable_grad():
                cost = functional.cross_entropy(forward(leaf).float(), labels)
                (grad,) = torch.autograd.grad(cost, leaf)
            grad_sign = torch.sign(self._gradient_filter(grad))
            accumulated += step * grad_sign
            cut = torch.clamp(accumulated.abs() - eps, 0, 10000.0) * torch.sign(accumulated)
            projection = gamma * torch.sign(functional.conv2d(cut, ring, padding=1, groups=x.shape[1]))
            if self._accumulate_projection:
                accumulated += projection
            if self.targeted:
                adv = adv - step * grad_sign - projection
            else:
                adv = adv + step * grad_sign + projection
            adv = torch.clamp(adv.detach(), lower, upper)
        return adv


class PIFGSM(_PatchWise):
    """Patch-wise iterative FGSM (Gao et al., ECCV 2020); untargeted only, as torchattacks.

    >>> x_adv = PIFGSM(model, max_epsilon=16/255, num_iter_set=10, amplification=10.0)(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        max_epsilon: float = 16 / 255,
        num_iter_set: int = 10,
        momentum: float = 1.0,
        amplification: float = 10.0,
        prob: float = 0.7,
    ) -> None:
        super().__init__("PIFGSM", model)
        self.max_epsilon, self.num_iter_set, self.momentum = max_epsilon, num_iter_set, momentum
        self.amplification, self.prob = amplification, prob
        self.supported_mode = ["default"]
        self._check_options()


class PIFGSMPP(_PatchWise):
    """PI-FGSM++ (Gao et al., 2020): PI-FGSM whose gradient is first smoothed by torchattacks'
    3x3 kernel (``_gradient_filter``), with ``gamma = project_factor * beta alpha``; targeted
    mode descends the cross-entropy of the target class; the projection is not added to the
    accumulated amplification. RGB images only (the kernel is built
    for three channels).

    >>> x_adv = PIFGSMPP(model, max_epsilon=16/255, num_iter_set=10, project_factor=0.8)(x, y)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        max_epsilon: float = 16 / 255,
        num_iter_set: int = 10,
        momentum: float = 1.0,
        amplification: float = 10.0,
        prob: float = 0.7,
        project_factor: float = 0.8,
    ) -> None:
        super().__init__("PIFGSMPP", model)
        self.max_epsilon, self.num_iter_set, self.momentum = max_epsilon, num_iter_set, momentum
        self.amplification, self.prob, self.project_factor = amplification, prob, project_factor
        self.supported_mode = ["default", "targeted"]
        self._check_options()

    _accumulate_projection = False

    @property
    def _project_factor(self) -> float:  # type: ignore[override]
        return float(self.project_factor)

    def _check_options(self) -> None:
        super()._check_options()
        check_number("project_factor", self.project_factor)

    def _check_channels(self, x: torch.Tensor) -> None:
        if x.shape[1] != 3:
            raise ValueError(f"PIFGSMPP takes RGB images (3 channels), got {x.shape[1]} channels")

    def _gradient_filter(self, grad: torch.Tensor) -> torch.Tensor:
        # torchattacks builds a 3-point Gaussian (nsig 3) for three channels and swaps the stack's
        # axes, so channel c's filter is row-constant: weight g[row] * g[c] / sum(g)**2
        profile = torch.exp(-(torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64) ** 2) / 2)
        profile = profile / profile.sum()
        weights = (profile.view(1, 3, 1) * profile.view(3, 1, 1)).expand(3, 3, 3).float()
        kernel = weights.unsqueeze(1).to(grad.device, grad.dtype)
        return functional.conv2d(grad, kernel, padding=1, groups=3)
