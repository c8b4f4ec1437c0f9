"""Permutation feature importance: against a per-group loop with the same permutations, the
linear-model formula, seeds and chunking, token ids, fixed elements, bad input (one example
included) refused before the model runs, and the model left as found."""

from __future__ import annotations

import pytest
import torch
from models import LinearModel, assert_same_state, mlp, model_state, small_cnn
from torch import nn

import fastxai
from fastxai.attribution.permutation import PermutationBatchError, permutations

pytestmark = pytest.mark.usefixtures("one_thread")


def _per_group_loop(
    model: nn.Module, x: torch.Tensor, mask: torch.Tensor, perms: torch.Tensor, target: int
) -> torch.Tensor:
    """Permutation importance the textbook way: one permuted batch per group, [B, *F]."""
    flat = x.reshape(x.shape[0], -1)
    ids = mask.reshape(-1)
    out = torch.zeros_like(flat)
    with torch.no_grad():
        score = model(x)[:, target]
        for group in range(int(ids.max()) + 1):
            permuted = flat.clone()
            columns = ids == group
            permuted[:, columns] = flat[perms[group]][:, columns]
            drop = score - model(permuted.view_as(x))[:, target]
            out[:, columns] = drop.unsqueeze(1).to(out.dtype)
    return out.view_as(x)


@pytest.mark.parametrize("chunk_size", [None, 7])
def test_matches_a_per_group_loop_with_the_same_permutations(chunk_size: int | None) -> None:
    model = small_cnn(seed=1).eval()
    x = torch.randn(5, 1, 6, 6)
    mask = (torch.arange(36) // 4).view(1, 6, 6)  # 9 groups of 4
    got = fastxai.feature_permutation(model, x, 2, feature_mask=mask, seed=11, chunk_size=chunk_size)
    perms = permutations(9, 5, 11, x.device)
    torch.testing.assert_close(got, _per_group_loop(model, x, mask, perms, 2), rtol=1e-5, atol=1e-6)


def test_linear_model_formula_and_an_ignored_feature() -> None:
    model = LinearModel(10, 3)
    with torch.no_grad():
        model.weight[:, 4] = 0.0  # the model ignores feature 4: permuting it changes nothing
    x = torch.randn(6, 10, dtype=torch.float64)
    got = fastxai.feature_permutation(model, x, 1, seed=3)  # every element its own group
    perms = permutations(10, 6, 3, x.device)
    expected = model.weight[1].detach() * (x - x[perms.T, torch.arange(10)])
    torch.testing.assert_close(got, expected)
    assert torch.equal(got[:, 4], torch.zeros(6, dtype=torch.float64))


def test_permutations_are_seeded_and_never_the_identity() -> None:
    perms = permutations(500, 2, 0, torch.device("cpu"))  # with 2 rows, half the draws are the identity
    assert torch.equal(perms, torch.tensor([[1, 0]]).expand(500, 2))
    perms = permutations(64, 6, 5, torch.device("cpu"))
    assert torch.equal(perms.sort(dim=1).values, torch.arange(6).expand(64, 6))
    assert not (perms == torch.arange(6)).all(dim=1).any()
    assert torch.equal(perms, permutations(64, 6, 5, torch.device("cpu")))
    assert not torch.equal(perms, permutations(64, 6, 6, torch.device("cpu")))


def test_seed_and_chunk_size() -> None:
    model = mlp(seed=2)
    x = torch.randn(4, 20)
    first = fastxai.feature_permutation(model, x, 0, seed=4)
    torch.testing.assert_close(fastxai.feature_permutation(model, x, 0, seed=4, chunk_size=3), first)
    assert not torch.equal(fastxai.feature_permutation(model, x, 0, seed=5), first)


def test_per_input_masks_and_fixed_elements() -> None:
    model = LinearModel(6, 2)
    x = torch.randn(3, 6, dtype=torch.float64)
    mask = torch.tensor([[0, 0, 1, 1, -1, -1], [1, 0, 0, 1, 1, -1], [0, 1, 0, 1, 0, 1]])
    got = fastxai.feature_permutation(model, x, 0, feature_mask=mask, seed=9)
    perms = permutations(2, 3, 9, x.device)
    weight = model.weight[0].detach()
    for b in range(3):
        for group in range(2):
            members = mask[b] == group
            drop = (weight[members] * (x[b, members] - x[perms[group, b], members])).sum()
            torch.testing.assert_close(got[b, members], drop.expand(int(members.sum())))
    assert torch.equal(got[mask < 0], torch.zeros(int((mask < 0).sum()), dtype=torch.float64))


def test_token_ids_are_permuted_as_ids() -> None:
    torch.manual_seed(0)
    embedding = nn.Embedding(30, 4)
    head = nn.Linear(4, 2)

    def model(ids: torch.Tensor) -> torch.Tensor:
        assert ids.dtype == torch.int64  # the model gets integer ids, never floats
        return head(embedding(ids).mean(1))

    ids = torch.randint(0, 30, (4, 5))
    got = fastxai.feature_permutation(model, ids, 1, seed=2)
    perms = permutations(5, 4, 2, ids.device)
    expected = torch.empty(4, 5)
    with torch.no_grad():
        score = model(ids)[:, 1]
        for position in range(5):
            permuted = ids.clone()
            permuted[:, position] = ids[perms[position], position]
            expected[:, position] = score - model(permuted)[:, 1]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    ("inputs", "kwargs", "error", "match"),
    [
        (torch.randn(1, 16), {}, PermutationBatchError, "at least 2"),
        (torch.randn(3, 16), {"feature_mask": torch.zeros(16)}, TypeError, "integer"),
        (torch.randn(3, 16), {"feature_mask": torch.zeros(5, dtype=torch.long)}, ValueError, "feature_mask"),
        (torch.randn(3, 16), {"seed": -1}, ValueError, "seed"),
        (torch.randn(3, 16), {"chunk_size": -2}, ValueError, "chunk_size"),
        (torch.full((3, 16), float("nan")), {}, ValueError, "NaN"),
        ([[1.0] * 16] * 3, {}, TypeError, "inputs"),
    ],
)
def test_bad_input_before_any_model_call(inputs, kwargs: dict, error: type, match: str) -> None:  # type: ignore[no-untyped-def]
    calls: list[int] = []
    model = LinearModel(16, 2, dtype=torch.float32)
    model.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(error, match=match):
        fastxai.feature_permutation(model, inputs, 1, **kwargs)
    assert calls == []


def test_one_example_is_also_an_assertion_error() -> None:
    # Captum asserts; code catching AssertionError keeps working
    with pytest.raises(AssertionError):
        fastxai.feature_permutation(LinearModel(4, 2), torch.randn(1, 4, dtype=torch.float64), 0)


def test_model_state_restored_also_on_error() -> None:
    model = small_cnn(seed=3)
    model.train()
    before = model_state(model)
    x = torch.randn(3, 1, 4, 4)
    fastxai.feature_permutation(model, x, 1, seed=0)
    assert_same_state(before, model_state(model))
    with pytest.raises(ValueError, match="target"):
        fastxai.feature_permutation(model, x, 10, seed=0)
    assert_same_state(before, model_state(model))
