"""LRP through ``nn.LSTM`` in the traced engine (Arras et al. 2017: gates are constants, the
epsilon rule on the linear parts) against the same LSTM unrolled with ops the traced engine
already had rules for, its gates ``i, f, o`` frozen at the input's values (constants, as the
rule takes them): the cell input's ``F.linear`` maps (epsilon), the sum ``f c + i g`` (in
proportion), the gate products with a constant (``R`` passes), ``tanh`` (identity). Both must
give the same relevance; with LRP-0 in float64 and no biases it is conserved exactly, also when
relevance reaches the final states (h_n, c_n). GRU, RNN and the two engines side by side:
``test_lrp_recurrent_gradient.py``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastxai.lrp import Composite, UnsupportedLayerError, lrp, rules
from fastxai.lrp._linear import LINEAR_TYPES

EXACT = Composite([(LINEAR_TYPES, rules.Epsilon(0.0))], stabilizer=0.0)
X = torch.rand(2, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


class Unrolled(nn.Module):
    """``lstm`` step by step; with ``gates`` given ({(layer, direction): (i, f, o)}, each
    [B, T, H]) those constants replace the gates, else the gates computed are kept in ``seen``."""

    def __init__(self, lstm: nn.LSTM, gates: dict | None = None) -> None:
        super().__init__()
        self.lstm, self.gates, self.seen = lstm, gates, {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, F], batch first
        lstm, size = self.lstm, self.lstm.hidden_size
        for layer in range(lstm.num_layers):
            outputs = []
            for direction in range(2 if lstm.bidirectional else 1):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                w_ih, w_hh = getattr(lstm, "weight_ih" + suffix), getattr(lstm, "weight_hh" + suffix)
                b_ih = getattr(lstm, "bias_ih" + suffix) if lstm.bias else None
                b_hh = getattr(lstm, "bias_hh" + suffix) if lstm.bias else None
                h = c = x.new_zeros(x.shape[0], size)
                hs: dict[int, torch.Tensor] = {}
                seen = []
                order = range(x.shape[1] - 1, -1, -1) if direction else range(x.shape[1])
                for t in order:
                    z = F.linear(x[:, t], w_ih, b_ih) + F.linear(h, w_hh, b_hh)
                    z_i, z_f, z_g, z_o = z.split(size, dim=-1)
                    if self.gates is None:
                        i, f, o = torch.sigmoid(z_i), torch.sigmoid(z_f), torch.sigmoid(z_o)
                        seen.append((i, f, o))
                    else:
                        i, f, o = (gate[:, t] for gate in self.gates[layer, direction])
                    c = f * c + i * torch.tanh(z_g)
                    h = o * torch.tanh(c)
                    hs[t] = h
                outputs.append(torch.stack([hs[t] for t in range(x.shape[1])], dim=1))
                if self.gates is None:
                    ordered = seen if not direction else seen[::-1]
                    self.seen[layer, direction] = tuple(
                        torch.stack(g, 1).detach() for g in zip(*ordered, strict=True)
                    )
            x = torch.cat(outputs, dim=-1)
        return x


class Sequence(nn.Module):
    """conv -> relu -> the pixels as a sequence [B, 16, 3] -> the LSTM (or its unrolled form) -> head."""

    def __init__(self, body: nn.Module, batch_first: bool, width: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.body, self.batch_first = body, batch_first
        self.head = nn.Linear(16 * width, 3, bias=False)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).flatten(2).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.sequence(x)
        if isinstance(self.body, nn.LSTM):
            if not self.batch_first:
                out, _ = self.body(seq.transpose(0, 1))
                return self.head(out.transpose(0, 1).flatten(1))
            out, _ = self.body(seq)
            return self.head(out.flatten(1))
        return self.head(self.body(seq).flatten(1))


@pytest.mark.parametrize(
    ("layers", "bidirectional", "batch_first", "bias"),
    [(2, True, True, False), (1, False, False, False), (2, True, False, True)],
    ids=["2-layer-bidirectional", "1-layer-sequence-first", "with-biases"],
)
def test_lstm_takes_the_gates_as_constants(
    layers: int, bidirectional: bool, batch_first: bool, bias: bool
) -> None:
    torch.manual_seed(3)
    lstm = nn.LSTM(3, 4, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, bias=bias)
    lstm = lstm.double()
    width = 4 * (2 if bidirectional else 1)
    model = Sequence(lstm, batch_first, width).double().eval()
    unrolled = Unrolled(lstm)
    with torch.no_grad():
        seq = model.sequence(X)
        expected = lstm(seq)[0] if batch_first else lstm(seq.transpose(0, 1))[0].transpose(0, 1)
        torch.testing.assert_close(unrolled(seq), expected)  # the unrolling is nn.LSTM; gates kept
    frozen = Sequence(Unrolled(lstm, unrolled.seen), batch_first, width).double().eval()
    with torch.no_grad():
        frozen.head.weight.copy_(model.head.weight)
        torch.testing.assert_close(frozen(X), model(X))
    ours = lrp(model, X, target=1, composite=EXACT)
    torch.testing.assert_close(ours, lrp(frozen, X, target=1, composite=EXACT))
    if not bias:
        torch.testing.assert_close(ours.flatten(1).sum(1), model(X)[:, 1].detach(), rtol=1e-9, atol=1e-12)


class Initial(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 3, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        state = (x[:, 0, :3].unsqueeze(0).contiguous(), x[:, 1, :3].unsqueeze(0).contiguous())
        return self.lstm(x, state)[0][:, -1]


def test_initial_states_are_refused() -> None:
    with pytest.raises(UnsupportedLayerError, match=r"initial states given to nn\.LSTM \(node 'lstm'\)"):
        lrp(Initial().eval(), torch.randn(2, 5, 4), target=0)


class FinalState(nn.Module):
    """Reads h_n alone (relevance reaches the LSTM through its final state only), or h_n and
    c_n of a 2-layer bidirectional LSTM."""

    def __init__(self, both: bool) -> None:
        super().__init__()
        self.both = both
        layout = {"num_layers": 2, "bidirectional": True} if both else {}
        self.lstm = nn.LSTM(4, 3, batch_first=True, bias=False, **layout)
        self.head = nn.Linear(6 if both else 3, 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h_n, c_n) = self.lstm(x)
        return self.head(torch.cat([h_n[-1], c_n[0]], dim=-1) if self.both else h_n[0])


@pytest.mark.parametrize("both", [False, True], ids=["h_n", "h_n-and-c_n"])
def test_final_states_carry_relevance_and_conserve_it(both: bool) -> None:
    torch.manual_seed(4)
    model = FinalState(both).double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    relevance = lrp(model, x, target=0, composite=EXACT)
    torch.testing.assert_close(relevance.flatten(1).sum(1), model(x)[:, 0].detach(), rtol=1e-9, atol=1e-12)
