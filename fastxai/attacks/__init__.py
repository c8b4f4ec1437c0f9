"""Adversarial attacks on the fused PGD step, and robustness evaluation."""

from fastxai.attacks.auto_pgd import apgd
from fastxai.attacks.carlini_wagner import cw_l2
from fastxai.attacks.gradient_attacks import bim, fgsm, mifgsm, pgd
from fastxai.attacks.jsma import jsma
from fastxai.attacks.robustness import robust_accuracy
from fastxai.attacks.training import adversarial_training_step
from fastxai.attacks.transfer import train_substitute, transfer_attack

__all__ = [
    "adversarial_training_step",
    "apgd",
    "bim",
    "cw_l2",
    "fgsm",
    "jsma",
    "mifgsm",
    "pgd",
    "robust_accuracy",
    "train_substitute",
    "transfer_attack",
]
