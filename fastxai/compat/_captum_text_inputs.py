"""Captum's interpretable text inputs for ``LLMAttribution``: ``TextTemplateInput`` (segments of
a template, present or replaced by their baselines) and ``TextTokenInput`` (the tokens of a
text, present or replaced by one baseline token).

    from fastxai.compat import captum as fc
    inp = fc.TextTemplateInput("{} lives in {}", values=["Dave", "Palm Coast"])
    inp.to_model_input(torch.tensor([[0, 1]]))        # " lives in Palm Coast"

An interpretable input (Lime's simplified input ``x'``, Ribeiro et al. 2016; SHAP's, Lundberg
and Lee 2017) is a 0/1 row ``x'`` [1, M], one entry per feature, and a map ``x = h(x')`` to the
model's input: ``to_tensor()`` is ``x'`` for the unperturbed input (all ones),
``to_model_input(x')`` is ``h(x')`` (a feature whose entry is not 1 takes its baseline),
``format_attr`` maps attributions over the M features back to the user's features (grouped
template segments share their group's value). Captum's constructors and attributes; where
Captum asserts, the errors are ``ValueError``/``TypeError`` that are also ``AssertionError``
and name the argument. Not provided: Captum's ``ImageMaskInput`` (``LLMAttribution`` takes
Captum's own by duck typing).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from fastxai.compat._captum_targets import CaptumArgumentError, CaptumTypeError


class InterpretableInput(ABC):
    """Captum's base: ``to_tensor()`` (``x'``, [1, M]), ``to_model_input(x')`` (``h(x')``),
    ``format_attr``, ``n_itp_features`` (M) and ``values`` (the features' names)."""

    n_itp_features: int
    values: list[str]

    @abstractmethod
    def to_tensor(self) -> torch.Tensor:
        """The unperturbed interpretable row ``x'`` [1, M]."""

    @abstractmethod
    def to_model_input(self, perturbed_tensor: torch.Tensor | None = None) -> Any:
        """``h(x')`` for ``x' = perturbed_tensor`` (None: the unperturbed model input)."""

    def format_attr(self, itp_attr: torch.Tensor) -> torch.Tensor:
        """Attributions ``[..., M]`` over the interpretable features, in the user's features."""
        return itp_attr


def _segments(values: object, name: str, keys: list[str] | None) -> list[Any]:
    """A list, or a dict read in ``keys``' order (the values' keys)."""
    if keys:
        if not isinstance(values, dict):
            raise CaptumTypeError(f"{name} must be a dict like values, got {type(values).__name__}")
        missing = [key for key in keys if key not in values]
        if missing:
            raise CaptumArgumentError(f"{name} has no entry for {missing}")
        return [values[key] for key in keys]
    if not isinstance(values, list):
        raise CaptumTypeError(f"{name} must be a list like values, got {type(values).__name__}")
    return list(values)


class TextTemplateInput(InterpretableInput):
    """Segments of a text as features: ``template`` (a ``str.format`` string or a function of
    the segments) filled with ``values`` (a list, or a dict for named fields); an absent segment
    takes its entry of ``baselines`` (default ``""``: removed; or a function returning such a
    list / dict, called once per perturbed input, e.g. ``ProductBaselines``). ``mask`` (like
    values, group ids) makes the segments of one id one feature.

    >>> inp = TextTemplateInput("{} feels {}", values=["He", "sad"], baselines=["It", "fine"])
    >>> inp.to_model_input(torch.tensor([[0, 1]]))        # "It feels sad"
    """

    def __init__(
        self,
        template: str | Callable[..., str],
        values: list[str] | dict[str, str],
        baselines: list[str] | dict[str, str] | Callable[[], Any] | None = None,
        mask: list[int] | dict[str, int] | None = None,
    ) -> None:
        if not isinstance(values, (list, dict)):
            raise CaptumTypeError(f"values must be a list or a dict, got {type(values).__name__}")
        self.dict_keys: list[str] = list(values) if isinstance(values, dict) else []
        self.values = _segments(values, "values", self.dict_keys)
        self.n_features = len(self.values)
        if baselines is None:
            baselines = [""] * self.n_features
        elif not callable(baselines):
            baselines = _segments(baselines, "baselines", self.dict_keys)
            if len(baselines) != self.n_features:
                raise CaptumArgumentError(
                    f"baselines must have one entry per value ({self.n_features}), got {len(baselines)}"
                )
        self.baselines = baselines
        self.mask = mask
        if mask is None:
            self.formatted_mask = list(range(self.n_features))
        else:
            ids = _segments(mask, "mask", self.dict_keys)
            if len(ids) != self.n_features:
                raise CaptumArgumentError(
                    f"mask must have one id per value ({self.n_features}), got {len(ids)}"
                )
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise CaptumTypeError(f"mask ids must be ints, got {ids}")
            index = {group: position for position, group in enumerate(sorted(set(ids)))}
            self.formatted_mask = [index[group] for group in ids]  # groups renumbered 0..M-1
        self.n_itp_features = len(set(self.formatted_mask))
        self.template = template
        if isinstance(template, str):
            self.format_fn: Callable[..., str] = template.format
        elif callable(template):
            self.format_fn = template
        else:
            raise CaptumTypeError(f"template must be a str or a callable, got {type(template).__name__}")

    def to_tensor(self) -> torch.Tensor:
        return torch.ones(1, self.n_itp_features)

    def _baseline_values(self) -> list[Any]:
        if not callable(self.baselines):
            return self.baselines
        drawn = _segments(self.baselines(), "baselines()", self.dict_keys)
        if len(drawn) != self.n_features:
            raise CaptumArgumentError(f"baselines() must return {self.n_features} entries, got {len(drawn)}")
        return drawn

    def to_model_input(self, perturbed_tensor: torch.Tensor | None = None) -> str:
        """The text for the first row of ``perturbed_tensor`` [1, M] (Captum reads row 0)."""
        values = list(self.values)
        if perturbed_tensor is not None:
            row = perturbed_tensor.reshape(-1, self.n_itp_features)[0].tolist()
            if not all(row[group] for group in self.formatted_mask):  # baselines only when needed
                base = self._baseline_values()
                values = [
                    v if row[g] else base[i]
                    for i, (v, g) in enumerate(zip(values, self.formatted_mask, strict=True))
                ]
        if self.dict_keys:
            return self.format_fn(**dict(zip(self.dict_keys, values, strict=True)))
        return self.format_fn(*values)

    def format_attr(self, itp_attr: torch.Tensor) -> torch.Tensor:
        """``[..., M]`` -> ``[..., n_features]``: each segment takes its group's attribution."""
        if self.mask is None:
            return itp_attr
        return itp_attr[..., torch.tensor(self.formatted_mask, device=itp_attr.device)]


class TextTokenInput(InterpretableInput):
    """The tokens of ``text`` (``tokenizer.encode(text, return_tensors="pt")``) as features; an
    absent token is replaced by ``baselines`` (a token id, or a token string). Tokens in
    ``skip_tokens`` (ids or strings, e.g. the BOS token) stay and are not features.

    >>> inp = TextTokenInput("the cat sat", tokenizer, baselines=tokenizer.unk_token_id, skip_tokens=[1])
    >>> inp.to_model_input(torch.tensor([[1, 0, 1]]))      # ids of "<s> the <unk> sat"
    """

    def __init__(
        self,
        text: str,
        tokenizer: Any,
        baselines: int | str = 0,
        skip_tokens: list[int] | list[str] | None = None,
    ) -> None:
        if not isinstance(text, str):
            raise CaptumTypeError(f"text must be a str, got {type(text).__name__}")
        if not callable(getattr(tokenizer, "encode", None)):
            raise CaptumTypeError(f"tokenizer must have encode(), got {type(tokenizer).__name__}")
        ids = tokenizer.encode(text, return_tensors="pt")
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.shape[0] != 1:
            raise CaptumArgumentError(
                "tokenizer.encode(text, return_tensors='pt') must return a [1, L] tensor"
            )
        self.inp_tensor = ids
        self.itp_tensor = ids
        self.itp_mask: torch.Tensor | None = None
        if skip_tokens:
            skip = _token_ids(tokenizer, skip_tokens, "skip_tokens")
            keep = ~torch.isin(ids, torch.tensor(skip, dtype=ids.dtype))
            self.itp_mask = keep
            self.itp_tensor = ids[keep].unsqueeze(0)
        self.skip_tokens = skip_tokens
        self.tokenizer = tokenizer
        self.values = list(tokenizer.convert_ids_to_tokens(self.itp_tensor[0].tolist()))
        self.n_itp_features = len(self.values)
        if isinstance(baselines, str):
            baselines = _token_ids(tokenizer, [baselines], "baselines")[0]
        if isinstance(baselines, bool) or not isinstance(baselines, int):
            raise CaptumTypeError(
                f"baselines must be a token id (int) or a token (str), got {type(baselines).__name__}"
            )
        self.baselines: int = baselines

    def to_tensor(self) -> torch.Tensor:
        return torch.ones_like(self.itp_tensor)

    def to_model_input(self, perturbed_tensor: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [R, L] for the rows [R, M] of ``perturbed_tensor`` (all rows at once)."""
        if perturbed_tensor is None:
            return self.inp_tensor
        device = perturbed_tensor.device
        rows = perturbed_tensor.shape[0]
        tokens = self.itp_tensor.to(device).expand(rows, -1).clone()
        tokens[perturbed_tensor != 1] = self.baselines
        if self.itp_mask is None:
            return tokens
        ids = self.inp_tensor.to(device).expand(rows, -1).clone()
        ids[:, self.itp_mask[0].to(device)] = tokens
        return ids


def _token_ids(tokenizer: Any, tokens: list[Any], name: str) -> list[int]:
    """Token ids for a list of ids or of token strings (``tokenizer.convert_tokens_to_ids``)."""
    if all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        return list(tokens)
    if all(isinstance(t, str) for t in tokens):
        ids = tokenizer.convert_tokens_to_ids(list(tokens))
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise CaptumArgumentError(f"{name}: the tokenizer does not know the tokens {tokens}")
        return ids
    raise CaptumTypeError(f"{name} must be a list of token ids (ints) or of tokens (strs), got {tokens!r}")


__all__ = ["InterpretableInput", "TextTemplateInput", "TextTokenInput"]
