"""Captum's ``LLMAttribution`` and ``RemoteLLMAttribution`` (``LLMGradientAttribution`` in
``_captum_llm_gradient``): which parts of a prompt made a language model produce a continuation.

    llm_attr = fc.LLMAttribution(fc.FeatureAblation(model), tokenizer)
    result = llm_attr.attribute(fc.TextTemplateInput("{} lives in {}", ["Dave", "Paris"]), target="Hi")

The score of a perturbed prompt ``x = h(x')`` is ``log p(c | x) = sum_j s_j(x)``, with ``s_j``
the log-probability of output token ``j`` given ``x`` and ``c_<j`` (``exp`` of them with
``attr_target="prob"``); the wrapped method (``FeatureAblation``, ``ShapleyValueSampling``,
``ShapleyValues``, ``Lime``, ``KernelShap``; fastxai's or Captum's) attributes the total
(``seq_attr`` [M]) and, but for Lime and KernelSHAP, each ``s_j`` (``token_attr`` [T, M]) to
the interpretable features ``x'``.

Faster than Captum: all perturbed prompts the method asks for at once are scored in model
batches (``_captum_llm_scoring``): prompts of one length together, the continuation in one
teacher-forced pass for a Hugging Face causal LM, each distinct prompt once per call.

Differences from Captum 0.9, on purpose: ``skip_tokens`` (Captum 0.8's argument) is taken:
given, a target string is encoded with the tokenizer's special tokens and the listed ids
removed (0.8's reading); without it, without special tokens (0.9's). A model that is not a
Hugging Face causal LM is stepped token by token without a KV cache (``use_cached_outputs``
changes no number). Generation gets an all-ones ``attention_mask``. Bad arguments raise
``ValueError``/``TypeError`` that are also ``AssertionError``, naming the argument, before the
model runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from copy import copy
from typing import Any

import torch
from torch import nn

from fastxai import _model
from fastxai.compat._captum_llm_result import LLMAttributionResult, pretty_tokens
from fastxai.compat._captum_llm_scoring import ContinuationScorer, is_causal_lm
from fastxai.compat._captum_targets import CaptumArgumentError, CaptumTypeError
from fastxai.compat.captum import Attribution

DEFAULT_GEN_ARGS: dict[str, Any] = {
    "max_new_tokens": 25,
    "do_sample": False,
    "temperature": None,
    "top_p": None,
}
PERTURBATION_METHODS = ("FeatureAblation", "ShapleyValueSampling", "ShapleyValues", "Lime", "KernelShap")
PER_TOKEN_METHODS = ("FeatureAblation", "ShapleyValueSampling", "ShapleyValues")
GRADIENT_METHODS = ("LayerIntegratedGradients", "LayerGradientXActivation", "LayerGradientShap")


def _method_name(attr_method: object, names: tuple[str, ...], owner: str) -> str:
    """The supported class ``attr_method`` is (fastxai.compat.captum's or Captum's, or a subclass)."""
    for cls in type(attr_method).__mro__:
        if cls.__name__ in names and cls.__module__.startswith(("fastxai.", "captum.")):
            return cls.__name__
    raise CaptumTypeError(
        f"{owner} does not support attr_method {type(attr_method).__name__}; "
        f"it takes one of {', '.join(names)}"
    )


def _check_input(inp: object) -> None:
    needed = ("to_tensor", "to_model_input", "format_attr")
    if not all(callable(getattr(inp, name, None)) for name in needed) or not hasattr(inp, "values"):
        raise CaptumTypeError(
            "inp must be an interpretable input (TextTemplateInput, TextTokenInput or one with "
            f"to_tensor, to_model_input, format_attr and values), got {type(inp).__name__}"
        )


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise CaptumTypeError(f"{name} must be a bool, got {type(value).__name__}")


class _LLMBase(Attribution):
    """The model, tokenizer and device behind a wrapped attribution method, and the target."""

    methods: tuple[str, ...] = ()

    def __init__(self, attr_method: Any, tokenizer: Any) -> None:
        self.method_name = _method_name(attr_method, self.methods, type(self).__name__)
        super().__init__(attr_method.forward_func)
        self.model: Any = attr_method.forward_func
        if not (
            callable(getattr(tokenizer, "encode", None)) and callable(getattr(tokenizer, "decode", None))
        ):
            raise CaptumTypeError(
                f"tokenizer must have encode() and decode(), got {type(tokenizer).__name__}"
            )
        self.tokenizer = tokenizer
        device = getattr(self.model, "device", None)
        if device is None and isinstance(self.model, nn.Module):
            device = next(self.model.parameters()).device
        self.device = torch.device(device if device is not None else "cpu")

    def attribute_future(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"attribute_future is not implemented for {type(self).__name__}")

    def _model_input(self, model_input: Any) -> Any:
        """An input's model form as ids [1, L] on the device (a string is encoded), or a mapping."""
        if isinstance(model_input, str):
            model_input = self.tokenizer.encode(model_input, return_tensors="pt")
        if isinstance(model_input, torch.Tensor):
            return model_input.to(self.device)
        if isinstance(model_input, Mapping):
            return dict(model_input)
        raise TypeError(
            f"inp.to_model_input() must give a str, a tensor or a mapping, got {type(model_input).__name__}"
        )

    def _skip_ids(self, skip_tokens: object) -> list[int]:
        if skip_tokens is None:
            return []
        if not isinstance(skip_tokens, list):
            raise CaptumTypeError(
                f"skip_tokens must be a list of token ids or tokens, got {type(skip_tokens).__name__}"
            )
        if skip_tokens and all(isinstance(t, str) for t in skip_tokens):
            return list(self.tokenizer.convert_tokens_to_ids(skip_tokens))
        if not all(isinstance(t, int) and not isinstance(t, bool) for t in skip_tokens):
            raise CaptumTypeError(f"skip_tokens must hold only ints or only strs, got {skip_tokens!r}")
        return list(skip_tokens)

    def _target_tokens(self, inp: Any, target: object, skip_tokens: object, gen_args: object) -> torch.Tensor:
        """The continuation's ids [T] on the device: given (a string, or ids [T] / [1, T]) or
        generated (``target=None``: ``model.generate`` with ``gen_args``)."""
        skip = self._skip_ids(skip_tokens)
        if gen_args is not None and not isinstance(gen_args, dict):
            raise CaptumTypeError(f"gen_args must be a dict or None, got {type(gen_args).__name__}")
        if target is None:
            ids = self._generate(inp, gen_args or dict(DEFAULT_GEN_ARGS))
        elif gen_args is not None:
            raise CaptumArgumentError("gen_args must be None when target is given (it is for generating one)")
        elif isinstance(target, str):
            encoded = (
                self.tokenizer.encode(target)
                if skip
                else self.tokenizer.encode(target, add_special_tokens=False)
            )
            ids = torch.tensor(list(encoded), dtype=torch.long)
        elif isinstance(target, torch.Tensor):
            if (
                target.is_floating_point()
                or target.is_complex()
                or target.dim() > 2
                or (target.dim() == 2 and target.shape[0] != 1)
            ):
                raise CaptumArgumentError(
                    "target as a tensor must be token ids [T] or [1, T], "
                    f"got {target.dtype} {tuple(target.shape)}"
                )
            ids = target.reshape(-1).long()
        else:
            raise CaptumTypeError(
                f"target must be a str, a tensor of token ids or None, got {type(target).__name__}"
            )
        if skip:
            ids = ids[~torch.isin(ids, torch.tensor(skip, dtype=ids.dtype, device=ids.device))]
        if ids.numel() == 0:
            raise CaptumArgumentError("target has no tokens to attribute (after skip_tokens)")
        return ids.to(self.device)

    def _generate(self, inp: Any, gen_args: dict[str, Any]) -> torch.Tensor:
        generate = getattr(self.model, "generate", None)
        if not callable(generate):
            raise CaptumArgumentError("target=None needs a model with generate(); give the target instead")
        model_input = self._model_input(inp.to_model_input())
        args = dict(gen_args)
        pad = getattr(self.tokenizer, "pad_token_id", None)
        pad = getattr(self.tokenizer, "eos_token_id", None) if pad is None else pad
        if (
            pad is not None
            and "pad_token_id" not in args
            and type(self.model).__module__.startswith("transformers.")
        ):
            args["pad_token_id"] = pad  # else transformers warns that it picked one
        with torch.no_grad():
            if isinstance(model_input, dict):
                length = torch.as_tensor(model_input["input_ids"]).shape[-1]
                output = generate(**model_input, **args)
            else:
                length = model_input.shape[1]
                args.setdefault("attention_mask", torch.ones_like(model_input))
                output = generate(model_input, **args)
        return output[0][length:].detach().reshape(-1).long()


class LLMAttribution(_LLMBase):
    """Captum's ``LLMAttribution(attr_method, tokenizer, attr_target="log_prob")``: see the
    module doc. ``attribute`` returns an ``LLMAttributionResult``; ``token_attr`` is None for
    ``Lime`` and ``KernelShap``."""

    methods = PERTURBATION_METHODS

    def __init__(self, attr_method: Any, tokenizer: Any, attr_target: str = "log_prob") -> None:
        super().__init__(attr_method, tokenizer)
        if attr_target not in ("log_prob", "prob"):
            raise CaptumArgumentError(f"attr_target must be 'log_prob' or 'prob', got {attr_target!r}")
        self.attr_target = attr_target
        self.include_per_token_attr = self.method_name in PER_TOKEN_METHODS
        self.attr_method = copy(attr_method)  # shallow: the caller's instance keeps its forward
        self.attr_method.forward_func = self._forward_func
        self._active: _PromptScores | None = None

    def _forward_func(self, perturbed_tensor: torch.Tensor, *_: Any) -> torch.Tensor:
        if self._active is None:
            raise RuntimeError("LLMAttribution's forward runs only inside attribute()")
        return self._active(perturbed_tensor)

    def _scorer(
        self, target_tokens: torch.Tensor, teacher_forcing: bool, causal: bool
    ) -> Callable[[list[Any]], torch.Tensor]:
        scorer = ContinuationScorer(
            self.model, target_tokens, self.device, teacher_forcing=teacher_forcing, causal=causal
        )
        return scorer.score

    def attribute(
        self,
        inp: Any,
        target: str | torch.Tensor | None = None,
        skip_tokens: list[int] | list[str] | None = None,
        num_trials: int = 1,
        gen_args: dict[str, Any] | None = None,
        use_cached_outputs: bool = True,
        _inspect_forward: Callable[[str, str, list[float]], None] | None = None,
        forward_in_tokens: bool = True,
        **kwargs: Any,
    ) -> LLMAttributionResult:
        """Attributions of the continuation ``target`` (None: generated with ``gen_args``) to
        ``inp``'s features, averaged over ``num_trials`` runs of the method; ``kwargs`` go to
        the method's ``attribute`` (``n_samples``, ``feature_mask``, ``baselines``, ...)."""
        _check_input(inp)
        if isinstance(num_trials, bool) or not isinstance(num_trials, int) or num_trials < 1:
            raise CaptumArgumentError(f"num_trials must be an int >= 1, got {num_trials!r}")
        _check_bool(use_cached_outputs, "use_cached_outputs")
        _check_bool(forward_in_tokens, "forward_in_tokens")
        if _inspect_forward is not None and not callable(_inspect_forward):
            raise CaptumTypeError(f"_inspect_forward must be callable, got {type(_inspect_forward).__name__}")
        if "additional_forward_args" in kwargs:
            raise CaptumArgumentError(
                "additional_forward_args is LLMAttribution's own: the prompt and target"
            )
        with _model.preserved_state(self.model, eval_mode=False):
            target_tokens = self._target_tokens(inp, target, skip_tokens, gen_args)
            causal = is_causal_lm(self.model)
            teacher_forcing = not forward_in_tokens or causal
            scores = _PromptScores(
                self,
                inp,
                target_tokens,
                self._scorer(target_tokens, teacher_forcing, causal),
                _inspect_forward,
            )
            rows = 1 + target_tokens.shape[0] if self.include_per_token_attr else 1
            total = torch.zeros(rows, scores.features, device=self.device)
            self._active = scores
            try:
                for _ in range(num_trials):
                    found = self.attr_method.attribute(inp.to_tensor().to(self.device), **kwargs)
                    total += found.detach().reshape(rows, scores.features).to(total)
            finally:
                self._active = None
        attr = inp.format_attr(total / num_trials)
        return LLMAttributionResult(
            seq_attr=attr[0],
            token_attr=attr[1:] if self.include_per_token_attr else None,
            input_tokens=list(inp.values),
            output_tokens=pretty_tokens(target_tokens.cpu(), self.tokenizer),
            inp=inp,
        )


class _PromptScores:
    """The wrapped method's forward for one ``attribute`` call: perturbed rows [R, M] -> the
    scores [R, 1 + T] (total, then per token) or [R] (total only), all rows scored together."""

    def __init__(
        self,
        owner: LLMAttribution,
        inp: Any,
        target_tokens: torch.Tensor,
        scorer: Callable[[list[Any]], torch.Tensor],
        inspect: Callable[[str, str, list[float]], None] | None,
    ) -> None:
        self.owner, self.inp, self.target_tokens = owner, inp, target_tokens
        self.scorer, self.inspect = scorer, inspect
        self.features = int(inp.to_tensor().shape[-1])
        # Captum's TextTokenInput and fastxai's map every row at once; other inputs row by row
        self.rows_at_once = type(inp).__name__ == "TextTokenInput"
        self.encoded: dict[str, Any] = {}

    def _prompt(self, model_input: Any) -> Any:
        if isinstance(model_input, str):  # the same text from another perturbation: encoded once
            if model_input not in self.encoded:
                self.encoded[model_input] = self.owner._model_input(model_input)
            return self.encoded[model_input]
        return self.owner._model_input(model_input)

    def __call__(self, perturbed: torch.Tensor) -> torch.Tensor:
        rows = perturbed.reshape(-1, self.features)
        if self.rows_at_once:
            ids = self.inp.to_model_input(rows).reshape(rows.shape[0], -1)
            prompts: list[Any] = [self.owner._model_input(row) for row in ids]
        else:
            prompts = [self._prompt(self.inp.to_model_input(rows[r : r + 1])) for r in range(rows.shape[0])]
        log_probs = self.scorer(prompts)  # [R, T]
        scores = torch.cat([log_probs.sum(1, keepdim=True), log_probs], dim=1)
        if self.owner.attr_target == "prob":
            scores = scores.exp()
        if self.inspect is not None:
            response = self.owner.tokenizer.decode(self.target_tokens)
            for prompt, row in zip(prompts, scores, strict=True):
                ids = prompt["input_ids"] if isinstance(prompt, dict) else prompt
                text = (
                    prompt
                    if isinstance(prompt, str)
                    else self.owner.tokenizer.decode(torch.as_tensor(ids).reshape(-1))
                )
                self.inspect(
                    text,
                    response,
                    row.exp().tolist() if self.owner.attr_target == "log_prob" else row.tolist(),
                )
        return scores if self.owner.include_per_token_attr else scores[:, 0]


class _PlaceholderModel:
    """``RemoteLLMAttribution.placeholder_model``: a callable with a ``device`` for the wrapped
    method's constructor when the model lives behind an API."""

    def __init__(self) -> None:
        self.device: torch.device | str = torch.device("cpu")

    def __call__(self, *args: Any, **kwargs: Any) -> int:
        return 0


class RemoteLLMAttribution(LLMAttribution):
    """Captum's ``RemoteLLMAttribution(attr_method, tokenizer, provider, attr_target)``: the
    scores come from ``provider.get_logprobs(input_prompt, target_str, tokenizer)`` (one
    log-probability per target token), the continuation for ``target=None`` from
    ``provider.generate(prompt, **gen_args)``. A prompt text already asked about in a call is
    not asked again."""

    placeholder_model = _PlaceholderModel()

    def __init__(
        self, attr_method: Any, tokenizer: Any, provider: Any, attr_target: str = "log_prob"
    ) -> None:
        super().__init__(attr_method, tokenizer, attr_target)
        if not callable(getattr(provider, "get_logprobs", None)):
            raise CaptumTypeError(f"provider must have get_logprobs(), got {type(provider).__name__}")
        self.provider = provider

    def _text(self, model_input: Any) -> str:
        if isinstance(model_input, torch.Tensor):
            return str(self.tokenizer.decode(model_input.reshape(-1)))
        if not isinstance(model_input, str):
            raise TypeError(f"a remote prompt must be a str or token ids, got {type(model_input).__name__}")
        return model_input

    def _model_input(self, model_input: Any) -> Any:
        return self._text(model_input)

    def _generate(self, inp: Any, gen_args: dict[str, Any]) -> torch.Tensor:
        if not callable(getattr(self.provider, "generate", None)):
            raise CaptumArgumentError("target=None needs a provider with generate(); give the target instead")
        text = self.provider.generate(self._text(inp.to_model_input()), **gen_args)
        encoded = self.tokenizer.encode(text, return_tensors="pt", add_special_tokens=False)
        return torch.as_tensor(encoded).reshape(-1).long()

    def _scorer(
        self, target_tokens: torch.Tensor, teacher_forcing: bool, causal: bool
    ) -> Callable[[list[Any]], torch.Tensor]:
        target_str = self.tokenizer.decode(target_tokens)
        count = target_tokens.shape[0]
        asked: dict[str, torch.Tensor] = {}

        def score(prompts: list[Any]) -> torch.Tensor:
            rows = []
            for prompt in prompts:
                text = self._text(prompt)
                if text not in asked:
                    values = list(
                        self.provider.get_logprobs(
                            input_prompt=text, target_str=target_str, tokenizer=self.tokenizer
                        )
                    )
                    if len(values) != count:
                        raise ValueError(
                            f"the provider returned {len(values)} log-probabilities "
                            f"for a target of {count} tokens"
                        )
                    asked[text] = torch.tensor(values, dtype=torch.float32, device=self.device)
                rows.append(asked[text])
            return torch.stack(rows)

        return score


def __getattr__(name: str) -> Any:
    # the gradient face lives in its own module (it builds on _LLMBase here)
    if name == "LLMGradientAttribution":
        from fastxai.compat._captum_llm_gradient import LLMGradientAttribution

        return LLMGradientAttribution
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DEFAULT_GEN_ARGS", "LLMAttribution", "LLMGradientAttribution", "RemoteLLMAttribution"]  # noqa: F822
