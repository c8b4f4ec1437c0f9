"""The torchattacks 3.5 ``Attack`` base class on fastxai: modes, normalisation, model mode,
devices and ``save``/``load``, with torchattacks' names and semantics.

Differences from torchattacks, on purpose:
- inputs outside ``[0, 1]`` (in pixel space, after undoing ``set_normalization_used``) raise a
  ValueError; torchattacks silently clamps the result into ``[0, 1]``;
- the model is left exactly as found (every module's mode, ``requires_grad``, and the
  BatchNorm statistics a training-mode attack updated); torchattacks only calls ``train()``
  again if the model was training;
- random targets come from a seeded generator (``set_mode_targeted_random(seed=0)``), drawn
  in one batched call; torchattacks draws one at a time from torch's global generator;
- nothing is printed when the model has no parameters (``device`` is None until
  ``set_device``) or when a mode changes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from fastxai import _model

TargetMap = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


class Attack:
    """Base class: the model, the attack mode, normalisation, the model's mode during the attack."""

    def __init__(self, name: str, model: torch.nn.Module) -> None:
        self.attack = name
        self.set_model(model)
        try:
            self.device: torch.device | None = next(model.parameters()).device
        except (AttributeError, StopIteration, TypeError):
            self.device = None
        self.attack_mode = "default"
        self.supported_mode = ["default"]
        self.targeted = False
        self._target_map_function: TargetMap | str | None = None
        self._kth_min = 1
        self._target_generator: torch.Generator | None = None
        self.normalization_used: dict[str, torch.Tensor] | None = None
        self._normalization_applied: bool | None = None
        self._model_training = False
        self._batchnorm_training = False
        self._dropout_training = False
        self._backend: str | None = None

    # --- the model, the device, normalisation -------------------------------------------
    def set_model(self, model: torch.nn.Module) -> None:
        self.model = model
        self.model_name = type(model).__name__

    def set_device(self, device: torch.device | str | None) -> None:
        """Inputs are moved to ``device`` before the attack (torchattacks reads it off the model)."""
        self.device = None if device is None else torch.device(device)

    def set_backend(self, backend: str | None) -> None:
        """fastxai only: the backend of the fused step (None = automatic)."""
        self._backend = backend

    def set_normalization_used(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """The model expects ``(x - mean) / std``: ``__call__`` takes and returns normalised
        inputs, the attack itself (``eps``, the bounds) runs in pixel space."""
        channels = len(mean)
        if len(std) != channels:
            raise ValueError(f"std must have one value per channel ({channels}), got {len(std)}")
        self.normalization_used = {
            "mean": torch.tensor(mean, dtype=torch.float32).reshape(1, channels, 1, 1),
            "std": torch.tensor(std, dtype=torch.float32).reshape(1, channels, 1, 1),
        }
        self._normalization_applied = True

    def normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        assert self.normalization_used is not None
        mean, std = (self.normalization_used[k].to(inputs.device, inputs.dtype) for k in ("mean", "std"))
        return (inputs - mean) / std

    def inverse_normalize(self, inputs: torch.Tensor) -> torch.Tensor:
        assert self.normalization_used is not None
        mean, std = (self.normalization_used[k].to(inputs.device, inputs.dtype) for k in ("mean", "std"))
        return inputs * std + mean

    def _normalize_pair(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        if self.normalization_used is None:
            return None
        return self.normalization_used["mean"], self.normalization_used["std"]

    def get_logits(
        self, inputs: torch.Tensor, labels: torch.Tensor | None = None, *args: Any
    ) -> torch.Tensor:
        """The model's logits; inputs are in pixel space inside an attack (normalised here),
        normalised outside one (as torchattacks)."""
        if self._normalization_applied is False:
            inputs = self.normalize(inputs)
        logits: torch.Tensor = self.model(inputs)
        return logits

    @torch.no_grad()
    def get_output_with_eval_nograd(self, inputs: torch.Tensor) -> torch.Tensor:
        with _model.preserved_state(self.model):
            return self.get_logits(inputs)

    # --- modes ----------------------------------------------------------------------------
    def get_mode(self) -> str:
        return self.attack_mode

    def set_mode_default(self) -> None:
        self.attack_mode = "default"
        self.targeted = False

    def _set_mode_targeted(self, mode: str) -> None:
        if "targeted" not in self.supported_mode:
            raise ValueError(f"Targeted mode is not supported by {self.attack}.")
        self.targeted = True
        self.attack_mode = mode

    def set_mode_targeted_by_function(self, target_map_function: TargetMap, quiet: bool = False) -> None:
        """Targets are ``target_map_function(inputs, labels)``."""
        if not callable(target_map_function):
            raise TypeError("target_map_function must be callable (inputs, labels) -> target labels")
        self._set_mode_targeted("targeted(custom)")
        self._target_map_function = target_map_function

    def set_mode_targeted_random(self, quiet: bool = False, seed: int = 0) -> None:
        """Targets drawn uniformly among the classes other than the label, from a generator
        seeded with ``seed`` (fastxai's addition: reproducible)."""
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self._set_mode_targeted("targeted(random)")
        self._target_generator = torch.Generator().manual_seed(seed)
        self._target_map_function = self.get_random_target_label

    def set_mode_targeted_least_likely(self, kth_min: int = 1, quiet: bool = False) -> None:
        """Targets are the classes with the ``kth_min``-th smallest logit (the label excluded)."""
        if isinstance(kth_min, bool) or not isinstance(kth_min, int) or kth_min < 1:
            raise ValueError(f"kth_min must be an int >= 1, got {kth_min!r}")
        self._set_mode_targeted("targeted(least-likely)")
        self._kth_min = kth_min
        self._target_map_function = self.get_least_likely_label

    def set_mode_targeted_by_label(self, quiet: bool = False) -> None:
        """The labels passed to ``__call__`` are the target classes."""
        self._set_mode_targeted("targeted(label)")
        self._target_map_function = "function is a string"

    def get_target_label(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self._target_map_function is None:
            raise ValueError("target_map_function is not initialized by set_mode_targeted.")
        if self.attack_mode == "targeted(label)":
            if labels is None:
                raise ValueError("labels are required in targeted(label) mode (they are the targets)")
            return labels
        assert callable(self._target_map_function)
        targets: torch.Tensor = self._target_map_function(inputs, labels)
        return targets.long().to(inputs.device)

    def _labels_or_predicted(self, outputs: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        return outputs.argmax(dim=1) if labels is None else labels.to(outputs.device).long()

    @torch.no_grad()
    def get_least_likely_label(
        self, inputs: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        outputs = self.get_output_with_eval_nograd(inputs).float()
        labels = self._labels_or_predicted(outputs, labels)
        classes = outputs.shape[1]
        if self._kth_min > classes - 1:
            raise ValueError(f"kth_min must be at most classes - 1 = {classes - 1}, got {self._kth_min}")
        without_label = outputs.scatter(1, labels.view(-1, 1), float("inf"))
        return without_label.kthvalue(self._kth_min, dim=1).indices

    @torch.no_grad()
    def get_random_target_label(
        self, inputs: torch.Tensor, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        outputs = self.get_output_with_eval_nograd(inputs)
        labels = self._labels_or_predicted(outputs, labels)
        classes = outputs.shape[1]
        if self._target_generator is None:
            self._target_generator = torch.Generator().manual_seed(0)
        draw = torch.randint(0, classes - 1, labels.shape, generator=self._target_generator)
        draw = draw.to(labels.device)
        return draw + (draw >= labels).long()  # skip the label itself

    # --- the model's mode during the attack ---------------------------------------------------
    def set_model_training_mode(
        self, model_training: bool = False, batchnorm_training: bool = False, dropout_training: bool = False
    ) -> None:
        """Run the attack with the model in training mode (BatchNorm and Dropout layers in eval
        mode unless their flag is set); the model's modes and BatchNorm statistics are put
        back afterwards."""
        self._model_training = bool(model_training)
        self._batchnorm_training = bool(batchnorm_training)
        self._dropout_training = bool(dropout_training)

    def _change_model_mode(self) -> None:
        if not isinstance(self.model, torch.nn.Module):
            return
        if not self._model_training:
            self.model.eval()
            return
        self.model.train()
        for module in self.model.modules():
            kind = type(module).__name__
            if ("BatchNorm" in kind and not self._batchnorm_training) or (
                "Dropout" in kind and not self._dropout_training
            ):
                module.eval()

    def _attack_model(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the fastxai function receives: the model itself, or in training mode a plain
        callable (fastxai's functions put an ``nn.Module`` in eval mode)."""
        if self._model_training and isinstance(self.model, torch.nn.Module):
            model = self.model
            return lambda inputs: model(inputs)
        return self.model

    # --- calling --------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        # The base class, as torchattacks' Attack: every attack class defines its own forward.
        raise NotImplementedError(f"{type(self).__name__} defines no forward: use an attack class")

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
        if self.device is not None:
            inputs = inputs.to(self.device)
            labels = labels.to(self.device) if isinstance(labels, torch.Tensor) else labels
        buffers = []
        if self._model_training and isinstance(self.model, torch.nn.Module):
            buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        with _model.preserved_state(self.model):
            try:
                self._change_model_mode()
                if self._normalization_applied:
                    inputs = self.inverse_normalize(inputs)
                    self._normalization_applied = False
                    try:
                        adversarial = self.normalize(self.forward(inputs, labels))
                    finally:
                        self._normalization_applied = True
                else:
                    adversarial = self.forward(inputs, labels)
            finally:
                with torch.no_grad():
                    for buffer, saved in buffers:  # statistics a training-mode attack updated
                        buffer.copy_(saved)
        return adversarial

    def _targets(self, images: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor | None:
        """The labels a fastxai function receives: the targets in targeted mode."""
        return self.get_target_label(images, labels) if self.targeted else labels

    def _run(
        self, attack: Any, images: torch.Tensor, labels: torch.Tensor | None, **options: Any
    ) -> torch.Tensor:
        """``attack`` (a fastxai attack function) with ``options`` and what every class shares:
        the mode, the normalisation and the fused-step backend."""
        result: torch.Tensor = attack(
            self._attack_model(),
            images,
            self._targets(images, labels),
            targeted=self.targeted,
            normalize=self._normalize_pair(),
            backend=self._backend,
            **options,
        )
        return result

    def _unsupported(self, option: str) -> None:
        raise NotImplementedError(
            f"fastxai.compat.torchattacks.{self.attack}: {option} is not implemented; "
            "use torchattacks itself for it"
        )

    def __repr__(self) -> str:
        info = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        for key in ("model", "attack", "supported_mode"):
            info.pop(key, None)
        info["attack_mode"] = self.attack_mode
        info["normalization_used"] = self.normalization_used is not None
        return f"{self.attack}(" + ", ".join(f"{k}={v}" for k, v in info.items()) + ")"

    # --- datasets -------------------------------------------------------------------------
    def save(
        self,
        data_loader: Any,
        save_path: str | None = None,
        verbose: bool = True,
        return_verbose: bool = False,
        save_predictions: bool = False,
        save_clean_inputs: bool = False,
        save_type: str = "float",
    ) -> tuple[float, float, float] | None:
        """Attack every batch of ``data_loader`` ((inputs, labels) pairs); with ``save_path``,
        ``torch.save`` a dict with ``adv_inputs`` and ``labels`` (and ``preds``,
        ``clean_inputs``, ``save_type``), adversarial inputs in pixel space (``"int"``:
        uint8 of ``255 x``). ``verbose`` prints, ``return_verbose`` returns (robust accuracy
        in %, mean L2 distance of the successful ones, seconds of the last batch)."""
        if save_type not in ("float", "int"):
            raise ValueError(f"{save_type} is not a valid type. [Options: float, int]")
        stored: dict[str, list[torch.Tensor]] = {
            "adv_inputs": [],
            "labels": [],
            "preds": [],
            "clean_inputs": [],
        }
        correct, total, distances = 0, 0, []
        robust_accuracy, l2, elapsed = 0.0, 0.0, 0.0
        batches = len(data_loader)
        for step, (inputs, labels) in enumerate(data_loader):
            start = time.time()
            adversarial = self(inputs, labels)
            with torch.no_grad():
                predictions = self.get_output_with_eval_nograd(adversarial).argmax(dim=1)
            right = predictions == labels.to(predictions.device)
            correct += int(right.sum())
            total += labels.shape[0]
            robust_accuracy = 100 * correct / total
            delta = (adversarial - inputs.to(adversarial.device)).flatten(1)
            distances.append(delta[~right.to(delta.device)].norm(dim=1))
            joined = torch.cat(distances)
            l2 = float(joined.mean()) if joined.numel() else float("nan")
            elapsed = time.time() - start
            if verbose:
                progress = (step + 1) / batches * 100
                print(
                    f"- Save progress: {progress:2.2f} % / Robust accuracy: {robust_accuracy:2.2f} % / "
                    f"L2: {l2:1.5f} ({elapsed:2.3f} it/s) \t",
                    end="\r" if step + 1 < batches else "\n",
                )
            if save_path is not None:
                stored["adv_inputs"].append(adversarial.detach().cpu())
                stored["labels"].append(labels.detach().cpu())
                stored["preds"].append(predictions.detach().cpu())
                stored["clean_inputs"].append(inputs.detach().cpu())
        if save_path is not None:
            result: dict[str, Any] = {
                "adv_inputs": torch.cat(stored["adv_inputs"]),
                "labels": torch.cat(stored["labels"]),
            }
            if save_predictions:
                result["preds"] = torch.cat(stored["preds"])
            if save_clean_inputs:
                result["clean_inputs"] = torch.cat(stored["clean_inputs"])
            for key in ("adv_inputs", "clean_inputs"):
                if key in result:
                    if self.normalization_used is not None:
                        result[key] = self.inverse_normalize(result[key])
                    result[key] = self.to_type(result[key], save_type)
            result["save_type"] = save_type
            torch.save(result, save_path)
        return (robust_accuracy, l2, elapsed) if return_verbose else None

    @staticmethod
    def to_type(inputs: torch.Tensor, type: str) -> torch.Tensor:
        """float in [0, 1] -> uint8 ``255 x`` for ``"int"``; uint8 -> float ``/ 255`` for ``"float"``."""
        if type == "int":
            return (inputs * 255).to(torch.uint8) if inputs.is_floating_point() else inputs
        if type == "float":
            return inputs.float() / 255 if inputs.dtype == torch.uint8 else inputs
        raise ValueError(f"{type} is not a valid type. [Options: float, int]")

    @staticmethod
    def load(
        load_path: str,
        batch_size: int = 128,
        shuffle: bool = False,
        normalize: dict[str, Sequence[float]] | None = None,
        load_predictions: bool = False,
        load_clean_inputs: bool = False,
    ) -> DataLoader:
        """A DataLoader over what ``save`` wrote: (adv_inputs, labels[, preds][, clean_inputs])."""
        saved = torch.load(load_path)
        keys = ["adv_inputs", "labels"] + ["preds"] * load_predictions + ["clean_inputs"] * load_clean_inputs
        for key in ("adv_inputs", "clean_inputs"):
            if key in keys:
                saved[key] = Attack.to_type(saved[key], "float")
                if normalize is not None:
                    channels = len(normalize["mean"])
                    mean = torch.tensor(normalize["mean"]).reshape(1, channels, 1, 1)
                    std = torch.tensor(normalize["std"]).reshape(1, channels, 1, 1)
                    saved[key] = (saved[key] - mean) / std
        return DataLoader(
            TensorDataset(*[saved[key] for key in keys]), batch_size=batch_size, shuffle=shuffle
        )
