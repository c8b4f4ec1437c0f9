"""The data set runner's view of the data: items by index range over the supported kinds, and
the fingerprint of what a shard read.

>>> items = Items((x, y))
>>> inputs, labels = items.slice(0, 8)
"""

from __future__ import annotations

from typing import Any

import torch

from fastxai import _fingerprint


class Items:
    """Uniform access to (inputs, labels or None) by index range over the supported data kinds."""

    def __init__(self, data: object) -> None:
        if isinstance(data, torch.utils.data.DataLoader):
            data = data.dataset
        self.tensors: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if isinstance(data, torch.Tensor):
            self.tensors = (data, None)
        elif (
            isinstance(data, (tuple, list))
            and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)
        ):
            if data[0].shape[0] != data[1].shape[0]:
                raise ValueError(f"data holds {data[0].shape[0]} inputs but {data[1].shape[0]} labels")
            self.tensors = (data[0], data[1])
        elif not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(
                "data must be a tensor of inputs, (inputs, labels) tensors, a map-style Dataset "
                f"or a DataLoader over one, got {type(data).__name__}"
            )
        self.data = data

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0]) if self.tensors is not None else len(self.data)

    def slice(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.tensors is not None:
            inputs, labels = self.tensors
            return inputs[start:stop], None if labels is None else labels[start:stop]
        items = [self.data[index] for index in range(start, stop)]
        if isinstance(items[0], (tuple, list)):
            return torch.stack([torch.as_tensor(i[0]) for i in items]), torch.as_tensor(
                [int(i[1]) for i in items]
            )
        return torch.stack([torch.as_tensor(i) for i in items]), None


def hash_batch(digest: Any, inputs: torch.Tensor, labels: torch.Tensor | None) -> None:
    """What a shard read, as it reads it: the inputs, and the labels when the data has them."""
    _fingerprint.update_tensor(digest, inputs)
    if labels is not None:
        _fingerprint.update_tensor(digest, labels)
