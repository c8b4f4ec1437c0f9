"""Faithfulness metrics on cases with known answers, against Captum where it has the metric."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fastxai as fx
from fastxai import evaluation as ev


class Linear(nn.Module):
    """f(x) = w . x (+ b), one output per input: every metric has a closed form."""

    def __init__(self, features: int, bias: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(features, generator=generator, dtype=torch.float64))
        self.b = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) @ self.w + self.b


def _data(batch: int = 3, features: int = 12, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, features, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_deletion_curve_of_a_linear_model_is_its_partial_sums() -> None:
    model, x = Linear(12), _data()
    contributions = x * model.w.detach()
    curve = ev.deletion(model, x, contributions, target=0, n_steps=12, score="logit", backend="reference")
    ranked = contributions.sort(dim=1, descending=True).values
    expected = torch.cat([torch.zeros(3, 1, dtype=torch.float64), ranked.cumsum(dim=1)], dim=1)
    expected = contributions.sum(dim=1, keepdim=True) - expected
    torch.testing.assert_close(curve.scores.double(), expected, rtol=1e-6, atol=1e-6)
    assert curve.fractions.tolist() == pytest.approx([i / 12 for i in range(13)])


def test_true_contributions_give_the_lowest_deletion_auc() -> None:
    """For an additive model, removing the largest contributions first is optimal: no random
    ordering has a lower area, and the true ordering beats the average random one."""
    model, x = Linear(16), _data(features=16)
    best = ev.deletion(model, x, x * model.w.detach(), target=0, n_steps=16, score="logit").auc
    random = torch.stack(
        [
            ev.deletion(model, x, ev.random_attributions(x, seed), target=0, n_steps=16, score="logit").auc
            for seed in range(20)
        ]
    )
    assert bool((best[None] <= random + 1e-6).all())
    assert bool((best < random.mean(dim=0)).all())


def test_insertion_starts_at_the_replacement_and_ends_at_the_input() -> None:
    model, x = Linear(12, bias=0.5), _data()
    curve = ev.insertion(model, x, x.abs(), target=0, n_steps=4, replacement="mean", score="logit")
    torch.testing.assert_close(curve.scores[:, -1].double(), model(x).detach(), rtol=1e-6, atol=1e-6)
    mean = x.mean(dim=1, keepdim=True).expand_as(x)
    torch.testing.assert_close(curve.scores[:, 0].double(), model(mean).detach(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 5, 1000])
def test_curves_do_not_depend_on_chunk_size(chunk_size: int) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 5))
    x = torch.rand(3, 3, 6, 6)
    attributions = torch.randn(3, 3, 6, 6)
    reference = ev.deletion(model, x, attributions, n_steps=7, replacement="blur", chunk_size=1000)
    other = ev.deletion(model, x, attributions, n_steps=7, replacement="blur", chunk_size=chunk_size)
    torch.testing.assert_close(other.scores, reference.scores)


def test_images_lose_whole_pixels_and_groups_follow_the_feature_mask() -> None:
    class Recorder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[torch.Tensor] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.seen.append(x.detach().clone())
            return x.flatten(1).sum(dim=1, keepdim=True)

    x = torch.ones(1, 3, 2, 2)
    attributions = torch.tensor([4.0, 3.0, 2.0, 1.0]).view(1, 1, 2, 2).repeat(1, 3, 1, 1)
    recorder = Recorder()
    curve = ev.deletion(recorder, x, attributions, target=0, n_steps=4, score="logit")
    assert curve.scores[0].tolist() == [12.0, 9.0, 6.0, 3.0, 0.0]  # 3 channels of one pixel per step
    mask = torch.tensor([[0, 0], [1, 1]]).expand(3, 2, 2)
    curve = ev.deletion(recorder, x, attributions, target=0, n_steps=2, score="logit", feature_mask=mask)
    assert curve.scores[0].tolist() == [12.0, 6.0, 0.0]


def test_blur_and_mean_replacements() -> None:
    constant = torch.full((2, 3, 9, 9), 0.7)
    torch.testing.assert_close(ev.replacement_values(constant, "blur"), constant)
    x = torch.rand(2, 3, 9, 9)
    blurred = ev.replacement_values(x, "blur", blur_sigma=1.5)
    assert blurred.shape == x.shape and float(blurred.std()) < float(x.std())
    torch.testing.assert_close(ev.replacement_values(x, "mean")[:, :, 0, 0], x.mean(dim=(2, 3)))


def test_infidelity_of_the_gradient_of_a_linear_model_is_zero() -> None:
    """f(x) - f(x - I) = w . I exactly, so the attribution w has zero infidelity."""
    model, x = Linear(12), _data()
    w = model.w.detach().expand_as(x).contiguous()
    value = ev.infidelity(model, x, w, target=0, noise_std=0.1, n_perturb_samples=8, seed=3)
    assert float(value.abs().max()) < 1e-10
    assert float(ev.infidelity(model, x, 2 * w, target=0, noise_std=0.1, seed=3).min()) > 0
    normalised = ev.infidelity(model, x, 2 * w, target=0, noise_std=0.1, seed=3, normalize=True)
    assert float(normalised.abs().max()) < 1e-10  # beta = 1/2 undoes the scale


def test_infidelity_does_not_depend_on_chunk_size() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))
    x, attributions = torch.randn(5, 10), torch.randn(5, 10)
    values = [
        ev.infidelity(
            model, x, attributions, target=1, noise_std=0.2, n_perturb_samples=7, seed=1, chunk_size=c
        )
        for c in (1, 4, 64)
    ]
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(values[0], values[2])


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_matches_captum(normalize: bool) -> None:
    metrics = pytest.importorskip("captum.metrics")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4)).double()
    x, attributions = torch.randn(4, 10, dtype=torch.float64), torch.randn(4, 10, dtype=torch.float64)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        perturbation = 0.05 * torch.sin(3 * inputs)  # deterministic, so both see the same I
        return perturbation, inputs - perturbation

    ours = ev.infidelity(model, x, attributions, target=2, perturb_func=perturb, n_perturb_samples=3,
                         normalize=normalize, chunk_size=5)  # fmt: skip
    theirs = metrics.infidelity(
        model, perturb, x, attributions, target=2, n_perturb_samples=3, normalize=normalize
    )
    torch.testing.assert_close(ours.double(), theirs.double(), rtol=1e-5, atol=1e-9)


def test_sensitivity_max_closed_form() -> None:
    """E(x) = x^2: E(x + d) - E(x) = 2 x d + d^2, computed here with the documented noise."""
    x = torch.rand(3, 5) + 0.5
    radius, samples, seed = 0.1, 4, 2

    def explain(inputs: torch.Tensor, target: object = None) -> torch.Tensor:
        return inputs.square()

    value = ev.sensitivity_max(
        explain, x, perturb_radius=radius, n_perturb_samples=samples, seed=seed, chunk_size=2
    )
    expected = torch.zeros(3, dtype=torch.float64)
    for s in range(samples):
        noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + s))
        d = ((2 * noise - 1) * radius).double()
        change = (2 * x.double() * d + d.square()).norm(dim=1) / x.double().square().norm(dim=1)
        expected = torch.maximum(expected, change)
    torch.testing.assert_close(value.double(), expected, rtol=1e-5, atol=1e-7)


def test_sensitivity_max_of_saliency_on_a_linear_model_is_zero_and_captum_agrees() -> None:
    model, x = Linear(12), _data().float()
    model = model.float()
    ours = ev.sensitivity_max(lambda inputs, target: fx.saliency(model, inputs, target), x, target=0)
    assert float(ours.abs().max()) == 0.0
    metrics = pytest.importorskip("captum.metrics")
    from captum.attr import Saliency

    theirs = metrics.sensitivity_max(Saliency(lambda inputs: model(inputs)[:, None]).attribute, x, target=0)
    assert float(theirs.abs().max()) == 0.0


def test_completeness_error() -> None:
    model, x = Linear(12, bias=0.25), _data()
    ig = fx.integrated_gradients(model, x, target=0, n_steps=8)
    assert float(ev.completeness_error(model, x, ig, target=0).abs().max()) < 1e-8
    error = ev.completeness_error(model, x, ig + 0.5, target=0)
    torch.testing.assert_close(error, torch.full((3,), 6.0, dtype=torch.float32))


def _digits_like(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 10)
    )


def test_randomization_check_restores_the_model_and_separates_methods() -> None:
    model = _digits_like()
    model[1].running_mean.uniform_(-0.1, 0.1)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.rand(4, 1, 8, 8)
    steps = ev.randomization_check(model, x, lambda m, inputs, t: fx.saliency(m, inputs, t), seed=0)
    assert [step.layer for step in steps] == ["4", "1", "0"]
    assert float(steps[-1].similarity.mean()) < 0.9  # the gradient depends on the weights
    # An "explanation" that ignores the model passes every step unchanged: the test flags it.
    steps = ev.randomization_check(model, x, lambda m, inputs, t: inputs.clone(), cascading=False)
    assert all(bool((step.similarity == 1).all()) for step in steps)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_randomization_check_restores_the_model_on_error() -> None:
    model = _digits_like()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    calls = []

    def explain(m: nn.Module, inputs: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return inputs.clone()

    with pytest.raises(RuntimeError, match="boom"):
        ev.randomization_check(model, torch.rand(2, 1, 8, 8), explain)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


class FreshParameters(nn.Module):
    """A layer whose ``reset_parameters`` assigns new ``Parameter`` objects (as many hand-written
    layers do) instead of writing into the old ones."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 12))

    def reset_parameters(self) -> None:
        self.weight = nn.Parameter(torch.randn(3, 12))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


@pytest.mark.parametrize("cascading", [True, False])
def test_randomization_check_restores_a_layer_that_replaces_its_parameters(cascading: bool) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(FreshParameters(), nn.ReLU(), nn.Linear(3, 2))
    weight = model[0].weight
    weight.requires_grad_(False)  # a frozen layer stays frozen: the object itself comes back
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = torch.rand(4, 12)
    steps = ev.randomization_check(
        model, x, lambda m, inputs, t: fx.saliency(m, inputs, t), cascading=cascading, layers=["0"]
    )
    assert float(steps[0].similarity.mean()) < 1  # the new weights did change the explanation
    assert model[0].weight is weight and not weight.requires_grad
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m, x: ev.deletion(m, x, torch.ones(2, 5)), "attributions must have the inputs' shape"),
        (lambda m, x: ev.deletion(m, x, torch.ones_like(x), n_steps=0), "n_steps"),
        (
            lambda m, x: ev.deletion(m, x, torch.ones_like(x), replacement="noise"),
            "replacement must be one of",
        ),
        (
            lambda m, x: ev.deletion(m, x, torch.ones_like(x), replacement="blur"),
            "replacement='blur' needs images",
        ),
        (lambda m, x: ev.deletion(m, x, torch.ones_like(x), score="prob"), "score must be one of"),
        (
            lambda m, x: ev.deletion(m, x, torch.ones_like(x), feature_mask=torch.zeros(3, dtype=torch.long)),
            "feature_mask must have the shape",
        ),
        (
            lambda m, x: ev.deletion(m, x, torch.ones_like(x), feature_mask=torch.arange(1, 13)),
            "feature_mask must use the group ids",
        ),
        (lambda m, x: ev.infidelity(m, x, torch.ones_like(x), noise_std=0), "noise_std"),
        (lambda m, x: ev.infidelity(m, x, torch.ones_like(x), n_perturb_samples=0), "n_perturb_samples"),
        (lambda m, x: ev.sensitivity_max(lambda i, target: i, x, perturb_radius=-1), "perturb_radius"),
        (lambda m, x: ev.sensitivity_max(lambda i, target: i[:, :2], x), "explain must return"),
        (
            lambda m, x: ev.randomization_check(m, x, lambda *a: x, layers=["nope"]),
            "layers: the model has no",
        ),
        (
            lambda m, x: ev.randomization_check(m, x, lambda *a: x, similarity="ssim"),
            "similarity must be one of",
        ),
    ],
)
def test_bad_input_names_the_argument(call, message: str) -> None:  # type: ignore[no-untyped-def]
    model = nn.Sequential(nn.Linear(12, 3))
    x = torch.rand(2, 12)
    with pytest.raises((ValueError, TypeError), match=message):
        call(model, x)


def test_similarity_measures() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    a = torch.tensor([[1.0, 2.0, 2.5, 5.0, 0.5], [3.0, 1.0, 4.0, 1.0, 5.0]])
    b = torch.tensor([[2.0, 1.0, 3.0, 7.0, 0.0], [1.5, 1.0, 1.0, 2.0, 0.0]])
    expected = [scipy_stats.spearmanr(a[i], b[i]).statistic for i in range(2)]
    torch.testing.assert_close(ev.rank_correlation(a, b), torch.tensor(expected, dtype=torch.float64))
    assert ev.topk_intersection(a, b, 2).tolist() == [1.0, 0.0]
    torch.testing.assert_close(ev.cosine(a, a), torch.ones(2))
