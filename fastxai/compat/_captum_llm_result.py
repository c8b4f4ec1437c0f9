"""Captum's ``LLMAttributionResult`` (what ``LLMAttribution.attribute`` returns) and readable
output tokens.

``seq_attr`` [M] is the attribution of the whole continuation's score to the M input features,
``token_attr`` [T, M] (None for Lime and KernelSHAP) that of each output token's score;
``input_tokens`` (M names) and ``output_tokens`` (T strings) label them. With
``attr_target="log_prob"`` and feature ablation, ``seq_attr == token_attr.sum(0)``: the
sequence's log-probability is the sum of its tokens'.

    result = fc.LLMAttribution(fc.FeatureAblation(model), tokenizer).attribute(inp, target="Paris")
    result.seq_attr_dict                    # {"Dave": -0.41, "Palm Coast": 2.3, ...}
    fig, ax = result.plot_token_attr()      # matplotlib, imported on first use
"""

from __future__ import annotations

import warnings
from textwrap import shorten
from typing import Any, cast

import torch

from fastxai.compat._captum_targets import CaptumArgumentError


def _tensor(value: Any, name: str, dims: int) -> torch.Tensor:
    tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    if tensor.dim() != dims:
        raise CaptumArgumentError(f"{name} must be a {dims}-D tensor, got shape {tuple(tensor.shape)}")
    return tensor


class LLMAttributionResult:
    """Captum 0.9's result: keyword-only ``input_tokens``, ``output_tokens``, ``seq_attr`` [M],
    ``token_attr`` [T, M] or None, ``output_probs`` [T] or None, ``inp`` (the input it explains);
    shapes are checked whenever a field is set."""

    def __init__(
        self,
        *,
        input_tokens: list[str],
        output_tokens: list[str],
        seq_attr: Any,
        token_attr: Any = None,
        output_probs: Any = None,
        inp: Any = None,
    ) -> None:
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.seq_attr = seq_attr
        self.token_attr = token_attr
        self.output_probs = output_probs
        self.inp = inp

    @property
    def seq_attr(self) -> torch.Tensor:
        return self._seq_attr

    @seq_attr.setter
    def seq_attr(self, value: Any) -> None:
        tensor = _tensor(value, "seq_attr", 1)
        if tensor.shape[0] != len(self.input_tokens):
            raise CaptumArgumentError(
                f"seq_attr has {tensor.shape[0]} entries for {len(self.input_tokens)} input_tokens"
            )
        self._seq_attr = tensor

    @property
    def token_attr(self) -> torch.Tensor | None:
        return self._token_attr

    @token_attr.setter
    def token_attr(self, value: Any) -> None:
        tensor = None if value is None else _tensor(value, "token_attr", 2)
        expected = (len(self.output_tokens), len(self.input_tokens))
        if tensor is not None and tuple(tensor.shape) != expected:
            raise CaptumArgumentError(f"token_attr must have shape {expected}, got {tuple(tensor.shape)}")
        self._token_attr = tensor

    @property
    def output_probs(self) -> torch.Tensor | None:
        return self._output_probs

    @output_probs.setter
    def output_probs(self, value: Any) -> None:
        tensor = None if value is None else _tensor(value, "output_probs", 1)
        if tensor is not None and tensor.shape[0] != len(self.output_tokens):
            raise CaptumArgumentError(
                f"output_probs has {tensor.shape[0]} entries for {len(self.output_tokens)} output_tokens"
            )
        self._output_probs = tensor

    @property
    def seq_attr_dict(self) -> dict[str, float]:
        """``{input token: its sequence attribution}`` (a repeated token keeps its last value)."""
        return dict(zip(self.input_tokens, self.seq_attr.cpu().tolist(), strict=True))

    def plot_token_attr(self, show: bool = False) -> Any:
        """Heatmap of ``token_attr`` (output tokens down, input tokens across), 0 at the centre of
        a red-white-green scale; ``(figure, axes)``, or None after ``plt.show()`` with ``show``."""
        if self.token_attr is None:
            raise ValueError(
                "token_attr is None (this method gives no per-token attribution): use plot_seq_attr"
            )
        import matplotlib.pyplot as plt

        data = self.token_attr.detach().float().cpu().numpy()
        bound = float(abs(data).max()) or 1.0
        fig, ax = plt.subplots(figsize=(max(data.shape[1] * 1.3, 6.4), max(data.shape[0] / 2.5, 4.8)))
        image = ax.imshow(data, vmin=-bound, vmax=bound, cmap=_colormap(), aspect="auto")
        fig.colorbar(image, ax=ax).ax.set_ylabel("Token Attribution", rotation=-90, va="bottom")
        ax.set_xticks(range(data.shape[1]), labels=_labels(self.input_tokens))
        ax.set_yticks(range(data.shape[0]), labels=_labels(self.output_tokens))
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        plt.setp(ax.get_xticklabels(), rotation=-30, ha="right", rotation_mode="anchor")
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                light = (
                    0.2 < float(cast(Any, image.norm(data[i, j].item()))) < 0.8
                )  # dark text on light cells
                ax.text(
                    j, i, f"{data[i, j]:.4f}", ha="center", va="center", color="black" if light else "white"
                )
        return _finish(plt, fig, ax, show)

    def plot_seq_attr(self, show: bool = False) -> Any:
        """Bar chart of ``seq_attr`` per input token (positive green-blue, negative red)."""
        import matplotlib.pyplot as plt

        data = self.seq_attr.detach().float().cpu().numpy()
        fig, ax = plt.subplots(figsize=(max(data.shape[0] / 2, 6.4), max(data.shape[0] / 4, 4.8)))
        ax.set_xticks(range(data.shape[0]), labels=_labels(self.input_tokens))
        ax.tick_params(top=True, bottom=False, labeltop=True, labelbottom=False)
        plt.setp(ax.get_xticklabels(), rotation=-30, ha="right", rotation_mode="anchor")
        ax.bar(range(data.shape[0]), data.clip(min=0), align="center", color="#4772b3")
        ax.bar(range(data.shape[0]), data.clip(max=0), align="center", color="#d0365b")
        ax.set_ylabel("Sequence Attribution")
        return _finish(plt, fig, ax, show)


def _colormap() -> Any:
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("RdWhGn", ["red", "white", "green"])


def _labels(tokens: list[str]) -> list[str]:
    return [shorten(repr(token)[1:-1], width=50, placeholder="...") for token in tokens]


def _finish(plt: Any, fig: Any, ax: Any, show: bool) -> Any:
    fig.set_facecolor("white")
    if show:
        plt.show()
        return None
    return fig, ax


def pretty_tokens(ids: torch.Tensor, tokenizer: Any) -> list[str]:
    """The text of each token id as it reads in the decoded continuation (no ``Ġ`` / ``▁``
    markers, surrounding spaces stripped, newlines as ``\\n``, `` [OVERLAP]`` after a token
    whose text a previous one already covers): the whole continuation is decoded once and cut at
    the offsets of its re-encoding when that gives the same ids back; otherwise each id is
    decoded alone."""
    id_list = [int(i) for i in ids.reshape(-1).tolist()]
    text = tokenizer.decode(ids)
    try:
        encoded = tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        again, offsets = list(encoded["input_ids"]), list(encoded["offset_mapping"])
    except (TypeError, NotImplementedError, KeyError, ValueError):  # a tokenizer without offsets
        again, offsets = [], []
    if again != id_list or len(offsets) != len(id_list):
        if again:
            warnings.warn(
                "the decoded continuation does not re-encode to its token ids; each token is decoded alone",
                stacklevel=3,
            )
        return [_clean(tokenizer.decode(ids.reshape(-1)[k : k + 1])) for k in range(len(id_list))]
    starts = [start for start, _ in offsets] + [len(text)]
    pieces, reached = [], -1
    for k, (start, end) in enumerate(offsets):
        if start == end:  # a token without a span (a special token): up to the next one's start
            end = starts[k + 1]
        # tokens sharing characters (the bytes of one emoji) are marked as Captum marks them
        pieces.append(_clean(text[start:end]) + (" [OVERLAP]" if start < reached else ""))
        reached = max(reached, end)
    return pieces


def _clean(token: str) -> str:
    return token.replace("\n", "\\n").strip()


__all__ = ["LLMAttributionResult", "pretty_tokens"]
