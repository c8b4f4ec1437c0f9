"""Neuron importance over a data set: how strongly, and how often, each unit of a layer fires."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset

from fastxai import _compile, _model, _precision
from fastxai._model import Model
from fastxai.global_views import _layers

STATISTICS = ("mean_abs", "mean", "positive_fraction")


@dataclass(frozen=True)
class NeuronImportance:
    """Per-unit statistics of a layer's activations over a data set.

    values: statistic name -> [U] float32 tensor, over every example (and, for a channel of a
    conv layer, every position). per_class: statistic name -> [K, U], the same over the examples
    of each label (NaN for a label with no examples), or None without labels. class_counts: [K]
    examples per label, or None. n_examples: examples seen.
    """

    values: dict[str, torch.Tensor]
    per_class: dict[str, torch.Tensor] | None
    class_counts: torch.Tensor | None
    n_examples: int

    def __getitem__(self, statistic: str) -> torch.Tensor:
        return self.values[statistic]


def _check_statistics(statistic: object) -> tuple[str, ...]:
    names = (statistic,) if isinstance(statistic, str) else statistic
    if (
        not isinstance(names, Sequence)
        or len(names) == 0
        or not all(isinstance(name, str) and name in STATISTICS for name in names)
    ):
        raise ValueError(f"statistic must be one of {STATISTICS} or a sequence of them, got {statistic!r}")
    return tuple(dict.fromkeys(names))


def _check_labels(labels: object, batch: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(
            f"data labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels))}"
        )
    if labels.shape != (batch,):
        raise ValueError(
            f"data labels must have shape ({batch},) to match the inputs, got {tuple(labels.shape)}"
        )
    if batch and int(labels.min()) < 0:
        raise ValueError(f"data labels must be >= 0, got {int(labels.min())}")
    return labels.long()


def _split_item(item: object) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A batch or example as (inputs, labels or None): a tensor, or a tuple/list whose first two
    entries are the inputs and the labels (further entries are ignored)."""
    if isinstance(item, torch.Tensor):
        return item, None
    if isinstance(item, (tuple, list)) and len(item) >= 1 and isinstance(item[0], torch.Tensor):
        if len(item) == 1 or item[1] is None:
            return item[0], None
        labels = item[1] if isinstance(item[1], torch.Tensor) else torch.as_tensor(item[1])
        return item[0], labels
    raise TypeError(
        f"data must yield tensors or (inputs, labels) tuples of tensors, got {type(item).__name__}"
    )


def _batches(data: object, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    """(inputs, labels-or-None) batches of at most ``batch_size`` examples from any data source."""
    if isinstance(data, torch.Tensor) or (isinstance(data, tuple) and not isinstance(data, Dataset)):
        inputs, labels = _split_item(data)
        source: object = [
            (inputs[s : s + batch_size], None if labels is None else labels[s : s + batch_size])
            for s in range(0, inputs.shape[0], batch_size)
        ]
    elif isinstance(data, DataLoader):
        source = data
    elif isinstance(data, Dataset):
        source = DataLoader(data, batch_size=batch_size, shuffle=False)
    else:
        raise TypeError(
            "data must be a tensor, an (inputs, labels) tuple, a Dataset or a DataLoader, "
            f"got {type(data).__name__}"
        )
    for item in source:  # type: ignore[attr-defined]
        inputs, labels = _split_item(item)
        for start in range(0, inputs.shape[0], batch_size):
            yield (
                inputs[start : start + batch_size],
                None if labels is None else labels[start : start + batch_size],
            )


class _Sums:
    """fp64 running sums of per-example, per-unit activation statistics, overall and per label."""

    def __init__(self, units: int, positions: int, device: torch.device) -> None:
        self.units, self.positions, self.device = units, positions, device
        self.total = torch.zeros(3, units, dtype=torch.float64, device=device)
        self.by_class = torch.zeros(0, 3, units, dtype=torch.float64, device=device)
        self.class_counts = torch.zeros(0, dtype=torch.float64, device=device)
        self.n_examples = 0
        self.labelled: bool | None = None

    def add(self, activation: torch.Tensor, labels: torch.Tensor | None) -> None:
        flat = activation.reshape(activation.shape[0], self.units, -1).float()
        # [N, 3, U]: sums over positions of |a|, a and [a > 0], per example
        per_example = torch.stack(
            [flat.abs().sum(2), flat.sum(2), (flat > 0).sum(2, dtype=torch.float32)], dim=1
        ).double()
        self.total += per_example.sum(0)
        self.n_examples += flat.shape[0]
        if labels is None:
            return
        classes = int(labels.max()) + 1 if labels.numel() else 0
        if classes > self.class_counts.shape[0]:
            grow = classes - self.class_counts.shape[0]
            self.by_class = torch.cat([self.by_class, self.by_class.new_zeros(grow, 3, self.units)])
            self.class_counts = torch.cat([self.class_counts, self.class_counts.new_zeros(grow)])
        labels = labels.to(self.device)
        self.by_class.index_add_(0, labels, per_example)
        self.class_counts.index_add_(0, labels, torch.ones_like(labels, dtype=torch.float64))


def neuron_importance(
    model: Model,
    data: object,
    *,
    layer: object,
    batch_size: int = 256,
    statistic: str | Sequence[str] = "mean_abs",
    dtype: torch.dtype | None = None,
) -> NeuronImportance:
    """Streaming per-unit activation statistics of ``layer`` over a data set.

    For unit ``u`` (neuron ``u`` of a [N, F] output, channel ``u`` of a [N, C, *spatial] one,
    pooled over positions ``p``) and examples ``n``: ``mean_abs = mean_{n,p} |a_{n,u,p}|``,
    ``mean = mean_{n,p} a_{n,u,p}``, ``positive_fraction = mean_{n,p} [a_{n,u,p} > 0]``; per label
    as well when the data carries labels. The mean absolute activation is the data-driven unit
    importance of network-pruning work (e.g. Hu et al. 2016, "Network Trimming", which uses the
    fraction of zeros). Sums are kept in float64; only the layer runs, never the layers after it.

    data: a tensor [N, *F], an (inputs [N, *F], labels [N]) tuple, a Dataset or a DataLoader
    yielding either. Batches are cut to at most ``batch_size`` examples and moved to the model's
    device. Returns a ``NeuronImportance``. ``dtype=torch.bfloat16`` (or ``torch.float16``): the
    passes run under autocast in that dtype (``fastxai._precision``); the sums stay float64.

    >>> importance = fastxai.global_views.neuron_importance(model, (x, y), layer="4")
    >>> importance["mean_abs"].topk(5)
    """
    model = _compile.original(_model.check_model(model))
    names = _check_statistics(statistic)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    layer_module, layer_name = _layers.resolve_layer(model, layer)
    if isinstance(data, tuple) and not isinstance(data, Dataset):
        if len(data) != 2 or not all(isinstance(t, torch.Tensor) for t in data):
            raise TypeError("data as a tuple must be (inputs, labels), two tensors")
        _model.check_inputs(data[0])
        _check_labels(data[1], data[0].shape[0])
    elif isinstance(data, torch.Tensor):
        _model.check_inputs(data)
    parameter = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
    first = data[0] if isinstance(data, tuple) else data  # the device autocast runs on, before the model
    device = parameter.device if parameter is not None else getattr(first, "device", torch.device("cpu"))
    model_dtype = _precision.check_dtype(dtype, device)
    sums: _Sums | None = None
    with _model.preserved_state(model):
        for inputs, labels in _batches(data, batch_size):
            _model.check_inputs(inputs)
            if parameter is not None:
                inputs = inputs.to(parameter.device)
            if sums is not None and (labels is not None) != sums.labelled:
                raise ValueError("data must give labels for every batch or for none")
            if labels is not None:
                labels = _check_labels(labels, inputs.shape[0])
            with torch.no_grad(), _precision.autocast(model_dtype, inputs.device.type):
                activation = _layers.layer_output(model, layer_module, layer_name, inputs)
            if activation.dim() < 2:
                raise ValueError(
                    f"layer {layer_name!r} must output [batch, units, ...], "
                    f"got shape {tuple(activation.shape)}"
                )
            if sums is None:
                sums = _Sums(activation.shape[1], activation[0, 0].numel(), activation.device)
                sums.labelled = labels is not None
            sums.add(activation, labels)
    if sums is None or sums.n_examples == 0:
        raise ValueError("data must hold at least one example")
    total = (sums.total / (sums.n_examples * sums.positions)).float()
    index = {name: STATISTICS.index(name) for name in names}
    per_class = None
    class_counts = None
    if sums.labelled:
        denominator = (sums.class_counts * sums.positions).view(-1, 1, 1)
        by_class = (sums.by_class / denominator).float()  # 0/0 = NaN for labels never seen
        per_class = {name: by_class[:, i] for name, i in index.items()}
        class_counts = sums.class_counts.long()
    return NeuronImportance(
        values={name: total[i] for name, i in index.items()},
        per_class=per_class,
        class_counts=class_counts,
        n_examples=sums.n_examples,
    )
