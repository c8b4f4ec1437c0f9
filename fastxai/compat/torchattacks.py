"""torchattacks-shaped classes on fastxai's fused attacks: change the import, keep the code.

    from fastxai.compat import torchattacks as ta
    atk = ta.PGD(model, eps=8/255, alpha=2/255, steps=10, random_start=True)
    x_adv = atk(x, y)

The classes take torchattacks 3.5's constructor arguments and share its ``Attack`` API
(``supported_mode``, ``get_mode``, the ``set_mode_*`` family, ``set_normalization_used``,
``set_model_training_mode``, ``set_device``, ``get_logits``, ``save``/``load``; see
``fastxai.compat._torchattacks_attack`` for the few deliberate differences, chiefly that
inputs outside [0, 1] are refused rather than clamped). Deterministic attacks (PGD without
random start, FGSM, BIM, MI-FGSM, DeepFool, FAB) return torchattacks' adversarial examples to
float tolerance. Options of torchattacks that are not implemented here raise
NotImplementedError naming them rather than being ignored.
"""

from __future__ import annotations

from fastxai.compat._torchattacks_attack import Attack
from fastxai.compat._torchattacks_autoattack import APGD, APGDT, FAB, AutoAttack, DeepFool, Square
from fastxai.compat._torchattacks_gradient import BIM, CW, FGSM, MIFGSM, PGD, PGDL2
from fastxai.compat._torchattacks_iterative import (
    EOTPGD,
    FFGSM,
    GN,
    PGDRS,
    PGDRSL2,
    RFGSM,
    TPGD,
    UPGD,
    VANILA,
    Jitter,
)
from fastxai.compat._torchattacks_lgv import LGV as LGV
from fastxai.compat._torchattacks_multiattack import MultiAttack as MultiAttack
from fastxai.compat._torchattacks_sparse import (
    EADEN,
    EADL1,
    JSMA,
    SPSA,
    OnePixel,
    Pixle,
    SparseFool,
)
from fastxai.compat._torchattacks_transfer import (
    DIFGSM,
    NIFGSM,
    PIFGSM,
    PIFGSMPP,
    SINIFGSM,
    TIFGSM,
    VMIFGSM,
    VNIFGSM,
)

# Attacks in __all__; wrappers of other attacks in __wrapper__, as torchattacks lists them
# (``ta.MultiAttack`` and ``ta.LGV`` are attributes like any class; ``import *`` takes the attacks).
__all__ = [
    "APGD",
    "APGDT",
    "BIM",
    "CW",
    "DIFGSM",
    "EADEN",
    "EADL1",
    "EOTPGD",
    "FAB",
    "FFGSM",
    "FGSM",
    "GN",
    "JSMA",
    "MIFGSM",
    "NIFGSM",
    "PGD",
    "PGDL2",
    "PGDRS",
    "PGDRSL2",
    "PIFGSM",
    "PIFGSMPP",
    "RFGSM",
    "SINIFGSM",
    "SPSA",
    "TIFGSM",
    "TPGD",
    "UPGD",
    "VANILA",
    "VMIFGSM",
    "VNIFGSM",
    "Attack",
    "AutoAttack",
    "DeepFool",
    "Jitter",
    "OnePixel",
    "Pixle",
    "SparseFool",
    "Square",
]
__wrapper__ = ["LGV", "MultiAttack"]
