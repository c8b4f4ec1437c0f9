"""Adversarial attacks on the fused PGD step, and robustness evaluation."""

from fastxai.attacks.gradient_attacks import bim, fgsm, mifgsm, pgd
from fastxai.attacks.robustness import robust_accuracy

__all__ = ["bim", "fgsm", "mifgsm", "pgd", "robust_accuracy"]
