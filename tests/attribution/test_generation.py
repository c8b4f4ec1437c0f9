"""``explain_generation`` on a tiny random GPT-2: a brute-force loop of single-target calls as
the oracle, causality, padding, bad input refused before any model call, the model left as found."""

from __future__ import annotations

import pytest
import torch
from models import assert_same_state, model_state
from real_models import transformers
from torch import nn

import fastxai as fx

T_IN, T_OUT, VOCAB = 5, 3, 50


@pytest.fixture(scope="module")
def gpt2() -> nn.Module:
    tr = transformers()
    torch.manual_seed(0)
    config = tr.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=VOCAB, n_positions=32)
    return tr.GPT2LMHeadModel(config).eval().double()


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def _brute_force(
    model: nn.Module, prompts: torch.Tensor, continuations: torch.Tensor, method: str
) -> torch.Tensor:
    """One call of the single-example method per (example, step), on the log-probabilities."""
    log_probs = fx.select_output(model, lambda out: torch.log_softmax(out.logits, -1))
    ids = torch.cat([prompts, continuations], 1)
    rows = []
    for b in range(prompts.shape[0]):
        for j in range(continuations.shape[1]):
            target = (T_IN + j - 1, int(continuations[b, j]))
            one = ids[b : b + 1]
            if method == "integrated_gradients":
                a = fx.integrated_gradients(log_probs, one, target=target, layer="transformer.wte", n_steps=8)
            elif method == "saliency":
                a = fx.saliency(log_probs, one, target=target, layer="transformer.wte")
            else:
                a = fx.input_x_gradient(log_probs, one, target=target, layer="transformer.wte")
            assert isinstance(a, torch.Tensor)
            rows.append(a.sum(-1)[0, :T_IN])
    return torch.stack(rows).view(prompts.shape[0], continuations.shape[1], T_IN)


@pytest.mark.parametrize("method", ["integrated_gradients", "saliency", "input_x_gradient"])
def test_equals_brute_force_loop(gpt2: nn.Module, method: str) -> None:
    prompts, continuations = _ids(2, T_IN, 0), _ids(2, T_OUT, 1)
    # chunk_size=5 splits the 2 * 3 rows (x 8 path points) across model batches
    got = fx.explain_generation(gpt2, prompts, continuations, method=method, n_steps=8, chunk_size=5)
    assert got.shape == (2, T_OUT, T_IN)
    expected = _brute_force(gpt2, prompts, continuations, method)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    assert got.abs().sum() > 0


def test_causal_later_tokens_change_nothing(gpt2: nn.Module) -> None:
    prompts, continuations = _ids(2, T_IN, 4), _ids(2, T_OUT, 5)
    a = fx.explain_generation(gpt2, prompts, continuations, n_steps=8)
    for j in range(T_OUT - 1):
        changed = continuations.clone()
        changed[:, j + 1 :] = (changed[:, j + 1 :] + 7) % VOCAB
        b = fx.explain_generation(gpt2, prompts, changed, n_steps=8)
        torch.testing.assert_close(b[:, : j + 1], a[:, : j + 1], rtol=1e-9, atol=1e-12)
        assert not torch.allclose(b[:, j + 1 :], a[:, j + 1 :])


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_gives_the_unpadded_attributions(gpt2: nn.Module, side: str) -> None:
    short, continuation = _ids(1, 3, 6), _ids(1, T_OUT, 7)
    plain = fx.explain_generation(gpt2, short, continuation, n_steps=8)
    pad = torch.zeros(1, 2, dtype=torch.long)
    padded = torch.cat([pad, short] if side == "left" else [short, pad], 1)
    mask = torch.cat(
        [torch.zeros_like(pad), torch.ones_like(short)]
        if side == "left"
        else [torch.ones_like(short), torch.zeros_like(pad)],
        1,
    )
    other = _ids(1, 5, 8)  # a second, unpadded prompt in the same batch
    a = fx.explain_generation(
        gpt2,
        torch.cat([padded, other]),
        torch.cat([continuation, continuation]),
        attention_mask=torch.cat([mask, torch.ones_like(other)]),
        n_steps=8,
    )
    real = mask[0].bool()
    torch.testing.assert_close(a[0][:, real], plain[0], rtol=1e-7, atol=1e-9)
    assert (a[0][:, ~real] == 0).all()
    alone = fx.explain_generation(gpt2, other, continuation, n_steps=8)
    torch.testing.assert_close(a[1], alone[0], rtol=1e-7, atol=1e-9)


def test_token_id_baseline_and_batch_layout(gpt2: nn.Module) -> None:
    prompts, continuations = _ids(3, T_IN, 9), _ids(3, T_OUT, 10)
    both = fx.explain_generation(gpt2, prompts, continuations, baselines=0, n_steps=8)
    one = fx.explain_generation(gpt2, prompts[1:2], continuations[1:2], baselines=0, n_steps=8)
    torch.testing.assert_close(both[1:2], one, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(both, fx.explain_generation(gpt2, prompts, continuations, n_steps=8))
    vector = torch.full((16,), 0.1, dtype=torch.double)  # one embedding vector: the baseline everywhere
    log_probs = fx.select_output(gpt2, lambda out: torch.log_softmax(out.logits, -1))
    ids = torch.cat([prompts[:1], continuations[:1]], 1)
    brute = fx.integrated_gradients(
        log_probs,
        ids,
        baselines=vector,
        target=(T_IN, int(continuations[0, 1])),
        layer="transformer.wte",
        n_steps=8,
    )
    got = fx.explain_generation(gpt2, prompts, continuations, baselines=vector, n_steps=8)
    assert isinstance(brute, torch.Tensor)
    torch.testing.assert_close(got[0, 1], brute.sum(-1)[0, :T_IN], rtol=1e-9, atol=1e-12)


def _calls(model: nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    count = [0]

    def hook(*_: object) -> None:
        count[0] += 1

    return count, model.register_forward_pre_hook(hook)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"prompts": torch.rand(2, T_IN)}, TypeError),
        ({"continuations": torch.rand(2, T_OUT)}, TypeError),
        ({"prompts": torch.zeros(2, T_IN, 1, dtype=torch.long)}, ValueError),
        ({"continuations": torch.zeros(3, T_OUT, dtype=torch.long)}, ValueError),
        ({"continuations": torch.zeros(2, 0, dtype=torch.long)}, ValueError),
        ({"prompts": [[1, 2]]}, TypeError),
        ({"method": "lrp"}, ValueError),
        ({"attention_mask": torch.ones(2, T_IN + 1, dtype=torch.long)}, ValueError),
        ({"attention_mask": torch.ones(2, T_IN)}, TypeError),
        ({"attention_mask": torch.zeros(2, T_IN, dtype=torch.long)}, ValueError),
        ({"attention_mask": torch.full((2, T_IN), 2)}, ValueError),
        ({"method": "saliency", "baselines": 3}, ValueError),
        ({"forward_kwargs": {"attention_mask": torch.ones(2, 8)}}, ValueError),
        ({"chunk_size": 0}, ValueError),
        ({"n_steps": 0}, ValueError),
        ({"baselines": torch.zeros(2, T_IN + T_OUT, 16)}, ValueError),
        ({"baselines": torch.zeros(15)}, ValueError),
        ({"baselines": VOCAB}, ValueError),
        ({"baselines": "pad"}, TypeError),
        ({"integration": "simpson"}, ValueError),
        ({"forward_kwargs": [1]}, TypeError),
        ({"continuations": torch.full((2, T_OUT), VOCAB)}, ValueError),
        ({"prompts": torch.full((2, T_IN), -1)}, ValueError),
        ({"layer": "no.such.layer"}, ValueError),
    ],
)
def test_bad_input_refused_before_any_model_call(gpt2: nn.Module, kwargs: dict, error: type) -> None:
    call = {"model": gpt2, "prompts": _ids(2, T_IN, 0), "continuations": _ids(2, T_OUT, 1), **kwargs}
    count, handle = _calls(gpt2)
    try:
        with pytest.raises(error):
            fx.explain_generation(**call)
    finally:
        handle.remove()
    assert count[0] == 0


def test_model_left_as_found(gpt2: nn.Module) -> None:
    gpt2.train()
    gpt2.transformer.h[0].mlp.c_fc.weight.requires_grad_(False)
    before = model_state(gpt2)
    try:
        fx.explain_generation(gpt2, _ids(1, T_IN, 0), _ids(1, T_OUT, 1), n_steps=4)
        assert_same_state(before, model_state(gpt2))
        with pytest.raises(IndexError):  # positions past n_positions: raised inside the model pass
            bad = {"position_ids": torch.full((1, T_IN + T_OUT), 99)}
            fx.explain_generation(
                gpt2, _ids(1, T_IN, 0), _ids(1, T_OUT, 1), method="saliency", forward_kwargs=bad
            )
        assert_same_state(before, model_state(gpt2))
    finally:
        gpt2.eval()
        gpt2.transformer.h[0].mlp.c_fc.weight.requires_grad_(True)


def test_scores_read_one_position_per_row_with_or_without_logits_to_keep(gpt2: nn.Module) -> None:
    """A Hugging Face model is asked for the last T_out + 1 positions' logits only; a model that
    takes no ``logits_to_keep`` (a wrapper returning all T positions as a plain tensor) gives the
    same attributions, and so does the brute-force loop over the full log-softmax."""
    seen: list[object] = []
    handle = gpt2.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs.get("logits_to_keep")), with_kwargs=True
    )
    prompts, continuations = _ids(2, T_IN, 11), _ids(2, T_OUT, 12)
    try:
        kept = fx.explain_generation(gpt2, prompts, continuations, n_steps=8, chunk_size=7)
    finally:
        handle.remove()
    assert seen and set(seen) == {T_OUT + 1}
    plain = fx.select_output(gpt2, "logits")  # forward(*args, **kwargs): all positions
    every = fx.explain_generation(plain, prompts, continuations, n_steps=8, chunk_size=7)
    torch.testing.assert_close(kept, every, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(kept, _brute_force(gpt2, prompts, continuations, "integrated_gradients"))
