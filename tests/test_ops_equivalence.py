"""Every fused op on every available backend against its PyTorch reference.

Tolerances follow the rule "a kernel may be about as wrong as the reference in the same
dtype": float32 results agree to rounding (noise to a few ulp, since libm's log/sin/cos
differ between backends); float16/bfloat16 outputs are both rounded from float32, so they
may differ by one unit in the last place.
"""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params, kernel_backends
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastxai import ops, reference

SHAPES = {
    "tiny": (2, (4,)),
    "batch1": (1, (5,)),
    "odd": (3, (3, 7, 5)),
    "not_multiple_of_4": (2, (3, 3)),
    "image": (4, (3, 16, 16)),
}
DTYPES = {
    torch.float32: dict(rtol=1e-6, atol=1e-6),
    torch.float16: dict(rtol=2**-10, atol=1e-5),
    torch.bfloat16: dict(rtol=2**-7, atol=1e-5),
}
NOISE_TOLERANCE = {torch.float32: dict(rtol=1e-5, atol=2e-6)}  # libm differences in log, sin, cos
LAYOUTS = ("contiguous", "transposed", "channels_last")
BACKENDS = backend_params()


def _inputs(shape_id: str, dtype: torch.dtype, device: str, seed: int = 0) -> torch.Tensor:
    batch, features = SHAPES[shape_id]
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *features, generator=generator).to(device=device, dtype=dtype)


def _layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` in another memory layout."""
    if layout == "transposed" and x.dim() >= 3:
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    if layout == "channels_last" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def _assert_close(
    actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, noise: bool = False
) -> None:
    tolerance = NOISE_TOLERANCE.get(dtype, DTYPES[dtype]) if noise else DTYPES[dtype]
    torch.testing.assert_close(actual, expected, **tolerance)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
def test_gaussian_perturb(backend: str, device: str, dtype: torch.dtype, shape_id: str) -> None:
    x = _inputs(shape_id, dtype, device)
    sigma = torch.linspace(0.1, 0.9, x.shape[0], device=device)
    for seed, sample_offset, n_samples, batch_offset in [(0, 0, 3, 0), (2**40 + 7, 5, 2, 2)]:
        got = ops.gaussian_perturb(x, sigma, seed, sample_offset, n_samples, batch_offset, backend=backend)
        want = reference.gaussian_perturb(x, sigma, seed, sample_offset, n_samples, batch_offset)
        assert got.shape == (n_samples, *x.shape) and got.dtype == dtype
        _assert_close(got, want, dtype, noise=True)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("variant", ["sum", "sum_sq", "multiplied"])
def test_moment_accumulate(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, variant: str
) -> None:
    values = torch.stack([_inputs(shape_id, dtype, device, seed) for seed in range(3)])
    multiplier = torch.stack([_inputs(shape_id, dtype, device, seed) for seed in range(10, 13)])
    multiplier = multiplier if variant == "multiplied" else None
    start = _inputs(shape_id, torch.float32, device, 99)
    totals = {name: (start.clone(), start.clone() if variant != "sum" else None) for name in ("got", "want")}
    ops.moment_accumulate(values, *totals["got"], multiplier, backend=backend)
    reference.moment_accumulate(values, *totals["want"], multiplier)
    for got, want in zip(totals["got"], totals["want"], strict=True):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_path_points(backend: str, device: str, dtype: torch.dtype, shape_id: str, layout: str) -> None:
    x = _layout(_inputs(shape_id, dtype, device, 1), layout)
    baseline = _layout(_inputs(shape_id, dtype, device, 2), layout)
    alphas = torch.tensor([0.0, 0.1, 0.5, 0.77, 1.0], device=device)
    got = ops.path_points(x, baseline, alphas, backend=backend)
    want = reference.path_points(x.contiguous(), baseline.contiguous(), alphas)
    assert got.shape == (5, *x.shape) and got.dtype == dtype
    _assert_close(got, want, dtype)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("per_sample_weights", [False, True])
def test_weighted_path_accumulate(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, per_sample_weights: bool
) -> None:
    grads = torch.stack([_inputs(shape_id, dtype, device, seed) for seed in range(4)])
    batch = grads.shape[1]
    weights = torch.rand(4, batch, device=device) if per_sample_weights else torch.rand(4, device=device)
    got = _inputs(shape_id, torch.float32, device, 7)
    want = got.clone()
    ops.weighted_path_accumulate(grads, weights, got, backend=backend)
    full_weights = weights if per_sample_weights else weights.view(4, 1).expand(4, batch).contiguous()
    reference.weighted_path_accumulate(grads, full_weights, want)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_layouts_of_perturbed_inputs(backend: str, device: str, layout: str) -> None:
    x = _layout(_inputs("image", torch.float32, device), layout)
    sigma = torch.full((x.shape[0],), 0.3, device=device)
    got = ops.gaussian_perturb(x, sigma, 11, 0, 2, backend=backend)
    _assert_close(got, reference.gaussian_perturb(x.contiguous(), sigma, 11, 0, 2), torch.float32, noise=True)


def test_float64_runs_on_the_reference_only() -> None:
    x = torch.randn(2, 3, dtype=torch.float64)
    alphas = torch.tensor([0.5])
    torch.testing.assert_close(ops.path_points(x, torch.zeros_like(x), alphas), 0.5 * x.unsqueeze(0))
    for backend, _device in kernel_backends():
        with pytest.raises(TypeError, match="backend='reference'"):
            ops.path_points(x, torch.zeros_like(x), alphas, backend=backend)


# Interpreted Triton is slow: a few dozen examples per backend keep this under a minute.
@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 4),
    features=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    n_samples=st.integers(1, 4),
    sample_offset=st.integers(0, 2**32 - 5),
    batch_offset=st.integers(0, 1000),
    seed=st.integers(0, 2**63 - 1),
    sigma=st.floats(0.0, 3.0),
)
def test_hypothesis_all_ops(
    backend: str,
    device: str,
    batch: int,
    features: list[int],
    n_samples: int,
    sample_offset: int,
    batch_offset: int,
    seed: int,
    sigma: float,
) -> None:
    generator = torch.Generator().manual_seed(seed % 2**32)
    x = torch.randn(batch, *features, generator=generator).to(device)
    sigmas = torch.full((batch,), sigma, device=device)
    noisy = ops.gaussian_perturb(x, sigmas, seed, sample_offset, n_samples, batch_offset, backend=backend)
    _assert_close(
        noisy,
        reference.gaussian_perturb(x, sigmas, seed, sample_offset, n_samples, batch_offset),
        torch.float32,
        True,
    )
    got_total, got_sq = torch.ones_like(x), torch.zeros_like(x)
    want_total, want_sq = torch.ones_like(x), torch.zeros_like(x)
    ops.moment_accumulate(noisy, got_total, got_sq, noisy, backend=backend)
    reference.moment_accumulate(noisy, want_total, want_sq, noisy)
    torch.testing.assert_close(got_total, want_total, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(got_sq, want_sq, rtol=1e-6, atol=1e-5)
    alphas = torch.rand(n_samples, generator=generator).to(device)
    baseline = torch.randn(x.shape, generator=generator).to(device)
    points = ops.path_points(x, baseline, alphas, backend=backend)
    torch.testing.assert_close(points, reference.path_points(x, baseline, alphas), rtol=1e-6, atol=1e-6)
    weights = torch.rand(n_samples, batch, generator=generator).to(device)
    got_acc, want_acc = torch.zeros_like(x), torch.zeros_like(x)
    ops.weighted_path_accumulate(points, weights, got_acc, backend=backend)
    reference.weighted_path_accumulate(points, weights, want_acc)
    torch.testing.assert_close(got_acc, want_acc, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (float("-inf"), float("inf"))], ids=["unit", "unbounded"])
def test_pgd_step(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, norm: str, bounds: tuple[float, float]
) -> None:
    origin = _inputs(shape_id, torch.float32, device, 1).sigmoid().to(dtype)
    x_adv = (origin.float() + 0.05 * _inputs(shape_id, torch.float32, device, 2)).clamp(0, 1).to(dtype)
    grad = _inputs(shape_id, dtype, device, 3)
    grad[0] = 0  # a zero gradient: no step, and no 0/0 in the L2 normalisation
    batch = origin.shape[0]
    step_size = torch.linspace(0.01, 0.2, batch, device=device)
    eps = torch.linspace(0.0, 0.3, batch, device=device)  # eps 0 for the first row
    got = ops.pgd_step(x_adv, grad, origin, step_size, eps, *bounds, norm, backend=backend)
    want = reference.pgd_step(x_adv, grad, origin, step_size, eps, *bounds, norm)
    assert got.shape == origin.shape and got.dtype == dtype and torch.isfinite(got).all()
    # L2 norms are float32 sums whose order differs between backends.
    tolerance = DTYPES[dtype] if dtype != torch.float32 else dict(rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(got, want, **tolerance)


# ---- LRP and perturbation ops ------------------------------------------------------------------


def _assert_as_accurate(
    got: torch.Tensor, want: torch.Tensor, oracle: torch.Tensor, dtype: torch.dtype
) -> None:
    """``got`` agrees with the reference ``want`` in the same dtype, and is at most about as far from the
    float64 ``oracle`` as the reference is (twice its largest error plus one unit of the dtype's rounding)."""
    _assert_close(got, want, dtype)
    unit = torch.finfo(dtype).eps * oracle.abs().clamp_min(1e-30)
    error_got = (got.double() - oracle).abs()
    error_want = (want.double() - oracle).abs()
    assert bool((error_got <= 2 * error_want.max() + unit).all()), (error_got.max(), error_want.max())


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("eps", [0.0, 0.01, 0.25])
def test_lrp_divide(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, layout: str, eps: float
) -> None:
    relevance = _layout(_inputs(shape_id, dtype, device, 1), layout)
    z = _inputs(shape_id, dtype, device, 2)
    z.view(-1)[::3] = 0.0  # exact zeros: 0 / 0 -> 0 when eps == 0, R / eps otherwise
    z.view(-1)[1::7] = -0.0
    z = _layout(z, layout)
    got = ops.lrp_divide(relevance, z, eps, backend=backend)
    want = reference.lrp_divide(relevance.contiguous(), z.contiguous(), eps)
    assert got.shape == relevance.shape and got.dtype == dtype and torch.isfinite(got).all()
    oracle = reference.lrp_divide(relevance.double(), z.double(), eps)
    _assert_as_accurate(got, want, oracle, dtype)
    if eps == 0.0:
        assert (got[z == 0] == 0).all()


def test_lrp_divide_closed_form() -> None:
    relevance = torch.tensor([[2.0, 1.0, 3.0, 4.0, 5.0]])
    z = torch.tensor([[1.0, 0.0, -1.0, -0.0, 0.0]])
    # sign0(0) = sign0(-0) = +1: 1/(0+1), 3/(-1-1), 4/(-0+1)
    expected = torch.tensor([[1.0, 1.0, -1.5, 4.0, 5.0]])
    for backend, _device in [("reference", "cpu"), *kernel_backends()]:
        if _device == "cpu":
            torch.testing.assert_close(ops.lrp_divide(relevance, z, 1.0, backend=backend), expected)
            zero_eps = ops.lrp_divide(relevance, z, 0.0, backend=backend)
            torch.testing.assert_close(zero_eps, torch.tensor([[2.0, 0.0, -3.0, 0.0, 0.0]]))


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("rule", ["plain", "alpha2beta1", "alpha1.5beta0.25"])
def test_lrp_product(backend: str, device: str, dtype: torch.dtype, shape_id: str, rule: str) -> None:
    activation = _layout(_inputs(shape_id, dtype, device, 1), "channels_last")
    c = _layout(_inputs(shape_id, dtype, device, 2), "transposed")
    c_neg = _inputs(shape_id, dtype, device, 3) if rule != "plain" else None
    alpha, beta = {"plain": (1.0, 0.0), "alpha2beta1": (2.0, 1.0), "alpha1.5beta0.25": (1.5, 0.25)}[rule]
    got = ops.lrp_product(activation, c, c_neg, alpha, beta, backend=backend)
    want = reference.lrp_product(activation.contiguous(), c.contiguous(), c_neg, alpha, beta)
    oracle = reference.lrp_product(
        activation.double(), c.double(), None if c_neg is None else c_neg.double(), alpha, beta
    )
    assert got.shape == activation.shape and got.dtype == dtype
    _assert_as_accurate(got, want, oracle, dtype)


ELEMENTWISE_LAYOUTS = [
    ("channels_last",) * 3,
    ("channels_last", "contiguous", "transposed"),
    ("contiguous", "channels_last", "channels_last"),
    ("transposed",) * 3,
]


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("layouts", ELEMENTWISE_LAYOUTS, ids="-".join)
def test_lrp_elementwise_ops_keep_the_first_arguments_layout(
    backend: str, device: str, layouts: tuple[str, str, str]
) -> None:
    """lrp_divide / lrp_product run on the first argument's memory order (others are copied
    into it) and return that layout: the same values, bit for bit, as on contiguous tensors."""
    first, second, third = (
        _layout(_inputs("image", torch.float32, device, seed), layout)
        for seed, layout in zip((1, 2, 3), layouts, strict=True)
    )
    outputs = {
        "divide": (ops.lrp_divide(first, second, 0.01, backend=backend),
                   ops.lrp_divide(first.contiguous(), second.contiguous(), 0.01, backend=backend)),
        "product": (ops.lrp_product(first, second, backend=backend),
                    ops.lrp_product(first.contiguous(), second.contiguous(), backend=backend)),
        "alpha_beta": (ops.lrp_product(first, second, third, 2.0, 1.0, backend=backend),
                       ops.lrp_product(first.contiguous(), second.contiguous(), third.contiguous(), 2.0, 1.0,
                                       backend=backend)),
    }  # fmt: skip
    for name, (got, want) in outputs.items():
        assert torch.equal(got, want), name
        assert got.stride() == first.stride(), (name, got.stride(), first.stride())


def test_lrp_elementwise_ops_on_a_broadcast_first_argument() -> None:
    """A first argument that is not dense (stride 0) takes the contiguous path."""
    relevance = torch.rand(2, 1, 4, 4).expand(2, 3, 4, 4)
    z = torch.rand(2, 3, 4, 4) + 0.5
    got = ops.lrp_divide(relevance, z, 0.0)
    assert got.is_contiguous()
    torch.testing.assert_close(got, relevance / z)


def _mask(shape: tuple[int, ...], groups: int, device: str, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, groups, shape, generator=generator).to(device)


def _rounds_like_reference(backend: str, device: str, dtype: torch.dtype) -> bool:
    """Whether this backend rounds float32 results to ``dtype`` as torch does (to nearest even).

    The Triton interpreter (Triton on a CPU) rounds float32 to bfloat16 toward zero, so a computed
    (not copied) bfloat16 element may be one unit in the last place away from the reference's.
    """
    return not (backend == "triton" and device == "cpu" and dtype == torch.bfloat16)


def _copy_major(input_major: torch.Tensor) -> torch.Tensor:
    """[B, P, *F] -> [P, B, *F], contiguous: what ``copy_major=True`` must return."""
    return input_major.transpose(0, 1).contiguous()


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("mask_kind", ["shared", "per_input"])
@pytest.mark.parametrize("keep_kind", ["binary", "fractional"])
@pytest.mark.parametrize("copy_major", [False, True], ids=["input_major", "copy_major"])
def test_masked_blend(
    backend: str,
    device: str,
    dtype: torch.dtype,
    shape_id: str,
    mask_kind: str,
    keep_kind: str,
    copy_major: bool,
) -> None:
    inputs = _layout(_inputs(shape_id, dtype, device, 1), "transposed")
    baselines = _inputs(shape_id, dtype, device, 2)
    batch, groups, perturbations = inputs.shape[0], 5, 3 if shape_id == "image" else 9
    shape = tuple(inputs.shape) if mask_kind == "per_input" else tuple(inputs.shape[1:])
    mask = _mask(shape, groups, device, 3)
    generator = torch.Generator().manual_seed(4)
    keep = torch.rand(batch, perturbations, groups, generator=generator)
    keep = (keep > 0.5).float() if keep_kind == "binary" else keep
    keep = keep.to(device)
    got = ops.masked_blend(inputs, baselines, mask, keep, copy_major=copy_major, backend=backend)
    want = reference.masked_blend(inputs.contiguous(), baselines, mask, keep)
    if copy_major:  # the same copies, written [P, B, *F]
        assert got.shape == (perturbations, batch, *inputs.shape[1:]) and got.is_contiguous()
        input_major = ops.masked_blend(inputs, baselines, mask, keep, backend=backend)
        assert torch.equal(got, _copy_major(input_major))
        if keep_kind == "binary" or _rounds_like_reference(backend, device, dtype):
            assert torch.equal(got, _copy_major(want))
        got = got.transpose(0, 1)
    assert got.shape == (batch, perturbations, *inputs.shape[1:]) and got.dtype == dtype
    oracle = reference.masked_blend(inputs.double(), baselines.double(), mask, keep.double())
    _assert_as_accurate(got, want, oracle, dtype)
    # keep = 0 takes the baseline exactly (baseline + 0 * step).
    dropped = ops.masked_blend(
        inputs, baselines, mask, torch.zeros_like(keep), copy_major=copy_major, backend=backend
    )
    assert torch.equal(dropped, baselines.unsqueeze(0 if copy_major else 1).expand_as(dropped))


def test_masked_blend_closed_form() -> None:
    inputs = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    baselines = torch.tensor([[0.0, 0.0, 0.0], [10.0, 10.0, 10.0]])
    mask = torch.tensor([0, 0, 1])
    keep = torch.tensor([[[1.0, 0.0], [0.5, 1.0]], [[0.0, 1.0], [1.0, 0.25]]])
    expected = torch.tensor([[[1.0, 2.0, 0.0], [0.5, 1.0, 3.0]], [[10.0, 10.0, 6.0], [4.0, 5.0, 9.0]]])
    # copy-major: copy p of every input together
    expected_copy_major = torch.tensor(
        [[[1.0, 2.0, 0.0], [10.0, 10.0, 6.0]], [[0.5, 1.0, 3.0], [4.0, 5.0, 9.0]]]
    )
    for backend, device in [("reference", "cpu"), *kernel_backends()]:
        args = (inputs.to(device), baselines.to(device), mask.to(device), keep.to(device))
        torch.testing.assert_close(ops.masked_blend(*args, backend=backend).cpu(), expected)
        got = ops.masked_blend(*args, copy_major=True, backend=backend)
        torch.testing.assert_close(got.cpu(), expected_copy_major)


OCCLUSIONS = [  # (window, strides) for the feature shape of each SHAPES entry, by number of dimensions
    {1: ((1,), (1,)), 2: ((2, 1), (1, 1)), 3: ((1, 4, 4), (1, 4, 4))},
    {1: ((3,), (2,)), 2: ((3, 3), (1, 2)), 3: ((3, 3, 3), (1, 2, 4))},
    {1: ((2,), (3,)), 2: ((1, 3), (2, 1)), 3: ((2, 5, 3), (1, 3, 4))},
]


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
# "image" is left out: hundreds of interpreted Triton programs; the 3-d geometries run on "odd".
@pytest.mark.parametrize("shape_id", [name for name in SHAPES if name != "image"])
@pytest.mark.parametrize("geometry", range(len(OCCLUSIONS)))
@pytest.mark.parametrize("copy_major", [False, True], ids=["input_major", "copy_major"])
def test_occlude(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, geometry: int, copy_major: bool
) -> None:
    inputs = _layout(_inputs(shape_id, dtype, device, 1), "channels_last")
    baselines = _inputs(shape_id, dtype, device, 2)
    window, strides = OCCLUSIONS[geometry][inputs.dim() - 1]
    if any(w > size for w, size in zip(window, inputs.shape[1:], strict=True)):
        pytest.skip("window larger than this shape")
    total = ops.occlusion_window_count(tuple(inputs.shape[1:]), window, strides)
    full = ops.occlude(inputs, baselines, window, strides, 0, total, copy_major=copy_major, backend=backend)
    want = reference.occlude(inputs.contiguous(), baselines, window, strides, 0, total)
    if copy_major:  # the same copies, written [W, B, *F]
        assert full.shape == (total, inputs.shape[0], *inputs.shape[1:]) and full.is_contiguous()
        assert torch.equal(full, _copy_major(want))  # elements are copied: exact
    assert full.dtype == dtype
    # Windows in chunks are the same windows.
    split = total // 2
    parts = [
        ops.occlude(inputs, baselines, window, strides, s, c, copy_major=copy_major, backend=backend)
        for s, c in ((0, split), (split, total - split))
    ]
    assert torch.equal(torch.cat(parts, dim=0 if copy_major else 1), full)
    full = full.transpose(0, 1) if copy_major else full
    assert full.shape == (inputs.shape[0], total, *inputs.shape[1:])
    assert torch.equal(full, want)
    # Every perturbation takes exactly one window's worth of elements from the baselines.
    taken = (full != inputs.unsqueeze(1)) & (full == baselines.unsqueeze(1))
    assert (taken.flatten(2).sum(-1) <= torch.tensor(window).prod()).all()


def test_occlude_closed_form() -> None:
    inputs = torch.arange(1.0, 13.0).view(1, 3, 4)
    baselines = torch.zeros(1, 3, 4)
    # window 2x2, strides 1x2: rows 0..1, cols {0, 2} -> 2 x 2 = 4 windows, row-major.
    assert ops.occlusion_window_count((3, 4), (2, 2), (1, 2)) == 4
    expected = inputs.repeat(1, 4, 1, 1)
    expected[0, 0, 0:2, 0:2] = 0
    expected[0, 1, 0:2, 2:4] = 0
    expected[0, 2, 1:3, 0:2] = 0
    expected[0, 3, 1:3, 2:4] = 0
    for backend, device in [("reference", "cpu"), *kernel_backends()]:
        got = ops.occlude(inputs.to(device), baselines.to(device), (2, 2), (1, 2), 1, 3, backend=backend)
        assert torch.equal(got.cpu(), expected[:, 1:4])
        two = torch.cat([inputs, inputs + 100]).to(device)  # B = 2: copy-major interleaves the inputs
        got = ops.occlude(two, torch.zeros_like(two), (2, 2), (1, 2), 1, 3, copy_major=True, backend=backend)
        expected_two = torch.stack(
            [expected[0, 1:4], torch.where(expected[0, 1:4] == 0, 0, expected[0, 1:4] + 100)]
        )
        assert torch.equal(got.cpu(), expected_two.transpose(0, 1))


def test_occlude_matches_captum_occlusion() -> None:
    """Attributions built from our windows equal Captum's Occlusion on a linear model."""
    captum_attr = pytest.importorskip("captum.attr")
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(3 * 7 * 6, generator=generator)

    def model(x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) @ weight).unsqueeze(1)

    inputs = torch.randn(2, 3, 7, 6, generator=generator)
    baselines = torch.randn(2, 3, 7, 6, generator=generator)
    window, strides = (2, 3, 2), (1, 2, 2)  # the windows cover every element
    total = ops.occlusion_window_count(tuple(inputs.shape[1:]), window, strides)
    occluded = ops.occlude(inputs, baselines, window, strides, 0, total)  # [B, W, *F]
    drop = model(inputs) - model(occluded.flatten(0, 1)).view(2, total)  # [B, W]
    ones = torch.ones_like(inputs)
    covers = ops.occlude(ones, torch.zeros_like(inputs), window, strides, 0, total) == 0  # [B, W, *F]
    ours = (drop.view(2, total, 1, 1, 1) * covers).sum(1) / covers.sum(1)
    theirs = captum_attr.Occlusion(model).attribute(
        inputs, sliding_window_shapes=window, strides=strides, baselines=baselines, target=0
    )
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    batch=st.integers(1, 3),
    features=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    perturbations=st.integers(1, 10),
    groups=st.integers(1, 6),
    eps=st.floats(0.0, 2.0),
    alpha=st.floats(-3.0, 3.0),
    beta=st.floats(-3.0, 3.0),
    copy_major=st.booleans(),
    data=st.data(),
)
def test_hypothesis_attribution_ops(
    backend: str,
    device: str,
    batch: int,
    features: list[int],
    perturbations: int,
    groups: int,
    eps: float,
    alpha: float,
    beta: float,
    copy_major: bool,
    data: st.DataObject,
) -> None:
    generator = torch.Generator().manual_seed(len(features) * 1000 + perturbations)
    x = torch.randn(batch, *features, generator=generator).to(device)
    y = torch.randn(batch, *features, generator=generator).to(device)
    w = torch.randn(batch, *features, generator=generator).to(device)
    y.view(-1)[::2] = 0.0
    torch.testing.assert_close(
        ops.lrp_divide(x, y, eps, backend=backend), reference.lrp_divide(x, y, eps), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(
        ops.lrp_product(x, y, w, alpha, beta, backend=backend),
        reference.lrp_product(x, y, w, alpha, beta),
        rtol=1e-6,
        atol=1e-6,
    )
    mask = _mask(tuple(features), groups, device, perturbations)
    keep = torch.rand(batch, perturbations, groups, generator=generator).to(device)
    blended = ops.masked_blend(x, y, mask, keep, copy_major=copy_major, backend=backend)
    want = reference.masked_blend(x, y, mask, keep)
    torch.testing.assert_close(blended, _copy_major(want) if copy_major else want, rtol=1e-6, atol=1e-6)
    window = tuple(data.draw(st.integers(1, size)) for size in features)
    strides = tuple(data.draw(st.integers(1, 4)) for _ in features)
    total = ops.occlusion_window_count(tuple(features), window, strides)
    start = data.draw(st.integers(0, total))
    count = data.draw(st.integers(0, total - start))
    occluded = ops.occlude(x, y, window, strides, start, count, copy_major=copy_major, backend=backend)
    want = reference.occlude(x, y, window, strides, start, count)
    assert torch.equal(occluded, _copy_major(want) if copy_major else want)


EDGE_SIZES = {  # (batch, perturbations): one input, one copy, both, no copies
    "B1": (1, 5),
    "P1": (4, 1),
    "B1P1": (1, 1),
    "P0": (3, 0),
}


@pytest.mark.parametrize(("backend", "device"), backend_params(include_reference=True))
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("sizes", list(EDGE_SIZES))
def test_copy_major_edge_sizes(backend: str, device: str, dtype: torch.dtype, sizes: str) -> None:
    """copy_major=True is the reference's input-major result transposed, bit for bit, at the edges:
    one input, one copy, no copies; per-input and shared masks; a window sub-range."""
    batch, perturbations = EDGE_SIZES[sizes]
    generator = torch.Generator().manual_seed(batch * 10 + perturbations)
    inputs = torch.randn(batch, 2, 3, 5, generator=generator).to(device=device, dtype=dtype)
    baselines = torch.randn(batch, 2, 3, 5, generator=generator).to(device=device, dtype=dtype)
    keep = torch.rand(batch, perturbations, 4, generator=generator).to(device)
    for mask in (_mask((2, 3, 5), 4, device, 1), _mask((batch, 2, 3, 5), 4, device, 2)):
        got = ops.masked_blend(inputs, baselines, mask, keep, copy_major=True, backend=backend)
        assert got.shape == (perturbations, batch, 2, 3, 5) and got.is_contiguous()
        want = _copy_major(reference.masked_blend(inputs, baselines, mask, keep))
        if _rounds_like_reference(backend, device, dtype):
            assert torch.equal(got, want)
        else:
            assert torch.equal(
                got, _copy_major(ops.masked_blend(inputs, baselines, mask, keep, backend=backend))
            )
            torch.testing.assert_close(got, want, **DTYPES[dtype])
    window, strides = (1, 2, 3), (1, 1, 2)  # 2 * 2 * 2 = 8 windows
    for start in (0, 3):
        count = min(perturbations, 8 - start)
        got = ops.occlude(inputs, baselines, window, strides, start, count, copy_major=True, backend=backend)
        assert got.shape == (count, batch, 2, 3, 5) and got.is_contiguous()
        assert torch.equal(
            got, _copy_major(reference.occlude(inputs, baselines, window, strides, start, count))
        )


@pytest.mark.parametrize(("backend", "device"), backend_params(include_reference=True))
def test_unchecked_fast_path_passes_copy_major(backend: str, device: str) -> None:
    """The implementation ``ops._unchecked`` resolves takes copy_major by name, as the public op passes it."""
    generator = torch.Generator().manual_seed(5)
    inputs = torch.randn(3, 4, 6, generator=generator).to(device)
    baselines = torch.zeros_like(inputs)
    mask = _mask((3, 4, 6), 5, device, 6)
    keep = torch.rand(3, 2, 5, generator=generator).to(device)
    blend = ops._unchecked("masked_blend", backend, inputs)
    for copy_major in (False, True):
        assert torch.equal(
            blend(inputs, baselines, mask, keep, copy_major=copy_major),
            ops.masked_blend(inputs, baselines, mask, keep, copy_major=copy_major, backend=backend),
        )
    occlude = ops._unchecked("occlude", backend, inputs)
    got = occlude(inputs, baselines, [2, 3], [2, 3], 1, 2, copy_major=True)
    assert got.shape == (2, 3, 4, 6)
    assert torch.equal(
        got, ops.occlude(inputs, baselines, (2, 3), (2, 3), 1, 2, copy_major=True, backend=backend)
    )


def _pairs(shape_id: str, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A gradient, pre-activations x and their baselines' (each [B, *F]) with exact ties, near ties
    (within eps = 1e-3), zeros on either side and signs that differ."""
    a = _inputs(shape_id, torch.float32, "cpu", 1)
    b = _inputs(shape_id, torch.float32, "cpu", 2)
    flat_a, flat_b = a.view(-1), b.view(-1)
    flat_b[::5] = flat_a[::5]  # a == b: the derivative
    flat_b[1::7] = flat_a[1::7] + 1e-4  # |a - b| < eps: the derivative
    flat_a[2::6] = 0.0
    flat_b[3::6] = 0.0
    flat_a[4::9], flat_b[4::9] = 0.0, 0.0  # 0 == 0: f'(0) = the slope
    grad = _inputs(shape_id, dtype, device, 3)
    return grad, a.to(device=device, dtype=dtype), b.to(device=device, dtype=dtype)


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("shape_id", list(SHAPES))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("negative_slope", [0.0, 0.01, -0.5])
def test_rescale_backward(
    backend: str, device: str, dtype: torch.dtype, shape_id: str, layout: str, negative_slope: float
) -> None:
    grad, x, ref = _pairs(shape_id, dtype, device)
    other = "transposed" if layout == "channels_last" else layout
    grad, x, ref = _layout(grad, layout), _layout(x, other), _layout(ref, layout)
    got = ops.rescale_backward(grad, x, ref, 1e-3, negative_slope, backend=backend)
    want = reference.rescale_backward(
        grad.contiguous(), x.contiguous(), ref.contiguous(), 1e-3, negative_slope
    )
    assert got.shape == grad.shape and got.dtype == dtype and torch.isfinite(got).all()
    assert got.stride() == grad.stride()  # the op runs in grad's layout
    oracle = reference.rescale_backward(grad.double(), x.double(), ref.double(), 1e-3, negative_slope)
    _assert_as_accurate(got, want, oracle, dtype)


def test_rescale_backward_closed_form() -> None:
    """relu's multipliers by hand: both positive 1, both negative 0, a sign change the share of
    [b, a] above 0, equal values (and |a - b| < eps) relu's derivative at a; leaky_relu's slope."""
    a = torch.tensor([[3.0, -2.0, 2.0, -1.0, 1.5, 0.0, -0.5, 1.0]])
    b = torch.tensor([[1.0, -1.0, -2.0, 3.0, 1.5, 0.0, -0.5, 1.0 + 2**-20]])
    grad = torch.full_like(a, -4.0)
    relu = torch.tensor([[1.0, 0.0, 0.5, 0.75, 1.0, 0.0, 0.0, 1.0]])
    leaky = torch.tensor([[1.0, 0.1, 0.55, 0.775, 1.0, 0.1, 0.1, 1.0]])
    for backend, device in [("reference", "cpu"), *kernel_backends()]:
        for slope, m in ((0.0, relu), (0.1, leaky)):
            got = ops.rescale_backward(
                grad.to(device), a.to(device), b.to(device), 1e-6, slope, backend=backend
            )
            torch.testing.assert_close(got.cpu(), -4.0 * m, msg=f"{backend} {slope}")


@pytest.mark.parametrize(("backend", "device"), BACKENDS)
def test_rescale_backward_sums_to_delta(backend: str, device: str) -> None:
    """With a gradient of ones, m * (a - b) = f(a) - f(b) per element, in any layout."""
    grad, a, b = _pairs("image", torch.float32, device)
    ones = torch.ones_like(grad)
    multiplier = ops.rescale_backward(ones, a, b, 1e-6, 0.2, backend=backend)
    leaky = torch.nn.functional.leaky_relu
    torch.testing.assert_close(multiplier * (a - b), leaky(a, 0.2) - leaky(b, 0.2))

    def batch_inner(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(0, 1).contiguous().transpose(0, 1)

    assert torch.equal(
        ops.rescale_backward(batch_inner(grad), batch_inner(a), b, 1e-6, backend=backend),
        ops.rescale_backward(grad, a, b, 1e-6, backend=backend),
    )


@pytest.mark.parametrize(("backend", "device"), [("reference", "cpu"), *BACKENDS])
@pytest.mark.parametrize("dtype", list(DTYPES), ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("negative_slope", [0.0, 0.01])
def test_relu_rescale(
    backend: str, device: str, dtype: torch.dtype, layout: str, negative_slope: float
) -> None:
    """The differentiable op: its forward is relu / leaky_relu exactly, its gradient the backend's
    rescale_backward of the incoming gradient (and as accurate as the reference's); none flows
    to the reference."""
    grad, x, ref = _pairs("image", dtype, device)
    x, ref = _layout(x, layout), _layout(ref, "transposed" if layout == "channels_last" else layout)
    leaf = x.detach().requires_grad_(True)
    reference_leaf = ref.detach().requires_grad_(True)
    out = ops.relu_rescale(leaf, reference_leaf, 1e-3, negative_slope, backend=backend)
    assert torch.equal(out, torch.nn.functional.leaky_relu(x, negative_slope))
    (got, got_reference) = torch.autograd.grad(out, (leaf, reference_leaf), grad, allow_unused=True)
    assert got_reference is None or not got_reference.any()
    assert torch.equal(got, ops.rescale_backward(grad, x, ref, 1e-3, negative_slope, backend=backend))
    want = reference.rescale_backward(
        grad.contiguous(), x.contiguous(), ref.contiguous(), 1e-3, negative_slope
    )
    oracle = reference.rescale_backward(grad.double(), x.double(), ref.double(), 1e-3, negative_slope)
    _assert_as_accurate(got.contiguous(), want, oracle, dtype)


def test_relu_rescale_rejects_bad_input() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    for backend in ["reference", *(name for name, _device in kernel_backends())]:
        with pytest.raises(ValueError, match="reference must have the shape of x"):
            ops.relu_rescale(x, x[:2], 1e-6, backend=backend)
        with pytest.raises(TypeError, match="reference must have the dtype of x"):
            ops.relu_rescale(x, x.double(), 1e-6, backend=backend)
        with pytest.raises(ValueError, match="eps must be > 0"):
            ops.relu_rescale(x, x, 1e-300, backend=backend)
        with pytest.raises(ValueError, match="negative_slope must be finite"):
            ops.relu_rescale(x, x, 1e-6, float("inf"), backend=backend)
        with pytest.raises(TypeError, match="x must be a floating-point tensor"):
            ops.relu_rescale(torch.ones(3, dtype=torch.long), torch.ones(3), 1e-6, backend=backend)


def test_rescale_backward_rejects_bad_input() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="x must have the shape of grad"):
        ops.rescale_backward(x, x[:2], x, 1e-6)
    with pytest.raises(ValueError, match="reference must have the shape of grad"):
        ops.rescale_backward(x, x, x[:2], 1e-6)
    with pytest.raises(TypeError, match="x must have the dtype of grad"):
        ops.rescale_backward(x, x.half(), x, 1e-6)
    with pytest.raises(TypeError, match="reference must have the dtype of grad"):
        ops.rescale_backward(x, x, x.double(), 1e-6)
    with pytest.raises(ValueError, match="eps must be > 0"):
        ops.rescale_backward(x, x, x, 0.0)
    with pytest.raises(ValueError, match="eps must be finite"):
        ops.rescale_backward(x, x, x, float("nan"))
    with pytest.raises(ValueError, match="negative_slope must be finite"):
        ops.rescale_backward(x, x, x, 1e-6, float("inf"))
    with pytest.raises(ValueError, match="eps must be > 0"):
        ops.rescale_backward(x, x, x, 1e-50)  # rounds to 0 in float32
    for backend, device in [("reference", "cpu"), *kernel_backends()]:
        empty = torch.empty(0, 3, device=device)
        assert ops.rescale_backward(empty, empty, empty, 1e-6, backend=backend).shape == (0, 3)


def test_rescale_backward_native_checks_its_arguments() -> None:
    """The C++ op validates too (it is callable as torch.ops.fastxai.rescale_backward)."""
    from fastxai import _native

    if not _native.available()[0]:
        pytest.skip("native backend not built")
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="reference must have shape"):
        _native.rescale_backward(x, x, x[:3], 1e-6)
    with pytest.raises(ValueError, match="eps must be > 0"):
        _native.rescale_backward(x, x, x, 0.0)
    with pytest.raises(TypeError, match="x must have the dtype of grad"):
        _native.rescale_backward(x, x.half(), x, 1e-6)


class _ReluNet(torch.nn.Module):
    """relu as a module, in place, functional and leaky: every form DeepLIFT's fused path takes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.act = torch.nn.ReLU(inplace=True)
        self.linear = torch.nn.Linear(4 * 25, 6)
        self.out = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.nn.functional.leaky_relu(self.act(self.conv(x)) - 0.1, 0.2)
        return self.out(self.linear(h.flatten(1)).relu_())


@pytest.mark.parametrize(("backend", "device"), backend_params(include_reference=True))
def test_deeplift_relu_path_on_every_backend(backend: str, device: str) -> None:
    """DeepLIFT through rescale_backward: the same attributions on every backend, summing to the
    score difference (float32)."""
    import fastxai

    model = _ReluNet().to(device)
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(3, 2, 5, 5, generator=generator).to(device)
    baseline = torch.randn(3, 2, 5, 5, generator=generator).to(device)
    x[0, 0, 0, 0] = baseline[0, 0, 0, 0]  # one exact tie
    with fastxai.use_backend("reference"):
        want = fastxai.deeplift(model, x, 1, baseline)
    with fastxai.use_backend(backend):
        got, delta = fastxai.deeplift(model, x, 1, baseline, return_convergence_delta=True)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert delta.abs().max() < 1e-5


@pytest.mark.parametrize("leaky", [False, True])
def test_deeplift_in_place_relu_on_a_view_equals_out_of_place(leaky: bool) -> None:
    """An in-place relu / leaky_relu on a slice of an activation (the fused path overwrites the
    view and keeps a copy for the backward) gives the attributions of the out-of-place form."""
    import fastxai

    torch.manual_seed(1)
    first, second = torch.nn.Linear(5, 6), torch.nn.Linear(6, 2)

    def act(t: torch.Tensor, inplace: bool) -> torch.Tensor:
        if leaky:
            return torch.nn.functional.leaky_relu(t, 0.3, inplace=inplace)
        return torch.nn.functional.relu(t, inplace=inplace)

    def in_place(x: torch.Tensor) -> torch.Tensor:
        h = first(x)
        act(h[:, :4], True)
        return second(h)

    def out_of_place(x: torch.Tensor) -> torch.Tensor:
        h = first(x)
        return second(torch.cat([act(h[:, :4], False), h[:, 4:]], 1))

    x, baseline = torch.randn(3, 5), torch.randn(3, 5)
    got, delta = fastxai.deeplift(in_place, x, 0, baseline, return_convergence_delta=True)
    torch.testing.assert_close(got, fastxai.deeplift(out_of_place, x, 0, baseline))
    assert delta.abs().max() < 1e-5
