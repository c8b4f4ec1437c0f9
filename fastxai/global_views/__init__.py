"""Global views: explanations of a model as a whole rather than of one prediction.

- ``activation_maximisation``: the inputs a class or a unit of a layer responds to most;
- ``neuron_importance``: per-unit activation statistics of a layer over a data set;
- ``tcav`` (with ``train_cav``): how much a class depends on a human concept, with a
  significance test against random concepts.
"""

from fastxai.global_views.activation_maximisation import MaximisationResult, activation_maximisation
from fastxai.global_views.cav import CAV, train_cav
from fastxai.global_views.neuron_importance import NeuronImportance, neuron_importance
from fastxai.global_views.tcav import TCAVResult, tcav

__all__ = [
    "CAV",
    "MaximisationResult",
    "NeuronImportance",
    "TCAVResult",
    "activation_maximisation",
    "neuron_importance",
    "tcav",
    "train_cav",
]
