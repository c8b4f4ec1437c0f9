"""``LimeBase``: Captum's numbers on the same perturbations (a perturb function that yields fixed
samples, so both libraries fit the same data), both sampling spaces, generator and plain perturb
functions, kwargs forwarding, the batch rule, refusals before any model call, the model left as
found, and the forward passes saved by automatic chunking."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from models import assert_same_state, model_state
from torch import nn

from fastxai.compat._captum_games import AggregateOutputError
from fastxai.compat._captum_lime_base import CPU_PERTURBATIONS_PER_PASS
from fastxai.compat.captum import Lime, LimeBase

captum_attr = pytest.importorskip("captum.attr")
linear_model = pytest.importorskip("captum._utils.models.linear_model")
pytest.importorskip("sklearn")

FEATURES, GROUPS = 6, 3
MASK = torch.tensor([[0, 0, 1, 1, 2, 2]])


class Net(nn.Module):
    """A small nonlinear classifier on [B, 6]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Linear(FEATURES, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor, scale: torch.Tensor | float = 1.0) -> torch.Tensor:
        if isinstance(scale, torch.Tensor) and scale.shape[0] != x.shape[0]:
            raise ValueError(f"scale has {scale.shape[0]} rows for {x.shape[0]} inputs")
        return self.body(x) * scale


class Counting:
    """A forward function that counts its calls and the rows it was given."""

    def __init__(self, model: Callable[..., torch.Tensor]) -> None:
        self.model, self.calls, self.rows = model, 0, []

    def __call__(self, *args: Any) -> torch.Tensor:
        self.calls += 1
        self.rows.append(args[0].shape[0])
        return self.model(*args)


def fixed_samples(count: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((count, 1, GROUPS), 0.5), generator=generator)


def from_interp(sample: torch.Tensor, original: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    keep = sample[0][kwargs["feature_mask"]]
    return keep * original + (1 - keep) * kwargs["baselines"]


def to_interp(sample: torch.Tensor, original: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    mask = kwargs["feature_mask"][0]
    changed = ((sample - original).abs()[0] > 1e-6).float()
    return torch.stack([1 - changed[mask == g].max() for g in range(GROUPS)]).view(1, -1)


def generator_of(samples: torch.Tensor, interpretable: bool) -> Callable[..., Iterator[torch.Tensor]]:
    def perturb(original: torch.Tensor, **kwargs: Any) -> Iterator[torch.Tensor]:
        for sample in samples:
            yield sample if interpretable else from_interp(sample, original, **kwargs)

    return perturb


def function_of(samples: torch.Tensor) -> Callable[..., torch.Tensor]:
    drawn = iter(samples)

    def perturb(original: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return next(drawn)

    return perturb


def similarity() -> Callable[..., float]:
    return captum_attr._core.lime.get_exp_kernel_similarity_function("euclidean", 2.0)


def both(
    interpretable_space: bool, samples: torch.Tensor, make_model: Callable[[], Any], forward: Any = None
) -> tuple[Any, Any]:
    """Our LimeBase and Captum's on the same model, kernel, samples and transforms."""
    net = Net() if forward is None else forward
    made = []
    for cls in (LimeBase, captum_attr.LimeBase):
        made.append(
            cls(
                net,
                make_model(),
                similarity(),
                generator_of(samples, interpretable_space),
                interpretable_space,
                from_interp if interpretable_space else None,
                None if interpretable_space else to_interp,
            )
        )
    return made[0], made[1]


def call_kwargs() -> dict[str, Any]:
    return {"feature_mask": MASK, "baselines": torch.zeros(1, FEATURES)}


@pytest.mark.parametrize("interpretable_space", [True, False], ids=["interpretable", "input-space"])
@pytest.mark.parametrize("per_eval", [1, 4])
@pytest.mark.parametrize("surrogate", ["linear", "lasso"])
def test_matches_captum_on_the_same_samples(interpretable_space: bool, per_eval: int, surrogate: str) -> None:
    def make() -> Any:
        if surrogate == "linear":
            return linear_model.SkLearnLinearRegression()
        return linear_model.SkLearnLasso(alpha=0.001)

    samples = fixed_samples(40)
    ours, theirs = both(interpretable_space, samples, make)
    x = torch.randn(1, FEATURES)
    options = {"target": 1, "n_samples": 40, "perturbations_per_eval": per_eval, **call_kwargs()}
    expected = theirs.attribute(x, **options)
    result = ours.attribute(x, **options)
    assert result.shape == (1, GROUPS)
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


def test_plain_perturb_function_and_extra_forward_arguments() -> None:
    samples = fixed_samples(30, seed=1)
    x, scale = torch.randn(1, FEATURES), torch.tensor([[2.5]])

    def make(cls: type) -> Any:
        return cls(
            Net(),
            linear_model.SkLearnLinearRegression(),
            similarity(),
            function_of(samples),
            True,
            from_interp,
            None,
        )

    results = [
        make(cls).attribute(x, target=[2], additional_forward_args=(scale,), n_samples=30, **call_kwargs())
        for cls in (LimeBase, captum_attr.LimeBase)
    ]
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)
    unscaled = make(LimeBase).attribute(x, target=2, n_samples=30, **call_kwargs())
    torch.testing.assert_close(results[0], 2.5 * unscaled, rtol=1e-4, atol=1e-5)


class TokenClassifier(nn.Module):
    """Mean of token embeddings, then a linear layer: a text model on ids [B, L]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.embedding = nn.Embedding(20, 4)
        self.head = nn.Linear(4, 2)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embedding(ids).mean(1))


def test_text_classification_as_in_captums_tutorial() -> None:
    """Token ids, a 0/1 vector per token mapped back to ids (removed tokens become the pad id),
    similarity: cosine of the mean embeddings; Lasso surrogate. Same samples: Captum's numbers."""
    model = TokenClassifier()
    ids = torch.tensor([[3, 7, 1, 12, 9]])
    samples = torch.bernoulli(torch.full((60, 1, 5), 0.6), generator=torch.Generator().manual_seed(2)).long()

    def to_ids(sample: torch.Tensor, original: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.where(sample.bool(), original, torch.zeros_like(original))

    def cosine(
        original: torch.Tensor, perturbed: torch.Tensor, _: torch.Tensor, **kwargs: Any
    ) -> torch.Tensor:
        a, b = model.embedding(original).mean(1), model.embedding(perturbed).mean(1)
        distance = 1 - torch.nn.functional.cosine_similarity(a, b)
        return torch.exp(-(distance**2) / (2 * 0.75**2))

    results = []
    for cls in (LimeBase, captum_attr.LimeBase):
        lime = cls(
            model,
            linear_model.SkLearnLasso(alpha=0.0005),
            cosine,
            generator_of(samples, True),
            True,
            to_ids,
            None,
        )
        results.append(lime.attribute(ids, target=1, n_samples=60))
    torch.testing.assert_close(results[0], results[1], rtol=1e-5, atol=1e-5)


def test_automatic_chunking_scores_many_perturbations_per_forward_pass() -> None:
    samples = fixed_samples(50)
    ours_forward, captum_forward = Counting(Net()), Counting(Net())
    ours, _ = both(True, samples, linear_model.SkLearnLinearRegression, forward=ours_forward)
    _, theirs = both(True, samples, linear_model.SkLearnLinearRegression, forward=captum_forward)
    x = torch.randn(1, FEATURES)
    torch.testing.assert_close(
        ours.attribute(x, target=0, n_samples=50, **call_kwargs()),
        theirs.attribute(x, target=0, n_samples=50, **call_kwargs()),
        rtol=1e-5,
        atol=1e-5,
    )
    assert captum_forward.calls == 50
    assert ours_forward.calls == 1 and ours_forward.rows == [50]
    many = Counting(Net())
    ours, _ = both(True, fixed_samples(100), linear_model.SkLearnLinearRegression, forward=many)
    ours.attribute(x, target=0, n_samples=100, **call_kwargs())
    assert many.rows == [CPU_PERTURBATIONS_PER_PASS, 100 - CPU_PERTURBATIONS_PER_PASS]
    explicit = Counting(Net())
    ours, _ = both(True, samples, linear_model.SkLearnLinearRegression, forward=explicit)
    ours.attribute(x, target=0, n_samples=50, perturbations_per_eval=8, **call_kwargs())
    assert explicit.rows == [8] * 6 + [2]


def test_kwargs_reach_every_user_function_as_in_captum() -> None:
    seen: dict[str, list[list[str]]] = {}

    def recorder(key: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def record(*args: Any, **kwargs: Any) -> Any:
            seen.setdefault(key, []).append(sorted(kwargs))
            return function(*args, **kwargs)

        return record

    samples = fixed_samples(5)
    calls = []
    for cls in (LimeBase, captum_attr.LimeBase):
        seen.clear()
        lime = cls(
            Net(),
            linear_model.SkLearnLinearRegression(),
            recorder("similarity", similarity()),
            recorder("perturb", function_of(samples)),
            True,
            recorder("from", from_interp),
            None,
        )
        lime.attribute(torch.randn(1, FEATURES), target=0, n_samples=5, extra="x", **call_kwargs())
        calls.append({key: list(value) for key, value in seen.items()})
    assert calls[0] == calls[1]
    assert calls[0]["perturb"] == [["baselines", "extra", "feature_mask"]] * 5


def test_a_generator_that_runs_out_warns_and_fits_what_it_gave() -> None:
    samples = fixed_samples(12)
    ours, theirs = both(True, samples, linear_model.SkLearnLinearRegression)
    x = torch.randn(1, FEATURES)
    with pytest.warns(UserWarning, match="Generator completed"):
        result = ours.attribute(x, target=1, n_samples=30, **call_kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = theirs.attribute(x, target=1, n_samples=30, **call_kwargs())
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)


def test_a_batch_needs_a_forward_that_returns_one_number_for_it() -> None:
    """Captum's rule: several examples at once only with a forward that aggregates the batch."""
    x = torch.randn(2, FEATURES)
    mask = MASK.expand(2, -1)
    options = {"n_samples": 20, "feature_mask": mask, "baselines": torch.zeros(2, FEATURES)}

    def aggregate(rows: torch.Tensor) -> torch.Tensor:
        return Net()(rows)[:, 0].sum()

    samples = fixed_samples(20)
    ours, theirs = both(True, samples, linear_model.SkLearnLinearRegression, forward=aggregate)
    torch.testing.assert_close(
        ours.attribute(x, **options), theirs.attribute(x, **options), rtol=1e-5, atol=1e-5
    )

    per_example, _ = both(True, samples, linear_model.SkLearnLinearRegression)
    with pytest.raises(AggregateOutputError, match="one per perturbation") as raised:
        per_example.attribute(x, target=0, **options)
    assert isinstance(raised.value, AssertionError)  # what Captum raises
    with pytest.raises(AssertionError):
        both(True, samples, linear_model.SkLearnLinearRegression)[1].attribute(x, target=0, **options)
    ours, _ = both(True, fixed_samples(20), linear_model.SkLearnLinearRegression, forward=aggregate)
    with pytest.raises(AggregateOutputError, match="perturbations_per_eval=1"):
        ours.attribute(x, perturbations_per_eval=4, **options)


def test_a_forward_returning_one_number_per_pass_is_scored_one_perturbation_per_pass() -> None:
    samples = fixed_samples(25)
    forward = Counting(lambda rows: Net()(rows)[:, 2].sum())
    ours, theirs = both(True, samples, linear_model.SkLearnLinearRegression, forward=forward)
    x = torch.randn(1, FEATURES)
    result = ours.attribute(x, n_samples=25, **call_kwargs())
    assert forward.rows == [25] + [1] * 25  # the batched pass told the forward's kind, then one each
    torch.testing.assert_close(
        result, theirs.attribute(x, n_samples=25, **call_kwargs()), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2.5}, "n_samples"),
        ({"perturbations_per_eval": 0}, "perturbations_per_eval"),
        ({"perturbations_per_eval": True}, "perturbations_per_eval"),
        ({"inputs": [1.0, 2.0]}, "inputs"),
    ],
)
def test_bad_attribute_arguments_are_refused_before_any_model_call(
    arguments: dict[str, Any], name: str
) -> None:
    forward = Counting(Net())
    perturb_calls = []

    def perturb(original: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        perturb_calls.append(1)
        return torch.ones(1, GROUPS)

    lime = LimeBase(
        forward, linear_model.SkLearnLinearRegression(), similarity(), perturb, True, from_interp, None
    )
    options: dict[str, Any] = {"inputs": torch.randn(1, FEATURES), "target": 0, **call_kwargs(), **arguments}
    with pytest.raises((TypeError, ValueError), match=name):
        lime.attribute(**options)
    assert forward.calls == 0 and not perturb_calls


@pytest.mark.parametrize(
    ("change", "name"),
    [
        ({"interpretable_model": object()}, "interpretable_model"),
        ({"similarity_func": 3}, "similarity_func"),
        ({"perturb_func": None}, "perturb_func"),
        ({"perturb_interpretable_space": 1}, "perturb_interpretable_space"),
        ({"from_interp_rep_transform": None}, "from_interp_rep_transform"),
        ({"perturb_interpretable_space": False}, "to_interp_rep_transform"),
        ({"to_interp_rep_transform": "no"}, "to_interp_rep_transform"),
        ({"forward_func": None}, "forward_func"),
    ],
)
def test_bad_constructor_arguments_are_named(change: dict[str, Any], name: str) -> None:
    arguments: dict[str, Any] = {
        "forward_func": Net(),
        "interpretable_model": linear_model.SkLearnLinearRegression(),
        "similarity_func": similarity(),
        "perturb_func": function_of(fixed_samples(2)),
        "perturb_interpretable_space": True,
        "from_interp_rep_transform": from_interp,
        "to_interp_rep_transform": None,
        **change,
    }
    with pytest.raises((TypeError, ValueError), match=name):
        LimeBase(**arguments)


@pytest.mark.parametrize("fails", [False, True], ids=["returns", "raises"])
def test_the_model_is_left_as_found(fails: bool) -> None:
    model = Net().train()
    model.body[0].weight.requires_grad_(False)
    model.register_forward_hook(lambda module, args, output: None)
    before = model_state(model)
    samples = fixed_samples(10)

    calls = []

    def transform(sample: torch.Tensor, original: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        if fails and len(calls) == 6:  # after two forward passes of two perturbations
            raise RuntimeError("transform failed")
        return from_interp(sample, original, **kwargs)

    lime = LimeBase(
        model,
        linear_model.SkLearnLinearRegression(),
        similarity(),
        generator_of(samples, True),
        True,
        transform,
        None,
    )
    if fails:
        with pytest.raises(RuntimeError, match="transform failed"):
            lime.attribute(
                torch.randn(1, FEATURES), target=0, n_samples=10, perturbations_per_eval=2, **call_kwargs()
            )
    else:
        lime.attribute(torch.randn(1, FEATURES), target=0, n_samples=10, **call_kwargs())
    assert_same_state(before, model_state(model))


def test_progress_bar_and_the_lime_family() -> None:
    samples = fixed_samples(6)
    ours, _ = both(True, samples, linear_model.SkLearnLinearRegression)
    ours.attribute(torch.randn(1, FEATURES), target=0, n_samples=6, show_progress=True, **call_kwargs())
    assert LimeBase.get_name() == captum_attr.LimeBase.get_name() == "Lime Base"
    assert isinstance(Lime(Net()), LimeBase)
    assert not ours.multiplies_by_inputs and not ours.has_convergence_delta()
    with pytest.raises(NotImplementedError):
        ours.attribute_future()
