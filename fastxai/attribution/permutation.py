"""Permutation feature importance (Breiman 2001; Fisher, Rudin & Dominici 2019): the score drop
when one feature group's values are shuffled across the batch, with Captum's semantics
(``FeaturePermutation``).

Permuting group g replaces, in every example b, the group's elements by those of example
``pi_g(b)``. Each element belongs to one group, so all M permuted batches are the inputs with
group g taken from one tensor, the *permuted inputs* ``x~[b, i] = x[pi_g(i)(b), i]``: feature
ablation with ``x~`` as its baseline. The copies are built and scored exactly as
``feature_ablation`` builds and scores its own (``B * (M + 1)`` evaluations in big batches).
"""

from __future__ import annotations

from typing import Any

import torch

from fastxai import _budget, _graphs, _model, _precision
from fastxai._model import Model
from fastxai.attribution import _perturbation
from fastxai.attribution.perturbation import feature_ablation


class PermutationBatchError(ValueError, AssertionError):
    """Fewer than two examples to permute (Captum asserts; fastxai's bad-input convention is
    ValueError: this is both)."""


def feature_permutation(
    model: Model,
    inputs: torch.Tensor,
    target: object = None,
    *,
    feature_mask: torch.Tensor | None = None,
    seed: int | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    chunk_size: int | None = None,
    backend: str | None = None,
    dtype: torch.dtype | None = None,
    cuda_graph: bool = False,
) -> torch.Tensor:
    """Permutation feature importance: ``R_i = f_t(x_b) - f_t(x_b with group g(i) permuted)``.

    For each group g of ``feature_mask`` one permutation ``pi_g`` of the B examples is drawn
    (never the identity); example b's copy takes the group's elements from example
    ``pi_g(b)``, everything else from itself, and every element of the group gets the score
    drop of its example (Captum's ``FeaturePermutation``; the mean over the batch is the
    classic permutation importance). ``feature_mask`` as in ``feature_ablation`` (None: every
    element its own group; -1: kept, attribution 0). Costs ``B * (M + 1)`` model evaluations,
    in batches of at most ``chunk_size``; ``backend`` is checked, the copies are PyTorch ops;
    ``dtype`` and ``cuda_graph`` as in ``feature_ablation`` (the permuted inputs are exact
    copies of the inputs' elements, then rounded to ``dtype`` with them).

    The permutations come from a generator seeded by ``seed`` (None: one drawn from torch's
    global generator): same seed, same result for any ``chunk_size``. Captum draws each
    group's permutation with ``torch.randperm`` from the global generator: the same
    distribution, not the same draws. One example cannot be permuted: ``B = 1`` raises.

    inputs: [B, *F] with B >= 2 (token ids: words permuted across sentences); returns [B, *F]
    in the inputs' dtype (float for ids).

    >>> a = fastxai.feature_permutation(model, x, target=y, feature_mask=superpixels, seed=0)
    >>> importance = a.mean(0)  # per element: its group's mean score drop
    """
    _model.check_model(model)
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"inputs must be a torch.Tensor, got {type(inputs).__name__}")
    if inputs.dim() >= 1 and inputs.shape[0] == 1:
        raise PermutationBatchError(
            "inputs hold one example: a permutation across the batch needs at least 2 "
            f"(got shape {tuple(inputs.shape)})"
        )
    _, as_float, _ = _perturbation.integer_inputs(model, inputs, None)
    x = _model.check_inputs(as_float)
    _precision.check_dtype(dtype, x.device)
    _graphs.check_cuda_graph(cuda_graph, x, None)
    mask, groups = _perturbation.check_feature_mask(feature_mask, x)
    seed = _perturbation.check_seed(seed)
    _budget.check_fits(
        "feature_mask", f"<{groups} groups>", groups * x.shape[0] * 24 + x.numel() * 16,
        "the permutations and the permuted inputs", x.device,
        "use fewer feature groups (a coarser feature_mask)",
    )  # fmt: skip
    permuted = permuted_inputs(inputs, mask, permutations(groups, x.shape[0], seed, x.device))
    # every other argument is checked by feature_ablation before its first model call
    return feature_ablation(
        model, inputs, target, baselines=permuted, feature_mask=feature_mask,
        forward_kwargs=forward_kwargs, chunk_size=chunk_size, backend=backend, dtype=dtype,
        cuda_graph=cuda_graph,
    )  # fmt: skip


def permutations(groups: int, batch: int, seed: int, device: torch.device) -> torch.Tensor:
    """One permutation of the ``batch`` rows per group, none the identity (Captum redraws it),
    drawn from ``seed``: int64 [M, B], row g maps example b to the example it takes group g
    from."""
    if batch < 2:
        raise PermutationBatchError(f"a permutation across the batch needs at least 2 examples, got {batch}")
    rng = _perturbation.generator(seed, device)
    drawn = torch.rand(groups, batch, generator=rng, device=device).argsort(dim=1)
    identity = torch.arange(batch, device=device)
    unchanged = (drawn == identity).all(dim=1)
    while bool(unchanged.any()):  # probability 1 / B! per group: a few rounds at most for B = 2
        count = int(unchanged.sum())
        drawn[unchanged] = torch.rand(count, batch, generator=rng, device=device).argsort(dim=1)
        unchanged = (drawn == identity).all(dim=1)
    return drawn


def permuted_inputs(inputs: torch.Tensor, mask: torch.Tensor, perms: torch.Tensor) -> torch.Tensor:
    """``x~[b, i] = x[perms[g(b, i), b], i]``: every element as its group's permutation brings
    it (exact copies, in the inputs' dtype). ``mask``: group ids [*F] or [1 or B, *F] (-1 elements
    are read from group 0's permutation; the methods keep them as in the input anyway);
    ``perms``: [M, B]."""
    batch = inputs.shape[0]
    rows = mask.shape[0] if mask.dim() == inputs.dim() else 1  # [1 or B, *F], or [*F] shared
    ids = mask.clamp(min=0).reshape(rows, -1).expand(batch, -1)
    source = perms.T.gather(1, ids)  # [B, N]: the example each element is taken from
    return inputs.reshape(batch, -1).gather(0, source).view(inputs.shape)
