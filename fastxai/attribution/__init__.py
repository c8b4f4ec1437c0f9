"""Attribution methods, written against ``fastxai.ops`` and never against a backend."""

from fastxai.attribution.attention_rollout import attention_flow, attention_rollout
from fastxai.attribution.cam_layer import CamLayer, cam_layer
from fastxai.attribution.class_activation import (
    cam,
    grad_cam,
    grad_cam_plus_plus,
    guided_grad_cam,
    hires_cam,
    layer_cam,
    xgrad_cam,
)
from fastxai.attribution.dataset_ablation import dataset_feature_ablation
from fastxai.attribution.deeplift import deeplift, deeplift_shap
from fastxai.attribution.exact_shapley import shapley_values
from fastxai.attribution.generation import explain_generation
from fastxai.attribution.gradient import input_x_gradient, saliency
from fastxai.attribution.gradient_shap import expected_gradients, gradient_shap
from fastxai.attribution.guided import deconvnet, guided_backprop
from fastxai.attribution.integrated_gradients import integrated_gradients
from fastxai.attribution.layer_conductance import layer_conductance
from fastxai.attribution.lemna import lemna
from fastxai.attribution.lime import lime
from fastxai.attribution.permutation import feature_permutation
from fastxai.attribution.perturbation import feature_ablation, occlusion
from fastxai.attribution.score_cam import score_cam
from fastxai.attribution.shapley import kernel_shap, shapley_value_sampling
from fastxai.attribution.smoothgrad import smoothgrad

__all__ = [
    "CamLayer",
    "attention_flow",
    "attention_rollout",
    "cam",
    "cam_layer",
    "dataset_feature_ablation",
    "deconvnet",
    "deeplift",
    "deeplift_shap",
    "expected_gradients",
    "explain_generation",
    "feature_ablation",
    "feature_permutation",
    "grad_cam",
    "grad_cam_plus_plus",
    "gradient_shap",
    "guided_backprop",
    "guided_grad_cam",
    "hires_cam",
    "input_x_gradient",
    "integrated_gradients",
    "kernel_shap",
    "layer_cam",
    "layer_conductance",
    "lemna",
    "lime",
    "occlusion",
    "saliency",
    "score_cam",
    "shapley_value_sampling",
    "shapley_values",
    "smoothgrad",
    "xgrad_cam",
]
