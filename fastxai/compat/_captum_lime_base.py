"""Captum's ``LimeBase``: LIME with a user-defined interpretable space.

``LimeBase(forward_func, interpretable_model, similarity_func, perturb_func,
perturb_interpretable_space, from_interp_rep_transform, to_interp_rep_transform)`` draws
``n_samples`` perturbations with ``perturb_func(inputs, **kwargs)`` (a function called once per
sample, or a generator function called once), maps each between the input space and the
interpretable space (``from_interp_rep_transform(sample, inputs, **kwargs)`` when the samples are
interpretable vectors ``[1, M]``, ``to_interp_rep_transform(sample, inputs, **kwargs)`` when they
are inputs), weighs it with ``similarity_func(inputs, model_input, interpretable, **kwargs)``,
scores it with ``forward_func`` (the ``target``'s score), fits ``interpretable_model`` on the
``(interpretable [S, M], scores [S], weights [S])`` of the samples and returns its
``representation()``. ``**kwargs`` of ``attribute`` go to every user function, as in Captum.

Where fastxai is faster: the model. Captum's default ``perturbations_per_eval=1`` scores one
perturbation per forward pass; here it means fastxai's automatic chunking, many perturbations
concatenated along dim 0 per pass (on a GPU sized from free memory, on the CPU at most
``CPU_PERTURBATIONS_PER_PASS``; a larger value is the number per pass, as in Captum). That pays
where the per-call cost is large against the model's work: small models, and GPUs. The user
functions run once per sample, in Captum's order, so a seeded run draws the same samples.

As in Captum, explain one example at a time (inputs with one row); a batch of several examples
needs a ``forward_func`` that returns one number for the whole batch, which is then scored one
perturbation per pass. A forward returning one number however many rows it gets is found on the
first pass of several perturbations, and the rest is scored one per pass (that pass is repeated).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, TensorDataset

from fastxai import _scheduling
from fastxai.compat._captum_games import AggregateOutputError, PerturbationAttribution, Progress, parse_output
from fastxai.compat._captum_inputs import as_tuple
from fastxai.compat._captum_targets import (
    CaptumArgumentError,
    CaptumTypeError,
    check_int_at_least,
    expand_target,
    select_target,
)

Sample = torch.Tensor | tuple[torch.Tensor, ...]
CPU_PERTURBATIONS_PER_PASS = 64
"""The CPU's ceiling on perturbations per forward pass: enough to spread the per-call cost of a
small model (an MLP on 20 features: 1000 samples in 0.05 s against 0.17 s one per pass), small
enough that a large one keeps its activations in cache (a 4-layer transformer on 128 tokens is
about as fast one per pass as 64 per pass, slower at 512; benchmarks/lime_base_speed.py)."""


def _check_callable(name: str, value: object, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not callable(value):
        expected = "callable or None" if optional else "callable"
        raise CaptumTypeError(f"{name} must be {expected}, got {type(value).__name__}")


def check_interpretable_model(interpretable_model: object, allow_none: bool = False) -> None:
    """A Captum ``Model``: ``fit(dataloader)`` and ``representation()`` (or None where allowed)."""
    if interpretable_model is None and allow_none:
        return
    if not (
        callable(getattr(interpretable_model, "fit", None))
        and callable(getattr(interpretable_model, "representation", None))
    ):
        expected = "None or a Captum Model" if allow_none else "a Captum Model"
        raise CaptumTypeError(
            f"interpretable_model must be {expected} with fit(dataloader) and representation(), "
            f"got {type(interpretable_model).__name__}"
        )


def fit_interpretable_model(
    model: Any, design: torch.Tensor, outputs: torch.Tensor, weights: torch.Tensor
) -> Any:
    """Captum's ``Model.fit`` on one data set of samples (``design`` [S, M], ``outputs`` [S],
    ``weights`` [S], as float32 on the design's device, in one batch), then its
    ``representation()``."""
    dataset = TensorDataset(
        design.float(), outputs.float().to(design.device), weights.float().to(design.device)
    )
    model.fit(DataLoader(dataset, batch_size=design.shape[0]))
    return model.representation()


def _concatenate(samples: list[Sample]) -> Sample:
    """Model inputs of several perturbations as one: Captum's ``torch.cat`` along dim 0 (per
    input for tuples), on the first sample's device."""
    first = samples[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([sample.to(first.device) for sample in samples])  # type: ignore[union-attr]
    return tuple(torch.cat([sample[k].to(part.device) for sample in samples]) for k, part in enumerate(first))


def _expand_args(args: tuple[Any, ...] | None, copies: int) -> tuple[Any, ...]:
    """Additional forward arguments for ``copies`` perturbations (tensors with a batch dimension
    repeated copy-major, as the samples are concatenated)."""
    if args is None:
        return ()
    return tuple(
        torch.cat([arg] * copies) if isinstance(arg, torch.Tensor) and arg.dim() > 0 and copies > 1 else arg
        for arg in args
    )


class LimeBase(PerturbationAttribution):
    """Captum's ``LimeBase`` (see the module doc): a surrogate fitted on perturbations drawn and
    mapped by the user's functions; returns ``interpretable_model.representation()``.

    >>> lime = LimeBase(model, SkLearnLasso(alpha=0.01), similarity, bernoulli, True, to_ids, None)
    >>> coefs = lime.attribute(token_ids, target=1, n_samples=200)   # [1, M]
    """

    progress_name = "Lime Base"

    def __init__(
        self,
        forward_func: Callable[..., Any],
        interpretable_model: Any,
        similarity_func: Callable[..., Any],
        perturb_func: Callable[..., Any],
        perturb_interpretable_space: bool,
        from_interp_rep_transform: Callable[..., Any] | None,
        to_interp_rep_transform: Callable[..., Any] | None,
    ) -> None:
        PerturbationAttribution.__init__(self, forward_func)
        check_interpretable_model(interpretable_model)
        _check_callable("similarity_func", similarity_func)
        _check_callable("perturb_func", perturb_func)
        if not isinstance(perturb_interpretable_space, bool):
            raise CaptumTypeError(
                "perturb_interpretable_space must be a bool, got "
                f"{type(perturb_interpretable_space).__name__}"
            )
        _check_callable("from_interp_rep_transform", from_interp_rep_transform, optional=True)
        _check_callable("to_interp_rep_transform", to_interp_rep_transform, optional=True)
        if perturb_interpretable_space and from_interp_rep_transform is None:
            raise CaptumArgumentError(
                "from_interp_rep_transform is needed when perturb_interpretable_space=True: it maps the "
                "interpretable samples to model inputs"
            )
        if not perturb_interpretable_space and to_interp_rep_transform is None:
            raise CaptumArgumentError(
                "to_interp_rep_transform is needed when perturb_interpretable_space=False: it maps the "
                "sampled inputs to the interpretable space"
            )
        self.interpretable_model = interpretable_model
        self.similarity_func = similarity_func
        self.perturb_func = perturb_func
        self.perturb_interpretable_space = perturb_interpretable_space
        self.from_interp_rep_transform = from_interp_rep_transform
        self.to_interp_rep_transform = to_interp_rep_transform

    @property
    def multiplies_by_inputs(self) -> bool:
        return False

    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        n_samples: int = 50,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> Any:
        n_samples = check_int_at_least(n_samples, "n_samples", 1)
        per_eval = check_int_at_least(perturbations_per_eval, "perturbations_per_eval", 1)
        parts = as_tuple(inputs)
        if not parts or not all(isinstance(part, torch.Tensor) for part in parts):
            raise CaptumTypeError(
                f"inputs must be a tensor or a non-empty tuple of tensors, got {type(inputs).__name__}"
            )
        args = None if additional_forward_args is None else as_tuple(additional_forward_args)
        with torch.no_grad():
            return self._run(
                lambda: self._explain(
                    inputs, parts[0].device, target, args, n_samples, per_eval, show_progress, kwargs
                )
            )

    def _explain(
        self,
        inputs: Any,
        device: torch.device,
        target: Any,
        args: tuple[Any, ...] | None,
        n_samples: int,
        per_eval: int,
        show_progress: object,
        kwargs: dict[str, Any],
    ) -> Any:
        draw = self._sampler(inputs, kwargs)
        progress = Progress(show_progress, self.progress_name)
        interpretable: list[torch.Tensor] = []
        weights: list[torch.Tensor] = []
        scores: list[torch.Tensor] = []
        pending: list[Sample] = []
        chunk = per_eval
        try:
            for index in range(n_samples):
                try:
                    sample, model_input = draw()
                except StopIteration:
                    warnings.warn("Generator completed prior to given n_samples iterations!", stacklevel=3)
                    break
                if index == 0 and per_eval == 1:
                    chunk = self._auto_chunk(model_input, n_samples)
                interpretable.append(torch.as_tensor(sample))
                similarity = self.similarity_func(inputs, model_input, sample, **kwargs)
                weights.append(
                    similarity.flatten()
                    if isinstance(similarity, torch.Tensor)
                    else torch.tensor([similarity], device=device)
                )
                pending.append(model_input)
                if len(pending) == chunk:
                    score, batched = self._score(pending, target, args, explicit=per_eval > 1)
                    scores.append(score)
                    progress.update(len(pending))
                    chunk = chunk if batched else 1
                    pending = []
            if pending:
                scores.append(self._score(pending, target, args, explicit=per_eval > 1)[0])
                progress.update(len(pending))
        finally:
            progress.close()
        if not interpretable:
            raise ValueError("perturb_func's generator yielded no sample: nothing to fit")
        design = torch.cat(
            [sample.reshape(1, -1) if sample.dim() < 2 else sample for sample in interpretable]
        )
        outputs = torch.cat([score.reshape(-1) for score in scores])
        similarities = torch.cat([weight.reshape(-1) for weight in weights])
        return fit_interpretable_model(self.interpretable_model, design, outputs, similarities)

    def _sampler(self, inputs: Any, kwargs: dict[str, Any]) -> Callable[[], tuple[Any, Sample]]:
        """A function returning the next ``(interpretable sample, model input)`` pair; raises
        ``StopIteration`` when a generator ``perturb_func`` runs out."""
        generator: Iterator[Any] | None = None
        if inspect.isgeneratorfunction(self.perturb_func):
            generator = self.perturb_func(inputs, **kwargs)

        def draw() -> tuple[Any, Sample]:
            drawn = next(generator) if generator is not None else self.perturb_func(inputs, **kwargs)
            if self.perturb_interpretable_space:
                return drawn, self.from_interp_rep_transform(drawn, inputs, **kwargs)  # type: ignore[misc]
            return self.to_interp_rep_transform(drawn, inputs, **kwargs), drawn  # type: ignore[misc]

        return draw

    def _auto_chunk(self, model_input: Any, n_samples: int) -> int:
        """Perturbations per forward pass for ``perturbations_per_eval=1``: as many as fastxai's
        automatic size allows for inputs of one row; one for a batch (Captum's rule: its forward
        returns one number for the whole batch, so each pass must hold a single perturbation)."""
        first = as_tuple(model_input)[0]
        if not isinstance(first, torch.Tensor) or first.dim() == 0 or first.shape[0] != 1:
            return 1
        rows = _scheduling.auto_chunk_size(None, first, forward_only=True)
        if first.device.type != "cuda":
            rows = min(rows, CPU_PERTURBATIONS_PER_PASS)
        return max(1, min(n_samples, rows))

    def _score(
        self, pending: list[Sample], target: Any, args: tuple[Any, ...] | None, explicit: bool
    ) -> tuple[torch.Tensor, bool]:
        """The target's scores of the pending perturbations, one per perturbation, from one forward
        pass; or from one pass per perturbation when the forward turns out to return one number
        per pass (then False: score one perturbation per pass from here on)."""
        for part in pending:
            if not isinstance(part, (torch.Tensor, tuple)):
                raise CaptumTypeError(
                    "the model inputs made from the samples must be tensors or tuples of tensors, got "
                    f"{type(part).__name__}"
                )
        count = len(pending)
        model_inputs = as_tuple(_concatenate(pending))
        output = parse_output(self.forward_func(*model_inputs, *_expand_args(args, count)), futures=False)
        scores = select_target(output, expand_target(target, count)) if output.dim() > 0 else output
        if scores.numel() == count:
            return scores.reshape(-1), True
        if count > 1 and not explicit:  # a forward returning one number per pass: one perturbation each
            singles = [self._score([sample], target, args, explicit=True)[0] for sample in pending]
            return torch.cat(singles), False
        raise AggregateOutputError(
            f"forward_func returned {scores.numel()} numbers for {count} perturbation(s) in one pass: "
            "it must return one per perturbation (for a batch of several examples, one for the whole batch, "
            "with perturbations_per_eval=1)"
        )


__all__ = ["LimeBase", "check_interpretable_model", "fit_interpretable_model"]
