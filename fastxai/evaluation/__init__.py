"""Trust in explanations: faithfulness metrics, the randomisation sanity check, similarity of
explanations (fragility of explanations and adversarial detection, from attribution statistics or by
attribute steering, live beside them).

>>> from fastxai import evaluation as ev
>>> curve, auc = ev.deletion(model, x, attributions, target=y, replacement="blur")
"""

from fastxai.evaluation import similarity
from fastxai.evaluation.detection import (
    AttributionDetector,
    attribution_features,
    auroc,
    fit_attribution_detector,
)
from fastxai.evaluation.faithfulness import (
    Curve,
    completeness_error,
    deletion,
    infidelity,
    insertion,
    random_attributions,
    replacement_values,
    sensitivity_max,
)
from fastxai.evaluation.fragility import (
    ExplanationConfig,
    FragilityReport,
    JointAttackReport,
    explanation_map,
    interpretation_attack,
    joint_attack,
)
from fastxai.evaluation.sanity import RandomizationStep, randomization_check
from fastxai.evaluation.similarity import cosine, rank_correlation, topk_intersection
from fastxai.evaluation.steering import SteeredDetector, fit_steered_detector, unit_attributions

__all__ = [
    "AttributionDetector",
    "Curve",
    "ExplanationConfig",
    "FragilityReport",
    "JointAttackReport",
    "RandomizationStep",
    "SteeredDetector",
    "attribution_features",
    "auroc",
    "completeness_error",
    "cosine",
    "deletion",
    "explanation_map",
    "fit_attribution_detector",
    "fit_steered_detector",
    "infidelity",
    "insertion",
    "interpretation_attack",
    "joint_attack",
    "random_attributions",
    "randomization_check",
    "rank_correlation",
    "replacement_values",
    "sensitivity_max",
    "similarity",
    "topk_intersection",
    "unit_attributions",
]
