"""The perturbation methods on a text classifier: a tiny random ``BertForSequenceClassification``
(nothing downloaded, its ``ModelOutput`` read as the logits), token ids with padding, an
attention mask as ``forward_kwargs``, words as feature groups, a replacement token as the
baseline, padding marked -1 in ``feature_mask`` (never perturbed).

Oracles: copies built by hand and scored one by one with their row's mask, Captum's
``FeatureAblation`` / ``Occlusion`` with ``additional_forward_args``, the same sentence alone
without padding, the Shapley formula over every coalition, a least-squares fit by hand.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from models import assert_same_state, model_state
from real_models import tiny_bert
from torch import nn

import fastxai as fx

REPLACEMENT, PAD = 3, 0
WORDS = ([2, 1, 2, 2], [1, 2, 2], [1, 2])  # tokens per word, per sentence; the rest is padding
LENGTH = 7
TARGET = torch.tensor([0, 1, 1])


@pytest.fixture(scope="module")
def bert() -> nn.Module:
    return tiny_bert(pad_token_id=PAD)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids [3, 7] right-padded, their attention mask, and word ids (-1 at padding)."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, 50, (len(WORDS), LENGTH), generator=generator)
    spans = torch.full((len(WORDS), LENGTH), -1)
    for row, words in enumerate(WORDS):
        word_of = torch.repeat_interleave(torch.arange(len(words)), torch.tensor(words))
        spans[row, : len(word_of)] = word_of
    mask = (spans >= 0).long()
    return ids * mask + PAD * (1 - mask), mask, spans


def _score(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, target: int) -> float:
    """``f_target`` of one sentence [T] with its mask, the model called on that row alone."""
    with torch.no_grad():
        return float(model(ids.unsqueeze(0), attention_mask=mask.unsqueeze(0)).logits[0, target])


def _value(
    model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, spans: torch.Tensor, kept: set[int], target: int
) -> float:
    """The coalition game of one sentence: the words in ``kept`` as they are, the other words
    replaced, padding left alone."""
    copy = ids.clone()
    for word in range(int(spans.max()) + 1):
        if word not in kept:
            copy[spans == word] = REPLACEMENT
    return _score(model, copy, mask, target)


def test_feature_ablation_equals_copies_built_by_hand(bert: nn.Module) -> None:
    ids, mask, spans = _batch()
    before = model_state(bert)
    expected = torch.zeros(ids.shape)
    for row in range(ids.shape[0]):
        target = int(TARGET[row])
        full = _score(bert, ids[row], mask[row], target)
        for word in range(int(spans[row].max()) + 1):
            copy = ids[row].clone()
            copy[spans[row] == word] = REPLACEMENT
            expected[row, spans[row] == word] = full - _score(bert, copy, mask[row], target)
    # chunk_size 2 < 3 rows: rows split across model batches (their mask rows with them); 7: two
    # copies of the batch per model batch; None: one build
    for chunk_size in (2, 7, None):
        got = fx.feature_ablation(
            bert,
            ids,
            TARGET,
            baselines=REPLACEMENT,
            feature_mask=spans,
            forward_kwargs={"attention_mask": mask},
            chunk_size=chunk_size,
        )
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert bool((got[spans < 0] == 0).all()) and bool((got[spans >= 0] != 0).any())
    assert_same_state(before, model_state(bert))


def test_the_model_gets_token_ids_and_the_mask_rows_of_each_copy(bert: nn.Module) -> None:
    ids, mask, spans = _batch()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def model(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        seen.append((tokens, attention_mask))
        return bert(tokens, attention_mask=attention_mask)

    fx.feature_ablation(
        model, ids, TARGET, baselines=REPLACEMENT, feature_mask=spans, forward_kwargs={"attention_mask": mask}
    )
    for tokens, attention_mask in seen:
        assert tokens.dtype == torch.int64
        copies = tokens.shape[0] // ids.shape[0]
        assert torch.equal(attention_mask, mask.repeat(copies, 1))
        assert torch.equal(tokens[attention_mask == 0], torch.full_like(tokens[attention_mask == 0], PAD))


def test_feature_ablation_and_occlusion_against_captum(bert: nn.Module) -> None:
    captum_attr = pytest.importorskip("captum.attr")
    ids, mask, spans = _batch()

    def logits(tokens: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return bert(tokens, attention_mask=attention_mask).logits

    # Captum ablates every id of the mask: the padding as one more group (replacing it changes
    # nothing the attention mask lets through)
    words = torch.where(spans >= 0, spans, int(spans.max()) + 1)
    ours = fx.feature_ablation(
        bert, ids, TARGET, baselines=REPLACEMENT, feature_mask=words, forward_kwargs={"attention_mask": mask}
    )
    theirs = captum_attr.FeatureAblation(logits).attribute(
        ids, baselines=REPLACEMENT, target=TARGET, feature_mask=words, additional_forward_args=(mask,)
    )
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-5)
    ours = fx.occlusion(
        bert,
        ids,
        TARGET,
        sliding_window_shapes=(2,),
        strides=1,
        baselines=REPLACEMENT,
        forward_kwargs={"attention_mask": mask},
    )
    theirs = captum_attr.Occlusion(logits).attribute(
        ids,
        sliding_window_shapes=(2,),
        strides=1,
        baselines=REPLACEMENT,
        target=TARGET,
        additional_forward_args=(mask,),
    )
    torch.testing.assert_close(ours, theirs.to(ours.dtype), rtol=1e-4, atol=1e-5)


def test_a_padded_row_is_explained_as_the_sentence_alone(bert: nn.Module) -> None:
    ids, mask, spans = _batch()
    common = {"baselines": REPLACEMENT, "n_samples": 200, "seed": 0}
    batched = {
        "feature_ablation": fx.feature_ablation(
            bert,
            ids,
            TARGET,
            baselines=REPLACEMENT,
            feature_mask=spans,
            forward_kwargs={"attention_mask": mask},
        ),
        "kernel_shap": fx.kernel_shap(  # 2**M - 2 <= n_samples: every coalition, the same in both
            bert, ids, TARGET, feature_mask=spans, forward_kwargs={"attention_mask": mask}, **common
        ),
    }
    for row, words in enumerate(WORDS):
        length = sum(words)
        alone = ids[row : row + 1, :length]
        kwargs = {
            "feature_mask": spans[row : row + 1, :length],
            "forward_kwargs": {"attention_mask": mask[row : row + 1, :length]},
        }
        expected = {
            "feature_ablation": fx.feature_ablation(
                bert, alone, TARGET[row : row + 1], baselines=REPLACEMENT, **kwargs
            ),
            "kernel_shap": fx.kernel_shap(bert, alone, TARGET[row : row + 1], **common, **kwargs),
        }
        for name, result in batched.items():
            torch.testing.assert_close(result[row, :length], expected[name][0], rtol=1e-4, atol=1e-5)
            assert bool((result[row, length:] == 0).all())


def _shapley(values: dict[frozenset[int], float], players: int) -> list[float]:
    """``phi_m = sum_S |S|! (M - |S| - 1)! / M! (v(S + m) - v(S))``."""
    phi = []
    for m in range(players):
        others = [p for p in range(players) if p != m]
        total = 0.0
        for size in range(players):
            weight = math.factorial(size) * math.factorial(players - size - 1) / math.factorial(players)
            for subset in itertools.combinations(others, size):
                total += weight * (values[frozenset(subset) | {m}] - values[frozenset(subset)])
        phi.append(total)
    return phi


def _games(bert: nn.Module) -> list[dict[frozenset[int], float]]:
    ids, mask, spans = _batch()
    games = []
    for row, words in enumerate(WORDS):
        coalitions = [
            frozenset(c)
            for size in range(len(words) + 1)
            for c in itertools.combinations(range(len(words)), size)
        ]
        games.append(
            {
                kept: _value(bert, ids[row], mask[row], spans[row], set(kept), int(TARGET[row]))
                for kept in coalitions
            }
        )
    return games


def test_shapley_methods_and_lime_with_forward_kwargs(bert: nn.Module) -> None:
    ids, mask, spans = _batch()
    games = _games(bert)
    groups = int(spans.max()) + 1
    common = {
        "baselines": REPLACEMENT,
        "feature_mask": spans,
        "forward_kwargs": {"attention_mask": mask},
        "return_input_shape": False,
        "seed": 0,
        "chunk_size": 5,
    }
    exact = fx.kernel_shap(bert, ids, TARGET, n_samples=2**groups, **common)  # every coalition
    sampled = fx.kernel_shap(bert, ids, TARGET, n_samples=6, **common)
    sampling = fx.shapley_value_sampling(bert, ids, TARGET, n_samples=4, **common)
    for row, words in enumerate(WORDS):
        game, players = games[row], len(words)
        grand = game[frozenset(range(players))] - game[frozenset()]
        expected = torch.tensor(_shapley(game, players) + [0.0] * (groups - players))
        torch.testing.assert_close(exact[row], expected.to(exact.dtype), rtol=1e-4, atol=1e-5)
        for phi in (sampled[row], sampling[row]):  # efficiency
            torch.testing.assert_close(float(phi.sum()), grand, rtol=1e-4, atol=1e-5)
        # a word the row lacks changes no copy: no contribution along any order
        torch.testing.assert_close(sampling[row, players:], torch.zeros(groups - players), rtol=0, atol=1e-6)
    # LIME's linear surrogate on every coalition, equal weights: least squares by hand
    codes = torch.arange(2**groups)
    samples = ((codes.unsqueeze(1) >> torch.arange(groups)) & 1).bool().expand(ids.shape[0], -1, -1)
    coef = fx.lime(
        bert,
        ids,
        TARGET,
        samples=samples,
        similarity=lambda z: torch.ones(z.shape[:2], dtype=torch.float64),
        interpretable_model="linear",
        **common,
    )
    for row, words in enumerate(WORDS):
        players = len(words)
        z = samples[row].double()
        scores = torch.tensor([games[row][frozenset(int(m) for m in torch.nonzero(s[:players]))] for s in z])
        design = torch.cat([torch.ones(z.shape[0], 1, dtype=torch.float64), z[:, :players]], dim=1)
        fit = torch.linalg.lstsq(design, scores.unsqueeze(1).double()).solution[1:, 0]
        torch.testing.assert_close(coef[row, :players], fit.to(coef.dtype), rtol=1e-4, atol=1e-5)


def test_score_cam_repeats_per_example_arguments() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(3)
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.head = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.head(torch.relu(self.conv(x)).mean((2, 3))) * scale.unsqueeze(1)

    class Fixed(nn.Module):  # the same model with one example's argument built in
        def __init__(self, model: nn.Module, scale: torch.Tensor) -> None:
            super().__init__()
            self.model, self.scale = model, scale

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x, self.scale.expand(x.shape[0]))

    model = Scaled().eval()
    x = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0))
    scale = torch.tensor([0.5, 2.0, 4.0])
    target = torch.tensor([0, 2, 1])
    expected = torch.cat(
        [
            fx.score_cam(Fixed(model, scale[b]), x[b : b + 1], target[b : b + 1], layer="model.conv")
            for b in range(3)
        ]
    )
    for chunk_size in (2, 5, None):  # rows split; two channels of all rows per pass; all at once
        got = fx.score_cam(
            model, x, target, layer="conv", forward_kwargs={"scale": scale}, chunk_size=chunk_size
        )
        torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match="layer="):
        fx.score_cam(model, x, target, forward_kwargs={"scale": scale})


@pytest.mark.parametrize(
    "method", ["feature_ablation", "occlusion", "shapley", "kernel_shap", "lime", "score_cam"]
)
@pytest.mark.parametrize("forward_kwargs", [["attention_mask"], {1: "x"}])
def test_bad_forward_kwargs_refused_before_any_model_call(method: str, forward_kwargs: object) -> None:
    calls: list[int] = []

    def model(x: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append(x.shape[0])
        return x.flatten(1)[:, :3]

    x = torch.randn(2, 1, 4, 4)
    options: dict = {
        "occlusion": {"sliding_window_shapes": (1, 2, 2)},
        "score_cam": {"layer": None},
    }.get(method, {})
    function = {
        "feature_ablation": fx.feature_ablation,
        "occlusion": fx.occlusion,
        "shapley": fx.shapley_value_sampling,
        "kernel_shap": fx.kernel_shap,
        "lime": fx.lime,
        "score_cam": fx.score_cam,
    }[method]
    with pytest.raises(TypeError, match="forward_kwargs"):
        function(model, x, 0, forward_kwargs=forward_kwargs, **options)
    assert calls == []
