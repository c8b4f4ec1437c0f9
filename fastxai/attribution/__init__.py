"""Attribution methods, written against ``fastxai.ops`` and never against a backend."""

from fastxai.attribution.gradient import input_x_gradient, saliency
from fastxai.attribution.integrated_gradients import integrated_gradients
from fastxai.attribution.smoothgrad import smoothgrad

__all__ = ["input_x_gradient", "integrated_gradients", "saliency", "smoothgrad"]
