"""torchattacks-shaped classes on fastxai's fused attacks: change the import, keep the code.

    from fastxai.compat import torchattacks as ta
    atk = ta.PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)
    x_adv = atk(x, y)

The classes take torchattacks 3.5's constructor arguments and calls (``atk(images, labels)``,
``set_normalization_used``, ``set_mode_targeted_by_label``, ``set_mode_default``), run the
model in eval mode and put its mode back, and check that inputs lie in [0, 1]. With
``random_start=False`` they return the same adversarial examples as torchattacks to float
tolerance. Options of torchattacks that are not implemented here raise an error rather than
being ignored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fastxai.attacks import auto_pgd, carlini_wagner, gradient_attacks


class Attack:
    """Base class: the model, the attack mode (default or targeted by label) and normalisation."""

    def __init__(self, name: str, model: torch.nn.Module) -> None:
        self.attack = name
        self.model = model
        self.targeted = False
        self.attack_mode = "default"
        self.normalization_used: dict[str, torch.Tensor] | None = None
        self.backend: str | None = None

    def set_normalization_used(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The model expects ``(x - mean) / std``; inputs and outputs of ``__call__`` are normalised."""
        channels = len(mean)
        self.normalization_used = {
            "mean": torch.tensor(mean, dtype=torch.float32).reshape(1, channels, 1, 1),
            "std": torch.tensor(std, dtype=torch.float32).reshape(1, channels, 1, 1),
        }

    def set_mode_default(self) -> None:
        self.targeted = False
        self.attack_mode = "default"

    def set_mode_targeted_by_label(self, quiet: bool = False) -> None:
        """Labels passed to ``__call__`` are the target classes."""
        self.targeted = True
        self.attack_mode = "targeted(label)"

    def _unsupported(self, name: str) -> None:
        raise NotImplementedError(
            f"fastxai.compat.torchattacks: {name} is not implemented; use torchattacks itself for it"
        )

    def set_mode_targeted_random(self, quiet: bool = False) -> None:
        self._unsupported("set_mode_targeted_random")

    def set_mode_targeted_least_likely(self, kth_min: int = 1, quiet: bool = False) -> None:
        self._unsupported("set_mode_targeted_least_likely")

    def set_mode_targeted_by_function(self, target_map_function: Any, quiet: bool = False) -> None:
        self._unsupported("set_mode_targeted_by_function")

    def set_model_training_mode(
        self, model_training: bool = False, batchnorm_training: bool = False, dropout_training: bool = False
    ) -> None:
        if model_training or batchnorm_training or dropout_training:
            self._unsupported("attacking a model in training mode")

    def set_backend(self, backend: str | None) -> None:
        """fastxai only: the backend of the fused step (None = automatic)."""
        self.backend = backend

    def _normalize(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.normalization_used is None:
            return None
        return self.normalization_used["mean"], self.normalization_used["std"]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        normalize = self._normalize()
        if normalize is not None:
            mean, std = (t.to(images.device, images.dtype) for t in normalize)
            images = images * std + mean
        adversarial = self.forward(images, labels)
        if normalize is not None:
            adversarial = (adversarial - mean) / std
        return adversarial

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _run(self, attack: Any, images: torch.Tensor, labels: torch.Tensor, **options: Any) -> torch.Tensor:
        """``attack`` (a fastxai attack function) with ``options`` and what every class shares:
        the mode, the normalisation and the fused-step backend."""
        result: torch.Tensor = attack(
            self.model,
            images,
            labels,
            targeted=self.targeted,
            normalize=self._normalize(),
            backend=self.backend,
            **options,
        )
        return result

    def __repr__(self) -> str:
        return f"{self.attack}(model_name={type(self.model).__name__}, attack_mode={self.attack_mode})"


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

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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
        if eps_for_division != 1e-10:
            self._unsupported("eps_for_division other than 1e-10")
        super().__init__(model, eps, alpha, steps, random_start)


class FGSM(Attack):
    """Fast gradient sign method (Goodfellow et al. 2015)."""

    def __init__(self, model: torch.nn.Module, eps: float = 8 / 255) -> None:
        super().__init__("FGSM", model)
        self.eps = eps

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self._run(gradient_attacks.fgsm, images, labels, eps=self.eps)


class BIM(Attack):
    """Basic iterative method (Kurakin et al. 2017); ``steps=0`` picks min(eps*255 + 4, 1.25 eps*255)."""

    def __init__(
        self, model: torch.nn.Module, eps: float = 8 / 255, alpha: float = 2 / 255, steps: int = 10
    ) -> None:
        super().__init__("BIM", model)
        self.eps, self.alpha = eps, alpha
        self.steps = int(min(eps * 255 + 4, 1.25 * eps * 255)) if steps == 0 else steps

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
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

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return carlini_wagner.cw_l2(
            self.model,
            images,
            labels,
            c=self.c,
            kappa=self.kappa,
            steps=self.steps,
            lr=self.lr,
            binary_search_steps=1,
            targeted=self.targeted,
            normalize=self._normalize(),
        )


class APGD(Attack):
    """APGD with torchattacks' arguments (``norm`` "Linf" or "L2", ``loss`` "ce" or "dlr").

    ``n_restarts`` > 1 and ``eot_iter`` > 1 are not implemented (an error, not ignored).
    """

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
        super().__init__("APGD", model)
        if n_restarts != 1 or eot_iter != 1:
            self._unsupported("APGD with n_restarts or eot_iter other than 1")
        norms = {"Linf": "linf", "L2": "l2"}
        if norm not in norms:
            raise ValueError(f"norm must be 'Linf' or 'L2', got {norm!r}")
        self.norm, self.eps, self.steps, self.seed, self.loss, self.rho = (
            norms[norm],
            eps,
            steps,
            seed,
            loss,
            rho,
        )

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.targeted:
            self._unsupported("targeted APGD through the torchattacks interface (use fastxai.apgd)")
        return self._run(
            auto_pgd.apgd,
            images,
            labels,
            eps=self.eps,
            steps=self.steps,
            norm=self.norm,
            loss=self.loss,
            rho=self.rho,
            seed=self.seed,
        )


__all__ = ["APGD", "BIM", "CW", "FGSM", "MIFGSM", "PGD", "PGDL2", "Attack"]
