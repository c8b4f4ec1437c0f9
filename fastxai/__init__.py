"""fastxai: fast, verified explainability and robustness for PyTorch.

>>> import fastxai as fx
>>> a = fx.integrated_gradients(model, x, target=y, n_steps=32)
>>> fx.backends()
"""

from fastxai import certify, evaluation, global_views, lrp, ops
from fastxai._backends import BackendInfo, backends, get_backend, set_backend, use_backend
from fastxai._output import select_output
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
from fastxai.attribution import (
    CamLayer,
    cam,
    cam_layer,
    deconvnet,
    expected_gradients,
    feature_ablation,
    grad_cam,
    grad_cam_plus_plus,
    gradient_shap,
    guided_backprop,
    guided_grad_cam,
    hires_cam,
    input_x_gradient,
    integrated_gradients,
    kernel_shap,
    layer_cam,
    lime,
    occlusion,
    saliency,
    score_cam,
    shapley_value_sampling,
    smoothgrad,
    xgrad_cam,
)
from fastxai.certify import (
    certified_accuracy,
    lipschitz_bound,
    lipschitz_radius,
    smoothing_certify,
    smoothing_predict,
)
from fastxai.global_views import activation_maximisation, neuron_importance, tcav, train_cav
from fastxai.lrp import rules
from fastxai.runner import attribute_dataset, load_attributions

__version__ = "0.1.0"

__all__ = [
    "BackendInfo",
    "CamLayer",
    "__version__",
    "activation_maximisation",
    "adversarial_training_step",
    "apgd",
    "attribute_dataset",
    "backends",
    "bim",
    "cam",
    "cam_layer",
    "certified_accuracy",
    "certify",
    "cw_l2",
    "deconvnet",
    "evaluation",
    "expected_gradients",
    "feature_ablation",
    "fgsm",
    "get_backend",
    "global_views",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient_shap",
    "guided_backprop",
    "guided_grad_cam",
    "hires_cam",
    "input_x_gradient",
    "integrated_gradients",
    "jsma",
    "kernel_shap",
    "layer_cam",
    "lime",
    "lipschitz_bound",
    "lipschitz_radius",
    "load_attributions",
    "lrp",
    "mifgsm",
    "neuron_importance",
    "occlusion",
    "ops",
    "pgd",
    "robust_accuracy",
    "rules",
    "saliency",
    "score_cam",
    "select_output",
    "set_backend",
    "shapley_value_sampling",
    "smoothgrad",
    "smoothing_certify",
    "smoothing_predict",
    "tcav",
    "train_cav",
    "train_substitute",
    "transfer_attack",
    "use_backend",
    "xgrad_cam",
]
