"""Input-transformation defences, their detector, and what the honest evaluation needs.

Feature squeezing (bit depth, median; Xu et al. 2018) with its detector, JPEG-like compression
and randomised resizing / padding (Xie et al. 2018), each as a model wrapper whose ``bpda=True``
gives BPDA's straight-through gradient (Athalye et al. 2018); the attacks' ``eot_samples=``
averages gradients over a random defence's draws (EOT).

>>> defended = fastxai.BitDepthReduction(model, bits=1)
>>> naive = fastxai.pgd(defended, x, y, eps=0.1)
>>> adaptive = fastxai.pgd(fastxai.BitDepthReduction(model, bits=1, bpda=True), x, y, eps=0.1)
"""

from fastxai.defences._defended import InputTransformDefence, straight_through
from fastxai.defences.jpeg import JpegCompression, jpeg_compress
from fastxai.defences.randomisation import RandomResizePad, random_resize_pad
from fastxai.defences.squeezing import BitDepthReduction, MedianSmoothing, median_smooth, reduce_bit_depth
from fastxai.defences.squeezing_detector import SqueezingDetector, fit_squeezing_detector, squeezing_scores

__all__ = [
    "BitDepthReduction",
    "InputTransformDefence",
    "JpegCompression",
    "MedianSmoothing",
    "RandomResizePad",
    "SqueezingDetector",
    "fit_squeezing_detector",
    "jpeg_compress",
    "median_smooth",
    "random_resize_pad",
    "reduce_bit_depth",
    "squeezing_scores",
    "straight_through",
]
