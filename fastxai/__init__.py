"""fastxai: fast, verified explainability and robustness for PyTorch.

>>> import fastxai as fx
>>> a = fx.integrated_gradients(model, x, target=y, n_steps=32)
>>> fx.backends()
"""

from fastxai import ops
from fastxai._backends import BackendInfo, backends, get_backend, set_backend, use_backend
from fastxai.attacks import (
    adversarial_training_step,
    apgd,
    bim,
    cw_l2,
    fgsm,
    jsma,
    mifgsm,
    pgd,
    robust_accuracy,
    train_substitute,
    transfer_attack,
)
from fastxai.attribution import input_x_gradient, integrated_gradients, saliency, smoothgrad
from fastxai.runner import attribute_dataset, load_attributions

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "__version__",
    "adversarial_training_step",
    "apgd",
    "attribute_dataset",
    "backends",
    "bim",
    "cw_l2",
    "fgsm",
    "get_backend",
    "input_x_gradient",
    "integrated_gradients",
    "jsma",
    "load_attributions",
    "mifgsm",
    "ops",
    "pgd",
    "robust_accuracy",
    "saliency",
    "set_backend",
    "smoothgrad",
    "train_substitute",
    "transfer_attack",
    "use_backend",
]
