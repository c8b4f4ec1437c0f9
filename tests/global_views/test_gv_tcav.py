"""TCAV on a model where one concept drives the target logit and another does not; CAVs against
scikit-learn and the first-order optimality conditions; the t-test against closed forms and scipy."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from models import assert_same_state, model_state, small_cnn
from torch import nn
from torch.nn import functional

from fastxai.global_views import tcav, train_cav
from fastxai.global_views._stats import student_t_test, student_t_two_sided

pytestmark = pytest.mark.usefixtures("one_thread")

FEATURES = 8


class ConceptHead(nn.Module):
    """``h_0(a) = a . c + (a . g)^2 / 2`` and ``h_1 = -h_0``: the gradient ``c + (a . g) g`` always
    points along ``c``, and along ``g`` with the sign of ``a . g`` (half the inputs each way)."""

    def __init__(self, c: torch.Tensor, g: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("c", c)
        self.register_buffer("g", g)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        score = a @ self.c + 0.5 * (a @ self.g) ** 2
        return torch.stack([score, -score], dim=1)


def concept_model() -> nn.Module:
    c, g = torch.eye(FEATURES)[0], torch.eye(FEATURES)[1]
    model = nn.Sequential(OrderedDict(features=nn.Linear(FEATURES, FEATURES), head=ConceptHead(c, g)))
    with torch.no_grad():
        model.features.weight.copy_(torch.eye(FEATURES) + 0.1 * torch.randn(FEATURES, FEATURES))
        model.features.bias.zero_()
    return model


def concept_data(n_random: int = 6) -> dict:
    generator = torch.Generator().manual_seed(0)

    def noise(n: int) -> torch.Tensor:
        return torch.randn(n, FEATURES, generator=generator)

    return dict(
        inputs=noise(40),
        concepts={
            "stripes": noise(30) + 3 * torch.eye(FEATURES)[0],
            "dots": noise(30) + 3 * torch.eye(FEATURES)[1],
        },
        random_concepts=[noise(30) for _ in range(n_random)],
    )


@pytest.mark.parametrize("score", ["sign_count", "magnitude"])
def test_driving_concept_is_significant_and_irrelevant_one_is_not(score: str) -> None:
    torch.manual_seed(0)
    model = concept_model()
    data = concept_data(n_random=10)
    results = tcav(model, data.pop("inputs"), 0, layer="features", score=score, seed=1, **data)
    stripes, dots = results["stripes"], results["dots"]
    assert stripes.mean > 0.98 and stripes.significant and stripes.p_value < 0.01
    assert 0.2 < dots.mean < 0.8 and not dots.significant and dots.p_value > 0.05
    assert stripes.scores.shape == (10,) and stripes.random_scores.shape == (10,)
    assert bool((stripes.cav_accuracy > 0.8).all())
    torch.testing.assert_close(stripes.scores, getattr(stripes, score))


def test_scores_match_a_direct_directional_derivative() -> None:
    torch.manual_seed(0)
    model = concept_model()
    data = concept_data(n_random=3)
    x = data.pop("inputs")
    target = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(3))
    results = tcav(model, x, target, layer="features", chunk_size=7, **data)
    activation = model.features(x).detach().requires_grad_(True)
    logits = model.head(activation).gather(1, target.view(-1, 1)).sum()
    (gradient,) = torch.autograd.grad(logits, activation)
    for result in results.values():
        vectors = torch.stack([cav.vector for cav in result.cavs])
        derivatives = gradient @ vectors.T  # [N, R]
        torch.testing.assert_close(result.sign_count, (derivatives > 0).float().mean(0))
        magnitude = derivatives.clamp_min(0).sum(0) / derivatives.abs().sum(0)
        torch.testing.assert_close(result.magnitude, magnitude)


def test_conv_layer_scores_do_not_depend_on_chunk_size_and_state_is_restored() -> None:
    model = small_cnn(seed=5)
    model.train()
    before = model_state(model)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(9, 1, 8, 8, generator=generator)
    kwargs = dict(
        layer="4",
        concepts={"bright": torch.rand(10, 1, 8, 8, generator=generator) + 1.0},
        random_concepts=3,
        random_pool=torch.randn(25, 1, 8, 8, generator=generator),
        test_fraction=0.0,
    )
    whole = tcav(model, x, 4, **kwargs)["bright"]
    chunked = tcav(model, x, 4, chunk_size=2, **kwargs)["bright"]
    assert_same_state(before, model_state(model))
    torch.testing.assert_close(whole.sign_count, chunked.sign_count)
    torch.testing.assert_close(whole.magnitude, chunked.magnitude, rtol=1e-5, atol=1e-6)
    assert whole.cavs[0].vector.shape == (8 * 4 * 4,)
    assert bool((whole.cav_accuracy == 1.0).all())  # bright vs noise: separable, scored on training data


def test_against_captum_tcav(tmp_path) -> None:
    captum_concept = pytest.importorskip("captum.concept")
    from captum.concept._utils.classifier import Classifier
    from torch.utils.data import DataLoader

    class OurCAV(Classifier):
        """Captum's classifier interface around ``train_cav``, so both compute the same CAVs."""

        def __init__(self) -> None:
            self.ids: list[int] = []
            self.vector = torch.empty(0)

        def train_and_eval(self, dataloader, test_split_ratio=0.33, **kwargs):  # type: ignore[no-untyped-def]
            batches = list(dataloader)
            acts = torch.cat([b[0] for b in batches])
            labels = torch.cat([b[1] for b in batches])
            self.ids = sorted(set(labels.tolist()))
            cav = train_cav(acts[labels == self.ids[0]], acts[labels == self.ids[1]])
            self.vector = cav.vector
            return {"accs": torch.tensor(1.0)}

        def weights(self):  # type: ignore[no-untyped-def]
            return torch.stack([self.vector, -self.vector])

        def classes(self):  # type: ignore[no-untyped-def]
            return self.ids

    torch.manual_seed(0)
    model = concept_model().eval()
    data = concept_data(n_random=3)
    x = data["inputs"]
    ours = tcav(
        model, x, 0, layer="features", concepts=data["concepts"],
        random_concepts=data["random_concepts"], test_fraction=0.0,
    )  # fmt: skip

    def concept(index: int, name: str, examples: torch.Tensor):  # type: ignore[no-untyped-def]
        return captum_concept.Concept(index, name, DataLoader(examples, batch_size=16))

    randoms = [concept(10 + i, f"random{i}", r) for i, r in enumerate(data["random_concepts"])]
    explainer = captum_concept.TCAV(model, layers=["features"], classifier=OurCAV(), save_path=str(tmp_path))
    for index, (name, examples) in enumerate(data["concepts"].items()):
        mine = concept(index, name, examples)
        sets = [[mine, random] for random in randoms]
        theirs = explainer.interpret(x, experimental_sets=sets, target=0)
        captum_scores = torch.stack(
            [theirs[f"{index}-{random.id}"]["features"]["sign_count"][0] for random in randoms]
        )
        torch.testing.assert_close(ours[name].sign_count, captum_scores)


def test_train_cav_logistic_matches_scikit_learn() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    generator = torch.Generator().manual_seed(0)
    positive = torch.randn(25, 6, generator=generator) + 0.7
    negative = torch.randn(35, 6, generator=generator)
    regularization = 0.05
    cav = train_cav(positive, negative, regularization=regularization)
    features = torch.cat([positive, negative]).double().numpy()
    labels = [1] * 25 + [0] * 35
    reference = linear_model.LogisticRegression(C=1 / (regularization * 60), tol=1e-12, max_iter=10_000)
    reference.fit(features, labels)
    torch.testing.assert_close(cav.weight, torch.tensor(reference.coef_[0]), rtol=1e-5, atol=1e-6)
    assert math.isclose(cav.bias, float(reference.intercept_[0]), rel_tol=1e-5, abs_tol=1e-6)
    torch.testing.assert_close(cav.vector.double(), cav.weight / cav.weight.norm(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("classifier", ["logistic", "svm"])
def test_train_cav_is_a_stationary_point_of_its_objective(classifier: str) -> None:
    generator = torch.Generator().manual_seed(1)
    positive = torch.randn(20, 2, 3, generator=generator) + 0.5
    negative = torch.randn(30, 2, 3, generator=generator)
    regularization = 0.1
    cav = train_cav(positive, negative, classifier=classifier, regularization=regularization)
    weight = cav.weight.clone().requires_grad_(True)
    bias = torch.tensor(cav.bias, dtype=torch.float64, requires_grad=True)
    features = torch.cat([positive, negative]).flatten(1).double()
    labels = torch.cat([torch.ones(20), -torch.ones(30)]).double()
    margins = labels * (features @ weight + bias)
    loss = functional.softplus(-margins) if classifier == "logistic" else functional.relu(1 - margins) ** 2
    objective = loss.mean() + 0.5 * regularization * weight.square().sum()
    gradients = torch.autograd.grad(objective, [weight, bias])
    assert max(float(g.abs().max()) for g in gradients) < 1e-6
    assert cav.vector.shape == (6,) and float(cav.weight[0]) > 0  # points towards the positive examples


def test_t_distribution_closed_forms() -> None:
    for t in [0.0, 0.3, 1.0, 2.5, 12.0]:
        # dof 1 is the Cauchy distribution, dof 2 has CDF 1/2 + t / (2 sqrt(2 + t^2)).
        assert math.isclose(student_t_two_sided(t, 1), 1 - 2 / math.pi * math.atan(t), abs_tol=1e-14)
        assert math.isclose(student_t_two_sided(-t, 2), 1 - t / math.sqrt(2 + t * t), abs_tol=1e-14)
    assert student_t_two_sided(math.inf, 5) == 0.0


def test_t_test_against_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    for n1, n2 in [(2, 2), (3, 5), (10, 10), (7, 40)]:
        first = torch.randn(n1, generator=generator, dtype=torch.float64).tolist()
        second = (torch.randn(n2, generator=generator, dtype=torch.float64) * 2 + 0.7).tolist()
        t, p = student_t_test(first, second)
        expected = stats.ttest_ind(first, second)
        assert math.isclose(t, float(expected.statistic), rel_tol=1e-10)
        assert math.isclose(p, float(expected.pvalue), rel_tol=1e-9, abs_tol=1e-14)
    assert student_t_test([1.0, 1.0], [0.0, 0.0]) == (math.inf, 0.0)
    assert math.isnan(student_t_test([1.0, 1.0], [1.0, 1.0])[1])


class WithUnusedLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Linear(FEATURES, FEATURES)
        self.unused = nn.Linear(FEATURES, FEATURES)
        self.head = nn.Linear(FEATURES, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)))


def test_model_state_is_restored_when_the_layer_does_not_run() -> None:
    model = WithUnusedLayer().train()
    before = model_state(model)
    data = concept_data(n_random=3)
    with pytest.raises(ValueError, match="layer 'unused' did not run"):
        tcav(model, data.pop("inputs"), 0, layer="unused", **data)
    assert_same_state(before, model_state(model))


class FailsWithGradients(nn.Module):
    """A head that works without autograd (activation passes, target checks) and raises with it."""

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            raise RuntimeError("head failed in the gradient pass")
        return a[:, :2]


def test_hooks_are_removed_when_the_gradient_pass_raises() -> None:
    model = nn.Sequential(OrderedDict(features=nn.Linear(FEATURES, FEATURES), head=FailsWithGradients()))
    before = model_state(model)
    data = concept_data(n_random=3)
    with pytest.raises(RuntimeError, match="gradient pass"):
        tcav(model, data.pop("inputs"), 0, layer="features", **data)
    assert_same_state(before, model_state(model))
    assert len(model.features._forward_hooks) == 0


def _bad(**changes: object) -> dict:
    return changes


@pytest.mark.parametrize(
    ("changes", "error", "match"),
    [
        (_bad(layer="feature"), ValueError, r"layer 'feature'.*valid names: 'features', 'head'"),
        (
            _bad(concepts={"stripes": torch.randn(5, FEATURES + 1)}),
            ValueError,
            r"concepts\['stripes'\] must be",
        ),
        (
            _bad(concepts={"stripes": torch.randn(5, FEATURES).double()}),
            TypeError,
            r"concepts\['stripes'\].*dtype",
        ),
        (_bad(concepts={"stripes": torch.randn(0, FEATURES)}), ValueError, r"concepts\['stripes'\] must be"),
        (_bad(concepts={}), ValueError, "concepts must be a non-empty dict"),
        (_bad(concepts={1: torch.randn(5, FEATURES)}), TypeError, "concepts keys"),
        (_bad(random_concepts=[torch.randn(5, FEATURES)] * 2), ValueError, "at least 3 random sets"),
        (
            _bad(random_concepts=2, random_pool=torch.randn(50, FEATURES)),
            ValueError,
            "random_concepts must be >= 3",
        ),
        (_bad(random_concepts=4), ValueError, "needs random_pool"),
        (
            _bad(random_concepts=4, random_pool=torch.randn(10, FEATURES)),
            ValueError,
            r"random_set_size.*\[1, 10\]",
        ),
        (_bad(random_pool=torch.randn(10, FEATURES)), ValueError, "only for random_concepts given as an int"),
        (
            _bad(random_concepts=[torch.randn(5, FEATURES)] * 2 + [torch.randn(5, 3)]),
            ValueError,
            r"random_concepts\[2\]",
        ),
        (_bad(random_concepts=torch.randn(3, 5, FEATURES)), TypeError, "random_concepts must be a list"),
        (_bad(score="ratio"), ValueError, "score must be one of"),
        (_bad(classifier="tree"), ValueError, "classifier must be one of"),
        (_bad(regularization=-1.0), ValueError, "regularization"),
        (_bad(alpha=1.5), ValueError, "alpha"),
        (_bad(test_fraction=1.0), ValueError, "test_fraction"),
        (_bad(seed=-1), ValueError, "seed"),
        (_bad(target=2), ValueError, r"target must be in \[0, 2\)"),
    ],
)
def test_bad_input(changes: dict, error: type[Exception], match: str) -> None:
    model = concept_model()
    before = model_state(model)
    data = concept_data(n_random=3)
    arguments = dict(target=0, layer="features", **data)
    arguments.update(changes)
    with pytest.raises(error, match=match):
        tcav(model, **arguments)
    assert_same_state(before, model_state(model))


def test_train_cav_bad_input() -> None:
    with pytest.raises(ValueError, match="same activation size"):
        train_cav(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="classifier"):
        train_cav(torch.randn(4, 3), torch.randn(4, 3), classifier="tree")
    with pytest.raises(ValueError, match="regularization"):
        train_cav(torch.randn(4, 3), torch.randn(4, 3), regularization=0.0)
    with pytest.raises(TypeError, match="positive"):
        train_cav(torch.ones(4, 3, dtype=torch.long), torch.randn(4, 3))
