"""Adversarial attacks on the fused PGD step, and robustness evaluation."""

from fastxai.attacks.apgd_targeted import apgd_targeted
from fastxai.attacks.auto_pgd import apgd
from fastxai.attacks.autoattack import autoattack
from fastxai.attacks.carlini_wagner import cw_l2
from fastxai.attacks.deepfool import deepfool
from fastxai.attacks.fab import fab, fab_targeted
from fastxai.attacks.gradient_attacks import bim, fgsm, mifgsm, pgd
from fastxai.attacks.jsma import jsma
from fastxai.attacks.robustness import robust_accuracy
from fastxai.attacks.square import square_attack
from fastxai.attacks.training import adversarial_training_step
from fastxai.attacks.transfer import train_substitute, transfer_attack

__all__ = [
    "adversarial_training_step",
    "apgd",
    "apgd_targeted",
    "autoattack",
    "bim",
    "cw_l2",
    "deepfool",
    "fab",
    "fab_targeted",
    "fgsm",
    "jsma",
    "mifgsm",
    "pgd",
    "robust_accuracy",
    "square_attack",
    "train_substitute",
    "transfer_attack",
]
