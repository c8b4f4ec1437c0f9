"""torchattacks-shaped gradient attacks on fastxai's fused ones: PGD, PGDL2, FGSM, BIM,
MI-FGSM and CW, with torchattacks 3.5's arguments. Exported by ``fastxai.compat.torchattacks``."""

from __future__ import annotations

import torch

from fastxai.attacks import carlini_wagner, gradient_attacks
from fastxai.compat._torchattacks_attack import Attack


class PGD(Attack):
    """L-inf PGD (Madry et al. 2018), torchattacks' defaults."""

    _NORM = "linf"

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
    ) -> None:
        super().__init__(type(self).__name__, model)
        self.eps, self.alpha, self.steps, self.random_start = eps, alpha, steps, random_start
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(
            gradient_attacks.pgd,
            images,
            labels,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            norm=self._NORM,
            random_start=self.random_start,
        )


class PGDL2(PGD):
    """L2 PGD, torchattacks' defaults."""

    _NORM = "l2"

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 1.0,
        alpha: float = 0.2,
        steps: int = 10,
        random_start: bool = True,
        eps_for_division: float = 1e-10,
    ) -> None:
        super().__init__(model, eps, alpha, steps, random_start)
        if eps_for_division != 1e-10:
            self._unsupported("eps_for_division other than 1e-10")
        self.eps_for_division = eps_for_division


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015)."""

    def __init__(self, model: torch.nn.Module, eps: float = 8 / 255) -> None:
        super().__init__("FGSM", model)
        self.eps = eps
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(gradient_attacks.fgsm, images, labels, eps=self.eps)


class BIM(Attack):
    """Basic iterative method (Kurakin et al. 2017); ``steps=0`` picks min(eps*255 + 4, 1.25 eps*255)."""

    def __init__(
        self, model: torch.nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10
    ) -> None:
        super().__init__("BIM", model)
        self.eps, self.alpha = eps, alpha
        self.steps = int(min(eps * 255 + 4, 1.25 * eps * 255)) if steps == 0 else steps
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(
            gradient_attacks.bim, images, labels, eps=self.eps, alpha=self.alpha, steps=self.steps
        )


class MIFGSM(Attack):
    """Momentum iterative FGSM (Dong et al. 2018)."""

    def __init__(
        self,
        model: torch.nn.Module,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        decay: float = 1.0,
    ) -> None:
        super().__init__("MIFGSM", model)
        self.eps, self.alpha, self.steps, self.decay = eps, alpha, steps, decay
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._run(
            gradient_attacks.mifgsm,
            images,
            labels,
            eps=self.eps,
            alpha=self.alpha,
            steps=self.steps,
            decay=self.decay,
        )


class CW(Attack):
    """Carlini-Wagner L2 with one value of ``c`` (torchattacks' CW; ``fastxai.cw_l2`` adds the
    binary search). Differences: the margin uses the true best other logit (torchattacks takes
    the max of ``(1 - onehot) * z``, which is 0 when every other logit is negative), and there
    is no batch-wide early abort (torchattacks stops the whole batch when the summed cost rises).
    """

    def __init__(
        self, model: torch.nn.Module, c: float = 1.0, kappa: float = 0.0, steps: int = 50, lr: float = 0.01
    ) -> None:
        super().__init__("CW", model)
        self.c, self.kappa, self.steps, self.lr = c, kappa, steps, lr
        self.supported_mode = ["default", "targeted"]

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return carlini_wagner.cw_l2(
            self._attack_model(),
            images,
            self._targets(images, labels),
            c=self.c,
            kappa=self.kappa,
            steps=self.steps,
            lr=self.lr,
            binary_search_steps=1,
            targeted=self.targeted,
            normalize=self._normalize_pair(),
        )
