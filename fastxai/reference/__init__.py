"""Pure-PyTorch reference implementations: the oracle every backend is tested against."""

from fastxai.reference.ops import (
    gaussian_perturb,
    moment_accumulate,
    path_points,
    pgd_step,
    weighted_path_accumulate,
)
from fastxai.reference.philox import philox4x32_10, philox_normal

__all__ = [
    "gaussian_perturb",
    "moment_accumulate",
    "path_points",
    "pgd_step",
    "philox4x32_10",
    "philox_normal",
    "weighted_path_accumulate",
]
