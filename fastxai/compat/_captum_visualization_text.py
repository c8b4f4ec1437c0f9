"""Captum's text visualisation: one HTML table row per example, each word on a background whose
colour says its attribution: green for positive (lightness ``100 - int(50 a)`` %), red for
negative (``100 - int(40 |a|)`` %), white at zero, ``a`` clipped to [-1, 1]."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from fastxai.compat._captum_targets import CaptumArgumentError

RECORD_FIELDS = (
    "word_attributions",
    "pred_prob",
    "pred_class",
    "true_class",
    "attr_class",
    "attr_score",
    "raw_input_ids",
    "convergence_score",
)
"""``VisualizationDataRecord``'s fields in the constructor's order."""


class VisualizationDataRecord:
    """Captum's ``VisualizationDataRecord``: what ``visualize_text`` shows of one example."""

    __slots__ = [
        "attr_class",
        "attr_score",
        "convergence_score",
        "pred_class",
        "pred_prob",
        "raw_input_ids",
        "true_class",
        "word_attributions",
    ]

    def __init__(
        self,
        word_attributions: torch.Tensor,
        pred_prob: float,
        pred_class: int,
        true_class: int,
        attr_class: int,
        attr_score: float,
        raw_input_ids: list[str],
        convergence_score: float,
    ) -> None:
        self.word_attributions = word_attributions
        self.pred_prob = pred_prob
        self.pred_class = pred_class
        self.true_class = true_class
        self.attr_class = attr_class
        self.attr_score = attr_score
        self.raw_input_ids = raw_input_ids
        self.convergence_score = convergence_score

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in RECORD_FIELDS)
        return f"VisualizationDataRecord({fields})"


class HTMLText:
    """HTML markup for a notebook when IPython is not installed: ``.data`` holds it (as in
    ``IPython.display.HTML``), ``_repr_html_`` renders it, ``str()`` gives it."""

    def __init__(self, data: str) -> None:
        self.data = data

    def _repr_html_(self) -> str:
        return self.data

    def __str__(self) -> str:
        return self.data

    def __repr__(self) -> str:
        return f"HTMLText({len(self.data)} characters)"


def _colours(importances: Any) -> list[str]:
    """The background of each importance, computed in its own dtype (as Captum does: a float32
    tensor's -0.35 gives lightness 86 %, the float -0.35 gives 86 % too, float(float32) 87 %)."""
    if isinstance(importances, torch.Tensor):
        tensor = importances.detach().cpu()
        values = (tensor.float() if tensor.dtype in (torch.float16, torch.bfloat16) else tensor).numpy()
    else:
        values = np.asarray(importances)
    values = np.clip(values, -1, 1)
    green = 100 - (50 * values).astype(np.int64)
    red = 100 - (-40 * values).astype(np.int64)
    return [
        f"hsl(120, 75%, {light}%)" if value > 0 else f"hsl(0, 75%, {dark}%)"
        for value, light, dark in zip(values.tolist(), green.tolist(), red.tolist(), strict=True)
    ]


def format_classname(classname: str | int) -> str:
    """A table cell with ``classname`` in bold."""
    return f'<td><text style="padding-right:2em"><b>{classname}</b></text></td>'


def format_special_tokens(token: str) -> str:
    """``<s>`` -> ``#s``: a token in angle brackets shown as text, not taken for a tag."""
    if token.startswith("<") and token.endswith(">"):
        return "#" + token.strip("<>")
    return token


def format_tooltip(item: str, text: str) -> str:
    """``item`` with ``text`` in a tooltip (the page's ``tooltip`` CSS classes)."""
    return f'<div class="tooltip">{item} <span class="tooltiptext">{text}</span> </div>'


def format_word_importances(
    words: Sequence[str], importances: Sequence[float] | np.ndarray | torch.Tensor | None
) -> str:
    """A table cell with each word on its attribution's colour; ``importances`` [>= len(words)]
    (one per word, extra values ignored). Words are HTML-escaped (Captum inserts them raw)."""
    if importances is None or len(importances) == 0:
        return "<td></td>"
    if isinstance(importances, (np.ndarray, torch.Tensor)) and importances.ndim != 1:
        raise CaptumArgumentError(f"importances must be 1-d, got shape {tuple(importances.shape)}")
    if len(words) > len(importances):
        raise CaptumArgumentError(
            f"importances must have a value per word ({len(words)}), got {len(importances)}"
        )
    marks = [
        f'<mark style="background-color: {colour}; opacity:1.0; line-height:1.75">'
        f'<font color="black"> {html.escape(format_special_tokens(word))} </font></mark>'
        for word, colour in zip(words, _colours(importances[: len(words)]), strict=True)
    ]
    return "<td>" + "".join(marks) + "</td>"


def _legend() -> str:
    labels = ("Negative", "Neutral", "Positive")
    swatches = "".join(
        '<span style="display: inline-block; width: 10px; height: 10px; border: 1px solid; '
        f'background-color: {colour}"></span> {label}  '
        for colour, label in zip(_colours([-1, 0, 1]), labels, strict=True)
    )
    return (
        '<div style="border-top: 1px solid; margin-top: 5px; padding-top: 5px; display: inline-block">'
        f"<b>Legend: </b>{swatches}</div>"
    )


def visualize_text(datarecords: Iterable[VisualizationDataRecord], legend: bool = True) -> Any:
    """Captum's ``visualize_text``: a table of the records (true, predicted with its probability
    and attributed class, attribution score, the words on their colours), with a colour legend.

    With IPython installed, the table is displayed (``IPython.display.display``) and returned as
    ``IPython.display.HTML``, as Captum does. Without it (Captum then raises), nothing is displayed
    and an ``HTMLText`` is returned: ``.data`` is the markup, and notebooks render it.

    >>> record = viz.VisualizationDataRecord(attr, 0.9, 1, 1, 1, attr.sum(), ["a", "good", "film"], 0.0)
    >>> markup = viz.visualize_text([record]).data
    """
    header = "".join(
        f"<th>{name}</th>"
        for name in (
            "True Label",
            "Predicted Label",
            "Attribution Label",
            "Attribution Score",
            "Word Importance",
        )
    )
    rows = [f"<tr>{header}</tr>"]
    for record in datarecords:
        cells = [
            format_classname(record.true_class),
            format_classname(f"{record.pred_class} ({float(record.pred_prob):.2f})"),
            format_classname(record.attr_class),
            format_classname(f"{float(record.attr_score):.2f}"),
            format_word_importances(record.raw_input_ids, record.word_attributions),
        ]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    # the legend above the table: where browsers put Captum's, which sits inside the <table> tag
    markup = (_legend() if legend else "") + '<table style="width: 100%">' + "".join(rows) + "</table>"
    try:
        from IPython.display import HTML, display
    except ImportError:
        return HTMLText(markup)
    shown = HTML(markup)
    display(shown)
    return shown
