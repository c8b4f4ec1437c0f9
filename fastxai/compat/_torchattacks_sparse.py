"""torchattacks-shaped sparse, L1 and black-box attacks: JSMA (Papernot et al. 2016), EADL1
and EADEN (Chen et al. 2018), SparseFool (Modas et al. 2019), OnePixel (Su et al. 2019),
SPSA (Uesato et al. 2018) and Pixle (Pomponi et al. 2022), with torchattacks 3.5's arguments. Exported by
``fastxai.compat.torchattacks``.

Inside ``forward`` the inputs are in pixel space and ``get_logits`` normalises them, so the
loops below call ``self.get_logits`` as torchattacks does, but on whole batches.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.nn import functional

from fastxai._checks import check_count, check_number
from fastxai.attacks._boundary import logits_and_jacobian
from fastxai.attacks.deepfool import deepfool
from fastxai.attacks.jsma import check_options, jsma
from fastxai.compat._torchattacks_attack import Attack


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
        check_options(theta, gamma)
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
        self.kappa = check_number("kappa", kappa)
        self.lr = check_number("lr", lr, strict=True)
        self.binary_search_steps = check_count("binary_search_steps", binary_search_steps)
        self.max_iterations = check_count("max_iterations", max_iterations)
        if abort_early and max_iterations < 10:
            raise ValueError(
                f"max_iterations must be >= 10 with abort_early=True (the loss is checked every "
                f"max_iterations // 10 steps), got {max_iterations}"
            )
        self.abort_early = bool(abort_early)
        self.initial_const = check_number("initial_const", initial_const, strict=True)
        self.beta = check_number("beta", beta)
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


class SparseFool(Attack):
    """SparseFool (Modas et al. 2019), L0 through L1: each round, on the samples still
    classified as their label, DeepFool (50 steps, overshoot 0.02: ``fastxai.deepfool``) finds
    a boundary point ``x_B``, moved to ``x0 + lam (x_B - x0)``; the boundary there is
    linearised with the normal ``w = grad (z_k - z_y)`` (``k`` the prediction there, or
    DeepFool's class if that is still ``y``), and the linear solver walks from ``x0`` one
    coordinate at a time (largest ``|w_i|`` first, clamped to [0, 1]) until the point crosses
    the hyperplane; the result is ``x0 + (1 + overshoot) (x - x0)``. All samples run as one
    batch. Where DeepFool does not cross within its 50 steps, the class comes from a
    linearisation at its last point (torchattacks': at the point before)."""

    def __init__(
        self, model: torch.nn.Module, steps: int = 10, lam: float = 3, overshoot: float = 0.02
    ) -> None:
        super().__init__("SparseFool", model)
        self.steps = check_count("steps", steps, minimum=0)
        self.lam = check_number("lam", lam, minimum=1.0)
        self.overshoot = check_number("overshoot", overshoot)
        self.supported_mode = ["default"]

    def _deepfool(self, points: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """DeepFool's examples and the class each one reached (or would cross to next)."""
        boundary = deepfool(self._attack_model(), points, labels, normalize=self._normalize_pair())
        with torch.no_grad():
            classes = self.get_logits(boundary).argmax(1)
        stuck = (classes == labels).nonzero().squeeze(1)
        if stuck.numel():
            logits, jacobian = logits_and_jacobian(self.get_logits, boundary[stuck])
            rows = torch.arange(stuck.numel(), device=points.device)
            label = labels[stuck]
            gaps = (logits - logits[rows, label].unsqueeze(1)).abs()
            lengths = (jacobian - jacobian[rows, label].unsqueeze(1)).flatten(2).norm(dim=2)
            distance = gaps / lengths
            distance[rows, label] = torch.inf
            classes[stuck] = distance.argmin(1)
        return boundary, classes

    @staticmethod
    def _linear_solver(origin: torch.Tensor, normal: torch.Tensor, plane_point: torch.Tensor) -> torch.Tensor:
        """From ``origin`` towards the hyperplane through ``plane_point`` with ``normal`` (all
        [A, F]), one coordinate per round, until the side of the plane changes."""
        x = origin.clone()
        coordinates = normal.clone()
        side = ((origin - plane_point) * normal).sum(1).sign()
        margin = 0.001 * side
        rows = torch.arange(x.shape[0], device=x.device)
        active = coordinates.ne(0).any(1)
        while bool(active.any()):
            index = active.nonzero().squeeze(1)
            free = coordinates[index]
            value = ((x[index] - plane_point[index]) * normal[index]).sum(1) + margin[index]
            largest = free.abs().argmax(1)
            magnitude = free[rows[: index.numel()], largest]
            step = (value.abs() / magnitude.abs()).clamp(min=1e-4) * magnitude.sign()
            x[index, largest] = (x[index, largest] + step).clamp(0, 1)
            coordinates[index, largest] = 0
            crossed = ((x[index] - plane_point[index]) * normal[index]).sum(1).sign() != side[index]
            active[index] = ~crossed & coordinates[index].ne(0).any(1)
        return x

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = _labels(self, images, labels)
        images = images.detach()
        adversarial = images.clone()
        for _ in range(self.steps):
            with torch.no_grad():
                rows = (self.get_logits(adversarial).argmax(1) == labels).nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            origin, label = images[rows], labels[rows]
            boundary, classes = self._deepfool(adversarial[rows], label)
            boundary = (origin + self.lam * (boundary - origin)).detach().requires_grad_(True)
            with torch.enable_grad():
                logits = self.get_logits(boundary)
                predicted = logits.argmax(1)
                other = torch.where(predicted == label, classes, predicted)
                gap = logits.gather(1, other.view(-1, 1)) - logits.gather(1, label.view(-1, 1))
                (normal,) = torch.autograd.grad(gap.sum(), boundary)
            normal = normal.flatten(1)
            normal = normal / normal.norm(dim=1, keepdim=True)
            flat_origin = origin.flatten(1)
            solved = self._linear_solver(flat_origin, normal, boundary.detach().flatten(1))
            step = flat_origin + (1 + self.overshoot) * (solved - flat_origin)
            adversarial[rows] = step.clamp(0, 1).view_as(origin)
        return adversarial


class SPSA(Attack):
    """SPSA (Uesato et al. 2018), L-inf, black-box: ``nb_iter`` Adam steps (``lr``) on the
    perturbation, each with the gradient of the margin loss estimated from ``nb_sample``
    Rademacher directions ``v``: ``(L(x + delta v) - L(x - delta v)) / (2 delta v)``, then
    projection onto the ``eps``-ball and [0, 1]. The directions come from torch's global
    generator, drawn as torchattacks draws them (one direction per draw shared by the whole
    batch, ``max_batch_size`` draws at a time), so a seeded run gives torchattacks' examples;
    each group of draws is one model call on both signs and every sample
    (``2 * max_batch_size * B`` inputs). In targeted mode the targets come from the mode
    (torchattacks uses the labels passed, whatever the mode)."""

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 0.3,
        delta: float = 0.01,
        lr: float = 0.01,
        nb_iter: int = 1,
        nb_sample: int = 128,
        max_batch_size: int = 64,
    ) -> None:
        super().__init__("SPSA", model)
        self.eps = check_number("eps", eps)
        self.delta = check_number("delta", delta, strict=True)
        self.lr = check_number("lr", lr, strict=True)
        self.nb_iter = check_count("nb_iter", nb_iter, minimum=0)
        self.nb_sample = check_count("nb_sample", nb_sample)
        self.max_batch_size = check_count("max_batch_size", max_batch_size)
        self.supported_mode = ["default", "targeted"]

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The margin ``max_{j != y} z_j - z_y``, negated when untargeted (the attack descends)."""
        label_logit = logits.gather(1, labels.view(-1, 1)).squeeze(1)
        other = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(1)
        margin = other - label_logit
        return margin if self.targeted else -margin

    @torch.no_grad()
    def _gradient(self, points: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch, shape = points.shape[0], points.shape[1:]
        gradient = torch.zeros_like(points)
        for start in range(0, self.nb_sample, self.max_batch_size):
            draws = min(self.max_batch_size, self.nb_sample - start)
            directions = torch.empty((draws, 1, *shape), dtype=points.dtype, device=points.device)
            directions = directions.bernoulli_().mul_(2).sub_(1).expand(draws, batch, *shape)
            centre = points.unsqueeze(0).expand(draws, batch, *shape)
            probes = torch.cat([centre + self.delta * directions, centre - self.delta * directions])
            losses = self._loss(self.get_logits(probes.reshape(-1, *shape)), labels.repeat(2 * draws))
            plus, minus = losses.view(2, draws, batch).unbind(0)
            difference = (plus - minus).view(draws, batch, *([1] * len(shape)))
            gradient += (difference / (2 * self.delta * directions)).sum(0)
        return gradient / self.nb_sample

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        labels = _labels(self, images, labels)
        if self.targeted:
            labels = self.get_target_label(images, labels)
        images = images.detach()
        perturbation = torch.zeros_like(images)
        optimizer = torch.optim.Adam([perturbation], lr=self.lr)
        for _ in range(self.nb_iter):
            perturbation.grad = self._gradient(images + perturbation, labels)
            optimizer.step()
            with torch.no_grad():
                inside = (images + perturbation.clamp(-self.eps, self.eps)).clamp(0, 1)
                perturbation.copy_(inside - images)
        return images + perturbation


class OnePixel(Attack):
    """One-pixel attack (Su et al. 2019): differential evolution over ``pixels`` (row, column,
    one value per channel) tuples, minimising the softmax probability of the label (or
    ``1 -`` that of the target), as torchattacks runs it: a population of
    ``max(5, max(1, popsize // N) * N)`` for ``N = pixels * (2 + C)`` parameters, drawn
    uniformly in the box, strategy best1bin with crossover 1 (the trial is the mutant
    ``best + F (x_r0 - x_r1)``, ``F`` uniform in [0.5, 1) per generation, coordinates out of
    the box drawn again), a trial replacing its parent when its energy is lower; a sample
    stops after ``steps`` generations or once its best member fools the model. Every sample's
    population goes through the model in one batch per generation (chunks of ``inf_batch``).
    The draws come from a generator seeded with ``seed`` (fastxai's addition; torchattacks
    uses numpy's global generator, one sample after another)."""

    def __init__(
        self,
        model: torch.nn.Module,
        pixels: int = 1,
        steps: int = 10,
        popsize: int = 10,
        inf_batch: int = 128,
        seed: int = 0,
    ) -> None:
        super().__init__("OnePixel", model)
        self.pixels = check_count("pixels", pixels)
        self.steps = check_count("steps", steps, minimum=0)
        self.popsize = check_count("popsize", popsize)
        self.inf_batch = check_count("inf_batch", inf_batch)
        self.seed = check_count("seed", seed, minimum=0)
        self.supported_mode = ["default", "targeted"]

    def _perturb(self, images: torch.Tensor, owners: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """``images[owners]`` with each member's pixels set; members [M, N] in box units."""
        _, channels, height, width = images.shape
        perturbed = images[owners].clone()
        rows = torch.arange(members.shape[0], device=images.device)
        for pixel in members.view(members.shape[0], self.pixels, 2 + channels).unbind(1):
            row = pixel[:, 0].floor().long().clamp(0, height - 1)
            column = pixel[:, 1].floor().long().clamp(0, width - 1)
            perturbed[rows, :, row, column] = pixel[:, 2:].to(images.dtype)
        return perturbed

    @torch.no_grad()
    def _energies(
        self, images: torch.Tensor, owners: torch.Tensor, members: torch.Tensor, classes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(energy, fooled) of each member: the probability of the label, or 1 - that of the target."""
        points = self._perturb(images, owners, members)
        logits = torch.cat([self.get_logits(chunk) for chunk in points.split(self.inf_batch)])
        probability = logits.float().softmax(1).gather(1, classes[owners].view(-1, 1)).squeeze(1)
        predicted = logits.argmax(1)
        if self.targeted:
            return 1 - probability, predicted == classes[owners]
        return probability, predicted != classes[owners]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"inputs must be [N, C, H, W] images, got shape {tuple(images.shape)}")
        labels = _labels(self, images, labels)
        classes = self.get_target_label(images, labels) if self.targeted else labels
        batch, channels, height, width = images.shape
        device = images.device
        generator = torch.Generator().manual_seed(self.seed)

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, dtype=torch.float64).to(device)

        parameters = self.pixels * (2 + channels)
        size = max(5, max(1, self.popsize // parameters) * parameters)
        scale = torch.tensor([height, width] + [1.0] * channels, dtype=torch.float64, device=device)
        scale = scale.repeat(self.pixels)
        population = uniform(batch, size, parameters)  # in [0, 1): unit box
        owners = torch.arange(batch, device=device).repeat_interleave(size)
        energies = self._energies(images, owners, (population * scale).view(-1, parameters), classes)[0]
        energies = energies.view(batch, size).double()
        active = torch.ones(batch, dtype=torch.bool, device=device)
        for _ in range(self.steps):
            rows = active.nonzero().squeeze(1)
            if rows.numel() == 0:
                break
            count = rows.numel()
            current = population[rows]
            best = current.gather(1, energies[rows].argmin(1).view(-1, 1, 1).expand(-1, 1, parameters))
            keys = uniform(count, size, size)
            keys.diagonal(dim1=1, dim2=2).fill_(2.0)  # never pick the member itself
            picks = keys.argsort(dim=2)[..., :2]
            first = current.gather(1, picks[..., 0:1].expand(-1, -1, parameters))
            second = current.gather(1, picks[..., 1:2].expand(-1, -1, parameters))
            factor = (0.5 + 0.5 * uniform(count)).view(-1, 1, 1)
            trials = best + factor * (first - second)
            outside = (trials < 0) | (trials > 1)
            trials = torch.where(outside, uniform(*trials.shape), trials)
            trial_owners = rows.repeat_interleave(size)
            trial_energies, _ = self._energies(
                images, trial_owners, (trials * scale).view(-1, parameters), classes
            )
            trial_energies = trial_energies.view(count, size).double()
            better = trial_energies < energies[rows]
            population[rows] = torch.where(better.unsqueeze(2), trials, current)
            energies[rows] = torch.where(better, trial_energies, energies[rows])
            leader = population[rows].gather(
                1, energies[rows].argmin(1).view(-1, 1, 1).expand(-1, 1, parameters)
            )
            _, fooled = self._energies(images, rows, (leader.squeeze(1) * scale), classes)
            active[rows[fooled]] = False
        leaders = population.gather(1, energies.argmin(1).view(-1, 1, 1).expand(-1, 1, parameters)).squeeze(1)
        return self._perturb(images, torch.arange(batch, device=device), leaders * scale)


class Pixle(Attack):
    """Pixle (Pomponi et al. 2022), L0, black-box: rearranges pixels. Each iteration copies a
    random patch of the input (``x_dimensions`` x ``y_dimensions``: ints are pixels, floats a
    share of the side, a pair the range) onto random places of the current best image and
    keeps the candidate if it lowers the probability of the label (raises the target's);
    ``restarts`` rounds of ``max_iterations`` candidates drawn from the same base (the best
    one becomes the next base), or with ``update_each_iteration`` one candidate after another
    on the running best. A sample stops once a candidate fools the model.

    The draws come from numpy's global generator in torchattacks' order, so a run seeded as
    torchattacks' is (``np.random.seed``) gives its examples; the candidates of one restart go
    through the model in one batch (the generator is wound back to where torchattacks stops
    drawing when a candidate succeeds). Only ``pixel_mapping='random'`` is implemented."""

    _MAPPINGS = ("random", "similarity", "similarity_random", "distance", "distance_random")

    def __init__(
        self,
        model: torch.nn.Module,
        x_dimensions: object = (2, 10),
        y_dimensions: object = (2, 10),
        pixel_mapping: str = "random",
        restarts: int = 20,
        max_iterations: int = 10,
        update_each_iteration: bool = False,
    ) -> None:
        super().__init__("Pixle", model)
        self.restarts = check_count("restarts", restarts, minimum=0)
        self.max_patches = check_count("max_iterations", max_iterations, minimum=0)
        if not isinstance(pixel_mapping, str) or pixel_mapping.lower() not in self._MAPPINGS:
            raise ValueError(f"pixel_mapping must be one of {self._MAPPINGS}, got {pixel_mapping!r}")
        self.pixel_mapping = pixel_mapping.lower()
        if self.pixel_mapping != "random":
            self._unsupported(f"pixel_mapping={pixel_mapping!r}")
        self.p1_x_dimensions = self._dimensions("x_dimensions", x_dimensions)
        self.p1_y_dimensions = self._dimensions("y_dimensions", y_dimensions)
        self.update_each_iteration = bool(update_each_iteration)
        self.supported_mode = ["default", "targeted"]

    @staticmethod
    def _dimensions(name: str, value: object) -> list[int | float]:
        sizes = [value, value] if isinstance(value, (int, float)) else value
        if (
            not isinstance(sizes, (tuple, list))
            or len(sizes) != 2
            or not all(
                (isinstance(d, int) and not isinstance(d, bool) and d > 0)
                or (isinstance(d, float) and 0 <= d <= 1)
                for d in sizes
            )
        ):
            raise ValueError(f"{name} must be an int > 0, a float in [0, 1] or a pair of them, got {value!r}")
        return list(sizes)

    @staticmethod
    def _bounds(sizes: list[int | float], side: int) -> tuple[int, int]:
        low, high = (max(1, d if isinstance(d, int) else round(side * d)) for d in sizes)
        return low, high

    def _draw(self, height: int, width: int, x_bounds: tuple[int, int], y_bounds: tuple[int, int]) -> tuple:
        """A patch (column, row, width, height) and a destination per patch pixel, from numpy's
        global generator in torchattacks' order (hence numpy's legacy global functions)."""
        column, row = np.random.uniform(0, 1, 2)  # noqa: NPY002
        patch_width = np.random.randint(x_bounds[0], x_bounds[1] + 1)  # noqa: NPY002
        patch_height = np.random.randint(y_bounds[0], y_bounds[1] + 1)  # noqa: NPY002
        column, row = int(column * (width - 1)), int(row * (height - 1))
        patch_width, patch_height = min(patch_width, width - column), min(patch_height, height - row)
        places = np.random.uniform(0, 1, (patch_width * patch_height, 2))  # noqa: NPY002
        # torchattacks scales both coordinates as it does the patch's, and indexes the first as the row
        destinations = (places * np.array([width - 1, height - 1])).astype(np.int64)
        return column, row, patch_width, patch_height, torch.from_numpy(destinations)

    @staticmethod
    def _perturb(image: torch.Tensor, base: torch.Tensor, solution: tuple) -> torch.Tensor:
        column, row, patch_width, patch_height, destinations = solution
        channels = image.shape[1]
        patch = image[0, :, row : row + patch_height, column : column + patch_width].reshape(channels, -1)
        candidate = base.clone()
        destinations = destinations.to(image.device)
        candidate[0, :, destinations[:, 0], destinations[:, 1]] = patch
        return candidate

    @torch.no_grad()
    def _score(self, points: torch.Tensor, label: torch.Tensor) -> tuple[list[float], list[bool]]:
        """Per candidate: the probability of the label (1 - that of the target), and success."""
        logits = self.get_logits(points)
        probability = functional.softmax(logits, dim=1)[:, int(label)]
        energy = 1 - probability if self.targeted else probability
        predicted = logits.argmax(1)
        fooled = predicted == label if self.targeted else predicted != label
        return energy.tolist(), fooled.tolist()

    def _restarted(self, image: torch.Tensor, label: torch.Tensor, bounds: tuple) -> torch.Tensor:
        height, width = image.shape[2:]
        best_image, best_solution = image.clone(), None
        best_energy = self._score(image, label)[0][0]
        for _ in range(self.restarts):
            candidates, states = [], []
            for _ in range(self.max_patches):
                candidates.append(self._perturb(image, best_image, self._draw(height, width, *bounds)))
                states.append(np.random.get_state())  # noqa: NPY002
            if not candidates:
                break
            energies, fooled = self._score(torch.cat(candidates), label)
            stop = False
            for candidate, energy, success, state in zip(candidates, energies, fooled, states, strict=True):
                if energy < best_energy:
                    best_energy, best_solution = energy, candidate
                if success:
                    best_solution, stop = candidate, True
                    np.random.set_state(state)  # torchattacks draws no further  # noqa: NPY002
                    break
            best_image = candidates[-1] if best_solution is None else best_solution
            if stop:
                break
        return best_image

    def _iterated(self, image: torch.Tensor, label: torch.Tensor, bounds: tuple) -> torch.Tensor:
        height, width = image.shape[2:]
        best_image = image.clone()
        best_energy = self._score(image, label)[0][0]
        for _ in range(self.max_patches):
            candidate = self._perturb(image, best_image, self._draw(height, width, *bounds))
            (energy,), (success,) = self._score(candidate, label)
            if energy < best_energy:
                best_energy, best_image = energy, candidate
            if success:
                return candidate
        return best_image

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"inputs must be [N, C, H, W] images, got shape {tuple(images.shape)}")
        labels = _labels(self, images, labels)
        if self.targeted:
            labels = self.get_target_label(images, labels)
        bounds = (
            self._bounds(self.p1_x_dimensions, images.shape[3]),
            self._bounds(self.p1_y_dimensions, images.shape[2]),
        )
        run = self._iterated if self.update_each_iteration else self._restarted
        images = images.detach()
        return torch.cat([run(images[i : i + 1], labels[i], bounds) for i in range(images.shape[0])])
