"""Occlusion (Zeiler & Fergus 2014) and feature ablation: the score drop when parts of the input
are replaced by a baseline, with Captum's semantics. Occlusion's copies are built by a fused op
(``ops.occlude``); feature ablation's by copying the inputs and writing each element's
baseline into the one copy that ablates it (``_perturbation.ablate``: exact, two PyTorch ops)."""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from fastxai import _backends, _graphs, _model, _precision
from fastxai._model import Model
from fastxai.attribution import _graphed_scores, _perturbation
from fastxai.attribution.integrated_gradients import check_baselines


def feature_ablation(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    baselines: float | torch.Tensor | None = None,
    feature_mask: torch.Tensor | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """Feature ablation: ``R_i = f_t(x) - f_t(x with group g(i) replaced by the baseline)``.

    Every element of a group gets the group's score drop (Captum's ``FeatureAblation``).
    ``feature_mask`` holds int group ids 0..M-1 ([*F] shared, [B, *F] per input, size-1 dims
    broadcast; None: every element its own group; -1: not a feature, kept as in the input,
    attribution 0); ``baselines``: None (0), a number, one input [*F] or [B, *F].
    ``forward_kwargs``: keyword arguments to the model, tensors with one row per example (an
    attention mask) repeated to each model batch of copies. Token ids [B, T] are ablated to
    ``baselines`` (an int: the replacement id; the model gets integer ids), words as groups
    of ``feature_mask``. Costs ``B * (M + 1)`` model evaluations, in batches of at most
    ``chunk_size``. ``backend`` is checked but has no work to choose: the copies are built by
    PyTorch ops on the inputs' device (see the module docstring). ``cuda_graph=True`` (inputs on
    a CUDA device): each model batch's build, forward and gather is one replayed CUDA graph
    (``_graphed_scores``; the copies picked by one select, the same values). ``dtype`` as in
    ``occlusion``: the copies in that dtype, the model under autocast, the drops in float32.

    inputs: [B, *F]; returns [B, *F] in the inputs' dtype (computed in float32; float for ids).

    >>> superpixels = torch.arange(16).view(4, 4).repeat_interleave(7, 0).repeat_interleave(7, 1)
    >>> a = fastxai.feature_ablation(model, x, target=y, feature_mask=superpixels)  # x: [B, 1, 28, 28]
    """
    floating = isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
    model, inputs, baselines = _perturbation.integer_inputs(model, inputs, baselines)
    model, x, target_t, chunk, kwargs = _perturbation.prepare(
        model, inputs, target, chunk_size, forward_kwargs
    )
    baseline = check_baselines(0.0 if baselines is None else baselines, x)
    mask, groups = _perturbation.check_feature_mask(feature_mask, x)
    mask, baseline, fixed = _perturbation.fixed_elements(mask, x, baseline)
    if backend is not None:
        _backends.check_choice(backend)
    model_dtype = _precision.check_dtype(dtype, x.device)
    graphed = _graphs.check_cuda_graph(cuda_graph, x, None)
    source, replacement = _perturbation.model_sources(x, baseline, model_dtype, floating)
    # copy 0 is the input itself, copy p ablates group p - 1
    with _model.inference_state(model):
        make = _graphed_scores.ablation_blocks if graphed else _perturbation.ablate
        scores, _ = _perturbation.perturbed_scores(
            model, source, target_t, groups + 1, make(source, replacement, mask), chunk,
            forward_kwargs=kwargs, cuda_graph=graphed, dtype=model_dtype,
        )  # fmt: skip
    drops = scores[:, :1] - scores[:, 1:]
    result = _perturbation.to_input_shape(drops, mask, x.shape)
    return _perturbation.zero_fixed(result, fixed).to(inputs.dtype)


def _check_window(
    name: str, value: object, features: tuple[int, ...], default: int | None = None
) -> tuple[int, ...]:
    """One size per feature dimension; with a ``default`` (strides) also None or one int for all."""
    if value is None and default is not None:
        return (default,) * len(features)
    if isinstance(value, int) and not isinstance(value, bool) and default is not None:
        value = (value,) * len(features)
    if not isinstance(value, (tuple, list)) or any(
        isinstance(v, bool) or not isinstance(v, int) for v in value
    ):
        raise TypeError(
            f"{name} must be a tuple of ints, one per feature dimension {features}, got {value!r}"
        )
    sizes = tuple(value)
    if len(sizes) != len(features):
        raise ValueError(
            f"{name} must have one entry per feature dimension of inputs {features} ({len(features)}), "
            f"got {sizes}"
        )
    if any(v < 1 for v in sizes):
        raise ValueError(f"{name} must hold sizes >= 1, got {sizes}")
    return sizes


def check_grid(
    inputs: torch.Tensor, sliding_window_shapes: object, strides: object, *, label: str = ""
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Occlusion's window shape and strides, validated against ``inputs`` [B, *F]; ``label``
    follows the argument names in errors (e.g. ``"[1]"`` for the second input of a tuple)."""
    features = tuple(inputs.shape[1:])
    if not features:
        raise ValueError(
            f"inputs{label} must have feature dimensions [B, *F] for occlusion, got {tuple(inputs.shape)}"
        )
    window = _check_window(f"sliding_window_shapes{label}", sliding_window_shapes, features)
    stride = _check_window(f"strides{label}", strides, features, default=1)
    if any(w > f for w, f in zip(window, features, strict=True)):
        raise ValueError(
            f"sliding_window_shapes{label} {window} must fit inside the input's features {features}"
        )
    if any(s > w and w < f for s, w, f in zip(stride, window, features, strict=True)):
        raise ValueError(
            f"strides{label} {stride} must be <= sliding_window_shapes{label} {window} in every dimension "
            "where the window is smaller than the input, else some elements are never occluded"
        )
    return window, stride


class _WindowGrid:
    """Captum's occlusion windows along each feature dimension ``d``: starts ``k * s_d`` for
    ``k = 0 .. ceil((F_d - w_d) / s_d)``, each clipped to the input, numbered row-major.

    When ``(F_d - w_d)`` is a multiple of ``s_d`` in every dimension no window is clipped and
    ``ops.occlude`` builds the copies; otherwise the input is cut into cells (elements covered
    by the same windows) and ``ops.masked_blend`` blanks the cells of each window.
    """

    def __init__(self, features: tuple[int, ...], window: tuple[int, ...], strides: tuple[int, ...]) -> None:
        self.features, self.window, self.strides = features, window, strides
        self.counts = [math.ceil((f - w) / s) + 1 for f, w, s in zip(features, window, strides, strict=True)]
        self.total = math.prod(self.counts)
        self.tiles = all((f - w) % s == 0 for f, w, s in zip(features, window, strides, strict=True))

    def cover(self, dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """[K_d, F_d]: 1 where window position k along ``dim`` covers element i."""
        starts = torch.arange(self.counts[dim], device=device) * self.strides[dim]
        index = torch.arange(self.features[dim], device=device)
        covered = (index >= starts[:, None]) & (index < starts[:, None] + self.window[dim])
        return covered.to(dtype)

    def cells(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Cell ids [*F] and, per dimension, which cells each window position covers [K_d, C_d]."""
        ids = torch.zeros(self.features, dtype=torch.int64, device=device)
        members = []
        for dim, size in enumerate(self.features):
            cover = self.cover(dim, device, dtype)  # [K, F_d]
            # elements with the same column of ``cover`` form one cell
            columns, cell_of = torch.unique(cover.T, dim=0, return_inverse=True)
            members.append(columns.T.contiguous())  # [K, C]
            shape = [1] * len(self.features)
            shape[dim] = size
            ids = ids * columns.shape[0] + cell_of.view(shape)
        return ids, members


def occlusion(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    sliding_window_shapes: tuple[int, ...],
    strides: int | tuple[int, ...] | None = None,
    baselines: float | torch.Tensor | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """Occlusion: ``R_i = mean over windows W containing i of f_t(x) - f_t(x with W := baseline)``.

    Windows of shape ``sliding_window_shapes`` (one size per feature dim) start at multiples of
    ``strides`` (an int or one per dim; None: 1) along each dim, ``ceil((F_d - w_d) / s_d) + 1``
    positions, the last ones clipped to the input: Captum's ``Occlusion`` grid, which needs
    ``s_d <= w_d`` wherever ``w_d < F_d`` so that every element is covered. ``baselines``:
    None (0), a number, one input [*F] or [B, *F]. ``forward_kwargs`` as in ``feature_ablation``
    (token ids: windows of ``(w,)`` tokens replaced by the id ``baselines``). Costs
    ``B * (windows + 1)`` model evaluations.

    inputs: [B, *F]; returns [B, *F] in the inputs' dtype (computed in float32).

    ``dtype=torch.bfloat16`` (or ``torch.float16``): the copies are built in that dtype (token
    ids stay exact) and the model scores them under autocast; the score drops and their means
    are float32 (``fastxai._precision``). A drop smaller than the scores' half-precision spacing
    (``2**-8`` of their magnitude for bfloat16) is lost: the README's "bf16" table measures it.
    ``cuda_graph=True`` (inputs on a CUDA device): each model batch's build, forward and gather
    is one replayed CUDA graph (``_graphed_scores``; the copies are the same values).

    >>> a = fastxai.occlusion(model, x, target=y, sliding_window_shapes=(3, 8, 8), strides=(3, 4, 4))
    """
    floating = isinstance(inputs, torch.Tensor) and inputs.is_floating_point()
    model, inputs, baselines = _perturbation.integer_inputs(model, inputs, baselines)
    model, x, target_t, chunk, kwargs = _perturbation.prepare(
        model, inputs, target, chunk_size, forward_kwargs
    )
    features = tuple(x.shape[1:])
    window, stride = check_grid(x, sliding_window_shapes, strides)
    baseline = check_baselines(0.0 if baselines is None else baselines, x)
    if backend is not None:
        _backends.check_choice(backend)
    model_dtype = _precision.check_dtype(dtype, x.device)
    graphed = _graphs.check_cuda_graph(cuda_graph, x, None)
    ends = _perturbation.model_sources(x, baseline, model_dtype, floating)
    grid = _WindowGrid(features, window, stride)
    dtype = _perturbation.compute_dtype(x)
    perturb: _perturbation.Perturb
    if grid.tiles and not graphed:
        fused = _perturbation.FusedOp("occlude", backend)
        window_list, stride_list = list(window), list(stride)

        def occlude(p0: int, p1: int, r0: int, r1: int) -> torch.Tensor:
            # copy 0 is the input itself; copy p occludes window p - 1
            first, (source, replacement) = max(p0, 1), ends
            occluded = fused(
                source[r0:r1], replacement[r0:r1], window_list, stride_list, first - 1, p1 - first,
                copy_major=True,
            )  # fmt: skip
            return occluded if p0 > 0 else torch.cat([source[r0:r1].unsqueeze(0), occluded])

        perturb = occlude

    else:
        cell_ids, members = grid.cells(x.device, dtype)
        cell_counts = [member.shape[1] for member in members]

        def kept_cells(copies: torch.Tensor) -> torch.Tensor:
            """Which cells the copies of indices ``copies`` [P'] keep, [1, P', C] (copy p occludes
            window p - 1): tensor ops alone, so a CUDA graph computes them too."""
            positions = copies - 1
            occluded = torch.ones(copies.shape[0], *([1] * len(members)), dtype=dtype, device=x.device)
            remaining = positions.clamp(min=0)
            for dim in reversed(range(len(members))):
                k = remaining % grid.counts[dim]
                remaining = remaining // grid.counts[dim]
                shape = [copies.shape[0]] + [1] * len(members)
                shape[dim + 1] = cell_counts[dim]
                occluded = occluded * members[dim][k].view(shape)
            occluded = occluded.reshape(copies.shape[0], -1) * (positions >= 0).to(dtype).view(-1, 1)
            return (1 - occluded).unsqueeze(0)

        if graphed:  # tiles: each element the input's or the baseline's, as ops.occlude copies
            blend = None if grid.tiles else functools.partial(_perturbation.FusedOp("masked_blend", backend),
                                                               copy_major=True)  # fmt: skip
            perturb = _graphed_scores.group_blocks(*ends, cell_ids, kept_cells, blend)
        else:

            def keep(p0: int, p1: int, r0: int, r1: int) -> torch.Tensor:
                return kept_cells(torch.arange(p0, p1, device=x.device)).expand(r1 - r0, -1, -1)

            perturb = _perturbation.blend(*ends, cell_ids, keep, backend)

    with _model.inference_state(model):
        scores, _ = _perturbation.perturbed_scores(
            model, ends[0], target_t, grid.total + 1, perturb, chunk, first_is_input=True,
            forward_kwargs=kwargs, cuda_graph=graphed, dtype=model_dtype,
        )  # fmt: skip
    drops = scores[:, :1] - scores[:, 1:]  # [B, K] over the window grid, row-major
    spread = _spread(features, window, stride, x.device, dtype)
    if isinstance(spread, torch.Tensor):
        return (drops @ spread).view(x.shape).to(inputs.dtype)
    covers, windows_per_element = spread
    total = drops.view(x.shape[0], *grid.counts)
    for cover in covers:
        total = torch.tensordot(total, cover, dims=([1], [0]))  # contracts K_d, appends F_d
    return (total / windows_per_element).to(inputs.dtype)


_DENSE_SPREAD_ELEMENTS = 1 << 20
"""Largest windows x elements matrix ``_spread`` builds (4 MiB in float32); larger grids
contract one dimension at a time."""


@functools.lru_cache(maxsize=32)
def _spread(
    features: tuple[int, ...],
    window: tuple[int, ...],
    strides: tuple[int, ...],
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor | tuple[list[torch.Tensor], torch.Tensor]:
    """How window drops [B, K] become per-element means [B, *F]; computed once per grid
    (read-only, never handed to users).

    Per dimension, which window positions cover each element (``cover_d`` [K_d, F_d]), and how
    many windows cover each element [*F]. Small grids get the whole map as one matrix [K, F]
    (the outer product of the covers over the counts): one matrix product instead of a
    contraction per dimension.
    """
    grid = _WindowGrid(features, window, strides)
    covers = [grid.cover(dim, device, dtype) for dim in range(len(features))]
    windows_per_element = torch.ones((), dtype=dtype, device=device)
    for cover in covers:
        windows_per_element = windows_per_element.unsqueeze(-1) * cover.sum(0)
    if grid.total * math.prod(features) > _DENSE_SPREAD_ELEMENTS:
        return covers, windows_per_element
    dense = torch.ones((), dtype=dtype, device=device)
    for cover in covers:  # [K_1.., F_1..] -> [K_1.., K_d, F_1.., F_d]
        k, f = dense.dim() // 2, cover.shape
        dense = dense.unsqueeze(k).unsqueeze(-1) * cover.view(*([1] * k), f[0], *([1] * k), f[1])
    return dense.reshape(grid.total, -1) / windows_per_element.reshape(1, -1)
