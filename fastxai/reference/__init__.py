"""Pure-PyTorch reference implementations: the oracle every backend is tested against."""

from fastxai.reference.lrp import lrp_divide, lrp_product
from fastxai.reference.ops import (
    gaussian_perturb,
    moment_accumulate,
    path_points,
    pgd_step,
    weighted_path_accumulate,
)
from fastxai.reference.perturbation import masked_blend, occlude
from fastxai.reference.philox import philox4x32_10, philox_normal
from fastxai.reference.rescale import relu_rescale, rescale_backward

__all__ = [
    "gaussian_perturb",
    "lrp_divide",
    "lrp_product",
    "masked_blend",
    "moment_accumulate",
    "occlude",
    "path_points",
    "pgd_step",
    "philox4x32_10",
    "philox_normal",
    "relu_rescale",
    "rescale_backward",
    "weighted_path_accumulate",
]
