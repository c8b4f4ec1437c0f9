"""DeepFool, FAB and the box-constrained hyperplane projection under them: oracles on affine
models, side by side with torchattacks, the model left as found, bad input refused."""

from __future__ import annotations

import pytest
import torch
from models import LinearModel, assert_same_state, model_state, small_cnn

import fastxai as fx
from fastxai.attacks._boundary import project_onto_hyperplane
from fastxai.compat import torchattacks as fta


def _cnn_batch(seed: int = 0, batch: int = 6) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    model = small_cnn(seed=seed, channels=3).eval()
    x = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def _linear_case() -> tuple[LinearModel, torch.Tensor, torch.Tensor, torch.Tensor]:
    """An affine 4-class model on 12 features, inputs near 0.5 (the box never binds), and each
    input's exact distance to the nearest decision boundary in L2 and L-inf (dual norms)."""
    model = LinearModel(12, 4, seed=1, dtype=torch.float32)
    with torch.no_grad():
        model.weight.mul_(4.0)
    x = 0.5 + 0.01 * torch.randn(5, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = model(x)
    y = z.argmax(1)
    gaps = z.gather(1, y[:, None]) - z  # [B, K]
    slopes = model.weight.detach()[y].unsqueeze(1) - model.weight.detach().unsqueeze(0)  # [B, K, D]
    gaps[torch.arange(5), y] = torch.inf
    l2 = (gaps / slopes.norm(dim=2)).nan_to_num(torch.inf).amin(1)
    linf = (gaps / slopes.abs().sum(dim=2)).nan_to_num(torch.inf).amin(1)
    return model, x, y, torch.stack([l2, linf])


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_projection_is_the_smallest_step_in_the_box(norm: str) -> None:
    scipy_optimize = pytest.importorskip("scipy.optimize")
    import numpy as np

    generator = torch.Generator().manual_seed(0)
    t, w = (
        torch.rand(6, 7, generator=generator, dtype=torch.float64),
        torch.randn(6, 7, generator=generator, dtype=torch.float64),
    )
    w[0, 2] = 0
    b = (w * t).sum(1) + 0.4 * torch.randn(6, generator=generator, dtype=torch.float64)
    step = project_onto_hyperplane(t, w, b, norm, 0.0, 1.0)
    for i in range(6):
        ti, wi, bi, di = t[i].numpy(), w[i].numpy(), float(b[i]), step[i].numpy()
        assert (ti + di >= -1e-12).all() and (ti + di <= 1 + 1e-12).all()
        if not wi.clip(max=0).sum() <= bi - 0 <= wi.clip(min=0).sum():  # out of reach: nearest corner
            assert np.allclose(
                ti + di, np.where(wi > 0, 1.0, 0.0) if bi > wi @ ti else np.where(wi > 0, 0.0, 1.0)
            )
            continue
        assert wi @ (ti + di) == pytest.approx(bi, abs=1e-9)
        bounds = [(-a, 1 - a) for a in ti]
        if norm == "l2":
            best = scipy_optimize.minimize(
                lambda d: (d**2).sum(),
                np.zeros(7),
                jac=lambda d: 2 * d,
                bounds=bounds,
                method="SLSQP",
                constraints=[{"type": "eq", "fun": lambda d, wi=wi, ti=ti, bi=bi: wi @ (ti + d) - bi}],
                options={"ftol": 1e-14, "maxiter": 500},
            )
            assert np.linalg.norm(di) == pytest.approx(np.linalg.norm(best.x), rel=1e-6)
        else:  # variables (d, s): minimise s with -s <= d <= s
            upper = np.vstack([np.c_[np.eye(7), -np.ones(7)], np.c_[-np.eye(7), -np.ones(7)]])
            best = scipy_optimize.linprog(
                np.r_[np.zeros(7), 1.0],
                A_ub=upper,
                b_ub=np.zeros(14),
                A_eq=np.r_[wi, 0][None],
                b_eq=[bi - wi @ ti],
                bounds=[*bounds, (0, None)],
            )
            assert np.abs(di).max() == pytest.approx(best.x[-1], rel=1e-6)


def test_deepfool_reaches_the_boundary_of_an_affine_model_at_the_analytic_distance() -> None:
    model, x, y, distance = _linear_case()
    x_adv = fx.deepfool(model, x, y, overshoot=0.02)
    moved = (x_adv - x).norm(dim=1)
    torch.testing.assert_close(moved, 1.02 * distance[0], rtol=1e-4, atol=1e-6)
    assert (model(x_adv).argmax(1) != y).all()
    exact = fx.deepfool(model, x, y, overshoot=0.0, steps=1)  # one step lands on the boundary
    torch.testing.assert_close((exact - x).norm(dim=1), distance[0], rtol=1e-4, atol=1e-6)


def test_deepfool_candidates_step_to_the_nearest_boundary_among_the_top_classes() -> None:
    model, x, y, _ = _linear_case()
    with torch.no_grad():
        z = model(x)
    top = z.topk(2, dim=1).indices  # the label and the runner-up
    weight = model.weight.detach()
    rows = torch.arange(x.shape[0])
    # The analytic distance to the boundary with the runner-up only: |gap| / ||w_y - w_k||.
    gap = z[rows, top[:, 0]] - z[rows, top[:, 1]]
    runner_up = gap / (weight[top[:, 0]] - weight[top[:, 1]]).norm(dim=1)
    step = fx.deepfool(model, x, y, overshoot=0.0, steps=1, candidates=2)
    torch.testing.assert_close((step - x).norm(dim=1), runner_up, rtol=1e-4, atol=1e-6)
    assert (model(fx.deepfool(model, x, y, candidates=2)).argmax(1) != y).all()
    # As many candidates as classes is every class: the same iterates as candidates=None.
    cnn, images, labels = _cnn_batch()
    classes = cnn(images).shape[1]
    every = fx.deepfool(cnn, images, labels, steps=20)
    torch.testing.assert_close(fx.deepfool(cnn, images, labels, steps=20, candidates=classes), every)
    # Fewer candidates on the CNN: a model call of 3 copies per round, not one per class.
    calls: list[int] = []
    handle = cnn.register_forward_pre_hook(lambda _, args: calls.append(args[0].shape[0]))
    try:
        fx.deepfool(cnn, images, labels, steps=20, candidates=3)
    finally:
        handle.remove()
    assert max(calls) == 3 * images.shape[0] < classes * images.shape[0]


@pytest.mark.parametrize("normalized", [False, True])
def test_deepfool_matches_torchattacks(normalized: bool) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = _cnn_batch()
    theirs, ours = torchattacks.DeepFool(model, steps=20), fta.DeepFool(model, steps=20)
    inputs = x
    if normalized:
        mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
        for attack in (theirs, ours):
            attack.set_normalization_used(mean, std)
        inputs = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(ours(inputs, y), theirs(inputs, y), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_fab_finds_the_nearest_boundary_of_an_affine_model(norm: str) -> None:
    model, x, y, distance = _linear_case()
    x_adv = fx.fab(model, x, y, norm=norm, steps=30)
    found = (x_adv - x).norm(dim=1) if norm == "l2" else (x_adv - x).abs().amax(dim=1)
    exact = distance[0 if norm == "l2" else 1]
    assert (model(x_adv).argmax(1) != y).all()
    assert (found >= exact * (1 - 1e-5)).all() and (found <= exact * 1.01).all()


@pytest.mark.parametrize("norm", ["Linf", "L2"])
@pytest.mark.parametrize("targeted", [False, True])
def test_fab_matches_torchattacks(norm: str, targeted: bool) -> None:
    torchattacks = pytest.importorskip("torchattacks")
    model, x, y = _cnn_batch(seed=1)
    kwargs = dict(norm=norm, eps=10.0, steps=8, multi_targeted=targeted, n_classes=10)
    torch.testing.assert_close(
        fta.FAB(model, **kwargs)(x, y), torchattacks.FAB(model, **kwargs)(x, y), rtol=1e-4, atol=1e-5
    )


def test_fab_within_eps_returns_the_input_where_it_finds_nothing_closer() -> None:
    model, x, y, distance = _linear_case()
    eps = float(distance[1].median())
    x_adv = fx.fab(model, x, y, norm="linf", eps=eps, steps=30)
    size = (x_adv - x).abs().amax(dim=1)
    fooled = model(x_adv).argmax(1) != y
    assert (size <= eps + 1e-6).all()
    assert torch.equal(fooled, size > 0) and 0 < int(fooled.sum()) < 5


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x, y: fx.deepfool(m, x, y, steps=3),
        lambda m, x, y: fx.fab(m, x, y, steps=3),
        lambda m, x, y: fx.fab_targeted(m, x, y, steps=2, n_target_classes=2),
    ],
    ids=["deepfool", "fab", "fab_targeted"],
)
def test_the_model_is_left_as_found(call) -> None:
    model, x, y = _cnn_batch()
    model.train()
    model[0].weight.requires_grad_(False)
    model[1].register_forward_hook(lambda module, inputs, output: None)
    before = model_state(model)
    call(model, x, y)
    assert_same_state(before, model_state(model))
    assert all(p.grad is None for p in model.parameters())


class CountingModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner, self.calls = small_cnn(seed=0, channels=3), 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.inner(x)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda m, x, y: fx.deepfool(m, x, y, overshoot=-1), ValueError, "overshoot"),
        (lambda m, x, y: fx.deepfool(m, x, y, steps=0), ValueError, "steps"),
        (lambda m, x, y: fx.deepfool(m, x, y, candidates=1), ValueError, "candidates"),
        (lambda m, x, y: fx.deepfool(m, x * 2, y), ValueError, "bounds"),
        (lambda m, x, y: fx.deepfool(m, x, y[:2]), ValueError, "labels"),
        (lambda m, x, y: fx.fab(m, x, y, norm="l1"), ValueError, "norm"),
        (lambda m, x, y: fx.fab(m, x, y, alpha_max=2), ValueError, "alpha_max"),
        (lambda m, x, y: fx.fab(m, x, y, target_labels=y), ValueError, "target_labels"),
        (lambda m, x, y: fx.fab(m, x, y, targeted=True), ValueError, "target_labels"),
        (lambda m, x, y: fx.fab(m, x.long(), y), TypeError, "inputs"),
        (lambda m, x, y: fx.fab_targeted(m, x, y, n_target_classes=0), ValueError, "n_target_classes"),
        (lambda m, x, y: fx.fab_targeted(m, x, y, norm="l3"), ValueError, "norm"),
        (lambda m, x, y: fx.fab_targeted(m, x, y, beta=1.5), ValueError, "beta"),
    ],
)
def test_bad_input_is_refused_before_any_model_call(call, error: type, message: str) -> None:
    model = CountingModel()
    _, x, y = _cnn_batch()
    with pytest.raises(error, match=message):
        call(model, x, y)
    assert model.calls == 0
