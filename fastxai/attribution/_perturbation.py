"""What the perturbation methods share: feature masks, seeds, and scoring perturbed copies in big batches.

A perturbation method asks the model for ``f_target`` at ``P`` perturbed copies of each of the
``B`` inputs. ``perturbed_scores`` lays those ``B * P`` copies out in model batches of at most
``chunk_size`` inputs (copy-major inside a batch: row ``b`` of copy ``p`` follows row ``b - 1``),
builds each batch with one fused op call and returns the scores ``[B, P]``. Extra model
arguments (``forward_kwargs``: an attention mask) go with every model batch, their per-example
tensors repeated to the copies it holds (``_rows.RowForward``).

Token ids are perturbed like any input (``integer_inputs``: a replacement id as the baseline,
the model called on integer copies). ``feature_mask`` ids of -1 mark elements that are no
feature (padding, special tokens): every copy keeps them as in the input and their
attribution is 0 (``fixed_elements``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import torch

from fastxai import _model, _precision, _scheduling, ops
from fastxai._model import Model
from fastxai._rows import RowForward, check_forward_kwargs
from fastxai.attribution._graphed_scores import Blocks, Scorer

Perturb = Callable[[int, int, int, int], torch.Tensor]
"""``perturb(p0, p1, r0, r1)``: the copies ``p0..p1`` of inputs ``r0..r1`` copy-major, [p1 - p0,
r1 - r0, *F]: the model batch itself (the fused ops write this layout, ``copy_major=True``)."""

KeepBlock = Callable[[int, int, int, int], torch.Tensor]
"""``keep(p0, p1, r0, r1)``: which groups each copy keeps, [r1 - r0, p1 - p0, M] (1 keeps the input)."""


def check_feature_mask(feature_mask: object, inputs: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Validated group ids as int64 on the inputs' device, [*F] (shared) or [B, *F], and M.

    Accepted: None (every element its own group), an integer tensor of shape [*F], or with
    inputs' number of dims and a first dim of 1 (shared) or B (per input). Dims of size 1
    broadcast, as in Captum (e.g. one superpixel map [1, 1, H, W] for all channels of
    [B, C, H, W]). The ids used must be exactly 0..M-1: a gap raises (Captum's FeatureAblation
    and Occlusion skip absent ids, its Lime/KernelShap count max + 1 features; renumber with
    ``torch.unique(mask, return_inverse=True)[1]``). Across a batch, that is: a per-input mask
    may leave ids out of some rows (a shorter sentence has fewer words); such a group changes
    nothing in those rows. An id of -1 marks an element that is no feature (see
    ``fixed_elements``); the returned mask keeps those -1.
    """
    features = inputs.shape[1:]
    if feature_mask is None:
        count = math.prod(features)
        return torch.arange(count, device=inputs.device).view(features), count
    if not isinstance(feature_mask, torch.Tensor):
        raise TypeError(
            f"feature_mask must be an integer torch.Tensor or None, got {type(feature_mask).__name__}"
        )
    if feature_mask.is_floating_point() or feature_mask.is_complex() or feature_mask.dtype == torch.bool:
        raise TypeError(f"feature_mask must hold integer group ids, got {feature_mask.dtype}")
    shape = tuple(feature_mask.shape)
    if feature_mask.dim() == inputs.dim() - 1:
        target_shape: tuple[int, ...] = tuple(features)
    elif feature_mask.dim() == inputs.dim() and shape[0] in (1, inputs.shape[0]):
        target_shape = (shape[0], *features)
    else:
        target_shape = ()
    fits = bool(target_shape) or inputs.dim() == 1
    if fits:
        fits = all(size in (1, full) for size, full in zip(shape, target_shape, strict=True))
    if not fits:
        raise ValueError(
            f"feature_mask must have shape {tuple(features)} or {(1, *features)} (shared) or "
            f"{(inputs.shape[0], *features)} (per input), size-1 dims broadcasting; got {shape}"
        )
    mask = feature_mask.to(device=inputs.device, dtype=torch.int64).expand(target_shape)
    if mask.dim() == inputs.dim() and mask.shape[0] == 1:
        mask = mask[0]
    mask = mask.contiguous()
    if mask.numel() == 0:
        raise ValueError("feature_mask is empty: inputs have no features")
    extremes = torch.aminmax(mask)
    low, groups = int(extremes.min), int(extremes.max) + 1
    if low < -1:
        raise ValueError(f"feature_mask ids must be >= 0 (or -1: not a feature), got {low}")
    if groups == 0:
        raise ValueError("feature_mask marks every element -1 (not a feature): there is nothing to attribute")
    used = mask.flatten()
    used = used[used >= 0] if low < 0 else used
    # more ids than elements leaves gaps for sure (and must not size a bincount)
    complete = groups <= used.numel() and bool(
        torch.zeros(groups, dtype=torch.bool, device=mask.device).index_fill_(0, used, True).all()
    )
    if not complete:
        missing = _first_missing([i for i in torch.unique(mask).tolist() if i >= 0], 5)
        raise ValueError(
            f"feature_mask ids must be 0..M-1 without gaps, but ids {missing} (of 0..{groups - 1}) are "
            "unused; renumber with torch.unique(feature_mask, return_inverse=True)[1]"
        )
    return mask, groups


def fixed_elements(
    mask: torch.Tensor, inputs: torch.Tensor, baselines: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Elements marked -1 in ``mask`` (``check_feature_mask``): no feature, kept as in the input.

    They join group 0 with the input itself as their baseline, so every copy, whatever it
    keeps of group 0, holds the input there (exactly: the copies take each element from the
    input or the baseline), and nothing the methods compute from the input and the baseline
    (LIME's distances) sees a change there. Returns the mask with ids >= 0, the baselines
    [B, *F], and where the fixed elements are (None when there are none; the methods set
    their attribution to 0 there). For text: -1 at padding and special tokens, so that a
    padded row's words are explained as the same sentence alone.
    """
    fixed = mask < 0
    if not bool(fixed.any()):
        return mask, baselines, None
    return mask.clamp(min=0), torch.where(fixed, inputs, baselines), fixed


def zero_fixed(values: torch.Tensor, fixed: torch.Tensor | None) -> torch.Tensor:
    """Attributions [B, *F] with 0 at the fixed elements (``fixed_elements``)."""
    return values if fixed is None else values.masked_fill(fixed, 0)


def _first_missing(used: list[int], count: int) -> list[int]:
    """The first ``count`` non-negative integers absent from the sorted ``used``."""
    missing: list[int] = []
    expected = 0
    for value in used:
        missing.extend(range(expected, min(value, expected + count - len(missing))))
        if len(missing) >= count:
            break
        expected = value + 1
    return missing


def check_seed(seed: object) -> int:
    if seed is None:
        return int(torch.randint(0, 2**62, ()).item())
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be None or an int in [0, 2**63), got {seed!r}")
    return seed


def check_count(name: str, value: object, minimum: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}{why}, got {value}")
    return value


def as_dtype(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``values.to(dtype)``, going through uint8 for a bool tensor: PyTorch's bool -> float
    conversion is not vectorised on the CPU (a [32, 200, 16] coalition tensor: 61 us, against
    8 us from the same bytes read as uint8)."""
    return values.view(torch.uint8).to(dtype) if values.dtype == torch.bool else values.to(dtype)


def generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def compute_dtype(inputs: torch.Tensor) -> torch.dtype:
    return torch.float64 if inputs.dtype == torch.float64 else torch.float32


def model_sources(
    inputs: torch.Tensor, baselines: torch.Tensor, dtype: torch.dtype | None, floating: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the perturbed copies are built from, in the precision the model runs in
    (``dtype=``, ``fastxai._precision``): the inputs and baselines [B, *F] rounded to ``dtype``
    once, so every copy (each element the input's, the baseline's or a blend of the two) is
    built and fed to the model in half precision (half the memory traffic). Unchanged for
    ``dtype=None`` and for token ids (``floating`` False: the float ids ``integer_inputs`` made,
    which half precision would not hold exactly past 256)."""
    if dtype is None or not floating:
        return inputs, baselines
    return inputs.to(dtype), baselines.to(dtype)


BUILD_ELEMENTS = 1 << 18
"""Elements of perturbed copies built by one fused-op call on the CPU (1 MiB in float32): the
copies of several model batches are built together, then scored batch by batch, so a small
model's per-batch Python and dispatch work is paid once per build, not once per batch. Not
larger: a build's buffers (the copies, their keep weights) come fresh from the allocator, and
past a few MiB that is memory mapped and page-faulted anew on every call; at 16 MiB the faults
cost Shapley sampling on a digits MLP (50k copies) about as much as the model (measured
1.2-2x slower than at 1 MiB on a loaded 2-core machine, one thread)."""


def _copies_per_build(batch: int, features: int, chunk: int, on_cuda: bool) -> int:
    """Copies of the whole batch built per fused call: a multiple of the copies per model batch.

    On CUDA, or when one copy of the batch exceeds a model batch, a build is one model batch
    (the CUDA chunk is sized to free memory, and an out-of-memory error halves it)."""
    if on_cuda or batch > chunk:
        return 0
    per_batch = chunk // batch
    return max(per_batch, BUILD_ELEMENTS // max(1, batch * features) // per_batch * per_batch)


def perturbed_scores(
    model: Model,
    inputs: torch.Tensor,
    target: torch.Tensor | None,
    n_perturbations: int,
    perturb: Perturb,
    chunk: int,
    *,
    first_is_input: bool = False,
    forward_kwargs: dict[str, Any] | None = None,
    cuda_graph: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``f_target`` at every perturbed copy: [B, P] in float32 (float64 for float64 inputs), and
    the per-input target indices [B].

    Copies are laid out copy-major in each model batch, so a batch of ``k * B`` rows holds
    ``k`` whole copies of the inputs (what per-example forward arguments expect). On the CPU
    the copies of several model batches are built by one ``perturb`` call (up to
    ``BUILD_ELEMENTS``) and scored in the same model batches as one call per batch would give.
    A given target's range is checked on the first model batch's output (no extra model call).
    ``target=None`` means the predicted class: read off copy 0 when ``first_is_input`` (copy 0
    is the input itself, exactly; the scheduler runs copy 0 of every row before any other copy
    of it), else from one extra forward pass over the inputs. ``forward_kwargs`` (checked by
    ``_rows.check_forward_kwargs``) go with every model call, per-example tensors cut to the
    batch's rows and repeated to its copies. ``cuda_graph`` (checked by
    ``_graphs.check_cuda_graph``; ``perturb`` then a ``_graphed_scores.Blocks``): every model
    batch after the first is built, scored and gathered by one replayed CUDA graph
    (``_graphed_scores``). ``dtype`` (checked by ``_precision.check_dtype``): every model call,
    the predicted class's and the graphed ones included, runs under autocast in that dtype; the
    scores are gathered from its output and kept in float32 (``model_sources`` makes the copies'
    sources). Run inside ``_model.inference_state`` (or ``preserved_state``).
    """
    batch, features = inputs.shape[0], inputs.shape[1:]
    model = _precision.autocast_model(model, dtype, inputs.device.type)  # itself for None
    predict = target is None and first_is_input
    forward = RowForward(model, (inputs,), (), forward_kwargs) if forward_kwargs else None
    if target is None and not first_is_input:
        if forward is None:
            target = _model.resolve_target(model, inputs, None, chunk)
        else:
            target = forward.resolve_target(None, chunk)
    indices = torch.empty(batch, dtype=torch.long, device=inputs.device) if target is None else target
    unchecked = [True]
    score_dtype = compute_dtype(inputs)
    blocks: list[torch.Tensor] = []  # the scores [P, B]: filled block by block, or the one block
    graphed = Scorer(model, perturb, n_perturbations, batch, forward) if cuda_graph else None
    # graphed: one model batch per block (as on CUDA), so every block has the captured shape
    per_build = 0 if graphed else _copies_per_build(batch, features.numel(), chunk, inputs.is_cuda)
    rows_per_pass = (chunk // batch) * batch if per_build else chunk

    def body(p0: int, p1: int, r0: int, r1: int) -> None:
        nonlocal indices
        rows, count = r1 - r0, p1 - p0
        if graphed is not None:
            if graphed.full is None:
                graphed.full = (count, rows)  # the first block: the fullest, and run eagerly
            elif not (predict and p0 == 0):  # the target checked; copy 0 read the prediction
                blocks[0][p0:p1, r0:r1] = graphed.score(p0, p1, r0, r1, indices).to(score_dtype)
                return
        flat = perturb(p0, p1, r0, r1).view(count * rows, *features)
        outputs = []
        for start in range(0, flat.shape[0], rows_per_pass):
            part = flat[start : start + rows_per_pass]  # whole copies of rows r0..r1
            if forward is None:
                outputs.append(_model.outputs(model, part))
            else:
                call, head = forward.bound(slice(r0, r1), part.shape[0] // rows, (part,))
                outputs.append(_model.outputs(call, head))
            if unchecked[0]:  # the target against the output's shape [B, *O]: as flat indices
                checked = _model.flat_target(None if predict else indices, outputs[0].shape[1:])
                indices = indices if checked is None else checked
                unchecked[0] = False
        output = (torch.cat(outputs) if len(outputs) > 1 else outputs[0]).reshape(count, rows, -1)
        if predict and p0 == 0:
            indices[r0:r1] = output[0].argmax(dim=1)
        picked = output.gather(2, indices[r0:r1].view(1, rows, 1).expand(count, rows, 1)).view(count, rows)
        if count == n_perturbations and rows == batch:
            blocks.append(picked.to(score_dtype))
            return
        if not blocks:
            blocks.append(torch.empty(n_perturbations, batch, dtype=score_dtype, device=inputs.device))
        blocks[0][p0:p1, r0:r1] = picked

    with torch.no_grad():
        _scheduling.for_each_block(
            n_perturbations, batch, per_build * batch or chunk, body, halve_on_oom=inputs.is_cuda
        )
    if not blocks:  # no perturbations
        blocks.append(torch.empty(n_perturbations, batch, dtype=score_dtype, device=inputs.device))
    return blocks[0].T, indices


class FusedOp:
    """A fused op of ``fastxai.ops`` called once per block of copies, straight to the
    implementation its backend choice resolves to (``ops._unchecked``, resolved on the first
    call), without the public op's argument checks: the perturbation methods build every
    argument themselves from validated inputs (contiguous, keep as float32 / float64, window
    and strides as lists, group ids 0..M-1), and the native ops check shapes again in C++.
    For a digits-size model those Python checks cost 5-10% of the whole forward work.
    """

    def __init__(self, name: str, backend: str | None) -> None:
        self.name, self.backend = name, backend
        self.fast: Callable[..., torch.Tensor] | None = None

    def __call__(self, *args: Any, **options: Any) -> torch.Tensor:
        if self.fast is None:
            self.fast = ops._unchecked(self.name, self.backend, args[0])
        return self.fast(*args, **options)


def blend(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    mask: torch.Tensor,
    keep: KeepBlock,
    backend: str | None,
) -> Blocks:
    """A ``Perturb`` that builds copies with ``ops.masked_blend`` (copy-major) from a block of keep
    weights; as ``Blocks`` (the blend is the build), so a CUDA graph can capture it."""
    per_input = mask.dim() == inputs.dim()
    dtype = compute_dtype(inputs)
    inputs, baselines, mask = inputs.contiguous(), baselines.contiguous(), mask.contiguous()
    fused = functools.partial(FusedOp("masked_blend", backend), copy_major=True)

    def arguments(p0: int, p1: int, r0: int, r1: int) -> tuple[torch.Tensor, ...]:
        rows_mask = mask[r0:r1] if per_input else mask
        return inputs[r0:r1], baselines[r0:r1], rows_mask, keep(p0, p1, r0, r1).to(dtype).contiguous()

    return Blocks(arguments, fused)


def ablate(inputs: torch.Tensor, baselines: torch.Tensor, mask: torch.Tensor) -> Perturb:
    """A ``Perturb`` for feature ablation: copy 0 is the input, copy ``p`` the input with group
    ``p - 1`` taken from the baseline. Each block is the rows' inputs copied once per copy and
    every element written from the baseline in the one copy that ablates its group (each
    element is in one group): two PyTorch ops, exact (the kept elements are the input, the
    ablated ones the baseline, bit for bit, as Captum's ``x * 1 + b * 0`` gives them), and on a
    small model cheaper than a blend whose keep weights are as large as the copies."""
    batch = inputs.shape[0]
    x = inputs.reshape(batch, -1)
    base = baselines.expand_as(inputs).reshape(batch, -1)
    per_input = mask.dim() == inputs.dim()
    copy_of = 1 + mask.reshape(batch if per_input else 1, -1)  # the copy that ablates each element

    def perturb(p0: int, p1: int, r0: int, r1: int) -> torch.Tensor:
        rows = r1 - r0
        out = x.new_empty(p1 - p0, rows, x.shape[1]).copy_(x[r0:r1])  # a new tensor, also for one copy
        copies = copy_of[r0:r1] if per_input else copy_of
        row, column = ((copies >= p0) & (copies < p1)).nonzero(as_tuple=True)  # in this block
        if per_input:
            out[copies[row, column] - p0, row, column] = base[r0:r1][row, column]
        else:
            out[copies[0, column] - p0, :, column] = base[r0:r1][:, column].T
        return out.view(p1 - p0, rows, *inputs.shape[1:])

    return perturb


def group_sums(values: torch.Tensor, mask: torch.Tensor, groups: int) -> torch.Tensor:
    """``sum_{i in group m} values[b, i]``: [B, *F] -> [B, M]."""
    batch = values.shape[0]
    flat = values.reshape(batch, -1)
    shared = mask.dim() == values.dim() - 1
    index = mask.reshape(1, -1).expand(batch, -1) if shared else mask.reshape(batch, -1)
    return torch.zeros(batch, groups, dtype=values.dtype, device=values.device).scatter_add_(1, index, flat)


def to_input_shape(per_group: torch.Tensor, mask: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Every element gets its group's value: [B, M] -> [B, *F]."""
    batch = per_group.shape[0]
    index = mask.reshape(1, -1).expand(batch, -1) if mask.dim() == len(shape) - 1 else mask.reshape(batch, -1)
    return per_group.gather(1, index).view(shape)


def integer_inputs(model: Model, inputs: object, baselines: Any) -> tuple[Model, Any, Any]:
    """Integer or bool inputs (token ids, binary features): attributed as floats (the default
    float dtype), the model called on each perturbed copy in the dtype Captum's blend
    ``input * keep + baseline * (1 - keep)`` has, ``torch.result_type(inputs, baselines)``:
    integers stay integers under an integer baseline (None is 0). Integer baselines become
    floats. Anything else passes through unchanged (and is checked as usual)."""
    if not isinstance(inputs, torch.Tensor) or inputs.is_floating_point() or inputs.is_complex():
        return model, inputs, baselines
    model_dtype = inputs.dtype if baselines is None else torch.result_type(inputs, baselines)
    as_float = inputs.to(torch.get_default_dtype())
    if isinstance(baselines, torch.Tensor) and not baselines.is_floating_point():
        baselines = baselines.to(as_float.dtype)
    elif isinstance(baselines, bool):
        baselines = float(baselines)
    if model_dtype.is_floating_point and model_dtype == as_float.dtype:
        return model, as_float, baselines
    _model.check_model(model)

    call: Callable[..., torch.Tensor] = model

    def cast(rows: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return call(rows.to(model_dtype), *args, **kwargs)  # extra arguments: forward_kwargs

    return cast, as_float, baselines


def prepare(
    model: object, inputs: object, target: object, chunk_size: object, forward_kwargs: object = None
) -> tuple[Model, torch.Tensor, torch.Tensor | None, int, dict[str, Any]]:
    """The checks every perturbation method starts with: model, inputs, target, chunk size,
    extra model arguments."""
    model_checked = _model.check_model(model)
    x = _model.check_inputs(inputs).detach()
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x, forward_only=True)
    target_t = _model.check_target(target, x.shape[0], x.device)
    kwargs = check_forward_kwargs(forward_kwargs)
    return model_checked, x.contiguous(), target_t, chunk, kwargs
