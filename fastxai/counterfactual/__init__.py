"""Counterfactual explanations: the closest input with another prediction (Wachter et al. 2017)
and contrastive explanations, pertinent negatives and positives (CEM, Dhurandhar et al. 2018).
"""

from fastxai.counterfactual._core import CounterfactualResult
from fastxai.counterfactual.cem import cem
from fastxai.counterfactual.wachter import mad, wachter

__all__ = ["CounterfactualResult", "cem", "mad", "wachter"]
