"""Global views: explanations of a model as a whole rather than of one prediction.

- ``activation_maximisation``: the inputs a class or a unit of a layer responds to most;
- ``neuron_importance``: per-unit activation statistics of a layer over a data set;
- ``tcav`` (with ``train_cav``): how much a class depends on a human concept, with a
  significance test against random concepts;
- ``network_dissection`` (with ``concept_dataset``): each unit of a conv layer labelled with the
  concept its activation maps segment best;
- ``feature_inversion``: the inputs a layer's representation of an input cannot tell apart
  from it;
- ``layer_activations``: a layer's output for a batch (activation maps for pictures).
"""

from fastxai.global_views.activation_maximisation import MaximisationResult, activation_maximisation
from fastxai.global_views.activations import layer_activations
from fastxai.global_views.cav import CAV, train_cav
from fastxai.global_views.concepts import ConceptDataset, concept_dataset
from fastxai.global_views.dissection import Dissection, network_dissection
from fastxai.global_views.inversion import InversionResult, feature_inversion
from fastxai.global_views.neuron_importance import NeuronImportance, neuron_importance
from fastxai.global_views.tcav import TCAVResult, tcav

__all__ = [
    "CAV",
    "ConceptDataset",
    "Dissection",
    "InversionResult",
    "MaximisationResult",
    "NeuronImportance",
    "TCAVResult",
    "activation_maximisation",
    "concept_dataset",
    "feature_inversion",
    "layer_activations",
    "network_dissection",
    "neuron_importance",
    "tcav",
    "train_cav",
]
