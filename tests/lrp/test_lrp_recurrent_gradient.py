"""LRP through ``nn.LSTM``, ``nn.GRU`` and ``nn.RNN`` in the gradient engine (Arras et al. 2017:
gates are constants, relevance follows the signal; the epsilon rule on the sums and the linear
maps) against oracles that do not share its code:

- the relevance derived by hand, step by step backwards through time, from the textbook
  formulas (written plainly below, float64), with relevance reaching the output sequence and
  the final states;
- LRP-0 conservation (no biases, no stabiliser): the input's total is the score, for every
  layout (bidirectional, 2 layers, final-state readouts, initial states, projections);
- the traced engine's own rules (``fastxai.lrp._recurrent``, written backwards through time):
  both engines run every layout, and must agree.

Also: token ids through an embedding (the model of the issue), what is refused names the
module, and the model is left as found, also on error.
"""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fastxai.lrp import Composite, UnsupportedLayerError, lrp, rules
from fastxai.lrp._linear import LINEAR_TYPES

LRP0 = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)
CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


def _divide(r: torch.Tensor, z: torch.Tensor, eps: float) -> torch.Tensor:
    return r / (z + eps * torch.where(z >= 0, 1.0, -1.0).to(z.dtype))


def _states(body: nn.RNNBase, output: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(h_n, c_n) of what a recurrent module returns (c_n None for GRU and RNN); by the module's
    type, not the output's, so that torch.fx traces it."""
    return output[1] if isinstance(body, nn.LSTM) else (output[1], None)


class Reader(nn.Module):
    """x [B, T, F] -> the recurrent module -> a Linear head on the output sequence (flattened),
    the last h_n and, for an LSTM, the last c_n: relevance reaches all three."""

    def __init__(self, body: nn.RNNBase, steps: int) -> None:
        super().__init__()
        self.body = body
        out = body.proj_size or body.hidden_size
        width = out * (2 if body.bidirectional else 1) * steps + out
        width += body.hidden_size if isinstance(body, nn.LSTM) else 0
        self.head = nn.Linear(width, 3, dtype=torch.float64)

    def features(self, output: tuple) -> torch.Tensor:
        h_n, c_n = _states(self.body, output)
        sequence = output[0] if self.body.batch_first else output[0].transpose(0, 1)
        parts = [sequence.flatten(1), h_n[-1]] + ([] if c_n is None else [c_n[-1]])
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.body(x if self.body.batch_first else x.transpose(0, 1))))


def textbook_lstm(lstm: nn.LSTM, x: torch.Tensor, r_out: torch.Tensor, r_h: torch.Tensor,
                  r_c: torch.Tensor, stabilizer: float) -> torch.Tensor:  # fmt: skip
    """One layer, one direction, batch first: the relevance of x [B, T, F] from that of the
    outputs r_out [B, T, H] and of the final states r_h, r_c [B, H]."""
    w_ih, w_hh = lstm.weight_ih_l0, lstm.weight_hh_l0
    bias = lstm.bias_ih_l0 + lstm.bias_hh_l0
    size = lstm.hidden_size
    h = c = x.new_zeros(x.shape[0], size)
    saved = []
    for t in range(x.shape[1]):
        z = x[:, t] @ w_ih.T + h @ w_hh.T + bias
        z_i, z_f, z_g, z_o = z.split(size, dim=1)
        i, f, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.sigmoid(z_o)
        g = torch.tanh(z_g)
        c_new = f * c + i * g
        saved.append((h, c, i, f, g, z_g, c_new))
        h, c = o * torch.tanh(c_new), c_new
    r_x = torch.zeros_like(x)
    carry_h, carry_c = r_h, r_c  # the final states' relevance enters at the last step
    for t in reversed(range(x.shape[1])):
        h_prev, c_prev, i, f, g, z_g, c_t = saved[t]
        relevance_h = r_out[:, t] + carry_h
        relevance_c = relevance_h + carry_c  # h = o tanh(c): o constant, tanh passes R on
        s = _divide(relevance_c, c_t, stabilizer)  # c = f c_prev + i g: in proportion
        carry_c = f * c_prev * s
        relevance_g = i * g * s  # i constant, all to g; tanh passes R on to z_g
        q = _divide(relevance_g, z_g, stabilizer)  # z_g = W_ig x + W_hg h + b: epsilon
        r_x[:, t] = x[:, t] * (q @ w_ih[2 * size : 3 * size])
        carry_h = h_prev * (q @ w_hh[2 * size : 3 * size])
    return r_x


def textbook_gru(gru: nn.GRU, x: torch.Tensor, r_out: torch.Tensor, r_h: torch.Tensor,
                 stabilizer: float) -> torch.Tensor:  # fmt: skip
    """As ``textbook_lstm`` for a GRU: h' = (1 - z) n + z h, n = tanh(W_in x + b_in + r (W_hn h + b_hn))."""
    size = gru.hidden_size
    w_in, w_hn = gru.weight_ih_l0[2 * size :], gru.weight_hh_l0[2 * size :]
    b_in, b_hn = gru.bias_ih_l0[2 * size :], gru.bias_hh_l0[2 * size :]
    h = x.new_zeros(x.shape[0], size)
    saved = []
    for t in range(x.shape[1]):
        gates = x[:, t] @ gru.weight_ih_l0.T + gru.bias_ih_l0 + h @ gru.weight_hh_l0.T + gru.bias_hh_l0
        r, z = torch.sigmoid(gates[:, :size]), torch.sigmoid(gates[:, size : 2 * size])
        a_n = x[:, t] @ w_in.T + b_in + r * (h @ w_hn.T + b_hn)
        n = torch.tanh(a_n)
        h_new = (1 - z) * n + z * h
        saved.append((h, r, z, a_n, n, h_new))
        h = h_new
    r_x = torch.zeros_like(x)
    carry = r_h
    for t in reversed(range(x.shape[1])):
        h_prev, r, z, a_n, n, h_t = saved[t]
        s = _divide(r_out[:, t] + carry, h_t, stabilizer)  # the sum (1 - z) n + z h, z constant
        q = _divide((1 - z) * n * s, a_n, stabilizer)  # tanh passes R on; a_n's map: epsilon
        r_x[:, t] = x[:, t] * (q @ w_in)
        carry = z * h_prev * s + h_prev * ((r * q) @ w_hn)  # r constant: a factor of W_hn
    return r_x


def _head_relevance(model: Reader, x: torch.Tensor, target: int, eps: float) -> tuple[torch.Tensor, ...]:
    """The relevance the head's epsilon rule gives the outputs [B, T, H] and h_n, c_n [B, H]."""
    with torch.no_grad():
        output = model.body(x)
        a = model.features(output)
        logits = model.head(a)
        r = torch.zeros_like(logits)
        r[:, target] = logits[:, target]
        r_a = a * (_divide(r, logits, eps) @ model.head.weight)
    size, steps = model.body.hidden_size, x.shape[1]
    r_out = r_a[:, : steps * size].unflatten(1, (steps, size))
    return r_out, *r_a[:, steps * size :].split(size, dim=1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(("eps", "stabilizer"), [(0.0, 0.0), (0.05, 0.01)], ids=["lrp0", "epsilon"])
def test_matches_the_textbook_rules_backwards_through_time(cell: str, eps: float, stabilizer: float) -> None:
    torch.manual_seed(0)
    body = CELLS[cell](4, 5, batch_first=True, dtype=torch.float64)
    model = Reader(body, steps=6).eval()
    x = torch.randn(3, 6, 4, dtype=torch.float64)
    composite = Composite([(LINEAR_TYPES, rules.Epsilon(eps))], stabilizer=stabilizer)
    ours = lrp(model, x, target=2, composite=composite, engine="gradient")
    relevance = _head_relevance(model, x, 2, eps)
    with torch.no_grad():
        if cell == "lstm":
            expected = textbook_lstm(body, x, *relevance, stabilizer)
        else:
            expected = textbook_gru(body, x, *relevance, stabilizer)
    assert expected.abs().sum() > 0.1  # the readouts do carry relevance here
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-12)


LAYOUTS = {
    "1-layer": {},
    "2-layer-bidirectional": {"num_layers": 2, "bidirectional": True},
    "sequence-first": {"batch_first": False, "num_layers": 2},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("cell", list(CELLS))
def test_lrp0_conserves_the_score_through_every_layout(cell: str, layout: str) -> None:
    torch.manual_seed(1)
    options = {"batch_first": True, **LAYOUTS[layout]}
    body = CELLS[cell](4, 5, bias=False, dtype=torch.float64, **options)
    model = Reader(body, steps=7).eval()
    with torch.no_grad():
        model.head.bias.zero_()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    relevance = lrp(model, x, target=1, composite=LRP0, engine="gradient")
    torch.testing.assert_close(relevance.flatten(1).sum(1), model(x)[:, 1].detach(), rtol=1e-10, atol=1e-12)


class Classifier(nn.Module):
    """The issue's text classifier: token ids -> embedding -> recurrent -> head on the last output
    (``final=False``) or on the last layer's final hidden states (``final=True``)."""

    def __init__(self, cell: str, final: bool, bias: bool = True, **options: object) -> None:
        super().__init__()
        self.e = nn.Embedding(50, 16)
        self.body = CELLS[cell](16, 12, batch_first=True, bias=bias, **options)
        directions = 2 if self.body.bidirectional else 1
        self.o = nn.Linear(12 * directions, 3, bias=bias)
        self.final = final

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        output = self.body(self.e(ids))
        if not self.final:
            return self.o(output[0][:, -1])
        h_n = _states(self.body, output)[0]
        last = torch.cat(list(h_n[-2:]), dim=-1) if self.body.bidirectional else h_n[-1]
        return self.o(last)


@pytest.mark.parametrize("final", [False, True], ids=["last-output", "final-state"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_token_ids_through_a_recurrent_classifier_conserve_the_score(cell: str, final: bool) -> None:
    torch.manual_seed(2)
    model = Classifier(cell, final, bias=False, num_layers=2, bidirectional=True).double().eval()
    ids = torch.randint(1, 50, (2, 7))
    relevance = lrp(model, ids, target=1, composite=LRP0)  # auto: the gradient engine for token ids
    assert relevance.shape == (2, 7)
    torch.testing.assert_close(relevance.sum(1), model(ids)[:, 1].detach(), rtol=1e-10, atol=1e-12)
    with_biases = Classifier(cell, final).eval()
    assert torch.isfinite(lrp(with_biases, ids, target=1)).all()


class Stated(nn.Module):
    """Initial states computed from the input (they carry relevance) and a projected LSTM."""

    def __init__(self, cell: str) -> None:
        super().__init__()
        options = {"proj_size": 3} if cell == "lstm" else {}
        self.body = CELLS[cell](4, 5, batch_first=True, bias=False, num_layers=2, **options).double()
        out = 3 if cell == "lstm" else 5
        self.h0 = nn.Linear(4, 2 * out, bias=False).double()
        self.c0 = nn.Linear(4, 2 * 5, bias=False).double()
        self.head = nn.Linear(out, 2, bias=False).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1)
        h0 = self.h0(mean).unflatten(1, (2, -1)).transpose(0, 1).contiguous()
        if isinstance(self.body, nn.LSTM):
            c0 = self.c0(mean).unflatten(1, (2, -1)).transpose(0, 1).contiguous()
            return self.head(self.body(x, (h0, c0))[0][:, -1])
        return self.head(self.body(x, h0)[0][:, -1])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_initial_states_and_projections_take_their_share(cell: str) -> None:
    torch.manual_seed(3)
    model = Stated(cell).eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    relevance = lrp(model, x, target=0, composite=LRP0, engine="gradient")
    torch.testing.assert_close(relevance.flatten(1).sum(1), model(x)[:, 0].detach(), rtol=1e-10, atol=1e-12)


class Sequence(nn.Module):
    """conv -> relu -> the pixels as a sequence [B, 16, 3] -> LSTM -> head (as the traced
    engine's LSTM test)."""

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.lstm = lstm
        self.head = nn.Linear(16 * lstm.hidden_size * (2 if lstm.bidirectional else 1), 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(torch.relu(self.conv(x)).flatten(2).transpose(1, 2))
        return self.head(out.flatten(1))


@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (2, True)])
def test_the_engines_agree_on_an_lstm(layers: int, bidirectional: bool) -> None:
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 4, num_layers=layers, bidirectional=bidirectional, batch_first=True)
    model = Sequence(lstm).double().eval()
    x = torch.rand(2, 2, 4, 4, dtype=torch.float64)
    composite = Composite([(LINEAR_TYPES, rules.Epsilon(0.05))], stabilizer=0.01)
    traced = lrp(model, x, target=1, composite=composite, engine="fx")
    torch.testing.assert_close(lrp(model, x, target=1, composite=composite, engine="gradient"), traced)


@pytest.mark.parametrize(
    ("cell", "layout"), [(cell, layout) for cell in CELLS for layout in LAYOUTS] + [("lstm", "projected")]
)
def test_the_engines_agree_with_relevance_at_the_final_states(cell: str, layout: str) -> None:
    """The traced engine's own rules (``fastxai.lrp._recurrent``) against the unrolled ops, with
    relevance reaching the output sequence, h_n and (LSTM) c_n through ``getitem``."""
    torch.manual_seed(6)
    options = {"batch_first": True, **LAYOUTS.get(layout, {"proj_size": 3, "num_layers": 2})}
    model = Reader(CELLS[cell](4, 5, dtype=torch.float64, **options), steps=7).eval()
    x = torch.randn(3, 7, 4, dtype=torch.float64)
    composite = Composite([(LINEAR_TYPES, rules.Epsilon(0.05))], stabilizer=0.01)
    traced = lrp(model, x, target=1, composite=composite, engine="fx")
    torch.testing.assert_close(lrp(model, x, target=1, composite=composite, engine="gradient"), traced)


class Packed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.GRU(4, 5, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, h_n = self.body(pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True))
        return h_n[-1]


def test_refusals_name_the_module_and_leave_the_model_as_found() -> None:
    model = Packed().train()
    handle = model.body.register_forward_hook(lambda *args: None)
    before = model_state(model)
    with pytest.raises(UnsupportedLayerError, match=r"packed sequences in nn\.GRU 'body'"):
        lrp(model, torch.randn(2, 5, 4), target=0, engine="gradient")
    assert_same_state(before, model_state(model))
    handle.remove()
    dropout = Classifier("lstm", final=False, num_layers=2, dropout=0.5).train()
    before = model_state(dropout)
    with pytest.raises(UnsupportedLayerError, match=r"dropout > 0 in training mode in nn\.LSTM 'body'"):
        lrp(dropout, torch.randint(1, 50, (2, 7)), target=0, eval_mode=False)
    assert_same_state(before, model_state(dropout))


def test_an_unrolling_that_differs_from_the_module_is_refused() -> None:
    torch.manual_seed(5)
    model = Classifier("lstm", final=True).eval()
    original = model.body.forward

    def doubled(*args: object, **kwargs: object) -> object:
        output, (h_n, c_n) = original(*args, **kwargs)
        return output * 2, (h_n, c_n)

    model.body.forward = doubled  # type: ignore[method-assign]
    before = model_state(model)
    with pytest.raises(UnsupportedLayerError, match=r"unrolled nn\.LSTM 'body' differs from the module's"):
        lrp(model, torch.randint(1, 50, (2, 7)), target=0)
    assert_same_state(before, model_state(model))


class Unbatched(nn.Module):
    """A batch of one given to the module unbatched [T, F] (``unbatched=True``) or sequence first."""

    def __init__(self, cell: str, unbatched: bool) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.body = CELLS[cell](4, 5, num_layers=2, bidirectional=True, dtype=torch.float64)
        self.head = nn.Linear(10, 3, dtype=torch.float64)
        self.unbatched = unbatched

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unbatched:
            return self.head(self.body(x[0])[0][-1]).unsqueeze(0)
        return self.head(self.body(x.transpose(0, 1))[0][-1])


@pytest.mark.parametrize("cell", list(CELLS))
def test_an_unbatched_sequence_is_a_batch_of_one(cell: str) -> None:
    x = torch.randn(1, 6, 4, dtype=torch.float64)
    alone = lrp(Unbatched(cell, True).eval(), x, target=1, engine="gradient")
    torch.testing.assert_close(alone, lrp(Unbatched(cell, False).eval(), x, target=1, engine="gradient"))
