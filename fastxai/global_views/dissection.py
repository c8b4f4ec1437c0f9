"""Network dissection (Bau et al. 2017): label each unit of a conv layer with the concept whose
pixel masks its thresholded activation maps overlap most."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional

from fastxai import _compile, _model, _precision
from fastxai._model import Model
from fastxai.global_views import _layers, activations
from fastxai.global_views.activations import InputAdapter
from fastxai.global_views.concepts import ConceptDataset, concept_dataset

_UPSAMPLED_ELEMENTS = 2**24
"""Mask elements gathered at once (64 MiB of float32): (image, unit) pairs per step are cut to fit."""


@dataclass(frozen=True)
class Dissection:
    """What ``network_dissection`` returns, for a layer of U units and K concepts.

    concepts: the K concept names; thresholds: T_u [U]; iou: IoU_{u,k} [U, K] float64;
    best: each unit's best concept [U] (int64); best_iou: its IoU [U]; labels: its name, one per
    unit; detectors: [U] bool, ``best_iou > iou_threshold`` (the units that count as detectors).
    """

    concepts: tuple[str, ...]
    thresholds: torch.Tensor
    iou: torch.Tensor
    best: torch.Tensor
    best_iou: torch.Tensor
    labels: tuple[str, ...]
    detectors: torch.Tensor

    def counts(self) -> dict[str, int]:
        """Detector units per concept (only the concepts with at least one)."""
        found: dict[str, int] = {}
        for unit in self.detectors.nonzero().flatten().tolist():
            found[self.labels[unit]] = found.get(self.labels[unit], 0) + 1
        return found


def _check_concepts(concepts: object) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """(images [N, ...], masks [N, K, H, W] bool, K names) from a ``ConceptDataset`` or a tuple
    ``(images, masks)`` / ``(images, masks, names)``."""
    if isinstance(concepts, ConceptDataset):
        images, masks, names = concepts.images, concepts.masks, tuple(concepts.names)
    elif isinstance(concepts, tuple) and len(concepts) in (2, 3):
        images, masks = concepts[0], concepts[1]
        if not isinstance(masks, torch.Tensor):
            raise TypeError(f"concepts masks must be a torch.Tensor, got {type(masks).__name__}")
        names = (
            tuple(concepts[2]) if len(concepts) == 3 else tuple(f"concept {k}" for k in range(masks.shape[1]))
        )
    else:
        raise TypeError(
            "concepts must be None, a ConceptDataset or a tuple (images, masks[, names]), "
            f"got {type(concepts).__name__}"
        )
    _model.check_inputs(images)
    if masks.dim() != 4 or masks.shape[0] != images.shape[0] or masks.shape[1] < 1:
        raise ValueError(
            f"concepts masks must be [N, K, H, W] with N = {images.shape[0]} (one per image), "
            f"got shape {tuple(masks.shape)}"
        )
    if masks.dtype != torch.bool:
        if masks.is_complex() or not bool(((masks == 0) | (masks == 1)).all()):
            raise ValueError("concepts masks must be bool (or hold only 0 and 1)")
        masks = masks.bool()
    if len(names) != masks.shape[1] or not all(isinstance(name, str) for name in names):
        raise ValueError(f"concepts names must be {masks.shape[1]} strings (one per mask), got {names!r}")
    return images, masks, names


def top_quantile_thresholds(maps: torch.Tensor, quantile: float) -> torch.Tensor:
    """``T_u`` with ``P(a_u > T_u) = quantile`` over every position of every image: the
    ``1 - quantile`` quantile of unit ``u``'s activations [N, U, *spatial] -> [U], linearly
    interpolated between order statistics (``torch.quantile``'s rule, without its size limit)."""
    values = maps.transpose(0, 1).reshape(maps.shape[1], -1).float()
    position = (1 - quantile) * (values.shape[1] - 1)
    low = math.floor(position)
    high = min(low + 1, values.shape[1] - 1)
    lower = values.kthvalue(low + 1, dim=1).values
    upper = values.kthvalue(high + 1, dim=1).values if high != low else lower
    return lower + (position - low) * (upper - lower)


def _overlap_counts(
    maps: torch.Tensor, thresholds: torch.Tensor, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums over the images of |M_u|, |L_k| and |M_u & L_k|: [U], [K], [U, K] in float64.

    ``M_u`` is the map upsampled (bilinear) to the masks' size and thresholded, ``S_u > T_u``.
    A bilinear value is a convex combination of map values, so a map whose largest value is at
    most ``T_u`` marks no pixel: only the (image, unit) pairs whose peak exceeds the threshold
    (a few percent of them at the paper's 0.5%) are upsampled, in blocks, and their overlaps
    with all K masks of their image are one batched product [a, K, P] @ [a, P, 1], added to
    their unit's row.
    """
    units, concepts = maps.shape[1], masks.shape[1]
    height, width = masks.shape[2:]
    positions = height * width
    concept_area = masks.sum((0, 2, 3)).to(device=maps.device, dtype=torch.float64)
    unit_area = torch.zeros(units, dtype=torch.float64, device=maps.device)
    intersection = torch.zeros(units, concepts, dtype=torch.float64, device=maps.device)
    pairs = (maps.flatten(2).amax(2) > thresholds.view(1, -1)).nonzero()  # [A, 2]: (image, unit)
    block = max(1, _UPSAMPLED_ELEMENTS // (concepts * positions))
    for start in range(0, pairs.shape[0], block):
        image, unit = pairs[start : start + block].unbind(1)
        upsampled = functional.interpolate(
            maps[image, unit].unsqueeze(1).float(), size=(height, width), mode="bilinear", align_corners=False
        )
        on = (upsampled.flatten(1) > thresholds[unit].view(-1, 1)).to(torch.float32)  # [a, P]
        labels = masks[image.to(masks.device)].to(device=maps.device, dtype=torch.float32).flatten(2)
        overlap = (labels @ on.unsqueeze(-1)).squeeze(-1)  # [a, K], exact: at most P < 2**24
        intersection.index_add_(0, unit, overlap.double())
        unit_area.index_add_(0, unit, on.sum(1, dtype=torch.float64))
    return unit_area, concept_area, intersection


def network_dissection(
    model: Model,
    concepts: ConceptDataset | tuple[torch.Tensor, ...] | None = None,
    *,
    layer: object,
    quantile: float = 0.005,
    iou_threshold: float = 0.04,
    input_adapter: InputAdapter | None = None,
    batch_size: int = 256,
    dtype: torch.dtype | None = None,
) -> Dissection:
    """Network dissection (Bau, Zhou, Khosla, Oliva, Torralba 2017, "Network Dissection:
    Quantifying Interpretability of Deep Visual Representations").

    For unit ``u`` of ``layer`` (channel ``u`` of its [N, U, h, w] output) over the concept
    images: the threshold ``T_u`` is the activation exceeded on a fraction ``quantile`` of all
    positions of all images (0.5% in the paper); each map ``A_u(x)`` is upsampled to the masks'
    size (bilinear) and thresholded, ``M_u(x) = S_u(x) > T_u``; against each concept ``k``'s
    masks ``L_k(x)``::

        IoU_{u,k} = sum_x |M_u(x) & L_k(x)| / sum_x |M_u(x) | L_k(x)|

    Each unit is labelled with its best concept; it counts as a detector when that IoU is above
    ``iou_threshold`` (0.04 in the paper). (The paper writes ``S_u >= T_u``; the strict test
    keeps a unit that never fires, whose threshold is its constant value, from marking every
    pixel.)

    concepts: a ``ConceptDataset`` (default: ``concept_dataset()``, synthetic shapes,
    intensities and textures at 32 x 32), or ``(images [N, ...], masks [N, K, H, W] bool[,
    names])``. input_adapter: applied to each batch of images before the model, e.g.
    ``lambda x: torch.nn.functional.interpolate(x, size=8, mode="area")`` for an 8 x 8 model.
    Activations of ``batch_size`` images per pass are kept (N x U x h x w floats) for the
    quantiles; the upsampling and the IoU counts are batched tensor operations over the maps
    that reach the threshold (``_overlap_counts``). The model is
    left as found. Returns a ``Dissection``. ``dtype=torch.bfloat16`` (or ``torch.float16``):
    the activation passes run under autocast in that dtype (``fastxai._precision``), the maps
    kept in float32; 8-bit activations tie more often at the threshold, so a few units' masks
    (and labels) can change (README "bf16").

    >>> result = fastxai.network_dissection(model, fastxai.concept_dataset(512), layer="4")
    >>> result.labels[:3], result.best_iou[:3], result.counts()
    """
    model = _compile.original(_model.check_model(model))  # hooked: a compiled model's module
    layer_module, layer_name = _layers.resolve_layer(model, layer)
    if concepts is None:
        concepts = concept_dataset()
    images, masks, names = _check_concepts(concepts)
    if isinstance(quantile, bool) or not isinstance(quantile, (int, float)) or not 0 < quantile < 1:
        raise ValueError(f"quantile must be a number in (0, 1), got {quantile!r}")
    if (
        not isinstance(iou_threshold, (int, float))
        or isinstance(iou_threshold, bool)
        or not 0 <= iou_threshold < 1
    ):
        raise ValueError(f"iou_threshold must be a number in [0, 1), got {iou_threshold!r}")
    adapter = activations.check_adapter(input_adapter)
    batch_size = activations.check_batch_size(batch_size)
    model_dtype = _precision.check_dtype(dtype, activations.model_device(model) or images.device)
    with _model.preserved_state(model):
        maps = activations.collect(
            model, layer_module, layer_name, images.detach(), batch_size, adapter, model_dtype
        )
    if maps.dim() != 4:
        raise ValueError(
            f"network dissection needs a layer with 2-d activation maps [N, units, h, w]; "
            f"layer {layer_name!r} outputs shape {tuple(maps.shape)}"
        )
    thresholds = top_quantile_thresholds(maps, float(quantile))
    unit_area, concept_area, intersection = _overlap_counts(maps, thresholds, masks)
    union = unit_area.view(-1, 1) + concept_area.view(1, -1) - intersection
    iou = torch.where(union > 0, intersection / union.clamp_min(1), torch.zeros_like(union))
    best_iou, best = iou.max(dim=1)
    return Dissection(
        concepts=names,
        thresholds=thresholds,
        iou=iou,
        best=best,
        best_iou=best_iou,
        labels=tuple(names[k] for k in best.tolist()),
        detectors=best_iou > iou_threshold,
    )
