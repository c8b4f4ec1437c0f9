"""The neural additive model (NAM, Agarwal et al., NeurIPS 2021): one small network per feature,
summed; the per-feature shape functions are the explanation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional

from fastxai import _checks
from fastxai.surrogate import _data

ACTIVATIONS = ("relu", "exu")
LOSSES = ("mse", "cross_entropy")


class AdditiveModel(nn.Module):
    """``g(x) = f_1(x_1) + ... + f_D(x_D) + b`` with one MLP ``f_i: R -> R^O`` per feature.

    The D networks run as one grouped network: layer l holds weights [D, h_l, h_{l+1}] applied
    with one batched matrix product, so a forward pass costs as much as one MLP of D times the
    width. The first layer is ReLU (``activation="relu"``) or the paper's exp-centred unit
    (``"exu"``: ``min(max(exp(w) (x - c), 0), 1)``), which lets a shape function jump sharply.
    Inputs are standardised with the buffers ``shift`` and ``scale`` (set by ``fit_additive``),
    so the shape functions are functions of the raw features.

    forward: [N, D] -> [N, O]; ``contributions``: [N, D, O] the terms f_i(x_i).

    >>> model = AdditiveModel(features=5, outputs=2, hidden=(32, 32))
    >>> terms = model.contributions(x)   # [N, 5, 2]; model(x) = terms.sum(1) + model.bias
    """

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self,
        features: int,
        outputs: int = 1,
        hidden: Sequence[int] = (32, 32),
        *,
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        features = _checks.check_count("features", features, 1)
        outputs = _checks.check_count("outputs", outputs, 1)
        if (
            not isinstance(hidden, Sequence)
            or not hidden
            or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)
        ):
            raise ValueError(f"hidden must be a non-empty sequence of ints >= 1, got {hidden!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        generator = torch.Generator().manual_seed(seed)
        sizes = (1, *hidden, outputs)
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            if layer == 0:
                # knots spread over +-2 standard deviations, so the first units bend at
                # different places of the (standardised) feature instead of all at 0
                if activation == "exu":
                    weight = 4.0 + 0.5 * torch.randn(features, 1, fan_out, generator=generator)
                else:
                    weight = torch.rand(features, 1, fan_out, generator=generator) * 2 - 1
                centre = torch.rand(features, fan_out, generator=generator) * 4 - 2
                bias = centre if activation == "exu" else -weight[:, 0] * centre
            else:
                bound = 1 / math.sqrt(fan_in)
                weight = (torch.rand(features, fan_in, fan_out, generator=generator) * 2 - 1) * bound
                bias = torch.zeros(features, fan_out)
            self.weights.append(nn.Parameter(weight))
            self.biases.append(nn.Parameter(bias))
        self.bias = nn.Parameter(torch.zeros(outputs))
        self.register_buffer("shift", torch.zeros(features))
        self.register_buffer("scale", torch.ones(features))

    def contributions(self, inputs: torch.Tensor) -> torch.Tensor:
        """The shape functions at the inputs: [N, D] -> [N, D, O]."""
        hidden = ((inputs.to(self.shift) - self.shift) / self.scale).unsqueeze(-1)  # [N, D, 1]
        last = len(self.weights) - 1
        for layer, (weight, bias) in enumerate(zip(self.weights, self.biases, strict=True)):
            if layer == 0 and self.activation == "exu":
                hidden = (torch.exp(weight[:, 0]) * (hidden - bias)).clamp(0, 1)
                continue
            hidden = torch.einsum("ndi,dio->ndo", hidden, weight) + bias
            if layer < last:
                hidden = functional.relu(hidden)
        return hidden

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.contributions(inputs).sum(1) + self.bias

    def shape_functions(self, inputs: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
        """The contributions centred on their mean over ``reference`` (default: ``inputs``):
        ``f_i(x_i) - mean_r f_i(r_i)``, [N, D, O]; the explanation, identifiable only up to
        these constants (moved into the bias)."""
        with torch.no_grad():
            terms = self.contributions(inputs)
            centre = (terms if reference is None else self.contributions(reference)).mean(0)
        return terms - centre


def fit_additive(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str = "mse",
    hidden: Sequence[int] = (32, 32),
    activation: str = "relu",
    steps: int = 1000,
    lr: float = 0.01,
    batch_size: int | None = None,
    weight_decay: float = 0.0,
    output_penalty: float = 0.0,
    feature_dropout: float = 0.0,
    seed: int = 0,
) -> AdditiveModel:
    """Train an ``AdditiveModel`` with Adam on inputs [N, D]: ``loss="mse"`` for targets [N] or
    [N, O] (regression), ``"cross_entropy"`` for soft labels [N, C] (rows summing to 1) or
    class indices [N]. The regularisers of the paper: ``output_penalty`` times the mean squared
    contribution ``mean f_i(x_i)^2``, ``feature_dropout`` (each feature's whole term dropped with
    that probability during training), ``weight_decay``. Mini-batches of ``batch_size`` rows
    (None: the full batch), drawn with ``seed``. Inputs are standardised inside the model.
    Returns the model in eval mode.

    >>> nam = fit_additive(x, y, loss="mse", steps=1000)
    >>> shapes = nam.shape_functions(x)    # [N, D, 1]
    """
    data = _data.as_features(inputs).float()
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if not isinstance(targets, torch.Tensor):
        raise TypeError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if len(targets) != len(data):
        raise ValueError(f"targets must have one row per input ({len(data)}), got {len(targets)}")
    if loss == "cross_entropy" and not targets.is_floating_point():
        if targets.dim() != 1 or bool((targets < 0).any()):
            raise ValueError("class-index targets must be [N] ints >= 0")
        goal = functional.one_hot(targets, int(targets.max()) + 1).float()
    else:
        goal = _data.as_features(targets.reshape(len(targets), -1), name="targets").float()
    steps = _checks.check_count("steps", steps, 1)
    lr = _checks.check_number("lr", lr, strict=True)
    if batch_size is not None:
        batch_size = _checks.check_count("batch_size", batch_size, 1)
    weight_decay = _checks.check_number("weight_decay", weight_decay)
    output_penalty = _checks.check_number("output_penalty", output_penalty)
    feature_dropout = _checks.check_number("feature_dropout", feature_dropout)
    if feature_dropout >= 1:
        raise ValueError(f"feature_dropout must be in [0, 1), got {feature_dropout!r}")
    model = AdditiveModel(data.shape[1], goal.shape[1], hidden, activation=activation, seed=seed)
    with torch.no_grad():
        model.shift.copy_(data.mean(0))
        model.scale.copy_(data.std(0).clamp_min(1e-12) if len(data) > 1 else torch.ones(data.shape[1]))
        if loss == "mse":
            model.bias.copy_(goal.mean(0))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    rows = len(data)
    for _ in range(steps):
        index = (
            None
            if batch_size is None
            else torch.randint(0, rows, (min(batch_size, rows),), generator=generator)
        )
        x = data if index is None else data[index]
        y = goal if index is None else goal[index]
        terms = model.contributions(x)
        if feature_dropout:
            keep = torch.rand(terms.shape[:2], generator=generator) >= feature_dropout
            terms = terms * keep.unsqueeze(-1) / (1 - feature_dropout)
        output = terms.sum(1) + model.bias
        if loss == "mse":
            value = (output - y).square().mean()
        else:
            value = -(y * output.log_softmax(1)).sum(1).mean()
        if output_penalty:
            value = value + output_penalty * terms.square().mean()
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
    return model.eval()


def plot_shape_functions(
    model: AdditiveModel,
    inputs: torch.Tensor,
    *,
    output: int = 0,
    feature_names: Sequence[str] | None = None,
    path: str | None = None,
    columns: int = 4,
) -> Any:
    """One panel per feature: the centred shape function ``f_i`` (output ``output``) over the
    values of feature i in ``inputs`` [N, D], with the data's values as a rug. Needs matplotlib;
    returns the figure, saved to ``path`` when given.

    >>> plot_shape_functions(nam, x_test, feature_names=names, path="shapes.png")
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot_shape_functions needs matplotlib: pip install matplotlib") from None
    data = _data.as_features(inputs).float()
    features = data.shape[1]
    if feature_names is not None and len(feature_names) != features:
        raise ValueError(f"feature_names must have {features} names, got {len(feature_names)}")
    columns = _checks.check_count("columns", columns, 1)
    shapes = model.shape_functions(data)[:, :, output]
    grid_rows = math.ceil(features / columns)
    figure, axes = plt.subplots(
        grid_rows,
        min(columns, features),
        figsize=(3 * min(columns, features), 2.4 * grid_rows),
        squeeze=False,
    )
    for i, axis in enumerate(axes.flat):
        if i >= features:
            axis.axis("off")
            continue
        order = data[:, i].argsort()
        axis.plot(data[order, i].numpy(), shapes[order, i].numpy(), color="C0")
        axis.plot(data[:, i].numpy(), [float(shapes[:, i].min())] * len(data), "|", color="0.6", markersize=4)
        axis.set_title(feature_names[i] if feature_names is not None else f"x[{i}]", fontsize=9)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
