"""Interpretable models and global surrogates by distillation.

- ``distill``: train an interpretable student on a model's soft labels
  (``alpha * L_soft + (1 - alpha) * L_hard``) and report its fidelity on held-out data;
- the students, usable on their own: ``fit_tree`` (a small CART for soft labels, with text
  rules), ``fit_sparse_linear`` (L1 multinomial logistic regression by FISTA) and
  ``fit_additive`` (the neural additive model of Agarwal et al. 2021, whose shape functions are
  the explanation; ``plot_shape_functions`` draws them).
"""

from fastxai.surrogate.additive import AdditiveModel, fit_additive, plot_shape_functions
from fastxai.surrogate.distill import Distillation, distill, fidelity
from fastxai.surrogate.linear import SparseLinear, fit_sparse_linear
from fastxai.surrogate.tree import DecisionTree, fit_tree

__all__ = [
    "AdditiveModel",
    "DecisionTree",
    "Distillation",
    "SparseLinear",
    "distill",
    "fidelity",
    "fit_additive",
    "fit_sparse_linear",
    "fit_tree",
    "plot_shape_functions",
]
