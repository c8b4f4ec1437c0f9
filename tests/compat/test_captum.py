"""fastxai.compat.captum against Captum: same numbers where deterministic, oracles where random."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from models import LinearModel, assert_same_state, model_state, small_cnn
from torch import nn

from fastxai.compat import captum as fc
from fastxai.compat._captum_inputs import PackedInputs, chunk_rows

captum_attr = pytest.importorskip("captum.attr", reason="Captum is the peer of fastxai.compat.captum")


class TwoInputNet(nn.Module):
    """f(image, vector, scale, offset) with a per-example ``scale`` [B] and a constant ``offset``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.relu = nn.ReLU()
        self.vector = nn.Linear(4, 3)
        self.head = nn.Linear(3 * 16 + 3, 5)

    def forward(self, image, vector, scale=None, offset=0.0):
        features = torch.cat([self.relu(self.conv(image)).flatten(1), torch.tanh(self.vector(vector))], 1)
        out = self.head(features)
        if scale is not None:
            out = out * scale.view(-1, 1)
        return out + offset


def _two_inputs():
    generator = torch.Generator().manual_seed(3)
    image, vector = torch.randn(3, 1, 4, 4, generator=generator), torch.randn(3, 4, generator=generator)
    scale = torch.tensor([0.5, 2.0, -1.0])
    return TwoInputNet().eval(), (image, vector), scale


def _close(ours, peer, rtol=1e-5, atol=1e-7):
    if isinstance(peer, tuple):
        assert isinstance(ours, tuple) and len(ours) == len(peer)
        for a, b in zip(ours, peer, strict=True):
            torch.testing.assert_close(a, b.detach(), rtol=rtol, atol=atol)
    else:
        assert isinstance(ours, torch.Tensor)
        torch.testing.assert_close(ours, peer.detach(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["GuidedBackprop", "Deconvolution", "GuidedGradCam"])
def test_a_model_without_relu_gets_the_plain_gradient_as_from_captum(name: str) -> None:
    # A GELU CNN (ConvNeXt-like): the ReLU rule has nothing to change. Captum returns the plain
    # gradient; the drop-in returns it too, with a warning (it raised, so a Captum pipeline
    # over a ConvNeXt or a ViT stopped at the import swap).
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.GELU(), nn.Conv2d(4, 4, 3, padding=1), nn.GELU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).eval()  # fmt: skip
    x = torch.randn(2, 3, 6, 6)
    args = (model, model[2]) if name == "GuidedGradCam" else (model,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = getattr(captum_attr, name)(*args).attribute(x, target=1)
    before = model_state(model)
    with pytest.warns(UserWarning, match="no ReLU.*plain gradient"):
        got = getattr(fc, name)(*args).attribute(x, target=1)
    _close(got, expected)
    assert_same_state(before, model_state(model))


@pytest.mark.parametrize("name", ["Saliency", "InputXGradient", "GuidedBackprop", "Deconvolution"])
def test_gradient_classes_match_captum_with_tuples_and_extra_args(name: str) -> None:
    model, inputs, scale = _two_inputs()
    target = torch.tensor([0, 3, 4])
    peer, ours = getattr(captum_attr, name)(model), getattr(fc, name)(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = peer.attribute(inputs, target=target, additional_forward_args=(scale, 0.25))
        single = peer.attribute(inputs[0], target=2, additional_forward_args=(inputs[1], scale))
        signed = peer.attribute(inputs, target=target, abs=False) if name == "Saliency" else None
    _close(ours.attribute(inputs, target=target, additional_forward_args=(scale, 0.25)), expected)
    _close(ours.attribute(inputs[0], target=2, additional_forward_args=(inputs[1], scale)), single)
    if signed is not None:
        _close(ours.attribute(inputs, target=target, abs=False), signed)


@pytest.mark.parametrize(
    "method", ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
)
def test_integrated_gradients_matches_captum(method: str) -> None:
    model, inputs, scale = _two_inputs()
    baselines = (0.1, torch.randn(1, 4))
    kwargs = dict(
        baselines=baselines,
        target=torch.tensor([1, 0, 2]),
        additional_forward_args=(scale,),
        n_steps=7,
        method=method,
        return_convergence_delta=True,
    )
    expected, expected_delta = captum_attr.IntegratedGradients(model).attribute(inputs, **kwargs)
    for internal_batch_size in (None, 4, 9):
        ours, delta = fc.IntegratedGradients(model).attribute(
            inputs, internal_batch_size=internal_batch_size, **kwargs
        )
        _close(ours, expected, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(delta, expected_delta.to(delta.dtype), rtol=1e-3, atol=1e-5)


def test_integrated_gradients_single_tensor_defaults() -> None:
    model = small_cnn(seed=1).eval()
    x = torch.randn(2, 1, 8, 8)
    expected = captum_attr.IntegratedGradients(model).attribute(x, target=3, n_steps=10)
    _close(fc.IntegratedGradients(model).attribute(x, target=3, n_steps=10), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "options",
    [
        {"relu_attributions": False},
        {"relu_attributions": True},
        {"attr_dim_summation": False},
        {"attribute_to_layer_input": True},
    ],
    ids=["signed", "relu", "per-channel", "layer-input"],
)
def test_layer_grad_cam_matches_captum(options: dict) -> None:
    model, inputs, scale = _two_inputs()
    expected = captum_attr.LayerGradCam(model, model.conv).attribute(
        inputs, target=1, additional_forward_args=(scale,), **options
    )
    ours = fc.LayerGradCam(model, model.conv).attribute(
        inputs, target=1, additional_forward_args=(scale,), **options
    )
    _close(ours, expected)
    up = fc.LayerAttribution.interpolate(ours, (8, 8), "bilinear")
    _close(up, captum_attr.LayerAttribution.interpolate(expected, (8, 8), "bilinear"))


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_guided_grad_cam_matches_captum(mode: str) -> None:
    model = small_cnn(seed=5).eval()
    x = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = captum_attr.GuidedGradCam(model, model[4]).attribute(x, 4, interpolate_mode=mode)
    _close(fc.GuidedGradCam(model, model[4]).attribute(x, 4, interpolate_mode=mode), expected, atol=1e-9)


def test_gradient_shap_linear_oracle_and_statistics_against_captum() -> None:
    model = LinearModel(8, 3, dtype=torch.float32)
    x = torch.randn(4, 8)
    weights = model.weight.detach()[2]
    one = torch.randn(1, 8)
    exact = fc.GradientShap(model).attribute(x, one, n_samples=3, target=2, seed=0)
    torch.testing.assert_close(exact, weights * (x - one), rtol=1e-5, atol=1e-6)
    distribution = torch.randn(6, 8)
    ours = fc.GradientShap(model).attribute(x, distribution, n_samples=3000, stdevs=0.1, target=2, seed=1)
    torch.manual_seed(0)
    peer = captum_attr.GradientShap(model).attribute(x, distribution, n_samples=3000, stdevs=0.1, target=2)
    expected = weights * (x - distribution.mean(0))
    spread = 5 * ((weights * distribution).std(0) / 3000**0.5 + 0.1 * weights.abs() / 3000**0.5)
    assert ((ours - expected).abs() <= spread).all()
    assert ((peer.detach() - expected).abs() <= spread).all()
    _, delta = fc.GradientShap(model).attribute(
        x, one, n_samples=3, target=2, seed=0, return_convergence_delta=True
    )
    assert delta.shape == (4 * 3,)  # one per (example, sample), example-major as in Captum
    torch.testing.assert_close(delta, torch.zeros(12), atol=1e-5, rtol=0)  # exact on a linear model
    local = fc.GradientShap(model, multiply_by_inputs=False).attribute(x, one, n_samples=3, target=2, seed=0)
    torch.testing.assert_close(local, weights.expand(4, 8))  # the mean gradient alone


def test_local_attributions_deltas_and_futures() -> None:
    model = LinearModel(6, 3, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64)
    baseline = torch.randn(1, 6, dtype=torch.float64)
    weights = model.weight.detach()[1]
    ig = fc.IntegratedGradients(model, multiply_by_inputs=False)
    assert not ig.multiplies_by_inputs
    torch.testing.assert_close(ig.attribute(x, baseline, target=1, n_steps=5), weights.expand(4, 6))
    ig = fc.IntegratedGradients(model)
    attributions, delta = ig.attribute(x, baseline, target=1, n_steps=5, return_convergence_delta=True)
    torch.testing.assert_close(delta, ig.compute_convergence_delta(attributions, baseline, x, target=1))
    torch.testing.assert_close(delta, torch.zeros(4, dtype=torch.float64), atol=1e-12, rtol=0)
    off = ig.compute_convergence_delta(attributions + 1.0, baseline, x, target=1)
    torch.testing.assert_close(off, torch.full((4,), 6.0, dtype=torch.float64))  # 6 features, each +1
    with pytest.raises(AssertionError, match="start_point must have 1 or 4 rows"):
        ig.compute_convergence_delta(attributions, baseline.repeat(3, 1), x, target=1)
    with pytest.raises(ValueError, match="start_point must have 1 or 4 rows"):
        ig.compute_convergence_delta(attributions, baseline.repeat(3, 1), x, target=1)
    tunnel = fc.NoiseTunnel(ig)
    smoothed, deltas = tunnel.attribute(
        x,
        nt_samples=3,
        stdevs=0.1,
        baselines=baseline,
        target=1,
        n_steps=4,
        return_convergence_delta=True,
        seed=0,
    )
    assert deltas.shape == (12,)
    torch.testing.assert_close(deltas, torch.zeros(12, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(smoothed, weights * (x - baseline), atol=0.5, rtol=0)  # noise 0.1 on x
    with pytest.raises(NotImplementedError, match="attribute_future is not implemented for Saliency"):
        fc.Saliency(model).attribute_future(x, target=1)


def test_noise_tunnel_fast_path_linear_oracles() -> None:
    model = LinearModel(6, 2, dtype=torch.float32)
    x = torch.randn(3, 6)
    w = model.weight.detach()[1].expand(3, 6)
    tunnel = fc.NoiseTunnel(fc.Saliency(model))
    kwargs = dict(nt_samples=8, stdevs=0.5, target=1, seed=0)
    torch.testing.assert_close(tunnel.attribute(x, abs=False, **kwargs), w)
    torch.testing.assert_close(tunnel.attribute(x, nt_type="smoothgrad_sq", **kwargs), w**2)
    variance = tunnel.attribute(x, nt_type="vargrad", abs=False, **kwargs)
    torch.testing.assert_close(variance, 0 * w, atol=1e-6, rtol=0)
    # Composed path (abs=True smoothgrad): |w| exactly.
    torch.testing.assert_close(tunnel.attribute(x, **kwargs), w.abs())
    batches = [
        fc.NoiseTunnel(fc.InputXGradient(model)).attribute(x, nt_samples_batch_size=size, **kwargs)
        for size in (None, 3)
    ]
    torch.testing.assert_close(batches[0], batches[1])


def test_noise_tunnel_composes_over_integrated_gradients_like_captum() -> None:
    """On a linear model IG of a noisy copy is w * (x + noise - b): the tunnel's mean is close to
    w * (x - b) and its vargrad is w^2 * stdev^2 in expectation, for Captum and for us."""
    model = LinearModel(5, 2, dtype=torch.float32)
    x, b = torch.randn(2, 5), torch.randn(2, 5)
    w = model.weight.detach()[0]
    sigma, n = 0.2, 600
    common = dict(nt_samples=n, stdevs=sigma, baselines=b, target=0, n_steps=4)
    tunnel = fc.NoiseTunnel(fc.IntegratedGradients(model))
    ours_mean = tunnel.attribute(x, seed=3, nt_samples_batch_size=250, **common)
    ours_var = tunnel.attribute(x, nt_type="vargrad", seed=3, **common)
    torch.manual_seed(0)
    peer_var = captum_attr.NoiseTunnel(captum_attr.IntegratedGradients(model)).attribute(
        x, nt_type="vargrad", **common
    )
    tolerance = 5 * sigma * w.abs() / n**0.5 + 1e-5
    assert ((ours_mean - w * (x - b)).abs() <= tolerance).all()
    expected_var = (w * sigma) ** 2
    assert ((ours_var - expected_var).abs() <= 0.25 * expected_var + 1e-6).all()
    assert ((peer_var.detach() - expected_var).abs() <= 0.25 * expected_var + 1e-6).all()


def test_noise_tunnel_draws_baselines_from_a_distribution() -> None:
    model = LinearModel(4, 2, dtype=torch.float32)
    x, distribution = torch.randn(2, 4), torch.randn(5, 4)
    got = fc.NoiseTunnel(fc.IntegratedGradients(model)).attribute(
        x,
        nt_samples=1000,
        stdevs=0.0,
        draw_baseline_from_distrib=True,
        baselines=distribution,
        target=1,
        seed=0,
        n_steps=2,
    )
    w = model.weight.detach()[1]
    spread = 5 * (w * distribution).std(0) / 1000**0.5
    assert ((got - w * (x - distribution.mean(0))).abs() <= spread).all()


def test_per_example_arguments_need_whole_batches() -> None:
    model, inputs, scale = _two_inputs()
    packed = PackedInputs(inputs)
    forward = packed.forward(model, (scale,))
    assert forward.has_per_example_args
    assert forward(packed.flat[:1]).shape == (1, 5)  # the class-count probe on example 0
    assert forward(packed.flat.repeat(2, 1)).shape == (6, 5)
    with pytest.raises(NotImplementedError, match=r"additional_forward_args\[0\]"):
        forward(packed.flat[:2])
    assert chunk_rows(4, packed.flat, whole_batches=True) == 3
    assert chunk_rows(7, packed.flat, whole_batches=True) == 6
    assert chunk_rows(7, packed.flat, whole_batches=False) == 7
    image, vector = packed.format(packed.flat)
    assert torch.equal(image, inputs[0]) and torch.equal(vector, inputs[1])


def test_not_honoured_is_refused_and_bad_input_named() -> None:
    model, inputs, _ = _two_inputs()
    with pytest.raises(ValueError, match="grad_kwargs must not set"):
        fc.LayerGradCam(model, model.conv).attribute(inputs, 0, grad_kwargs={"inputs": None})
    with pytest.raises(ValueError, match="interpolate_mode"):
        fc.GuidedGradCam(model, model.conv).attribute(inputs, 0, interpolate_mode="made_up")
    with pytest.raises(ValueError, match="target has 2 indices per example"):
        fc.Saliency(model).attribute(inputs, target=(0, 1))
    with pytest.raises(ValueError, match=r"inputs\[1\] has batch size 2"):
        fc.Saliency(model).attribute((inputs[0], inputs[1][:2]), target=0)
    with pytest.raises(ValueError, match="baselines"):
        fc.IntegratedGradients(model).attribute(inputs, baselines=(0.0, torch.zeros(4, 5)), target=0)
    with pytest.raises(ValueError, match="nt_type"):
        fc.NoiseTunnel(fc.Saliency(model)).attribute(inputs, nt_type="smooth")
    with pytest.raises(TypeError, match="attribution_method"):
        fc.NoiseTunnel(fc.NoiseTunnel(fc.Saliency(model)))
    with pytest.raises(AttributeError):
        fc.NotAClass  # noqa: B018


def test_model_state_is_kept_and_mode_is_not_switched() -> None:
    model = small_cnn(seed=7).train()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eval()  # train-mode BatchNorm would update its statistics, in Captum too
    model[2].register_forward_hook(lambda module, args, output: None)
    before = model_state(model)
    x = torch.randn(2, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for explainer, kwargs in [
            (fc.Saliency(model), {}),
            (fc.GuidedBackprop(model), {}),
            (fc.IntegratedGradients(model), {"n_steps": 3}),
            (fc.LayerGradCam(model, model[4]), {}),
            (fc.GuidedGradCam(model, model[4]), {}),
            (fc.NoiseTunnel(fc.Deconvolution(model)), {"nt_samples": 2}),
        ]:
            explainer.attribute(x, target=1, **kwargs)
            assert_same_state(before, model_state(model))
        with pytest.raises(ValueError):
            fc.Saliency(model).attribute(x, target=12)
    assert_same_state(before, model_state(model))


TRAIN_MODE_CLASSES = [
    (lambda m: fc.Saliency(m), {}),
    (lambda m: fc.InputXGradient(m), {}),
    (lambda m: fc.GuidedBackprop(m), {}),
    (lambda m: fc.IntegratedGradients(m), {"n_steps": 3}),
    (lambda m: fc.DeepLift(m), {}),
    (lambda m: fc.LayerGradCam(m, m[4]), {}),
    (lambda m: fc.LayerGradientXActivation(m, m[4]), {}),
    (lambda m: fc.GradientShap(m), {"baselines": torch.zeros(2, 1, 8, 8), "n_samples": 3}),
    (lambda m: fc.LayerIntegratedGradients(m, m[0]), {"n_steps": 3}),
    (lambda m: fc.NoiseTunnel(fc.Saliency(m)), {"nt_samples": 2}),
    (lambda m: fc.Occlusion(m), {"sliding_window_shapes": (1, 4, 4), "strides": 4}),
    (lambda m: fc.FeatureAblation(m), {}),
    (lambda m: fc.LayerFeatureAblation(m, m[0]), {}),
]


@pytest.mark.parametrize(
    ("make", "kwargs"), TRAIN_MODE_CLASSES, ids=lambda v: "" if isinstance(v, dict) else None
)
def test_a_train_mode_batchnorm_keeps_its_running_statistics(make, kwargs) -> None:  # type: ignore[no-untyped-def]
    """Like Captum, the classes run a train-mode model as it is (BatchNorm normalises with batch
    statistics); unlike Captum, the running statistics it folds in are put back afterwards."""
    model = small_cnn(seed=7).train()
    before = model_state(model)
    x = torch.randn(3, 1, 8, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        make(model).attribute(x, target=1, **kwargs)
    assert model.training
    assert_same_state(before, model_state(model))


def test_a_train_mode_batchnorm_keeps_its_statistics_under_layer_activation() -> None:
    model = small_cnn(seed=7).train()
    before = model_state(model)
    fc.LayerActivation(model, model[4]).attribute(torch.randn(3, 1, 8, 8))
    assert model.training
    assert_same_state(before, model_state(model))


def test_a_train_mode_batchnorm_still_normalises_with_batch_statistics() -> None:
    """Putting the statistics back does not change the numbers: Saliency equals Captum's on a copy."""
    model = small_cnn(seed=7).train()
    peer = copy.deepcopy(model)
    x = torch.randn(3, 1, 8, 8)
    ours = fc.Saliency(model).attribute(x, target=1, abs=False)
    theirs = captum_attr.Saliency(peer).attribute(x, target=1, abs=False)
    torch.testing.assert_close(ours, theirs)
    assert not torch.equal(peer[1].running_mean, model[1].running_mean)  # Captum's copy moved


def test_lazy_reexports_resolve() -> None:
    pytest.importorskip("fastxai.compat._captum_perturbation", reason="written by another engineer")
    assert fc.Occlusion.__module__ == "fastxai.compat._captum_perturbation"


def test_attribute_methods_expose_their_undecorated_function_as_captum_does() -> None:
    """Captum's decorated ``attribute`` methods carry ``__wrapped__``; code that reads its
    argument list there (Captum's own tests do) must see the same signature on every class."""
    import inspect

    classes = [getattr(fc, name) for name in fc.__all__]
    methods = [cls for cls in classes if isinstance(cls, type) and callable(getattr(cls, "attribute", None))]
    assert len(methods) > 30
    for cls in methods:
        undecorated = cls.attribute.__wrapped__
        assert undecorated is not cls.attribute, cls.__name__
        assert inspect.signature(undecorated) == inspect.signature(cls.attribute), cls.__name__
    x = torch.randn(3, 4)
    model = nn.Sequential(nn.Linear(4, 3))
    saliency = fc.Saliency(model)
    undecorated = fc.Saliency.attribute.__wrapped__(saliency, x, target=1)
    assert torch.equal(undecorated, saliency.attribute(x, target=1))
