"""Captum's baseline helpers: ``TokenReferenceBase`` (a reference sequence of one token) and
``ProductBaselines`` (a draw from the Cartesian product of per-feature baseline values).

    from fastxai.compat import captum as fc
    ref = fc.TokenReferenceBase(reference_token_idx=pad_id).generate_reference(seq_len, device)
    attr = fc.LayerIntegratedGradients(model, model.embedding).attribute(ids, ref.unsqueeze(0), target=y)

``TokenReferenceBase(i).generate_reference(L, device)`` is ``[i, i, ..., i]``, a long tensor
[L]: the baseline of a text model's token ids (``i`` the padding token, usually), attributed at
the embedding layer with ``LayerIntegratedGradients``, since ids cannot be interpolated.

``ProductBaselines(values)``, called with no argument, returns one baseline per feature drawn
uniformly and independently from that feature's list: a sample from
``values[0] x values[1] x ...``. With a dict ``{name: [v, ...]}`` the draw is a dict; a tuple key
``(a, b): [(va, vb), ...]`` draws the values of features that go together as one choice. The
draws come from Python's ``random`` module as Captum's do, so after ``random.seed(s)`` both give
the same samples. In Captum 0.9 it feeds the text templates of ``LLMAttribution``
(``TextTemplateInput(baselines=...)``); its ``KernelShap``, ``Lime``, ``ShapleyValueSampling``,
``FeatureAblation`` and ``Occlusion`` refuse it (their baselines are numbers or tensors), and so
do fastxai's, with a ``TypeError`` naming ``baselines``.

Differences from Captum, on purpose: arguments are checked when given (a non-int token index,
a negative length, an empty list of choices, a tuple key whose values are not tuples of its
length raise an error naming the argument; Captum fails later or truncates silently); a
reference of length 0 is an empty int64 tensor (Captum's is float32).
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from typing import Any

import torch

__all__ = ["ProductBaselines", "TokenReferenceBase"]


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class TokenReferenceBase:
    """A reference sequence of one token (Captum's ``TokenReferenceBase``).

    >>> ref = TokenReferenceBase(reference_token_idx=0).generate_reference(7, torch.device("cpu"))
    >>> ref.tolist()                                     # [0, 0, 0, 0, 0, 0, 0], dtype int64
    """

    def __init__(self, reference_token_idx: int = 0) -> None:
        if not _is_int(reference_token_idx):
            raise TypeError(
                f"reference_token_idx must be an int (a token id), got {type(reference_token_idx).__name__}"
            )
        if reference_token_idx < 0:
            raise ValueError(f"reference_token_idx must be a token id >= 0, got {reference_token_idx}")
        self.reference_token_idx = reference_token_idx

    def generate_reference(self, sequence_length: int, device: torch.device | str | None) -> torch.Tensor:
        """The reference ids [sequence_length], int64, on ``device``."""
        if not _is_int(sequence_length):
            raise TypeError(f"sequence_length must be an int, got {type(sequence_length).__name__}")
        if sequence_length < 0:
            raise ValueError(f"sequence_length must be >= 0, got {sequence_length}")
        return torch.full((sequence_length,), self.reference_token_idx, dtype=torch.long, device=device)


def _choices(values: object, label: str) -> list[Any]:
    """One feature's baseline values: a non-empty list or tuple (a string is one value, not a list)."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{label} must be a list of baseline values, got {type(values).__name__}")
    if not values:
        raise ValueError(f"{label} is empty: every feature needs at least one baseline value")
    return list(values)


class ProductBaselines:
    """Baselines drawn from the Cartesian product of each feature's values (Captum's
    ``ProductBaselines``); a callable with no argument.

    baseline_values: a list of lists (one per feature; a draw is a list), or a dict from a name,
    or a tuple of names drawn together, to a list of values (of tuples for a tuple key; a draw
    is a dict from each name to its value).

    >>> ProductBaselines({("f1", "f2"): [(1, "a"), (2, "b")], "f3": [4, 5]})()
    {'f1': 2, 'f2': 'b', 'f3': 4}                        # one draw
    """

    def __init__(self, baseline_values: list[list[Any]] | dict[Hashable, list[Any]]) -> None:
        if isinstance(baseline_values, dict):
            keys: list[Hashable] = list(baseline_values)
            choices = [_choices(baseline_values[k], f"baseline_values[{k!r}]") for k in keys]
            for key, values in zip(keys, choices, strict=True):
                if isinstance(key, tuple):
                    _check_grouped(key, values)
        elif isinstance(baseline_values, (list, tuple)):
            keys = []
            choices = [_choices(v, f"baseline_values[{i}]") for i, v in enumerate(baseline_values)]
        else:
            kind = type(baseline_values).__name__
            raise TypeError(f"baseline_values must be a list of lists or a dict of lists, got {kind}")
        # Captum's attribute names: code that reads them keeps working.
        self.dict_keys = keys
        self.baseline_values = choices

    def sample(self) -> list[Any] | dict[Hashable, Any]:
        """One draw: a value per feature, uniform and independent across features."""
        drawn = [random.choice(values) for values in self.baseline_values]
        if not self.dict_keys:
            return drawn
        sample: dict[Hashable, Any] = {}
        for key, value in zip(self.dict_keys, drawn, strict=True):
            if isinstance(key, tuple):
                sample.update(zip(key, value, strict=True))  # features that go together
            else:
                sample[key] = value
        return sample

    def __call__(self) -> list[Any] | dict[Hashable, Any]:
        return self.sample()


def _check_grouped(key: tuple[Hashable, ...], values: Sequence[Any]) -> None:
    """A tuple key's values must be tuples (or lists) with one entry per name in the key."""
    for value in values:
        if not isinstance(value, (tuple, list)) or len(value) != len(key):
            raise ValueError(
                f"baseline_values[{key!r}] must hold tuples of {len(key)} values (one per name in the "
                f"key), got {value!r}"
            )
