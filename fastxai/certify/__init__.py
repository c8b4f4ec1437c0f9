"""Robustness certificates: a sound Lipschitz bound with its certified radius, and randomized
smoothing (Cohen et al. 2019)."""

from fastxai.certify.lipschitz import lipschitz_bound, lipschitz_radius
from fastxai.certify.smoothing import (
    certified_accuracy,
    clopper_pearson_lower,
    smoothing_certify,
    smoothing_predict,
)

__all__ = [
    "certified_accuracy",
    "clopper_pearson_lower",
    "lipschitz_bound",
    "lipschitz_radius",
    "smoothing_certify",
    "smoothing_predict",
]
