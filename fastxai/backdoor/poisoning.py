"""BadNets-style data poisoning and the attack success rate of the backdoor it plants.

>>> poisoned = poison_dataset(x_train, y_train, patch_trigger((1, 8, 8)), rate=0.05, target=0, seed=0)
>>> model = train(poisoned.inputs, poisoned.labels)
>>> attack_success_rate(model, x_test, y_test, trigger, target=0)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from fastxai import _model, _precision, _scheduling
from fastxai._model import Model
from fastxai.backdoor._args import check_class, check_data, check_fraction, check_seed, model_classes
from fastxai.backdoor.triggers import Trigger, apply_trigger, check_trigger


class PoisonedData(NamedTuple):
    """inputs [N, *F] and labels [N]: the training set with ``indices`` (sorted, int64) triggered
    and relabelled to the target; everything else is the caller's data unchanged (copied)."""

    inputs: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor


def _check_sources(source: object, target: int) -> list[int] | None:
    if source is None:
        return None
    if isinstance(source, int) and not isinstance(source, bool):
        source = [source]
    if (
        not isinstance(source, Sequence)
        or isinstance(source, str)
        or not source
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in source)
    ):
        raise ValueError(
            f"source must be None, a class index or a non-empty sequence of them, got {source!r}"
        )
    if target in source:
        raise ValueError(f"source must not contain the target class {target}")
    return list(source)


def poison_dataset(
    inputs: torch.Tensor,
    labels: torch.Tensor,
    trigger: Trigger,
    *,
    rate: float,
    target: int,
    seed: int = 0,
    source: int | Sequence[int] | None = None,
) -> PoisonedData:
    """BadNets poisoning (Gu et al. 2017): ``round(rate * N)`` items drawn without replacement
    (seeded) among those whose label is not ``target`` (and is in ``source``, when given) get
    the trigger applied and their label set to ``target``.

    inputs: [N, *F]; labels: [N] int. Returns ``PoisonedData(inputs, labels, indices)``.

    >>> poisoned = poison_dataset(x, y, blend_trigger((1, 8, 8)), rate=0.05, target=0, seed=0)
    """
    x, y = check_data(inputs, labels)
    trigger = check_trigger(trigger, x)
    rate = check_fraction("rate", rate)
    target = check_class("target", target)
    seed = check_seed(seed)
    sources = _check_sources(source, target)
    eligible = y != target
    if sources is not None:
        eligible &= torch.isin(y, torch.tensor(sources, device=y.device))
    candidates = eligible.nonzero().squeeze(1).cpu()
    count = round(rate * x.shape[0])
    if count < 1:
        raise ValueError(
            f"rate {rate} poisons no item of {x.shape[0]}; raise it to at least {0.5 / x.shape[0]:.2g}"
        )
    if count > candidates.numel():
        raise ValueError(
            f"rate {rate} asks for {count} poisoned items, but only {candidates.numel()} have a label other "
            "than the target" + (" and in source" if sources is not None else "")
        )
    order = torch.randperm(candidates.numel(), generator=torch.Generator().manual_seed(seed))
    indices = candidates[order[:count]].sort().values.to(x.device)
    poisoned_x = x.detach().clone()
    poisoned_y = y.clone()
    poisoned_x[indices] = apply_trigger(x[indices].detach(), trigger)
    poisoned_y[indices] = target
    return PoisonedData(poisoned_x, poisoned_y, indices)


def attack_success_rate(
    model: Model,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    trigger: Trigger,
    *,
    target: int,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> float:
    """Attack success rate: the fraction of the inputs whose label is not ``target`` that the
    model classifies as ``target`` once triggered (Gu et al. 2017; Wang et al. 2019).

    inputs: [N, *F] clean test inputs; labels: [N] int. Returns a float in [0, 1].
    ``dtype=torch.bfloat16`` (or ``torch.float16``): the model runs under autocast in that dtype
    (``fastxai._precision``): the rate of the model as run so.

    >>> attack_success_rate(model, x_test, y_test, trigger, target=0)
    """
    model = _model.check_model(model)
    x, y = check_data(inputs, labels)
    trigger = check_trigger(trigger, x)
    target = check_class("target", target)
    chunk = _scheduling.auto_chunk_size(_scheduling.check_chunk_size(chunk_size), x, forward_only=True)
    model_dtype = _precision.check_dtype(dtype, x.device)
    others = x[y != target]
    if not others.shape[0]:
        raise ValueError(f"labels must contain some class other than the target {target}")
    scored = _precision.autocast_model(model, model_dtype, x.device.type)  # model itself for None
    with _model.inference_state(model):
        target = check_class("target", target, model_classes(scored, x))
        hits = 0
        with torch.no_grad():
            for start in range(0, others.shape[0], chunk):
                triggered = apply_trigger(others[start : start + chunk], trigger)
                hits += int((_model.logits(scored, triggered).argmax(1) == target).sum())
    return hits / others.shape[0]
