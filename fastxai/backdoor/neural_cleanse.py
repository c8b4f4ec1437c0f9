"""Neural Cleanse (Wang et al. 2019, "Neural Cleanse: identifying and mitigating backdoor
attacks in neural networks"): reverse-engineer, for every class, the smallest trigger that
sends clean inputs to it; a backdoor's target class needs a much smaller one than the rest.

>>> found = neural_cleanse(model, x_clean, seed=0)
>>> found.flagged, found.anomaly_index                   # the classes with index > 2, all indices
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch.nn import functional

from fastxai import _model
from fastxai._checks import check_count, check_positive
from fastxai._model import Model
from fastxai.backdoor._args import check_bounds, check_fraction, check_seed, model_classes

MAD_CONSISTENCY = 1.4826  # makes the median absolute deviation estimate a normal sigma


class NeuralCleanseResult(NamedTuple):
    """What ``neural_cleanse`` returns, one row per examined class (``classes``).

    masks: [K, 1, *spatial] in [0, 1] (shared by the channels; [K, *F] for 1-d inputs);
    patterns: [K, *F] in ``bounds``; l1: [K] float64, each mask's L1 norm;
    success: [K] float64, the share of a batch the trigger sent to its class when kept;
    anomaly_index: [K] float64, ``|l1 - median| / (1.4826 MAD)``;
    flagged: the classes whose L1 is below the median with an index above the threshold.
    """

    classes: torch.Tensor
    masks: torch.Tensor
    patterns: torch.Tensor
    l1: torch.Tensor
    success: torch.Tensor
    anomaly_index: torch.Tensor
    flagged: list[int]


def anomaly_index(norms: torch.Tensor) -> torch.Tensor:
    """``|x - median(x)| / (1.4826 * median(|x - median(x)|))`` for every entry of ``norms``
    [K] (Hampel's outlier test; +inf where the deviation is positive and the MAD is 0).

    ``torch.median`` returns the lower middle value of an even count; the mean of the two middle
    values is the usual median, and is taken here.
    """
    values = norms.double()
    median = values.quantile(0.5)
    deviation = (values - median).abs()
    mad = deviation.quantile(0.5) * MAD_CONSISTENCY
    if mad == 0:
        return torch.where(
            deviation > 0, torch.full_like(deviation, float("inf")), torch.zeros_like(deviation)
        )
    return deviation / mad


def _check_classes(classes: object) -> list[int] | None:
    if classes is None:
        return None
    if (
        not isinstance(classes, Sequence)
        or isinstance(classes, str)
        or len(classes) < 3
        or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise ValueError(
            "classes must be None or at least 3 distinct class indices >= 0 (a median needs them), "
            f"got {classes!r}"
        )
    return list(classes)


def neural_cleanse(
    model: Model,
    inputs: torch.Tensor,
    *,
    classes: Sequence[int] | None = None,
    steps: int = 400,
    lr: float = 0.1,
    batch_size: int = 32,
    init_cost: float = 1e-3,
    cost_multiplier: float = 1.5,
    patience: int = 5,
    attack_threshold: float = 0.99,
    bounds: tuple[float, float] = (0.0, 1.0),
    threshold: float = 2.0,
    seed: int = 0,
) -> NeuralCleanseResult:
    """Neural Cleanse (Wang et al. 2019), batched over the classes.

    For every class ``t``, a mask ``m_t = (tanh(a_t) + 1) / 2`` [1, *spatial] and a pattern
    ``p_t = lo + (hi - lo) (tanh(b_t) + 1) / 2`` [*F] minimise
    ``CE(f((1 - m_t) * x + m_t * p_t), t) + cost_t * |m_t|_1`` over clean ``x`` with Adam
    (betas 0.5, 0.9, as in the authors' code); all classes step together as one batch of
    ``K * batch_size`` inputs. ``cost_t`` starts at ``init_cost``; after ``patience`` steps in
    a row at or above ``attack_threshold`` success it is multiplied by ``cost_multiplier``, after
    ``patience`` below it divided by ``cost_multiplier ** 1.5``. The smallest mask that reached
    the threshold is kept (the last one where none did). The anomaly index of each L1 norm
    (``anomaly_index``) above ``threshold`` on the small side flags a class as a backdoor target.

    inputs: [N, C, *spatial] (or [N, F]) clean inputs in ``bounds``.

    >>> found = neural_cleanse(model, x_test[:128], seed=0); found.flagged
    """
    model = _model.check_model(model)
    x = _model.check_inputs(inputs).detach()
    steps = check_count("steps", steps, 1)
    lr = check_positive("lr", lr)
    batch_size = check_count("batch_size", batch_size, 1)
    init_cost = check_positive("init_cost", init_cost)
    cost_multiplier = check_positive("cost_multiplier", cost_multiplier)
    if cost_multiplier <= 1:
        raise ValueError(f"cost_multiplier must be > 1, got {cost_multiplier!r}")
    patience = check_count("patience", patience, 1)
    attack_threshold = check_fraction("attack_threshold", attack_threshold)
    lo, hi = check_bounds(bounds)
    threshold = check_positive("threshold", threshold)
    generator = torch.Generator().manual_seed(check_seed(seed))
    chosen = _check_classes(classes)
    if float(x.min()) < lo or float(x.max()) > hi:
        raise ValueError(
            f"inputs must lie in bounds {(lo, hi)}, got values in [{float(x.min())}, {float(x.max())}]"
        )
    mask_shape = (1, *x.shape[2:]) if x.dim() > 2 else tuple(x.shape[1:])
    with _model.preserved_state(model):
        count = model_classes(model, x)
        examined = list(range(count)) if chosen is None else chosen
        if max(examined) >= count:
            raise ValueError(
                f"classes must be in [0, {count}) for a model with {count} classes, got {examined}"
            )
        k = len(examined)
        targets = torch.tensor(examined, device=x.device)
        mask_logit = (
            (torch.randn((k, *mask_shape), generator=generator) * 0.1).to(x.device).requires_grad_(True)
        )
        pattern_logit = (torch.randn((k, *x.shape[1:]), generator=generator) * 0.1).to(x.device)
        pattern_logit.requires_grad_(True)
        optimiser = torch.optim.Adam([mask_logit, pattern_logit], lr=lr, betas=(0.5, 0.9))
        cost = torch.full((k,), init_cost, dtype=torch.float64, device=x.device)
        above = torch.zeros(k, dtype=torch.long, device=x.device)
        below = torch.zeros(k, dtype=torch.long, device=x.device)
        best_l1 = torch.full((k,), float("inf"), dtype=torch.float64, device=x.device)
        best_success = torch.zeros(k, dtype=torch.float64, device=x.device)
        best_mask = torch.zeros((k, *mask_shape), device=x.device)
        best_pattern = torch.zeros((k, *x.shape[1:]), device=x.device)
        order = torch.randperm(x.shape[0], generator=generator)
        position = 0
        for _ in range(steps):
            if position + min(batch_size, x.shape[0]) > x.shape[0]:
                order, position = torch.randperm(x.shape[0], generator=generator), 0
            batch = x[order[position : position + batch_size].to(x.device)]
            position += batch.shape[0]
            with torch.enable_grad():
                mask = (torch.tanh(mask_logit) + 1) / 2
                pattern = lo + (hi - lo) * (torch.tanh(pattern_logit) + 1) / 2
                stamped = (1 - mask.unsqueeze(1)) * batch.unsqueeze(0) + (mask * pattern).unsqueeze(1)
                logits = _model.logits(model, stamped.reshape(-1, *x.shape[1:]).to(x.dtype))
                labels = targets.repeat_interleave(batch.shape[0])
                cross_entropy = functional.cross_entropy(logits.float(), labels, reduction="none")
                l1 = mask.flatten(1).sum(1)
                loss = cross_entropy.view(k, -1).mean(1) + cost.float() * l1
                optimiser.zero_grad()
                loss.sum().backward()
            with torch.no_grad():
                success = (logits.argmax(1) == labels).view(k, -1).double().mean(1)
                l1_now = l1.detach().double()
                reached = success >= attack_threshold
                better = reached & (l1_now < best_l1)
                best_l1 = torch.where(better, l1_now, best_l1)
                best_success = torch.where(better, success, best_success)
                best_mask[better] = mask.detach()[better]
                best_pattern[better] = pattern.detach()[better]
                above = torch.where(reached, above + 1, torch.zeros_like(above))
                below = torch.where(reached, torch.zeros_like(below), below + 1)
                raise_cost, lower_cost = above >= patience, below >= patience
                cost = torch.where(raise_cost, cost * cost_multiplier, cost)
                cost = torch.where(lower_cost, cost / cost_multiplier**1.5, cost)
                above[raise_cost], below[lower_cost] = 0, 0
            optimiser.step()
        never = torch.isinf(best_l1)
        if bool(never.any()):
            with torch.no_grad():
                mask = (torch.tanh(mask_logit) + 1) / 2
                pattern = lo + (hi - lo) * (torch.tanh(pattern_logit) + 1) / 2
                best_mask[never], best_pattern[never] = mask[never], pattern[never]
                best_l1[never] = mask[never].flatten(1).sum(1).double()
    index = anomaly_index(best_l1.cpu())
    median = best_l1.cpu().quantile(0.5)
    flagged = [
        c
        for c, i, n in zip(examined, index.tolist(), best_l1.tolist(), strict=True)
        if i > threshold and n < median
    ]
    return NeuralCleanseResult(
        targets.cpu(), best_mask, best_pattern.to(x.dtype), best_l1.cpu(), best_success.cpu(), index, flagged
    )
