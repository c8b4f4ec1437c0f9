"""Poisoning and backdoors: planting a trigger in a training set, and finding it again.

- triggers and poisoning: ``patch_trigger`` (BadNets), ``blend_trigger``, ``apply_trigger``,
  ``poison_dataset``, ``attack_success_rate``;
- finding the poisoned training items: ``activation_clustering`` (Chen et al. 2018),
  ``spectral_signatures`` (Tran et al. 2018), scored by ``precision_recall``;
- finding the trigger: ``trigger_localisation`` (SentiNet-like, from attributions) and
  ``neural_cleanse`` (Wang et al. 2019, reverse-engineered triggers and their anomaly index).
"""

from fastxai.backdoor.detection import (
    ClusteringResult,
    SpectralResult,
    activation_clustering,
    precision_recall,
    spectral_signatures,
)
from fastxai.backdoor.localisation import LocalisationResult, trigger_localisation
from fastxai.backdoor.neural_cleanse import NeuralCleanseResult, anomaly_index, neural_cleanse
from fastxai.backdoor.poisoning import PoisonedData, attack_success_rate, poison_dataset
from fastxai.backdoor.triggers import Trigger, apply_trigger, blend_trigger, patch_trigger

__all__ = [
    "ClusteringResult",
    "LocalisationResult",
    "NeuralCleanseResult",
    "PoisonedData",
    "SpectralResult",
    "Trigger",
    "activation_clustering",
    "anomaly_index",
    "apply_trigger",
    "attack_success_rate",
    "blend_trigger",
    "neural_cleanse",
    "patch_trigger",
    "poison_dataset",
    "precision_recall",
    "spectral_signatures",
    "trigger_localisation",
]
