"""The relevance of ``nn.LSTM``: LRP for LSTMs (Arras et al. 2017, "Explaining Recurrent Neural
Network Predictions in Sentiment Analysis"; Arras et al. 2019, "Explaining and Interpreting
LSTMs"), the rule for gated interactions: gates are constants, relevance follows the signal.

Per layer, direction and time step, with ``z = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh`` split into
the gates ``i, f, o = sigmoid(.)`` and the cell input ``g = tanh(z_g)``:
``c_t = f c_{t-1} + i g``, ``h_t = o tanh(c_t)``. Going back:

- ``h_t = o tanh(c_t)``: the output gate a constant, tanh element-wise: ``R_{c_t} += R_{h_t}``;
- ``c_t = f c_{t-1} + i g``: the epsilon rule of a sum (the gates constant factors):
  ``R_{c_{t-1}} = f c_{t-1} R_{c_t} / (c_t + eps sign0(c_t))``, ``R_g`` likewise with ``i g``;
- ``g = tanh(z_g)``: element-wise, ``R_{z_g} = R_g``; ``z_g``'s linear map the epsilon rule,
  ``R_{x_t} = x_t W_ig^T (R_g / (z_g + eps sign0(z_g)))`` and ``R_{h_{t-1}}`` with ``W_hg``; the
  biases absorb their share (the papers' bias factor 0);
- the gates' pre-activations get none.

With no biases and ``eps = 0`` the total is conserved (the initial states are zeros). ``eps`` is
the composite's stabiliser. Only the output sequence may carry relevance: an LSTM given initial
states, with projections (``proj_size``) or whose final states ``(h_n, c_n)`` are read by a
relevance-carrying step is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from fastxai.lrp._errors import UnsupportedLayerError
from fastxai.lrp._graph import Step

Contributions = list[tuple[Any, torch.Tensor]]


@dataclass
class _Run:
    """One layer and direction run on its input: the cell input's weights ``W_ig``, ``W_hg``, per
    time step (in the order run) what the rule reads, ``(t, h_{t-1}, c_{t-1}, i, f, g, z_g, c_t)``,
    and the outputs ``h`` [B, T, H]."""

    w_ig: torch.Tensor
    w_hg: torch.Tensor
    steps: list[tuple[Any, ...]]
    outputs: torch.Tensor


def _run(module: torch.nn.LSTM, suffix: str, x: torch.Tensor, reverse: bool) -> _Run:
    w_ih = getattr(module, "weight_ih" + suffix).detach().to(x.dtype)
    w_hh = getattr(module, "weight_hh" + suffix).detach().to(x.dtype)
    bias: torch.Tensor | float = 0.0
    if module.bias:
        both = getattr(module, "bias_ih" + suffix) + getattr(module, "bias_hh" + suffix)
        bias = both.detach().to(x.dtype)
    size = module.hidden_size
    h = c = x.new_zeros(x.shape[0], size)
    outputs = x.new_empty(x.shape[0], x.shape[1], size)
    steps = []
    for t in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
        z = x[:, t] @ w_ih.T + h @ w_hh.T + bias
        z_i, z_f, z_g, z_o = z.split(size, dim=-1)  # PyTorch's gate order
        i, f, g = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g)
        c_t = f * c + i * g
        steps.append((t, h, c, i, f, g, z_g, c_t))
        h, c = torch.sigmoid(z_o) * torch.tanh(c_t), c_t
        outputs[:, t] = h
    return _Run(w_ih[2 * size : 3 * size], w_hh[2 * size : 3 * size], steps, outputs)


def _direction(ctx: Any, x: torch.Tensor, run: _Run, relevance: torch.Tensor) -> torch.Tensor:
    """The relevance of ``x`` [B, T, F] from that of one direction's outputs [B, T, H]."""
    result = torch.zeros_like(x)
    to_h = to_c = torch.zeros_like(relevance[:, 0])  # from the step after, in the order run
    for t, h_prev, c_prev, i, f, g, z_g, c in reversed(run.steps):
        s = ctx.divide(relevance[:, t] + to_h + to_c, c)  # R_{c_t} / (c_t + eps sign0(c_t))
        to_c = f * c_prev * s
        s_g = ctx.divide(i * g * s, z_g)  # R_g / (z_g + eps sign0(z_g))
        result[:, t] = x[:, t] * (s_g @ run.w_ig)
        to_h = h_prev * (s_g @ run.w_hg)
    return result


def lstm(step: Step, ctx: Any, relevance: torch.Tensor) -> Contributions:
    node, module = step.node, step.module
    assert isinstance(module, torch.nn.LSTM)
    if len(node.args) > 1 or node.kwargs:
        raise UnsupportedLayerError(
            f"an LSTM given initial states (node {node.name!r}): LRP starts from zeros"
        )
    if module.proj_size:
        raise UnsupportedLayerError(f"an LSTM with projections (proj_size, node {node.name!r})")
    if module.training and module.dropout and module.num_layers > 1:
        raise UnsupportedLayerError(f"an LSTM with dropout in training mode (node {node.name!r})")
    source = node.args[0]
    x = ctx.wide(source)
    if not isinstance(x, torch.Tensor):
        raise UnsupportedLayerError(f"an LSTM on a packed sequence (node {node.name!r})")
    unbatched = x.dim() == 2
    if unbatched:
        x, relevance = x.unsqueeze(0), relevance.unsqueeze(0)
    elif not module.batch_first:
        x, relevance = x.transpose(0, 1), relevance.transpose(0, 1)
    layers = []
    for layer in range(module.num_layers):
        suffixes = [f"_l{layer}", f"_l{layer}_reverse"][: 2 if module.bidirectional else 1]
        runs = [_run(module, suffix, x, "reverse" in suffix) for suffix in suffixes]
        layers.append((x, runs))
        x = torch.cat([run.outputs for run in runs], dim=-1)
    size = module.hidden_size
    for x, runs in reversed(layers):
        pieces = relevance.split(size, dim=-1)
        relevance = _direction(ctx, x, runs[0], pieces[0])
        if len(runs) == 2:
            relevance = relevance + _direction(ctx, x, runs[1], pieces[1])
    if unbatched:
        relevance = relevance.squeeze(0)
    elif not module.batch_first:
        relevance = relevance.transpose(0, 1)
    return [(source, relevance)]


def lstm_item(step: Step, relevance: torch.Tensor, index: int) -> Contributions:
    """``getitem`` on what an LSTM returns, ``(output, (h_n, c_n))``: the output sequence's
    relevance is the LSTM step's; the final states may carry none."""
    producer = step.node.args[0]
    if index != 0:
        raise UnsupportedLayerError(
            f"relevance reached the final states (h_n, c_n) of the LSTM {producer!s} (node "
            f"{step.node.name!r}): LRP explains an LSTM through its output sequence"
        )
    return [(producer, relevance)]


HANDLERS = {"lstm": lstm}

__all__ = ["HANDLERS", "lstm_item"]
