"""torchattacks-shaped LGV (Gubri et al. 2022), a wrapper that attacks an ensemble of models
collected along an SGD trajectory, with torchattacks 3.5's arguments. Exported by
``fastxai.compat.torchattacks``."""

from __future__ import annotations

import copy
import itertools
import os
import random

import torch
from torch.nn import functional

from fastxai._checks import check_count, check_number
from fastxai.compat._torchattacks_attack import Attack
from fastxai.compat._torchattacks_gradient import BIM


class _LightEnsemble(torch.nn.Module):
    """torchattacks' LGV ensemble: each call runs ``n_grad`` of the models in turn (their mean
    logits), or all of them with ``n_grad=-1``; the order is shuffled once by Python's global
    ``random`` (as torchattacks'). Normalises its inputs first when ``normalize`` is given."""

    def __init__(self, models: list[torch.nn.Module], n_grad: int, normalize: tuple | None) -> None:
        super().__init__()
        random.shuffle(models)
        self.models = torch.nn.ModuleList(models)
        self.n_grad, self.calls = n_grad, 0
        self._normalize = normalize

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self._normalize is not None:
            mean, std = (t.to(inputs.device, inputs.dtype) for t in self._normalize)
            inputs = (inputs - mean) / std
        count = len(self.models)
        if self.n_grad < 0 or self.n_grad >= count:
            chosen = list(range(count))
        else:
            chosen = sorted({i % count for i in range(self.calls, self.calls + self.n_grad)})
            self.calls += self.n_grad
        if len(chosen) == 1:
            logits: torch.Tensor = self.models[chosen[0]](inputs)
            return logits
        return torch.stack([self.models[i](inputs.clone()) for i in chosen]).mean(0)


class LGV(Attack):
    """LGV (Gubri et al. 2022): a transfer attack from models collected along an SGD trajectory
    around the given model. On the first call, a copy of the model is trained with SGD
    (``lr``, momentum 0.9, weight decay ``wd``) on ``trainloader`` for ``epochs`` epochs and
    copied ``nb_models_epoch`` times per epoch; then ``attack_class`` (default: the drop-in's
    ``BIM``) runs with ``**kwargs`` on their ensemble (``n_grad`` models per call in turn,
    -1: all). The given model is never trained. Under ``set_normalization_used`` the ensemble
    normalises its inputs (torchattacks' base attack feeds them pixels); every targeted mode is
    passed on (torchattacks refuses targeted(label) and targeted(custom))."""

    def __init__(
        self,
        model: torch.nn.Module,
        trainloader: object,
        lr: float = 0.05,
        epochs: int = 10,
        nb_models_epoch: int = 4,
        wd: float = 1e-4,
        n_grad: int = 1,
        verbose: bool = True,
        attack_class: type | None = None,
        **kwargs: object,
    ) -> None:
        super().__init__("LGV", copy.deepcopy(model))
        self.lr = check_number("lr", lr)
        self.epochs = check_count("epochs", epochs, minimum=0)
        self.nb_models_epoch = check_count("nb_models_epoch", nb_models_epoch, minimum=0)
        self.wd = check_number("wd", wd)
        if isinstance(n_grad, bool) or not isinstance(n_grad, int) or not (n_grad > 0 or n_grad == -1):
            raise ValueError(f"n_grad must be an int > 0 or -1 (every model), got {n_grad!r}")
        if attack_class is not None and not callable(attack_class):
            raise TypeError(f"attack_class must be an attack class, got {attack_class!r}")
        self.trainloader, self.n_grad, self.verbose = trainloader, n_grad, verbose
        self.order = "shuffle"
        self.attack_class = attack_class
        self.kwargs_att = kwargs
        self.supported_mode = ["default", "targeted"]
        self.list_models: list[torch.nn.Module] = []
        self.base_attack: Attack | None = None

    def collect_models(self) -> None:
        """Train the copy by SGD, keeping a copy of it after every ``1 / nb_models_epoch`` epoch."""
        model = self.model
        was_training = model.training
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.wd)
        batches = int(len(self.trainloader) / self.nb_models_epoch)  # type: ignore[arg-type]
        device = self.device
        for _ in range(self.epochs * self.nb_models_epoch):
            for inputs, targets in itertools.islice(self.trainloader, batches):  # type: ignore[call-overload]
                if device is not None:
                    inputs, targets = inputs.to(device), targets.to(device)
                if self.normalization_used is not None:
                    inputs = self.normalize(inputs)
                loss = functional.cross_entropy(model(inputs), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            sample = copy.deepcopy(model)
            if not was_training:
                sample.eval()
            self.list_models.append(sample)
        model.train(was_training)

    def load_models(self, list_models: list[torch.nn.Module]) -> None:
        if not isinstance(list_models, list):
            raise ValueError("list_models should be a list of pytorch models")
        self.list_models = list_models

    def save_models(self, path: str) -> None:
        if not self.list_models:
            raise RuntimeError("Call collect_models() before saving collected models.")
        os.makedirs(path, exist_ok=True)
        for index, model in enumerate(self.list_models):
            torch.save({"state_dict": model.state_dict()}, os.path.join(path, f"lgv_model_{index:05}.pt"))

    def __call__(self, inputs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if not self.list_models:  # training needs the gradients the attack's guard freezes
            if self.verbose:
                print(f"Phase 1: collect models for {self.epochs} epochs")
            self.collect_models()
            if not self.list_models:
                raise ValueError("LGV collected no model: epochs and nb_models_epoch must be >= 1")
        return super().__call__(inputs, labels)

    def forward(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.base_attack is None:
            if self.attack_class is None:
                self.attack_class = BIM
            if self.verbose:
                print(f"Phase 2: craft adversarial examples with {self.attack_class.__name__}")
            models = [
                model.to(self.device) if self.device is not None else model for model in self.list_models
            ]
            pair = self._normalize_pair()
            ensemble = _LightEnsemble(models, self.n_grad, pair).eval()
            self.base_attack = self.attack_class(model=ensemble, **self.kwargs_att)
        attack = self.base_attack
        assert attack is not None
        attack.set_model_training_mode(self._model_training, self._batchnorm_training, self._dropout_training)
        if self.attack_mode == "targeted(least-likely)":
            attack.set_mode_targeted_least_likely(kth_min=self._kth_min)
        elif self.attack_mode == "targeted(random)":
            attack.set_mode_targeted_random()
        elif self.attack_mode == "targeted(label)":
            attack.set_mode_targeted_by_label()
        elif self.attack_mode == "targeted(custom)":
            assert callable(self._target_map_function)
            attack.set_mode_targeted_by_function(self._target_map_function)
        else:
            attack.set_mode_default()
        result: torch.Tensor = attack(images, labels)
        return result
