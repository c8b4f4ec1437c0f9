"""Reading a model's output: the one tensor every method explains, out of a tensor, a tuple, a
dict or a Hugging Face ``ModelOutput``, and ``select_output`` to pick another field.

Why a wrapper and not an ``output=`` argument on every method: one wrapper serves every face
(the functions, the Captum- and torchattacks-shaped classes, the dataset runner) without a
keyword on each of them, and it is a module, so the methods still put the wrapped model in eval
mode and back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn

OutputSelector = Callable[[Any], torch.Tensor] | str | int
"""Which tensor of a model's output to read: a key or attribute name (``"logits"``,
``"pooler_output"``), a position in a tuple, or a callable taking the raw output."""


def output_tensor(output: Any, select: OutputSelector | None = None) -> torch.Tensor:
    """The tensor a method reads from a model's raw ``output``; every method reads through here.

    Without ``select``: a tensor itself; a tuple or list: its first element; a mapping (a dict
    or a Hugging Face ``ModelOutput``): its ``"logits"``, else its first tensor value. With
    ``select`` (see ``OutputSelector``): that field, or ``select(output)``.
    """
    if select is not None:
        if callable(select):
            picked = select(output)
        elif isinstance(select, str):
            if isinstance(output, Mapping) and select in output:
                picked = output[select]
            elif hasattr(output, select):
                picked = getattr(output, select)
            else:
                raise ValueError(
                    f"output {select!r} is neither a key nor an attribute of the model's "
                    f"{type(output).__name__} output"
                )
        elif isinstance(output, (tuple, list)) and -len(output) <= select < len(output):
            picked = output[select]
        else:
            raise ValueError(
                f"output {select!r} is not a position of the model's {type(output).__name__} output"
            )
        if not isinstance(picked, torch.Tensor):
            raise TypeError(f"output {select!r} must select a tensor, got {type(picked).__name__}")
        return picked
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        if output and isinstance(output[0], torch.Tensor):
            return output[0]
    elif isinstance(output, Mapping):
        logits = output.get("logits")
        if isinstance(logits, torch.Tensor):
            return logits
        for value in output.values():
            if isinstance(value, torch.Tensor):
                return value
    raise TypeError(
        f"model must return a tensor, a tuple or list starting with one, or a mapping holding one, "
        f"got {type(output).__name__}; fastxai.select_output(model, output=...) picks another field"
    )


def check_output_selector(output: object) -> OutputSelector:
    if isinstance(output, bool) or not (isinstance(output, (str, int)) or callable(output)):
        raise TypeError(
            "output must be a key or attribute name, a tuple position or a callable, "
            f"got {type(output).__name__}"
        )
    return output


class SelectOutput(nn.Module):
    """``model`` whose forward returns ``output_tensor(model(...), output)``; see ``select_output``.

    A module (not a function) so that every method puts the wrapped model in eval mode and
    back. Its modules keep the wrapped model's names: ``layer="layer4"`` names the same module
    with or without the wrapper.
    """

    def __init__(self, model: Callable[..., Any], output: OutputSelector) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return output_tensor(self.model(*args, **kwargs), self.output)

    def named_modules(
        self, memo: set[nn.Module] | None = None, prefix: str = "", remove_duplicate: bool = True
    ) -> Iterator[tuple[str, nn.Module]]:
        memo = set() if memo is None else memo
        if self not in memo:
            if remove_duplicate:
                memo.add(self)
            yield prefix, self
        if isinstance(self.model, nn.Module):
            for name, module in self.model.named_modules(memo, prefix, remove_duplicate):
                if name != prefix or module is not self.model:
                    yield name, module
                else:  # the wrapped model itself: it has no name of its own under the wrapper
                    yield prefix + ("." if prefix else "") + "model", module


def select_output(model: Callable[..., Any], output: object) -> SelectOutput:
    """``model`` whose output is the tensor ``output`` selects: a key or attribute name
    (``"pooler_output"``, ``"last_hidden_state"``), a tuple position, or a callable taking the
    raw output (``lambda out: out.logits[:, -1]``). Without it, every method reads a model's
    output as ``output_tensor`` does (a tuple's first element, a ``ModelOutput``'s ``logits``).

    >>> a = fastxai.saliency(fastxai.select_output(model, "pooler_output"), x, target=(0,))
    """
    if not callable(model):
        raise TypeError(f"model must be an nn.Module or a callable, got {type(model).__name__}")
    return SelectOutput(model, check_output_selector(output))
