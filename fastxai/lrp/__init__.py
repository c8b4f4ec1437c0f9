"""Layer-wise Relevance Propagation: ``fastxai.lrp(model, x, target=y, composite=...)``.

The package is callable: ``fastxai.lrp(...)`` is ``fastxai.lrp.lrp(...)``, and the parts sit
beside it: ``fastxai.lrp.rules`` (Epsilon, Gamma, AlphaBeta, ZPlus, ZBox, Flat, WSquare, Pass),
``fastxai.lrp.composites`` (named composites, ``Composite``), ``fastxai.lrp.conservation`` and
the ``MergeBatchNorm`` canonizer.

Hugging Face ``transformers`` models (and token ids, ``forward_kwargs``, ``layer=``) run on the
gradient engine (``engine="gradient"``: AttnLRP as a modified gradient, no tracing), other
models on the traced one (``engine="fx"``); see ``fastxai.lrp.lrp``.

>>> R = fastxai.lrp(model, x, target=y, composite="epsilon_plus_flat")
>>> R, layers = fastxai.lrp(model, x, target=y, return_layer_relevances=True)
>>> R = fastxai.lrp(bert, ids, target=y, forward_kwargs={"attention_mask": mask})  # [B, T]
"""

from __future__ import annotations

import sys
import types
from typing import Any

from fastxai.lrp import composites, rules
from fastxai.lrp._graph import UnsupportedLayerError
from fastxai.lrp.canonizers import MergeBatchNorm
from fastxai.lrp.composites import COMPOSITES, Composite, get_composite, register_composite
from fastxai.lrp.core import conservation, lrp


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return lrp(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = [
    "COMPOSITES",
    "Composite",
    "MergeBatchNorm",
    "UnsupportedLayerError",
    "composites",
    "conservation",
    "get_composite",
    "lrp",
    "register_composite",
    "rules",
]
