"""Counterfactual explanations: what would have to change for the model to decide otherwise.

- ``wachter``: the closest input with another prediction (Wachter et al. 2017), L1, L2 or
  elastic-net distance, a target class or any other, lambda raised until valid;
- ``cem``: the contrastive explanation method (Dhurandhar et al. 2018), pertinent negatives
  (what must be absent) and pertinent positives (what suffices), with an optional autoencoder;
- ``mad``: the median absolute deviation per feature, Wachter's scale for the L1 distance.

Both run one batched proximal-gradient search (``_core``) over all inputs at once, with the
box ``bounds`` enforced by the shrinkage-thresholding step.

>>> result = fastxai.wachter(model, x, distance="l1", bounds=(0.0, 1.0))
>>> result.counterfactuals[result.valid]
"""

from fastxai.counterfactual._core import CounterfactualResult
from fastxai.counterfactual.cem import cem
from fastxai.counterfactual.wachter import mad, wachter

__all__ = ["CounterfactualResult", "cem", "mad", "wachter"]
