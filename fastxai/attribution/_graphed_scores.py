"""CUDA graphs for the perturbation methods' scoring (``cuda_graph=True``).

One model batch of a perturbation method (``_perturbation.perturbed_scores``) builds ``P'``
perturbed copies of ``R`` inputs, runs the model on them under ``no_grad`` and gathers the
target's score of each, ``[P', R]``. With ``cuda_graph=True`` that step (the build, the forward,
the gather) is captured once as a CUDA graph by the gradient methods' machinery
(``fastxai._graphs.GraphedStep``: fixed buffers, per-call capture, a clear refusal when the
model cannot be captured) and replayed for every model batch of the same shape.

A step must be a function of tensors: so the copies come from a ``Blocks``, a perturbation in
two parts, ``arguments(p0, p1, r0, r1)`` (the block's tensors, made outside the graph: keep
weights, copy indices, the rows) and ``build(*tensors)`` (the copies [P', R, *F] by tensor ops
alone, no host synchronisation). Each method's graphed copies are bit for bit its eager ones
(``ablation_blocks``, ``group_blocks`` pick each element from the input or the baseline, as
feature ablation's and occlusion's eager builds do; a ``masked_blend`` method blends as it
does eagerly).

The ragged last block is scored at the captured shape: it is shifted back to end where it
ends (the last ``P'`` copies, or the last ``R`` rows), so it overlaps the block before; the
overlap's scores are dropped. Every row it scores is a real row (its target and its extra
model arguments included), and the graph serves every block, where a ragged block run eagerly
would cost one eager step per row slice when one copy of the batch exceeds a model batch.
After an out-of-memory error halved the chunk, blocks run at their own size (eagerly, where
the graph does not fit them).

The first model batch runs eagerly: it checks the target against the model's output (a host
synchronisation), and with ``target=None`` on occlusion the blocks holding copy 0 (the input
itself) read the predicted class eagerly too. A call that fits in one model batch therefore
runs no graph: graphs gain when a call scores many model batches of one shape.

>>> a = fastxai.occlusion(model.cuda(), x.cuda(), target=y.cuda(), sliding_window_shapes=(3, 8, 8),
...                       strides=(3, 8, 8), cuda_graph=True)
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastxai import _graphs, _model


@dataclass(frozen=True)
class Blocks:
    """A perturbation a captured step can build: ``arguments(p0, p1, r0, r1)`` gives the block's
    tensors (the same shapes for every block of the same size), ``build(*tensors)`` the copies
    ``p0..p1`` of inputs ``r0..r1``, copy-major [p1 - p0, r1 - r0, *F], by tensor ops alone.
    Called as a whole it is an ordinary ``Perturb``."""

    arguments: Callable[[int, int, int, int], tuple[torch.Tensor, ...]]
    build: Callable[..., torch.Tensor]

    def __call__(self, p0: int, p1: int, r0: int, r1: int) -> torch.Tensor:
        return self.build(*self.arguments(p0, p1, r0, r1))


def _ablated(features: tuple[int, ...], x: torch.Tensor, base: torch.Tensor, copy_of: torch.Tensor,
             copies: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Copy ``c`` of each row: the baseline where ``copy_of == c``, the input elsewhere."""
    hit = copy_of.unsqueeze(0) == copies.view(-1, 1, 1)  # [P', 1 or R, N]
    out = torch.where(hit, base.unsqueeze(0), x.unsqueeze(0))
    return out.view(copies.shape[0], x.shape[0], *features)


def ablation_blocks(inputs: torch.Tensor, baselines: torch.Tensor, mask: torch.Tensor) -> Blocks:
    """Feature ablation's copies (``_perturbation.ablate``: copy 0 the input, copy ``p`` the input
    with group ``p - 1`` from the baseline) as ``Blocks``: one select per block, exact."""
    batch = inputs.shape[0]
    x = inputs.reshape(batch, -1)
    base = baselines.expand_as(inputs).reshape(batch, -1)
    per_input = mask.dim() == inputs.dim()
    copy_of = (1 + mask.reshape(batch if per_input else 1, -1)).contiguous()

    def arguments(p0: int, p1: int, r0: int, r1: int) -> tuple[torch.Tensor, ...]:
        copies = torch.arange(p0, p1, device=x.device)
        return x[r0:r1], base[r0:r1], copy_of[r0:r1] if per_input else copy_of, copies

    return Blocks(arguments, functools.partial(_ablated, tuple(inputs.shape[1:])))


def _selected(features: tuple[int, ...], keep_of: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
              base: torch.Tensor, mask: torch.Tensor, copies: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Copy ``p`` of row ``r``: element ``i`` from the input where ``keep[r, p, mask[i]] != 0``,
    else from the baseline; ``keep = keep_of(copies)`` [1 or R, P', M], ``mask`` [1 or R, N]."""
    keep = keep_of(copies)
    rows, count = max(keep.shape[0], mask.shape[0]), keep.shape[1]
    index = mask.unsqueeze(1).expand(rows, count, mask.shape[1])
    kept = keep.expand(rows, -1, -1).gather(2, index) != 0  # [R or 1, P', N]
    out = torch.where(kept.transpose(0, 1), x.unsqueeze(0), base.unsqueeze(0))
    return out.view(count, x.shape[0], *features)


def _blended(features: tuple[int, ...], keep_of: Callable[[torch.Tensor], torch.Tensor],
             blend: Callable[..., torch.Tensor], x: torch.Tensor, base: torch.Tensor, mask: torch.Tensor,
             copies: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """The copies by ``ops.masked_blend`` (``blend``, copy-major) of the keep weights
    ``keep_of(copies)`` [1 or R, P', M]."""
    rows = x.shape[0]
    keep = keep_of(copies).expand(rows, -1, -1).contiguous()
    ids = mask.view(mask.shape[0], *features) if mask.shape[0] > 1 else mask.view(features)
    return blend(x.view(rows, *features), base.view(rows, *features), ids, keep)


def group_blocks(
    inputs: torch.Tensor,
    baselines: torch.Tensor,
    mask: torch.Tensor,
    keep_of: Callable[[torch.Tensor], torch.Tensor],
    blend: Callable[..., torch.Tensor] | None = None,
) -> Blocks:
    """Copies that keep groups of ``mask`` ([*F] shared or [B, *F]); ``keep_of(copies)``: which
    groups the copies of indices ``copies`` [P'] keep, [1 or R, P', M], by tensor ops (it runs
    inside the graph). Without ``blend`` each element is exactly the input's or the baseline's
    (keep 0/1, no arithmetic); with it (``ops.masked_blend``'s implementation, copy-major) the
    copies are blended as the eager method blends them."""
    batch = inputs.shape[0]
    features = tuple(inputs.shape[1:])
    x, base = inputs.reshape(batch, -1), baselines.reshape(batch, -1)
    per_input = mask.dim() == inputs.dim()
    ids = mask.reshape(batch if per_input else 1, -1).contiguous()

    def arguments(p0: int, p1: int, r0: int, r1: int) -> tuple[torch.Tensor, ...]:
        copies = torch.arange(p0, p1, device=x.device)
        return x[r0:r1], base[r0:r1], ids[r0:r1] if per_input else ids, copies

    if blend is None:
        return Blocks(arguments, functools.partial(_selected, features, keep_of))
    return Blocks(arguments, functools.partial(_blended, features, keep_of, blend))


def _score_step(
    model: Callable[..., Any],
    build: Callable[..., torch.Tensor],
    target: torch.Tensor,
    kwargs: dict[str, Any],
    *block: torch.Tensor,
) -> torch.Tensor:
    """One model batch as one graph: the copies ``build(*block)`` [P', R, *F], the model on them
    (with the batch's extra arguments ``kwargs``), the score of each row's flat ``target`` index:
    [P', R]."""
    copies = build(*block)
    count, rows = copies.shape[0], copies.shape[1]
    flat = copies.reshape(count * rows, *copies.shape[2:])
    call = model if not kwargs else functools.partial(model, **kwargs)
    output = _model.outputs(call, flat).reshape(count, rows, -1)
    return output.gather(2, target.view(1, rows, 1).expand(count, rows, 1)).view(count, rows)


class Scorer:
    """The graphed scoring of one ``perturbed_scores`` call: ``score`` runs a block through one
    ``GraphedStep`` at the shape of the call's first block (``full``), shifting a ragged last
    block back to that shape. ``forward`` (a ``_rows.RowForward``) gives the extra model
    arguments of each block, None when there are none."""

    def __init__(self, model: Callable[..., Any], perturb: object, copies: int, batch: int,
                 forward: Any = None) -> None:  # fmt: skip
        if not isinstance(perturb, Blocks):
            raise TypeError("cuda_graph=True needs the copies as Blocks (a bug in the method)")
        self.model, self.perturb, self.forward = model, perturb, forward
        self.copies, self.batch = copies, batch
        self.full: tuple[int, int] | None = None
        self.shifting = True
        self.step = _graphs.GraphedStep(_score_step)

    def score(self, p0: int, p1: int, r0: int, r1: int, indices: torch.Tensor) -> torch.Tensor:
        """The scores [p1 - p0, r1 - r0] of copies ``p0..p1`` of rows ``r0..r1`` (``indices``: each
        row's flat target index)."""
        assert self.full is not None
        count, rows = self.full
        if (p1 - p0 < count and p1 != self.copies) or (r1 - r0 < rows and r1 != self.batch):
            self.shifting = False  # the chunk was halved after running out of memory: no more shifts
        # the ragged last block, shifted back to the captured shape (the overlap is scored again);
        # not after a capture that ran out of memory (the blocks then run eagerly, at their size)
        shift = self.shifting and (self.step.keys is None or self.step.replay is not None)
        q0 = p1 - count if shift and p1 - p0 < count and p1 == self.copies else p0
        s0 = r1 - rows if shift and r1 - r0 < rows and r1 == self.batch else r0
        kwargs = {} if self.forward is None else self.forward.extras(slice(s0, r1), p1 - q0)
        block = self.perturb.arguments(q0, p1, s0, r1)
        picked = self.step(self.model, self.perturb.build, indices[s0:r1], kwargs, *block)
        return picked[p0 - q0 :, r0 - s0 :]


__all__ = ["Blocks", "Scorer", "ablation_blocks", "group_blocks"]
