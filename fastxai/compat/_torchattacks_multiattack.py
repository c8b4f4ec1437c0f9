"""torchattacks 3.5's MultiAttack wrapper on fastxai: several attacks in turn, each on the
samples every earlier one failed on; per sample the first adversarial example is kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fastxai.attacks import _core
from fastxai.compat._torchattacks_attack import Attack


class MultiAttack(Attack):
    """Runs ``attacks`` (at least two, on the same model) one after another, each on the samples
    that every earlier one failed on, and keeps per sample the first adversarial example that is
    misclassified; samples no attack fooled come back unchanged. ``verbose`` prints the
    cumulative success rate after each attack. ``set_normalization_used``, ``set_device`` and
    ``set_model_training_mode`` and ``set_mode_default`` apply to the inner attacks too (as
    torchattacks)."""

    def __init__(self, attacks: Sequence[Any], verbose: bool = False) -> None:
        if not isinstance(attacks, (list, tuple)) or not attacks:
            raise TypeError(f"attacks must be a list of attacks, got {type(attacks).__name__}")
        for attack in attacks:
            if not callable(attack) or not hasattr(attack, "model"):
                raise TypeError(f"attacks must hold attacks (callables with a model), got {attack!r}")
        super().__init__("MultiAttack", attacks[0].model)
        self.attacks = list(attacks)
        self.verbose = verbose
        self.supported_mode = ["default"]
        self.check_validity()
        self._accumulate_multi_atk_records = False
        self._multi_atk_records = [0.0]

    def check_validity(self) -> None:
        if len(self.attacks) < 2:
            raise ValueError("attacks must hold at least two attacks")
        if len({id(attack.model) for attack in self.attacks}) != 1:
            raise ValueError("attacks must all attack the same model (one references another model)")

    def set_normalization_used(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().set_normalization_used(mean, std)
        for attack in self.attacks:
            attack.set_normalization_used(mean, std)

    def set_device(self, device: torch.device | str | None) -> None:
        super().set_device(device)
        for attack in self.attacks:
            attack.set_device(device)

    def set_model_training_mode(
        self, model_training: bool = False, batchnorm_training: bool = False, dropout_training: bool = False
    ) -> None:
        super().set_model_training_mode(model_training, batchnorm_training, dropout_training)
        for attack in self.attacks:
            attack.set_model_training_mode(model_training, batchnorm_training, dropout_training)

    def set_mode_default(self) -> None:
        super().set_mode_default()
        for attack in self.attacks:
            attack.set_mode_default()

    def _pixel_space_call(self, attack: Any, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The inner attack on pixel-space images: its normalisation switched to "inside an
        attack" for the call, as torchattacks' wrapper does."""
        applied = getattr(attack, "_normalization_applied", None)
        if applied:
            attack._normalization_applied = False
        try:
            result: torch.Tensor = attack(images, labels)
        finally:
            if applied:
                attack._normalization_applied = applied
        return result

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        x = _core.check_attack_inputs(images, (0.0, 1.0)).detach()
        if labels is None:
            with torch.no_grad():
                labels = self.get_logits(x).argmax(dim=1)
        label_t = _core.check_labels(labels, x.shape[0], x.device)
        assert label_t is not None
        result = x.clone()
        remaining = torch.arange(x.shape[0], device=x.device)
        records = [x.shape[0]]
        for attack in self.attacks:
            adversarial = self._pixel_space_call(attack, x[remaining], label_t[remaining]).to(x.device)
            with torch.no_grad():
                fooled = self.get_logits(adversarial).argmax(dim=1) != label_t[remaining]
            result[remaining[fooled]] = adversarial[fooled].to(result.dtype)
            remaining = remaining[~fooled]
            records.append(remaining.numel())
            if remaining.numel() == 0:
                break
        if self.verbose:
            print(self._return_sr_record(records))
        if self._accumulate_multi_atk_records:
            for index, count in enumerate(records):
                self._multi_atk_records[index] += count
        return result

    def _covert_to_success_rates(self, records: Sequence[float]) -> list[float]:
        return [(1 - records[i] / records[0]) * 100 for i in range(1, len(records))]

    def _return_sr_record(self, records: Sequence[float]) -> str:
        rates = self._covert_to_success_rates(records)
        return "Attack success rate: " + " | ".join(f"{rate:2.2f} %" for rate in rates)

    def save(  # type: ignore[override]
        self,
        data_loader: Any,
        save_path: str | None = None,
        verbose: bool = True,
        return_verbose: bool = False,
        save_predictions: bool = False,
        save_clean_inputs: bool = False,
        save_type: str = "float",
    ) -> tuple[float, list[float], float, float] | None:
        """``Attack.save``; with ``return_verbose`` (robust accuracy in %, the cumulative success
        rate in % after each attack, mean L2 distance, seconds of the last batch)."""
        self._multi_atk_records = [0.0] * (len(self.attacks) + 1)
        previous, self.verbose = self.verbose, False
        self._accumulate_multi_atk_records = True
        try:
            summary = super().save(
                data_loader,
                save_path,
                verbose,
                return_verbose,
                save_predictions,
                save_clean_inputs,
                save_type,
            )
            rates = self._covert_to_success_rates(self._multi_atk_records)
        finally:
            self._accumulate_multi_atk_records = False
            self.verbose = previous
        if summary is None:
            return None
        robust_accuracy, l2, elapsed = summary
        return robust_accuracy, rates, l2, elapsed
