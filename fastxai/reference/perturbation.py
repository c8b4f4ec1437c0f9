"""Reference implementations of the perturbation ops: masked blends and sliding-window occlusion.

They build, in one tensor, the perturbed copies of a batch that feature ablation, KernelSHAP,
LIME, Shapley sampling (``masked_blend``) and occlusion (``occlude``) feed to the model.
Shapes: ``B`` the batch, ``F`` the feature dimensions of one input, ``P`` perturbations per
input, ``M`` feature groups. Callers (``fastxai.ops``) validate and pass contiguous tensors.
"""

from __future__ import annotations

import itertools
import math

import torch


def masked_blend(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    feature_mask: torch.Tensor,
    keep: torch.Tensor,
    *,
    copy_major: bool = False,
) -> torch.Tensor:
    """``out[b, p, i] = baselines[b, i] + keep[b, p, mask[i]] * (inputs[b, i] - baselines[b, i])``.

    inputs, baselines: [B, *F] (same dtype); feature_mask: int64 group ids in [0, M), shape
    [*F] (shared by the batch) or [B, *F]; keep: [B, P, M] float32 (float64 for float64 inputs),
    1 keeps the input, 0 takes the baseline, values in between interpolate. Returns
    [B, P, *F] in the inputs' dtype, computed in float32 (float64 for float64 inputs); with
    ``copy_major`` the same values as [P, B, *F] (``out[p, b]``: copy ``p`` of every input together).

    >>> x, base, mask = torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([0, 0, 1])
    >>> masked_blend(x, base, mask, torch.tensor([[[1.0, 0.0]]]))  # [[[1., 1., 0.]]]
    """
    compute_dtype = torch.float64 if inputs.dtype == torch.float64 else torch.float32
    batch, n_perturbations = keep.shape[0], keep.shape[1]
    features = math.prod(inputs.shape[1:])
    rows = batch if feature_mask.dim() == inputs.dim() else 1
    mask = feature_mask.reshape(rows, features).expand(batch, features)  # [B, prod(F)]
    index = mask.unsqueeze(1).expand(batch, n_perturbations, features)
    weight = torch.gather(keep.to(compute_dtype), 2, index)
    start = baselines.reshape(batch, 1, features).to(compute_dtype)
    step = inputs.reshape(batch, 1, features).to(compute_dtype) - start
    out = (start + weight * step).to(inputs.dtype)
    if copy_major:
        out = out.transpose(0, 1).contiguous()
        return out.reshape(n_perturbations, batch, *inputs.shape[1:])
    return out.reshape(batch, n_perturbations, *inputs.shape[1:])


def occlusion_positions(
    shape: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]
) -> list[int]:
    """Number of window positions along each feature dimension: ``(F_d - window_d) // strides_d + 1``."""
    return [(size - width) // stride + 1 for size, width, stride in zip(shape, window, strides, strict=True)]


def occlude(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    window: tuple[int, ...],
    strides: tuple[int, ...],
    start: int,
    count: int,
    *,
    copy_major: bool = False,
) -> torch.Tensor:
    """Copies of ``inputs`` with one window each replaced by ``baselines``: [B, *F] -> [B, count, *F],
    or [count, B, *F] with ``copy_major`` (``out[p, b]``: copy ``p`` of every input together).

    Along feature dimension ``d`` the window starts at ``k * strides[d]`` for ``k`` in
    ``0 .. (F_d - window[d]) // strides[d]`` and covers ``window[d]`` elements (Captum's
    ``Occlusion`` grid when the strides tile the input exactly; Captum adds a clipped window at
    the edge otherwise). Windows are numbered row-major over these positions; perturbation ``p``
    occludes window ``start + p``. Elements are copied, not computed: exact in every dtype.

    >>> occlude(torch.ones(1, 4), torch.zeros(1, 4), (2,), (2,), 0, 2)  # [[[0,0,1,1],[1,1,0,0]]]
    """
    features = tuple(inputs.shape[1:])
    counts = occlusion_positions(features, window, strides)
    repeats = (count, 1) if copy_major else (1, count)
    out = inputs.unsqueeze(0 if copy_major else 1).repeat(*repeats, *([1] * len(features)))
    positions = itertools.islice(itertools.product(*(range(n) for n in counts)), start, start + count)
    for p, position in enumerate(positions):
        box = [slice(k * s, k * s + w) for k, s, w in zip(position, strides, window, strict=True)]
        target: tuple[slice | int, ...] = (p, slice(None), *box) if copy_major else (slice(None), p, *box)
        source: tuple[slice, ...] = (slice(None), *box)
        out[target] = baselines[source]
    return out
