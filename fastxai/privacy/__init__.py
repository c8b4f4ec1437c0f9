"""Privacy attacks: what a trained model gives away about its training data.

- ``model_inversion``: MI-Face (Fredrikson et al. 2015), a class representative reconstructed
  from the model's gradients or, with ``gradient="estimate"``, from its outputs alone;
- ``inversion_scores``: how recognisable the reconstructions are to a separately trained model,
  and how close they come to the class means.
"""

from fastxai.privacy.inversion import InversionResult, InversionScores, inversion_scores, model_inversion

__all__ = ["InversionResult", "InversionScores", "inversion_scores", "model_inversion"]
