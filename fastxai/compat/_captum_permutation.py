"""Captum's permutation classes: ``FeaturePermutation`` (permutation feature importance) and
``ShapleyValues`` (exact Shapley values, the mean over all orders of the groups), with Captum's
constructors and ``attribute`` signatures, on ``fastxai.feature_ablation`` and
``fastxai.shapley_values``. Swap the import, keep the code::

    from fastxai.compat.captum import FeaturePermutation   # was: from captum.attr import ...
    attr = FeaturePermutation(model).attribute(x, target=y, feature_mask=superpixels)

Captum's forms are taken as in ``_captum_perturbation`` (tuple inputs, integer and bool inputs,
forwards aggregating the batch, futures, ``show_progress``). What differs, on purpose:

- ``FeaturePermutation`` draws its permutations from ``seed`` (an extra keyword of
  ``attribute``; None draws one from torch's global generator), all groups' at once; Captum
  calls ``torch.randperm`` once per group. Same distribution, not the same draws. A
  ``perm_func`` given to the constructor is called once per group and input, as in Captum,
  on the whole batch; its results are then scored in batched passes.
- ``ShapleyValues`` scores all ``2**M`` coalitions (Shapley's formula), not the ``M * M!``
  steps of every order: the same values, and it takes up to 20 groups (more raises
  ``ValueError``, also ``AssertionError``); Captum warns from 10 on and runs for as long as it
  takes.
- ``perturbations_per_eval`` changes memory, never results (see ``_captum_perturbation``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastxai.attribution._perturbation import check_seed
from fastxai.attribution.exact_shapley import check_groups, shapley_values
from fastxai.attribution.permutation import PermutationBatchError, permutations, permuted_inputs
from fastxai.attribution.perturbation import feature_ablation
from fastxai.compat._captum_games import Game, output_dtype, parse_output
from fastxai.compat._captum_perturbation import GroupAttribution, float_result, format_rows

PermFunc = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _is_captum_default(perm_func: object) -> bool:
    """Captum's own ``_permute_feature`` (passed explicitly): fastxai's seeded draws stand in."""
    return (
        getattr(perm_func, "__module__", None) == "captum.attr._core.feature_permutation"
        and getattr(perm_func, "__name__", None) == "_permute_feature"
    )


class _TorchFuture(GroupAttribution):
    """``attribute_future`` returning ``torch.Future`` itself (the C++ future class Captum's
    chains of ``then`` return, which Captum's tests check with ``type(f) is torch.Future``)."""

    def attribute_future(self, *args: Any, **kwargs: Any) -> torch.futures.Future:
        future = super().attribute_future(*args, **kwargs)
        try:
            future.value()
        except Exception:
            return future  # the error, unwrapped (``then`` would wrap it in a RuntimeError)
        return future.then(lambda done: done.value())


def _integer_mask(feature_mask: Any) -> Any:
    """Captum compares mask entries with ``==``, so a floating mask of whole numbers works
    there (``torch.zeros_like(input)``): such a mask as int64."""
    if isinstance(feature_mask, tuple):
        return tuple(_integer_mask(part) for part in feature_mask)
    if (
        isinstance(feature_mask, torch.Tensor)
        and feature_mask.is_floating_point()
        and bool(torch.all(feature_mask == feature_mask.round()))
    ):
        return feature_mask.long()
    return feature_mask


class FeaturePermutation(_TorchFuture):
    """Captum's ``FeaturePermutation(forward_func, perm_func=...)``: for each feature group, the
    score drop when the group's values are permuted across the batch (``fastxai.feature_ablation``
    with the permuted inputs as the baseline: every group's copy in batched passes)."""

    progress_name = "Feature Permutation"
    supports_future = True

    def __init__(self, forward_func: Callable[..., Any], perm_func: PermFunc | None = None) -> None:
        super().__init__(forward_func)
        if perm_func is not None and not callable(perm_func):
            raise TypeError(f"perm_func must be callable, got {type(perm_func).__name__}")
        self.perm_func = None if _is_captum_default(perm_func) else perm_func
        # Captum's knob: a group is left unpermuted (attribution 0) when an input it touches has
        # fewer rows than this
        self._min_examples_per_batch_grouped = 2

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        seed: int | None = None,
        **kwargs: Any,
    ) -> Any:
        kwargs.pop("baselines", None)  # as in Captum: a permutation has no baseline
        if kwargs:
            raise NotImplementedError(f"FeaturePermutation.attribute: {sorted(kwargs)} not supported")
        if seed is not None and self.perm_func is not None:
            raise ValueError("seed draws the default permutations; a custom perm_func draws its own")
        feature_mask = _integer_mask(feature_mask)
        few = self._few_examples(inputs, feature_mask, additional_forward_args)
        if few is not None:
            return few
        game = Game(
            self, inputs, None, target, additional_forward_args, perturbations_per_eval, show_progress
        )
        mask = game.feature_mask(feature_mask, keep_ids=False)
        ids = mask if mask is not None else torch.arange(game.packed.features, device=game.packed.device)
        ids = ids.view(-1, game.packed.features)
        if game.ragged:
            permuted = self._ragged_permuted(game, ids, seed)
        elif self.perm_func is None:
            perms = permutations(int(ids.max()) + 1, game.packed.batch, check_seed(seed), game.packed.device)
            permuted = permuted_inputs(game.packed.flat, ids, perms)
        else:
            permuted = self._custom_permuted(game, ids)
        self._games = [game]

        def work() -> torch.Tensor:
            game.start()
            if game.per_example:
                return feature_ablation(
                    game.model(), game.packed.flat, game.target, baselines=permuted, feature_mask=mask,
                    chunk_size=game.chunk_size(),
                )  # fmt: skip
            return game.over_batch(feature_ablation, mask, baselines=game.virtual(permuted))

        flat = self._call(work, game)
        values = output_dtype(game.output, flat)
        return game.packed.format(values) if game.per_example else format_rows(game, values)

    def _custom_permuted(self, game: Game, ids: torch.Tensor) -> torch.Tensor:
        """The user's ``perm_func(input, group_mask)`` for each input and each group in it (in
        increasing id order, Captum's), merged into one permuted batch ``[B, N]``."""
        assert self.perm_func is not None
        packed = game.packed
        parts = []
        for tensor, part_ids in zip(packed.unpack(packed.flat), packed.unpack(ids), strict=True):
            merged = tensor.clone()
            for group in torch.unique(part_ids).tolist():
                selected = part_ids == group  # [1 or B, *F_k]
                permuted = self.perm_func(tensor, selected)
                if not isinstance(permuted, torch.Tensor) or permuted.shape != tensor.shape:
                    raise ValueError(
                        f"perm_func must return a tensor shaped like its input {tuple(tensor.shape)}, got "
                        f"{getattr(permuted, 'shape', type(permuted).__name__)}"
                    )
                merged = torch.where(selected, permuted.to(tensor.dtype), merged)
            parts.append(merged.reshape(packed.batch, -1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def _ragged_permuted(self, game: Game, ids: torch.Tensor, seed: int | None) -> torch.Tensor:
        """Sparse inputs (``Game.ragged``): each input's rows permuted on their own, per group, as
        Captum permutes each tensor along its first dimension; a group that touches an input with
        fewer than ``_min_examples_per_batch_grouped`` rows stays in place (attribution 0). One
        virtual row ``[1, N]``."""
        packed = game.packed
        tensors = [part[0] for part in packed.unpack(packed.flat)]  # [R_k, *F_k]
        masks = [part[0].expand(t.shape) for part, t in zip(packed.unpack(ids), tensors, strict=True)]
        minimum = self._min_examples_per_batch_grouped
        fixed = {
            int(group)
            for mask, count in zip(masks, game.row_counts, strict=True)
            if count < minimum
            for group in mask.unique()
        }
        generator = torch.Generator().manual_seed(check_seed(seed)) if self.perm_func is None else None
        parts = []
        for index, (tensor, mask) in enumerate(zip(tensors, masks, strict=True)):
            merged = tensor.clone()
            for group in [g for g in mask.unique().tolist() if g not in fixed]:
                selected = mask == group
                if generator is not None:  # not the identity, as in Captum (``permutations``)
                    draw = int(torch.randint(0, 2**62, (), generator=generator))
                    permuted = tensor[permutations(1, tensor.shape[0], draw, tensor.device)[0]]
                else:
                    assert self.perm_func is not None
                    permuted = self.perm_func(tensor, selected)
                    if not isinstance(permuted, torch.Tensor) or permuted.shape != tensor.shape:
                        got = getattr(permuted, "shape", type(permuted).__name__)
                        raise ValueError(
                            f"perm_func must return a tensor shaped like inputs[{index}] "
                            f"{tuple(tensor.shape)}, got {got}"
                        )
                merged = torch.where(selected, permuted.to(tensor.dtype), merged)
            parts.append(merged.reshape(1, -1))
        return torch.cat(parts, dim=1)

    def _few_examples(self, inputs: Any, feature_mask: Any, additional_forward_args: Any) -> Any:
        """Captum's rule for inputs with fewer than two rows: every group that touches an input
        with fewer than ``_min_examples_per_batch_grouped`` rows is left out (attribution 0), and
        permuting one row is an error. None when the batch can be permuted (the common case);
        zeros in Captum's shapes when no group can, after the one forward pass Captum makes."""
        tensors = inputs if isinstance(inputs, tuple) else (inputs,)
        if not tensors or not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
            return None  # the Game's checks name what is wrong
        minimum = self._min_examples_per_batch_grouped
        short = [index for index, t in enumerate(tensors) if t.shape[0] < minimum]
        if not short:
            if self.perm_func is None and min(t.shape[0] for t in tensors) < 2:
                raise PermutationBatchError(
                    "inputs hold one example: a permutation across the batch needs at least 2 "
                    f"(batch sizes {[t.shape[0] for t in tensors]})"
                )
            return None
        masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
        if feature_mask is None:
            every_group_short = len(short) == len(tensors)
        elif len(masks) != len(tensors) or not all(isinstance(m, torch.Tensor) for m in masks):
            return None
        else:
            touched = set(torch.cat([masks[i].reshape(-1) for i in short]).tolist())
            every_group_short = touched >= set(torch.cat([m.reshape(-1) for m in masks]).tolist())
        if not every_group_short:
            return None  # inputs with different batch sizes: the Game refuses them
        extra = () if additional_forward_args is None else additional_forward_args
        extra = extra if isinstance(extra, tuple) else (extra,)

        def zeros() -> Any:
            with torch.no_grad():
                output = parse_output(self.forward_func(*tensors, *extra), futures=self._futures)
            batch = tensors[0].shape[0]
            per_example = output.dim() >= 1 and output.shape[0] == batch and batch > 0
            dtype = output.dtype if output.is_floating_point() else torch.get_default_dtype()
            result = tuple(
                torch.zeros(t.shape if per_example else (1, *t.shape[1:]), dtype=dtype, device=t.device)
                for t in tensors
            )
            return result if isinstance(inputs, tuple) else result[0]

        return self._run(zeros)


class ShapleyValues(_TorchFuture):
    """Captum's ``ShapleyValues(forward_func)`` on ``fastxai.shapley_values``: exact Shapley
    values from every coalition of at most 20 groups; ``target=None`` on several outputs per
    example gives ``[*output_shape, *F]``, as Captum."""

    progress_name = "Shapley Values"
    supports_future = True

    @property
    def multiplies_by_inputs(self) -> bool:
        return True

    def attribute(
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> Any:
        feature_mask = _integer_mask(feature_mask)
        groups = _group_count(inputs, feature_mask)
        if groups is not None:
            check_groups(groups)  # before the forward pass that tells the output mode
        game, flat = self._groups(
            shapley_values, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress,
        )  # fmt: skip
        values = float_result(game, flat)
        if game.per_example:
            return game.packed.format(values)
        return format_rows(game, values, tuple(game.output.shape) or (1,))


def _group_count(inputs: Any, feature_mask: Any) -> int | None:
    """The number of groups Captum's arguments make (None where they are malformed: the
    Game's checks name the problem): every element of an example without a mask, else the
    distinct ids (gaps are renumbered)."""
    tensors = inputs if isinstance(inputs, tuple) else (inputs,)
    if not all(isinstance(t, torch.Tensor) and t.dim() >= 1 for t in tensors):
        return None
    if feature_mask is None:
        return sum(t[0].numel() for t in tensors) if all(t.shape[0] > 0 for t in tensors) else None
    masks = feature_mask if isinstance(feature_mask, tuple) else (feature_mask,)
    if not masks or not all(isinstance(m, torch.Tensor) for m in masks):
        return None
    return int(torch.unique(torch.cat([m.reshape(-1) for m in masks])).numel())


__all__ = ["FeaturePermutation", "ShapleyValues"]
