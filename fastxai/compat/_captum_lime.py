"""Captum's ``Lime(forward_func, interpretable_model=None, similarity_func=None, perturb_func=None)``
on ``fastxai.lime``.

Fast path (every example's surrogate fitted together, no Python loop over samples): Captum's
defaults, a kernel from Captum's ``get_exp_kernel_similarity_function(distance_mode,
kernel_width)`` (read off the function), and the interpretable models ``SkLearnLasso(alpha=...)``
(the default is ``alpha=0.01``) and ``SkLearnLinearRegression()``. Anything else with Captum's
contract runs as Captum runs it, per example and per sample:

- ``similarity_func(original_inp, perturbed_inp, perturbed_interpretable_inp, **kwargs)`` -> a
  number, called on each perturbed input (kwargs: ``feature_mask``, ``baselines``,
  ``num_interp_features``);
- ``perturb_func(original_inp, **kwargs)`` -> one interpretable sample ``[1, M]`` of 0/1,
  called ``n_samples`` times per example;
- an interpretable model with Captum's ``Model`` interface: ``fit(DataLoader of (samples,
  outputs, weights))`` then ``representation()`` -> the coefficients, one fit per example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastxai.attribution.lime import lime
from fastxai.compat._captum_games import PerturbationAttribution
from fastxai.compat._captum_lime_base import LimeBase, check_interpretable_model, fit_interpretable_model
from fastxai.compat._captum_perturbation import GroupAttribution


def _captum_kernel(similarity_func: object) -> tuple[str, float] | None:
    """(distance_mode, kernel_width) of a function made by Captum's
    ``get_exp_kernel_similarity_function``, None for any other callable."""
    if similarity_func is None:
        return "cosine", 1.0
    code = getattr(similarity_func, "__code__", None)
    closure = getattr(similarity_func, "__closure__", None)
    if (
        getattr(similarity_func, "__module__", "") != "captum.attr._core.lime"
        or getattr(similarity_func, "__name__", "") != "default_exp_kernel"
        or code is None
        or closure is None
        or set(code.co_freevars) != {"distance_mode", "kernel_width"}
    ):
        return None
    cells = {name: cell.cell_contents for name, cell in zip(code.co_freevars, closure, strict=True)}
    return str(cells["distance_mode"]), float(cells["kernel_width"])


def _surrogate_choice(interpretable_model: object) -> tuple[str, float] | None:
    """Captum's sklearn interpretable models as fastxai's (name, alpha); None: fit the model itself."""
    if interpretable_model is None:
        return "lasso", 0.01
    kind = type(interpretable_model).__name__
    kwargs = dict(getattr(interpretable_model, "construct_kwargs", {}) or {})
    if kind == "SkLearnLasso" and set(kwargs) <= {"alpha"}:
        return "lasso", float(kwargs.get("alpha", 1.0))  # sklearn's Lasso default
    if kind == "SkLearnLinearRegression" and not kwargs:
        return "linear", 0.0
    check_interpretable_model(interpretable_model, allow_none=True)
    return None


class Lime(GroupAttribution, LimeBase):
    """Captum's ``Lime`` on ``fastxai.lime`` (see the module doc for what runs batched). A
    ``LimeBase`` as in Captum (``isinstance``, properties), with its own ``attribute``: the
    interpretable space is the feature mask's groups, mapped to inputs by ``fastxai.lime``."""

    progress_name = "Lime"
    perturb_interpretable_space = True
    from_interp_rep_transform = to_interp_rep_transform = None

    def __init__(
        self,
        forward_func: Callable[..., Any],
        interpretable_model: Any = None,
        similarity_func: Any = None,
        perturb_func: Any = None,
    ) -> None:
        PerturbationAttribution.__init__(self, forward_func)
        for name, value in (("similarity_func", similarity_func), ("perturb_func", perturb_func)):
            if value is not None and not callable(value):
                raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func
        self._surrogate = _surrogate_choice(interpretable_model)
        self._kernel = _captum_kernel(similarity_func)

    def attribute(  # type: ignore[override]  # Captum's Lime has its own arguments too
        self,
        inputs: Any,
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: Any = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool = False,
        *,
        seed: int | None = None,
    ) -> Any:
        options: dict[str, Any] = {"n_samples": n_samples, "seed": seed}
        if self._surrogate is None:
            options["interpretable_model"] = self._fit
        else:
            options["interpretable_model"], options["alpha"] = self._surrogate
        if self._kernel is not None:
            options["distance_mode"], options["kernel_width"] = self._kernel
        hooks = self.similarity_func if self._kernel is None else None, self.perturb_func
        method = lime if hooks == (None, None) else self._with_hooks()
        game, flat = self._groups(
            method, inputs, baselines, target, additional_forward_args, feature_mask,
            perturbations_per_eval, show_progress, return_input_shape=return_input_shape, **options,
        )  # fmt: skip
        return self._one_model(game, flat, return_input_shape)

    def _fit(self, design: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Captum's interpretable model fitted on each example's samples in turn: [B, M]."""
        coefs = [
            torch.as_tensor(fit_interpretable_model(self.interpretable_model, z, y, w)).reshape(-1).to(design)
            for z, y, w in zip(design, scores, weights, strict=True)
        ]
        return torch.stack(coefs)

    def _with_hooks(self) -> Callable[..., torch.Tensor]:
        """``fastxai.lime`` with the user's ``perturb_func`` drawing the samples and / or the user's
        ``similarity_func`` weighing them, both called per example and sample, as Captum does,
        on inputs in the user's form (a tensor or tuple, one example or the whole batch)."""
        similarity_func = self.similarity_func if self._kernel is None else None
        perturb_func = self.perturb_func

        def run(
            model: Callable[..., torch.Tensor], x: torch.Tensor, target: Any, **kwargs: Any
        ) -> torch.Tensor:
            game = self._games[0]

            def user(row: torch.Tensor) -> Any:  # one flat row (an example, or the virtual batch)
                return game.user_inputs(row)

            mask = kwargs["feature_mask"]
            full = torch.arange(x.shape[1], device=x.device).view(1, -1) if mask is None else mask
            groups = int(full.max()) + 1
            baseline = kwargs["baselines"]
            base = baseline if isinstance(baseline, torch.Tensor) else torch.full_like(x[:1], float(baseline))
            base = base.expand_as(x)

            def context(b: int) -> dict[str, Any]:
                index = full[b if full.shape[0] > 1 else 0]
                return {
                    "feature_mask": user(index),
                    "baselines": user(base[b]),
                    "num_interp_features": groups,
                }

            if perturb_func is not None:
                drawn = [
                    torch.stack([
                        torch.as_tensor(perturb_func(user(x[b]), **context(b))).reshape(-1)
                        for _ in range(kwargs["n_samples"])
                    ])
                    for b in range(x.shape[0])
                ]  # fmt: skip
                kwargs["samples"] = torch.stack(drawn).to(x.device)
            if similarity_func is not None:

                def similarity(samples: torch.Tensor) -> torch.Tensor:
                    weights = torch.empty(samples.shape[:2], dtype=torch.float64)
                    for b in range(x.shape[0]):
                        index, original = full[b if full.shape[0] > 1 else 0], user(x[b])
                        for p in range(samples.shape[1]):
                            keep = samples[b, p][index].to(x.dtype)
                            perturbed = user(base[b] + keep * (x[b] - base[b]))
                            interpretable = samples[b, p].unsqueeze(0).float()
                            weights[b, p] = float(
                                similarity_func(original, perturbed, interpretable, **context(b))
                            )
                    return weights.to(x.device)

                kwargs["similarity"] = similarity
            return lime(model, x, target, **kwargs)

        return run
