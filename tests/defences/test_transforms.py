"""The input transforms against independent oracles: nearest-level search for bit depth, a
brute-force (and scipy's) median, the DCT's definition and orthonormality, PIL's JPEG codec,
and torch's own resize and pad for the randomised resizing."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional

import fastxai as fx
from fastxai.defences.jpeg import block_dct, block_idct, dct_matrix, quantisation_table
from fastxai.defences.randomisation import draw_placements, resize_pad

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("bits", [1, 2, 3, 5])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-1.0, 2.0)])
def test_bit_depth_is_the_nearest_level(bits: int, bounds: tuple[float, float]) -> None:
    low, high = bounds
    x = torch.rand(3, 2, 5, 4, generator=torch.Generator().manual_seed(bits), dtype=torch.float64)
    x = x * (high - low) + low
    levels = torch.linspace(low, high, 2**bits, dtype=torch.float64)  # the 2^b representable values
    nearest = levels[(x.unsqueeze(-1) - levels).abs().argmin(dim=-1)]
    out = fx.reduce_bit_depth(x, bits, bounds=bounds)
    torch.testing.assert_close(out, nearest, rtol=0, atol=1e-12)
    assert out.unique().numel() <= 2**bits


def _brute_median(x: torch.Tensor, size: int) -> torch.Tensor:
    """Half-sample symmetric extension built index by index, then sort every window."""

    def reflect(i: int, n: int) -> int:
        while not 0 <= i < n:
            i = -i - 1 if i < 0 else 2 * n - 1 - i
        return i

    before, after = size // 2, size - 1 - size // 2
    h, w = x.shape[-2:]
    rows = torch.tensor([reflect(i, h) for i in range(-before, h + after)])
    cols = torch.tensor([reflect(j, w) for j in range(-before, w + after)])
    padded = x[:, :, rows][:, :, :, cols]
    windows = padded.unfold(2, size, 1).unfold(3, size, 1).reshape(*x.shape, size * size)
    return windows.sort(dim=-1).values[..., size * size // 2]


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_median_matches_brute_force_and_scipy(size: int) -> None:
    x = torch.rand(2, 3, 7, 5, generator=torch.Generator().manual_seed(size))
    out = fx.median_smooth(x, size)
    assert torch.equal(out, _brute_median(x, size))
    ndimage = pytest.importorskip("scipy.ndimage", reason="scipy gives the authors' median filter")
    expected = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="reflect")
    assert torch.equal(out, torch.from_numpy(expected))


def test_median_gradient_reaches_the_chosen_pixel() -> None:
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    out = fx.median_smooth(x, 3)
    (grad,) = torch.autograd.grad(out[0, 0, 1, 2], x)
    chosen = (x.detach() == out[0, 0, 1, 2].detach()).float()
    assert torch.equal(grad, chosen)


def test_dct_is_orthonormal_and_the_textbook_sum() -> None:
    d = dct_matrix()
    torch.testing.assert_close(d @ d.T, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-12)
    block = torch.rand(8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = torch.zeros(8, 8, dtype=torch.float64)
    for u, v in itertools.product(range(8), range(8)):
        cu, cv = (math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8) for k in (u, v))
        expected[u, v] = (
            cu
            * cv
            * sum(
                float(block[m, n])
                * math.cos((2 * m + 1) * u * math.pi / 16)
                * math.cos((2 * n + 1) * v * math.pi / 16)
                for m in range(8)
                for n in range(8)
            )
        )
    torch.testing.assert_close(block_dct(block), expected, rtol=0, atol=1e-12)
    blocks = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(block_idct(block_dct(blocks)), blocks, rtol=0, atol=1e-6)


def test_quantisation_tables() -> None:
    # quality 50 is Annex K's table itself, 100 quantises with step 1; 25 doubles (scale 200%)
    assert quantisation_table(50)[0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]
    assert bool((quantisation_table(100) == 1).all())
    torch.testing.assert_close(quantisation_table(25), (quantisation_table(50) * 2).clamp(max=255))
    assert quantisation_table(50, chroma=True)[0, 0] == 17


def _smooth_image(channels: int, height: int, width: int, seed: int) -> torch.Tensor:
    x = torch.rand(1, channels, height + 2, width + 2, generator=torch.Generator().manual_seed(seed))
    return functional.avg_pool2d(x, 3, 1)


def test_jpeg_quality_100_is_near_identity() -> None:
    # 8-bit levels in, so only the step-1 quantisation of the coefficients and the final rounding
    # remain: each pixel moves by at most 0.5 * (sum_k |D_ki|)^2 <= 0.5 * 8 levels, plus rounding
    x = torch.round(_smooth_image(1, 13, 18, 0) * 255) / 255
    error = (fx.jpeg_compress(x, 100) - x).abs() * 255
    d = dct_matrix()
    bound = 0.5 * float(d.abs().sum(0).max()) ** 2
    assert float(error.max()) <= math.floor(bound + 0.5) + 1e-4
    assert float(error.mean()) < 0.5
    coarse = (fx.jpeg_compress(x, 10) - x).abs().mean()
    assert float(coarse) > float(error.mean()) / 255 * 4  # quality matters


def test_jpeg_keeps_a_block_whose_coefficients_are_on_the_grid() -> None:
    # a constant block c has one coefficient 8 (c - 128); at quality 50 (step 16) it survives
    # exactly when 8 (c - 128) is a multiple of 16, i.e. c even
    for level, exact in ((130, True), (131, False)):
        x = torch.full((1, 1, 8, 8), level / 255)
        out = fx.jpeg_compress(x, 50)
        assert torch.equal(out, x) == exact


@pytest.mark.parametrize("quality", [10, 50, 75, 95])
def test_jpeg_matches_pil_on_greyscale(quality: int) -> None:
    image_module = pytest.importorskip("PIL.Image", reason="PIL's libjpeg is the peer codec")
    numpy = pytest.importorskip("numpy")
    x = _smooth_image(1, 32, 32, 0)
    levels = torch.round(x[0, 0] * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    image_module.fromarray(levels, "L").save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    theirs = torch.from_numpy(numpy.array(image_module.open(buffer))).float()
    ours = fx.jpeg_compress(x, quality)[0, 0] * 255
    # libjpeg's integer DCT lands a coefficient near a rounding boundary on the other side now
    # and then, which moves its whole 8x8 block by a few levels: most blocks agree to a level
    difference = (ours - theirs).abs()
    per_block = difference.view(4, 8, 4, 8).amax(dim=(1, 3))
    assert float((per_block <= 1).float().mean()) >= 0.75, per_block
    assert float(difference.mean()) < 0.5, float(difference.mean())


def test_jpeg_rgb_close_to_pil_without_subsampling() -> None:
    image_module = pytest.importorskip("PIL.Image", reason="PIL's libjpeg is the peer codec")
    numpy = pytest.importorskip("numpy")
    x = _smooth_image(3, 16, 16, 7)
    levels = torch.round(x[0].permute(1, 2, 0) * 255).to(torch.uint8).numpy()
    buffer = io.BytesIO()
    image_module.fromarray(levels, "RGB").save(buffer, "JPEG", quality=80, subsampling=0)
    buffer.seek(0)
    theirs = torch.from_numpy(numpy.array(image_module.open(buffer))).float().permute(2, 0, 1)
    difference = (fx.jpeg_compress(x, 80)[0] * 255 - theirs).abs()
    assert float(difference.mean()) < 1.5, float(difference.mean())


def test_resize_pad_matches_interpolate_and_pad() -> None:
    x = torch.rand(40, 2, 6, 5, generator=torch.Generator().manual_seed(0))
    size = 11
    growth, top, left = draw_placements(40, 6, 5, size, torch.Generator().manual_seed(3))
    out = resize_pad(x, growth, top, left, size, fill=-0.5)
    for b in range(40):
        e, t, lft = int(growth[b]), int(top[b]), int(left[b])
        resized = functional.interpolate(x[b : b + 1], size=(6 + e, 5 + e), mode="nearest")
        padding = (lft, size - 5 - e - lft, t, size - 6 - e - t)
        assert min(padding) >= 0
        expected = functional.pad(resized, padding, value=-0.5)
        assert torch.equal(out[b : b + 1], expected), b


def test_random_resize_pad_draws_every_placement_and_is_reproducible() -> None:
    growth, top, left = draw_placements(4000, 4, 4, 6, torch.Generator().manual_seed(0))
    placements = {(int(e), int(t), int(lft)) for e, t, lft in zip(growth, top, left, strict=True)}
    every = {(e, t, lft) for e in range(3) for t in range(3 - e) for lft in range(3 - e)}
    assert placements == every
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = torch.rand(5, 1, 4, 4)
    first = fx.RandomResizePad(model, 6, seed=4)
    second = fx.RandomResizePad(model, 6, seed=4)
    outputs = [first.transform(x) for _ in range(3)]
    assert all(torch.equal(a, second.transform(x)) for a in outputs)
    first.reseed()
    assert torch.equal(first.transform(x), outputs[0])
    assert not torch.equal(outputs[0], outputs[1])
    seeded = fx.random_resize_pad(x, 6, generator=torch.Generator().manual_seed(4))
    assert torch.equal(seeded, outputs[0])


def test_straight_through_is_the_identity_backward() -> None:
    x = torch.rand(3, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(3, 7, dtype=torch.float64)
    rounded = torch.round(x * 3) / 3
    out = fx.straight_through(x, rounded.detach())
    assert torch.equal(out, rounded)  # forward: the transform bit for bit
    (grad,) = torch.autograd.grad((out * weight).sum(), x)
    assert torch.equal(grad, weight)
    with pytest.raises(ValueError, match="keeps the shape"):
        fx.straight_through(x, rounded[:2])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_transforms_on_cuda_match_the_cpu() -> None:
    x = torch.rand(4, 3, 9, 10, generator=torch.Generator().manual_seed(0))
    on = x.cuda()
    assert torch.equal(fx.reduce_bit_depth(on, 3).cpu(), fx.reduce_bit_depth(x, 3))
    assert torch.equal(fx.median_smooth(on, 3).cpu(), fx.median_smooth(x, 3))
    torch.testing.assert_close(
        fx.jpeg_compress(on, 60).cpu(), fx.jpeg_compress(x, 60), rtol=0, atol=1.01 / 255
    )
    # the draws come from a CPU generator wherever the inputs are: the same placements
    first, second = (
        fx.RandomResizePad(nn.Identity(), 12, seed=1),
        fx.RandomResizePad(nn.Identity(), 12, seed=1),
    )
    assert torch.equal(first.transform(on).cpu(), second.transform(x))
