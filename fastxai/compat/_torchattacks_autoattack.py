"""torchattacks-shaped classes of the AutoAttack family and the minimum-norm attacks: APGD,
APGDT, FAB, Square, AutoAttack (Croce and Hein 2020; Andriushchenko et al. 2020) and DeepFool
(Moosavi-Dezfooli et al. 2016), on fastxai's functions. Exported by
``fastxai.compat.torchattacks``."""

from __future__ import annotations

from typing import Any

import torch

from fastxai.attacks import auto_pgd
from fastxai.attacks.apgd_targeted import apgd_targeted
from fastxai.attacks.autoattack import autoattack
from fastxai.attacks.deepfool import deepfool
from fastxai.attacks.fab import fab, fab_targeted
from fastxai.attacks.square import square_attack
from fastxai.compat._torchattacks_attack import Attack

NORMS = {"Linf": "linf", "L2": "l2"}


def _norm(attack: Attack, norm: str) -> str:
    if norm == "L1":
        attack._unsupported("norm='L1'")
    if norm not in NORMS:
        raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
    return NORMS[norm]


def _verbose(attack: Attack, verbose: bool) -> None:
    if verbose:
        attack._unsupported("verbose=True (progress printing)")


def _restarted(
    attack: Attack, images: torch.Tensor, labels: torch.Tensor | None, restarts: int, run: object
) -> torch.Tensor:
    """torchattacks' ``n_restarts``: ``run(images, labels, restart)`` again on the samples that
    every earlier restart left correctly classified."""
    assert callable(run)
    with torch.no_grad():
        logits = attack.get_logits(images)
    true = logits.argmax(dim=1) if labels is None else labels.to(logits.device).long()
    robust = logits.argmax(dim=1) == true
    result = images.clone()
    for restart in range(restarts):
        index = robust.nonzero().squeeze(1)
        if index.numel() == 0:
            break
        candidates = run(images[index], true[index], restart)
        with torch.no_grad():
            fooled = attack.get_logits(candidates).argmax(dim=1) != true[index]
        result[index[fooled]] = candidates[fooled]
        robust[index[fooled]] = False
    return result


class APGD(Attack):
    """APGD (Croce and Hein 2020) with torchattacks' arguments (``norm`` "Linf" or "L2",
    ``loss`` "ce" or "dlr"); restarts run on the samples still robust. ``eot_iter`` > 1 is
    not implemented (an error, not ignored)."""

    def __init__(
        self,
        model: torch.nn.Module,
        norm: str = "Linf",
        eps: float = 8 / 255,
        steps: int = 10,
        n_restarts: int = 1,
        seed: int = 0,
        loss: str = "ce",
        eot_iter: int = 1,
        rho: float = 0.75,
        verbose: bool = False,
    ) -> None:
        super().__init__(type(self).__name__, model)
        if eot_iter != 1:
            self._unsupported("eot_iter other than 1")
        _verbose(self, verbose)
        self.norm, self.eps, self.steps, self.n_restarts = norm, eps, steps, n_restarts
        self.seed, self.loss, self.eot_iter, self.rho, self.verbose = seed, loss, eot_iter, rho, verbose
        self._norm = _norm(self, norm)
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        def run(points: torch.Tensor, true: torch.Tensor, restart: int) -> torch.Tensor:
            result: torch.Tensor = auto_pgd.apgd(
                self._attack_model(),
                points,
                true,
                eps=self.eps,
                steps=self.steps,
                norm=self._norm,
                loss=self.loss,
                rho=self.rho,
                seed=self.seed + restart,
                normalize=self._normalize_pair(),
                backend=self._backend,
            )
            return result

        return _restarted(self, images, labels, self.n_restarts, run)


class APGDT(APGD):
    """APGD-T (Croce and Hein 2020): targeted DLR APGD towards each of the ``n_classes - 1``
    most likely wrong classes, on the samples still robust (``fastxai.apgd_targeted``)."""

    def __init__(
        self,
        model: torch.nn.Module,
        norm: str = "Linf",
        eps: float = 8 / 255,
        steps: int = 10,
        n_restarts: int = 1,
        seed: int = 0,
        eot_iter: int = 1,
        rho: float = 0.75,
        verbose: bool = False,
        n_classes: int = 10,
    ) -> None:
        super().__init__(model, norm, eps, steps, n_restarts, seed, "dlr", eot_iter, rho, verbose)
        del self.loss
        self.n_classes = n_classes

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        def run(points: torch.Tensor, true: torch.Tensor, restart: int) -> torch.Tensor:
            return apgd_targeted(
                self._attack_model(),
                points,
                true,
                eps=self.eps,
                steps=self.steps,
                norm=self._norm,
                n_target_classes=self.n_classes - 1,
                rho=self.rho,
                seed=self.seed + restart,
                normalize=self._normalize_pair(),
            )

        return _restarted(self, images, labels, self.n_restarts, run)


class DeepFool(Attack):
    """DeepFool (Moosavi-Dezfooli et al. 2016), L2: ``fastxai.deepfool``, torchattacks' iterates."""

    def __init__(self, model: torch.nn.Module, steps: int = 50, overshoot: float = 0.02) -> None:
        super().__init__("DeepFool", model)
        self.steps, self.overshoot = steps, overshoot
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return deepfool(
            self._attack_model(),
            images,
            labels,
            steps=self.steps,
            overshoot=self.overshoot,
            normalize=self._normalize_pair(),
        )


class FAB(Attack):
    """FAB (Croce and Hein 2020), L-inf or L2 (``fastxai.fab``); ``multi_targeted=True`` is
    FAB-T over the ``n_classes - 1`` most likely wrong classes. In targeted modes the target
    comes from the mode; the true class is the label, or the prediction in targeted(label)
    mode (where torchattacks linearises the target against itself). Results farther than
    ``eps`` are returned as the input, as in torchattacks. ``norm='L1'`` is not implemented."""

    def __init__(
        self,
        model: torch.nn.Module,
        norm: str = "Linf",
        eps: float | None = 8 / 255,
        steps: int = 10,
        n_restarts: int = 1,
        alpha_max: float = 0.1,
        eta: float = 1.05,
        beta: float = 0.9,
        verbose: bool = False,
        seed: int = 0,
        multi_targeted: bool = False,
        n_classes: int = 10,
    ) -> None:
        super().__init__("FAB", model)
        _verbose(self, verbose)
        self.norm, self._norm = norm, _norm(self, norm)
        self.eps = eps if eps is not None else {"Linf": 0.3, "L2": 1.0}[norm]
        self.steps, self.n_restarts, self.alpha_max, self.eta, self.beta = (
            steps,
            n_restarts,
            alpha_max,
            eta,
            beta,
        )
        self.verbose, self.seed, self.multi_targeted, self.n_classes = (
            verbose,
            seed,
            multi_targeted,
            n_classes,
        )
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        common: dict[str, Any] = {
            "norm": self._norm, "eps": self.eps, "steps": self.steps, "restarts": self.n_restarts,
            "alpha_max": self.alpha_max, "eta": self.eta, "beta": self.beta,
            "normalize": self._normalize_pair(), "seed": self.seed,
        }  # fmt: skip
        if self.multi_targeted:
            classes = self.n_classes - 1
            return fab_targeted(self._attack_model(), images, labels, n_target_classes=classes, **common)
        targets = None
        if self.targeted:
            targets = self.get_target_label(images, labels)
            if self.attack_mode == "targeted(label)":
                labels = None  # the labels are the targets: the true class is the prediction
        return fab(
            self._attack_model(), images, labels, targeted=self.targeted, target_labels=targets, **common
        )


class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020), L-inf or L2, black-box
    (``fastxai.square_attack``); restarts run on the samples still robust."""

    def __init__(
        self,
        model: torch.nn.Module,
        norm: str = "Linf",
        eps: float = 8 / 255,
        n_queries: int = 5000,
        n_restarts: int = 1,
        p_init: float = 0.8,
        loss: str = "margin",
        resc_schedule: bool = True,
        seed: int = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__("Square", model)
        _verbose(self, verbose)
        self.norm, self._norm, self.eps, self.n_queries, self.n_restarts = (
            norm,
            _norm(self, norm),
            eps,
            n_queries,
            n_restarts,
        )
        self.p_init, self.loss, self.rescale_schedule, self.seed, self.verbose = (
            p_init,
            loss,
            resc_schedule,
            seed,
            verbose,
        )
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        targets = self._targets(images, labels)

        def run(points: torch.Tensor, classes: torch.Tensor, restart: int) -> torch.Tensor:
            return square_attack(
                self._attack_model(),
                points,
                classes,
                eps=self.eps,
                norm=self._norm,
                n_queries=self.n_queries,
                p_init=self.p_init,
                loss=self.loss,
                targeted=self.targeted,
                rescale_schedule=self.rescale_schedule,
                normalize=self._normalize_pair(),
                seed=self.seed + restart,
            )

        if not self.targeted:
            return _restarted(self, images, targets, self.n_restarts, run)
        assert targets is not None
        result = images.clone()
        remaining = torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        for restart in range(self.n_restarts):  # targeted: until each sample reaches its target
            index = remaining.nonzero().squeeze(1)
            if index.numel() == 0:
                break
            candidates = run(images[index], targets[index], restart)
            with torch.no_grad():
                reached = self.get_logits(candidates).argmax(dim=1) == targets[index]
            result[index[reached]] = candidates[reached]
            remaining[index[reached]] = False
        return result


class AutoAttack(Attack):
    """AutoAttack, standard version (Croce and Hein 2020): APGD-CE, APGD-T, FAB-T and Square
    with torchattacks' budgets (10 steps, ``n_classes - 1`` targets, 5000 queries), each on
    the samples still robust (``fastxai.autoattack``). Versions "plus" and "rand" are not
    implemented. ``seed`` defaults to 0 (torchattacks: None, a time-based seed)."""

    def __init__(
        self,
        model: torch.nn.Module,
        norm: str = "Linf",
        eps: float = 8 / 255,
        version: str = "standard",
        n_classes: int = 10,
        seed: int | None = 0,
        verbose: bool = False,
    ) -> None:
        super().__init__("AutoAttack", model)
        _verbose(self, verbose)
        if version not in ("standard", "plus", "rand"):
            raise ValueError("Not valid version. ['standard', 'plus', 'rand']")
        if version != "standard":
            self._unsupported(f"version={version!r}")
        self.norm, self._norm, self.eps, self.version = norm, _norm(self, norm), eps, version
        self.n_classes, self.seed, self.verbose = n_classes, seed, verbose
        self.supported_mode = ["default"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return autoattack(
            self._attack_model(),
            images,
            labels,
            norm=self._norm,
            eps=self.eps,
            version=self.version,
            steps=10,
            fab_steps=10,
            n_target_classes=self.n_classes - 1,
            square_queries=5000,
            normalize=self._normalize_pair(),
            seed=self.seed,
        )
