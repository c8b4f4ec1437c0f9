"""The relevance of ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` in the traced engine: LRP for recurrent
networks (Arras et al. 2017, "Explaining Recurrent Neural Network Predictions in Sentiment
Analysis"; Arras et al. 2019, "Explaining and Interpreting LSTMs"), the rule for gated
interactions: gates are constants, relevance follows the signal.

Per layer, direction and time step, ``x_t`` the step's input, going back from the relevance of
the step's output ``h_t`` (the output sequence's plus what the next step sends back):

- LSTM, ``z = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh`` split into the gates ``i, f, o =
  sigmoid(.)`` and the cell input ``g = tanh(z_g)``; ``c_t = f c_{t-1} + i g``,
  ``h_t = o tanh(c_t)`` (then ``W_hr h_t`` with ``proj_size``: the epsilon rule, a linear map):

  - ``h_t = o tanh(c_t)``: the output gate a constant, tanh element-wise: ``R_{c_t} += R_{h_t}``;
  - ``c_t = f c_{t-1} + i g``: the epsilon rule of a sum (the gates constant factors):
    ``R_{c_{t-1}} = f c_{t-1} R_{c_t} / (c_t + eps sign0(c_t))``, ``R_g`` likewise with ``i g``;
  - ``g = tanh(z_g)``: element-wise, ``R_{z_g} = R_g``; ``z_g``'s linear map the epsilon rule,
    ``R_{x_t} = x_t W_ig^T (R_g / (z_g + eps sign0(z_g)))`` and ``R_{h_{t-1}}`` with ``W_hg``;
- GRU, ``r, z`` gates (constants), ``a_n = W_in x_t + b_in + r (W_hn h_{t-1} + b_hn)``,
  ``n = tanh(a_n)``, ``h_t = (1 - z) n + z h_{t-1}``: the sum in proportion,
  ``s = R_{h_t} / (h_t + eps sign0(h_t))``, ``R_{h_{t-1}} = z h_{t-1} s``, ``R_n = (1 - z) n s``;
  ``a_n`` one linear map of ``[x_t; h_{t-1}]`` with the weights ``[W_in  r W_hn]``, the
  epsilon rule, ``q = R_n / (a_n + eps sign0(a_n))``: ``R_{x_t} = x_t W_in^T q``,
  ``R_{h_{t-1}} += h_{t-1} W_hn^T (r q)``;
- RNN, ``h_t = act(z)``, ``z = W_ih x_t + W_hh h_{t-1} + b``: ``R_z = R_{h_t}`` (tanh or relu
  element-wise), the epsilon rule on ``z``'s map.

The biases absorb their share (the papers' bias factor 0); the gates' pre-activations get none;
``eps`` is the composite's stabiliser. The final states ``h_n`` (``c_n``) are each direction's
last ``h_t`` (``c_t``): relevance reaching them (through ``getitem`` on what the module returns,
kept per module node in ``ctx.states``) enters there. With no biases and ``eps = 0`` the total
is conserved (the initial states are zeros). Refused: a module given initial states, a packed
sequence, dropout between layers in training mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fastxai.lrp._errors import UnsupportedLayerError
from fastxai.lrp._graph import Step

Contributions = list[tuple[Any, torch.Tensor]]
Tensor = torch.Tensor


@dataclass
class _Run:
    """One layer and direction run on its input: the weights the rule reads (the signal's rows of
    ``W_ih``, ``W_hh``, and ``W_hr``), per time step (in the order run) what the rule reads, and
    the outputs ``h`` [B, T, H_out]."""

    w_ih: Tensor
    w_hh: Tensor
    w_hr: Tensor | None
    steps: list[tuple[Any, ...]]
    outputs: Tensor


def _parameter(module: nn.RNNBase, name: str, dtype: torch.dtype) -> Any:
    value = getattr(module, name, None)
    return None if value is None else value.detach().to(dtype)


def _run(module: nn.RNNBase, suffix: str, x: Tensor, reverse: bool) -> _Run:
    w_ih = _parameter(module, "weight_ih" + suffix, x.dtype)
    w_hh = _parameter(module, "weight_hh" + suffix, x.dtype)
    w_hr = _parameter(module, "weight_hr" + suffix, x.dtype)
    b_ih: Tensor | float = 0.0
    b_hh: Tensor | float = 0.0
    if module.bias:
        b_ih = _parameter(module, "bias_ih" + suffix, x.dtype)
        b_hh = _parameter(module, "bias_hh" + suffix, x.dtype)
    size = module.hidden_size
    h = x.new_zeros(x.shape[0], w_hh.shape[1])
    c = x.new_zeros(x.shape[0], size)
    outputs = x.new_empty(x.shape[0], x.shape[1], h.shape[1])
    steps: list[tuple[Any, ...]] = []
    rows = slice(2 * size, 3 * size)  # the signal: LSTM's g in (i, f, g, o), GRU's n in (r, z, n)
    for t in reversed(range(x.shape[1])) if reverse else range(x.shape[1]):
        from_x, from_h = x[:, t] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        if isinstance(module, nn.LSTM):
            z_i, z_f, z_g, z_o = (from_x + from_h).split(size, dim=-1)
            i, f, g = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g)
            c_t = f * c + i * g
            m = torch.sigmoid(z_o) * torch.tanh(c_t)
            steps.append((t, h, c, i, f, g, z_g, c_t, m))
            h, c = (m if w_hr is None else m @ w_hr.T), c_t
        elif isinstance(module, nn.GRU):
            r, z = torch.sigmoid(from_x[:, : 2 * size] + from_h[:, : 2 * size]).split(size, dim=-1)
            a_n = from_x[:, rows] + r * from_h[:, rows]
            n = torch.tanh(a_n)
            h_t = (1 - z) * n + z * h
            steps.append((t, h, r, z, a_n, n, h_t))
            h = h_t
        else:
            z = from_x + from_h
            steps.append((t, h, z))
            h = torch.relu(z) if module.mode == "RNN_RELU" else torch.tanh(z)
        outputs[:, t] = h
    if not isinstance(module, nn.RNN):
        w_ih, w_hh = w_ih[rows], w_hh[rows]
    return _Run(w_ih, w_hh, w_hr, steps, outputs)


def _direction(
    ctx: Any, module: nn.RNNBase, x: Tensor, run: _Run, relevance: Tensor, final_h: Tensor, final_c: Tensor
) -> Tensor:
    """The relevance of ``x`` [B, T, F] from that of one direction's outputs [B, T, H_out] and
    of its final states [B, H_out], [B, H]."""
    result = torch.zeros_like(x)
    to_h, to_c = final_h, final_c  # from the step after, in the order run
    for t, h_prev, *saved in reversed(run.steps):
        relevance_h = relevance[:, t] + to_h
        if isinstance(module, nn.LSTM):
            c_prev, i, f, g, z_g, c, m = saved
            if run.w_hr is not None:  # h_t = W_hr m: the epsilon rule
                relevance_h = m * (ctx.divide(relevance_h, m @ run.w_hr.T) @ run.w_hr)
            s = ctx.divide(relevance_h + to_c, c)  # R_{c_t} / (c_t + eps sign0(c_t))
            to_c = f * c_prev * s
            q = ctx.divide(i * g * s, z_g)  # R_g / (z_g + eps sign0(z_g))
            result[:, t] = x[:, t] * (q @ run.w_ih)
            to_h = h_prev * (q @ run.w_hh)
        elif isinstance(module, nn.GRU):
            r, z, a_n, n, h_t = saved
            s = ctx.divide(relevance_h, h_t)
            q = ctx.divide((1 - z) * n * s, a_n)
            result[:, t] = x[:, t] * (q @ run.w_ih)
            to_h = z * h_prev * s + h_prev * ((r * q) @ run.w_hh)
        else:
            (z,) = saved
            q = ctx.divide(relevance_h, z)
            result[:, t] = x[:, t] * (q @ run.w_ih)
            to_h = h_prev * (q @ run.w_hh)
    return result


def recurrent(step: Step, ctx: Any, relevance: Tensor) -> Contributions:
    node, module = step.node, step.module
    assert isinstance(module, nn.RNNBase)
    kind = f"nn.{type(module).__name__} (node {node.name!r})"
    if len(node.args) > 1 or node.kwargs:
        raise UnsupportedLayerError(
            f"LRP does not support initial states given to {kind}: LRP starts from zeros"
        )
    if module.training and module.dropout and module.num_layers > 1:
        raise UnsupportedLayerError(f"LRP does not support dropout > 0 in training mode in {kind}")
    source = node.args[0]
    x = ctx.wide(source)
    if not isinstance(x, Tensor):
        raise UnsupportedLayerError(f"LRP does not support packed sequences in {kind}")
    out_size = getattr(module, "proj_size", 0) or module.hidden_size
    states = ctx.states.pop(node, None)  # [L * D, (B,) H_out + H], see recurrent_item
    unbatched = x.dim() == 2
    if unbatched:
        x, relevance = x.unsqueeze(0), relevance.unsqueeze(0)
        states = None if states is None else states.unsqueeze(1)
    elif not module.batch_first:
        x, relevance = x.transpose(0, 1), relevance.transpose(0, 1)
    if states is None:
        directions = 2 if module.bidirectional else 1
        states = x.new_zeros(module.num_layers * directions, x.shape[0], out_size + module.hidden_size)
    layers = []
    for layer in range(module.num_layers):
        suffixes = [f"_l{layer}", f"_l{layer}_reverse"][: 2 if module.bidirectional else 1]
        runs = [_run(module, suffix, x, "reverse" in suffix) for suffix in suffixes]
        layers.append((x, runs))
        x = torch.cat([run.outputs for run in runs], dim=-1)
    for layer in reversed(range(module.num_layers)):
        x, runs = layers[layer]
        pieces = relevance.split(out_size, dim=-1)
        relevance = torch.zeros_like(x)
        for direction, run in enumerate(runs):
            final_h, final_c = states[layer * len(runs) + direction].split([out_size, module.hidden_size], -1)
            relevance = relevance + _direction(ctx, module, x, run, pieces[direction], final_h, final_c)
    if unbatched:
        relevance = relevance.squeeze(0)
    elif not module.batch_first:
        relevance = relevance.transpose(0, 1)
    return [(source, relevance)]


def recurrent_item(step: Step, ctx: Any, relevance: Tensor, index: int, pieces: Any) -> Contributions:
    """``getitem`` on what a recurrent module returns, ``(output, h_n)`` or ``(output, (h_n,
    c_n))``: the output sequence's relevance is the module step's; the final states' is kept in
    ``ctx.states`` ([L * D, (B,) H_out + H]: h_n's then c_n's, c_n's zero for GRU and RNN) until
    the module's step reads it."""
    producer = step.node.args[0]
    if index % 2 == 0:
        return [(producer, relevance)]
    if not isinstance(pieces[1], tuple):  # GRU, RNN: h_n alone
        hidden = ctx.steps[producer].module.hidden_size
        relevance = torch.cat([relevance, relevance.new_zeros(*relevance.shape[:-1], hidden)], -1)
    previous = ctx.states.get(producer)
    ctx.states[producer] = relevance if previous is None else previous + relevance
    return [(producer, relevance.new_zeros(pieces[0].shape))]


def state_item(step: Step, ctx: Any, relevance: Tensor, index: int, pieces: Any) -> Contributions:
    """``getitem`` on an LSTM's ``(h_n, c_n)``: the piece's relevance placed in the tuple's, h_n's
    and c_n's side by side on the last dim (as ``recurrent_item`` keeps them)."""
    source = step.node.args[0]
    h_n, c_n = pieces
    result = relevance.new_zeros(*h_n.shape[:-1], h_n.shape[-1] + c_n.shape[-1])
    if index % 2 == 0:
        result[..., : h_n.shape[-1]] = relevance
    else:
        result[..., h_n.shape[-1] :] = relevance
    return [(source, result)]


HANDLERS = {"recurrent": recurrent}

__all__ = ["HANDLERS", "recurrent_item", "state_item"]
