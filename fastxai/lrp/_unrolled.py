"""``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` unrolled in plain ops, their gates computed from
detached values: the stand-ins the gradient engine (``fastxai.lrp._gradient``) runs in place of
the fused ``torch.lstm`` / ``torch.gru`` / ``torch.rnn_*`` calls, so that its rules for linear
maps, sums, products with constants and element-wise steps give LRP for recurrent networks
(Arras et al. 2017, "Explaining Recurrent Neural Network Predictions in Sentiment Analysis";
Arras et al. 2019, "Explaining and Interpreting LSTMs"): gates are constants, relevance follows
the signal.

Per layer, direction and time step, ``x`` the step's input and ``h``, ``c`` the previous states:

- LSTM: ``i, f, o = sigmoid(.)`` constants; ``z_g = [W_ig W_hg] [x; h] + b_ig + b_hg`` one linear
  map (epsilon rule, the bias absorbs its share); ``c' = f c + i tanh(z_g)`` (the sum in
  proportion to its terms, stabilised; the gate products pass relevance to their signal; tanh
  the identity); ``h' = o tanh(c')``, then ``W_hr h'`` with ``proj_size``;
- GRU: ``r, z`` constants; ``a_n = [W_in  r*W_hn] [x; h] + b_in + r b_hn`` one linear map per
  sample under the epsilon rule (``_Candidate``, its backward written out); ``n = tanh(a_n)``;
  ``h' = (1 - z) n + z h`` (the sum in proportion);
- RNN: ``h' = act([W_ih W_hh] [x; h] + b_ih + b_hh)``, ``act`` tanh or relu (identity rule).

With no biases and the stabiliser -> 0 the relevance is conserved: whatever reaches the final
states ``h_n`` (``c_n``) flows back like the output sequence's; initial states given as
arguments take their share (constants absorb theirs, as a bias does). Refused: packed sequences,
dropout between layers in training mode. The unrolled output must equal the module's own
(``check_close``) before it replaces it.

>>> output, (h_n, c_n) = unrolled(lstm, x)  # lstm(x), each step in plain ops
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from fastxai import ops
from fastxai.lrp._errors import UnsupportedLayerError

Tensor = torch.Tensor
State = tuple[Tensor, Tensor | None]  # (h, c); c is None for GRU and RNN
Weights = dict[str, Tensor | None]  # one layer and direction's: weight_ih, weight_hh, bias_ih, ...

# the unrolled output may differ from the fused kernel's by rounding (TF32 in cuDNN on a GPU)
_TOLERANCE = {torch.float64: 1e-6, torch.float32: 5e-3}


def _weights(module: nn.RNNBase, suffix: str) -> Weights:
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")
    return {name: getattr(module, name + suffix, None) for name in names}


def _gates(p: Weights, x: Tensor, h: Tensor) -> Tensor:
    """All pre-activations ``W_ih x + b_ih + W_hh h + b_hh``, from detached values: constants."""
    assert p["weight_ih"] is not None and p["weight_hh"] is not None
    from_x = F.linear(x.detach(), p["weight_ih"], p["bias_ih"])
    return from_x + F.linear(h.detach(), p["weight_hh"], p["bias_hh"])


def _lstm_step(p: Weights, x: Tensor, h: Tensor, c: Tensor | None) -> State:
    assert p["weight_ih"] is not None and p["weight_hh"] is not None and c is not None
    size = p["weight_hh"].shape[0] // 4
    gates = _gates(p, x, h)
    z_i, z_f, _, z_o = gates.split(size, dim=-1)  # PyTorch's gate order: i, f, g, o
    i, f, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.sigmoid(z_o)
    rows = slice(2 * size, 3 * size)
    weight = torch.cat([p["weight_ih"][rows], p["weight_hh"][rows]], dim=1)
    bias = None if p["bias_ih"] is None or p["bias_hh"] is None else p["bias_ih"][rows] + p["bias_hh"][rows]
    z_g = F.linear(torch.cat([x, h], dim=-1), weight, bias)
    c = f * c + i * torch.tanh(z_g)
    h = o * torch.tanh(c)
    if p["weight_hr"] is not None:
        h = F.linear(h, p["weight_hr"])
    return h, c


class _Candidate(torch.autograd.Function):
    """The GRU's ``a_n = W_in x + b_in + r (W_hn h + b_hn)``, ``r`` constant: one linear map of
    ``[x; h]`` whose weights ``[W_in  r W_hn]`` differ per sample, with the epsilon rule's backward
    ``s = g a_n / (a_n + eps sign0(a_n))``, ``g_x = W_in^T s``, ``g_h = W_hn^T (r s)``. Written
    out rather than as a per-sample ``bmm``, which would keep a [B, H, F + H] weight per step."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, h: Tensor, w_in: Tensor, w_hn: Tensor, b_in: Tensor | None,
        b_hn: Tensor | None, r: Tensor, eps: float, backend: str | None,
    ) -> Tensor:  # fmt: skip
        x, h = x.detach(), h.detach()  # runs under the engine's RuleMode: plain ops here
        a_n = F.linear(x, w_in, b_in) + r * F.linear(h, w_hn, b_hn)
        ctx.save_for_backward(ops.lrp_divide(a_n, a_n, eps, backend=backend), r, w_in, w_hn)
        return a_n

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        factor, r, w_in, w_hn = ctx.saved_tensors
        s = grad * factor
        return s @ w_in, (r * s) @ w_hn, *(None,) * 7


def _gru_step(p: Weights, x: Tensor, h: Tensor, c: Tensor | None, eps: float, backend: str | None) -> State:
    assert p["weight_ih"] is not None and p["weight_hh"] is not None
    size = p["weight_hh"].shape[1]
    r, z = torch.sigmoid(_gates(p, x, h)[:, : 2 * size]).split(size, dim=-1)  # PyTorch's order: r, z, n
    rows = slice(2 * size, 3 * size)
    b_in = None if p["bias_ih"] is None else p["bias_ih"][rows]
    b_hn = None if p["bias_hh"] is None else p["bias_hh"][rows]
    a_n = _Candidate.apply(x, h, p["weight_ih"][rows], p["weight_hh"][rows], b_in, b_hn, r, eps, backend)
    return (1 - z) * torch.tanh(a_n) + z * h, None


def _rnn_step(
    activation: Callable[[Tensor], Tensor], p: Weights, x: Tensor, h: Tensor, _: Tensor | None
) -> State:
    assert p["weight_ih"] is not None and p["weight_hh"] is not None
    weight = torch.cat([p["weight_ih"], p["weight_hh"]], dim=1)
    bias = None if p["bias_ih"] is None or p["bias_hh"] is None else p["bias_ih"] + p["bias_hh"]
    return activation(F.linear(torch.cat([x, h], dim=-1), weight, bias)), None


def _step(
    module: nn.RNNBase, eps: float, backend: str | None
) -> Callable[[Weights, Tensor, Tensor, Tensor | None], State]:
    if isinstance(module, nn.LSTM):
        return _lstm_step
    if isinstance(module, nn.GRU):
        return lambda p, x, h, c: _gru_step(p, x, h, c, eps, backend)
    activation = torch.relu if module.mode == "RNN_RELU" else torch.tanh
    return lambda p, x, h, c: _rnn_step(activation, p, x, h, c)


def check_input(module: nn.RNNBase, args: Any, kwargs: Any, name: str | None) -> None:
    """Refuse, naming the module, what the unrolled form does not do (before the module runs)."""
    kind = f"nn.{type(module).__name__} {name!r}" if name else f"nn.{type(module).__name__}"
    given = args[0] if args else kwargs.get("input")
    if isinstance(given, PackedSequence):
        raise UnsupportedLayerError(
            f"LRP does not support packed sequences in {kind}: give the padded tensor (the padding "
            "steps then run and take relevance like any other)"
        )
    if module.training and module.dropout > 0 and module.num_layers > 1:
        raise UnsupportedLayerError(
            f"LRP does not support dropout > 0 in training mode in {kind} (call model.eval())"
        )


def unrolled(
    module: nn.RNNBase, input: Tensor, hx: Any = None, *, name: str | None = None, stabilizer: float = 0.0,
    backend: str | None = None,
) -> Any:  # fmt: skip
    """``module(input, hx)`` of an ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN`` step by step (the module
    docstring's formulas); returns what the module returns: ``(output, (h_n, c_n))`` for an
    LSTM, ``(output, h_n)`` otherwise. Shapes as in PyTorch: ``input`` [B, T, F] (batch_first),
    [T, B, F] or unbatched [T, F]; ``output`` [., ., D * H_out], ``h_n`` [L * D, (B,) H_out].
    ``stabilizer``, ``backend``: the epsilon and the ``lrp_divide`` backend of the GRU's
    candidate map (the other maps are ops the engine gives their rule)."""
    check_input(module, (input,), {}, name)
    lstm = isinstance(module, nn.LSTM)
    unbatched = input.dim() == 2
    x = input.unsqueeze(0) if unbatched else input if module.batch_first else input.transpose(0, 1)
    h0, c0 = (hx if lstm else (hx, None)) if hx is not None else (None, None)
    if unbatched:
        h0 = None if h0 is None else h0.unsqueeze(1)
        c0 = None if c0 is None else c0.unsqueeze(1)
    directions = 2 if module.bidirectional else 1
    out_size = getattr(module, "proj_size", 0) or module.hidden_size
    step = _step(module, stabilizer, backend)
    finals: list[State] = []
    for layer in range(module.num_layers):
        outputs = []
        for direction in range(directions):
            k = layer * directions + direction
            h = x.new_zeros(x.shape[0], out_size) if h0 is None else h0[k]
            c = None if not lstm else x.new_zeros(x.shape[0], module.hidden_size) if c0 is None else c0[k]
            p = _weights(module, f"_l{layer}" + ("_reverse" if direction else ""))
            per_time: list[Tensor] = [x] * x.shape[1]  # placeholders, each replaced below
            order = range(x.shape[1] - 1, -1, -1) if direction else range(x.shape[1])
            for t in order:
                h, c = step(p, x[:, t], h, c)
                per_time[t] = h
            outputs.append(torch.stack(per_time, dim=1))
            finals.append((h, c))
        x = torch.cat(outputs, dim=-1) if directions == 2 else outputs[0]
    output = x.squeeze(0) if unbatched else x if module.batch_first else x.transpose(0, 1)
    h_n = torch.stack([h for h, _ in finals])
    h_n = h_n.squeeze(1) if unbatched else h_n
    if not lstm:
        return output, h_n
    c_n = torch.stack([c for _, c in finals if c is not None])
    return output, (h_n, c_n.squeeze(1) if unbatched else c_n)


def check_close(module: nn.RNNBase, ours: Any, theirs: Any, name: str | None) -> None:
    """Refuse the unrolled result unless it is the module's own output to rounding."""
    flat_ours, flat_theirs = _flat(ours), _flat(theirs)
    worst = max(
        ((a.detach() - b.detach()).abs().max() / (1 + b.detach().abs().max())).item()
        for a, b in zip(flat_ours, flat_theirs, strict=True)
    )
    tolerance = _TOLERANCE.get(flat_theirs[0].dtype, 5e-2)
    if not worst <= tolerance:
        kind = f"nn.{type(module).__name__} {name!r}" if name else f"nn.{type(module).__name__}"
        raise UnsupportedLayerError(
            f"the unrolled {kind} differs from the module's output by {worst:.3g} (relative, "
            f"tolerance {tolerance:g}): a subclass or option the LRP rule does not know"
        )


def _flat(value: Any) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    return [t for item in value for t in _flat(item)]


def decomposition(module: nn.Module) -> Callable[..., Any] | None:
    """``unrolled`` for these module types and subclasses that keep their forward, else None."""
    for base in (nn.LSTM, nn.GRU, nn.RNN):
        if isinstance(module, base) and type(module).forward is base.forward:
            return unrolled
    return None


__all__ = ["check_close", "check_input", "decomposition", "unrolled"]
