"""Triton implementations of the fused ops in ``fastxai.reference.ops``.

Same signatures and results as the references (noise included: the Philox 4x32-10 counters
and Box-Muller mapping of ``fastxai.reference.philox``), for float32, float16 and bfloat16
inputs that ``fastxai.ops`` has validated and made contiguous. Runs on CUDA GPUs, or on the
CPU when ``TRITON_INTERPRET=1`` is set before Python starts. Imported only when the
``triton`` backend is selected.

Kernels are launched with ``enable_fp_fusion=False``: ``a * b + c`` is rounded twice, as in
the reference's separate multiply and add, so the non-random ops match it bit for bit and the
noise differs only by the libm's ``log``/``sin``/``cos`` (precise libdevice versions on CUDA).
"""

from .gaussian_perturb import gaussian_perturb
from .lrp_divide import lrp_divide
from .lrp_product import lrp_product
from .masked_blend import masked_blend
from .moment_accumulate import moment_accumulate
from .occlude import occlude
from .path_points import path_points
from .pgd_step import pgd_step
from .rescale_backward import rescale_backward
from .weighted_path_accumulate import weighted_path_accumulate

__all__ = [
    "gaussian_perturb",
    "lrp_divide",
    "lrp_product",
    "masked_blend",
    "moment_accumulate",
    "occlude",
    "path_points",
    "pgd_step",
    "rescale_backward",
    "weighted_path_accumulate",
]
