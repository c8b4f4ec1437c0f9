"""The runner's identity rule on real architectures (issue 21 asks for the runner's cases against
two real models and a real concurrent start): a torchvision ResNet-18 and a timm ResNet-18 of
the same shape (random weights, nothing downloaded), and two torchvision ResNet-18s that differ
only in their weights. tests/test_runner_identity.py covers every case on small models."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import real_models
import torch
from models import fail_at_call

import fastxai as fx

OPTIONS = dict(batch_size=3, shard_size=6, progress=False)


def _resnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return real_models.torchvision().models.resnet18(num_classes=10).eval()


def _timm_resnet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return real_models.timm().create_model("resnet18", pretrained=False, num_classes=10).eval()


def _images(count: int = 14) -> torch.Tensor:
    return torch.rand(count, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _assert_maps_of(model: torch.nn.Module, x: torch.Tensor, loaded: np.ndarray) -> None:
    """``loaded`` is ``model``'s saliency of x (of the predicted class), batch by batch as the run
    computes it; tolerance for the convolution's batch-dependent last bits, far below the
    difference between two models' maps."""
    with torch.no_grad():
        target = torch.cat([model(x[i : i + 3]).argmax(1) for i in range(0, len(x), 3)])
    expected = torch.cat(
        [fx.saliency(model, x[i : i + 3], target=target[i : i + 3]) for i in range(0, len(x), 3)]
    )
    np.testing.assert_allclose(loaded, expected.numpy(), rtol=1e-4, atol=1e-6 * float(expected.abs().max()))


def test_a_finished_run_is_not_reported_complete_for_another_real_model(tmp_path: Path) -> None:
    """Before: the second call said '1 already complete' and returned the first model's maps."""
    x = _images()
    first, same_class, other_library = _resnet(1), _resnet(2), _timm_resnet(1)
    fx.attribute_dataset(first, x, "saliency", tmp_path, **OPTIONS)
    for model in (same_class, other_library):
        with pytest.raises(ValueError, match=r"(?s)model.*resume=False"):
            fx.attribute_dataset(model, x, "saliency", tmp_path, **OPTIONS)
    _assert_maps_of(first, x, fx.load_attributions(tmp_path)["attributions"])
    summary = fx.attribute_dataset(other_library, x, "saliency", tmp_path, resume=False, **OPTIONS)
    assert summary["shards_written"] == 3 and summary["shards_skipped"] == 0
    _assert_maps_of(other_library, x, fx.load_attributions(tmp_path)["attributions"])


def test_a_partly_finished_run_is_not_completed_by_another_real_model(tmp_path: Path) -> None:
    """Before: the rows of two models under one index."""
    x = _images()
    first, second = _resnet(1), _timm_resnet(1)
    handle = fail_at_call(first, 5)  # two calls per batch, two batches per shard: in shard 2
    with pytest.raises(RuntimeError, match="crash"):
        fx.attribute_dataset(first, x, "saliency", tmp_path, **OPTIONS)
    handle.remove()
    assert len(list(tmp_path.glob("shard-*.done.json"))) == 1
    with pytest.raises(ValueError, match="model"):
        fx.attribute_dataset(second, x, "saliency", tmp_path, **OPTIONS)
    summary = fx.attribute_dataset(first, x, "saliency", tmp_path, **OPTIONS)
    assert summary["shards_skipped"] == 1 and summary["shards_written"] == 2
    _assert_maps_of(first, x, fx.load_attributions(tmp_path)["attributions"])


_CONCURRENT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, sys.argv[3])
    import fastxai as fx
    import real_models
    torch.manual_seed(1)
    if sys.argv[2] == "torchvision":
        model = real_models.torchvision().models.resnet18(num_classes=10).eval()
    else:
        model = real_models.timm().create_model("resnet18", pretrained=False, num_classes=10).eval()
    model.register_forward_pre_hook(lambda module, args: time.sleep(0.05))  # a slow model
    x = torch.rand(14, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    start = float(sys.argv[4])
    print("late" if time.time() > start else "waited", flush=True)
    while time.time() < start:  # both processes start the run at the same moment
        time.sleep(0.001)
    fx.attribute_dataset(model, x, "saliency", sys.argv[1], batch_size=3, shard_size=6, progress=False)
    """
)


def test_two_real_models_started_at_once_on_one_folder(tmp_path: Path) -> None:
    """Before: both passed the check and wrote shards of both models, and
    ``load_attributions(verify=True)`` accepted the mixture."""
    real_models.timm()  # skip here, not in the subprocesses, when a package is missing
    out = tmp_path / "out"
    start = time.time() + 20.0  # both interpreters have imported torchvision and timm by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, str(out), library, str(Path(__file__).parent), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for library in ("torchvision", "timm")
    ]
    results = [(process.wait(300), process.stderr.read()) for process in processes]
    arrivals = [process.stdout.read().strip() for process in processes]
    for process in processes:
        process.stdout.close()
        process.stderr.close()
    assert arrivals == ["waited", "waited"], (arrivals, results)  # else the start was not concurrent
    failed = [code != 0 for code, _ in results]
    assert sum(failed) == 1, results
    message = results[failed.index(True)][1].strip().splitlines()[-1]
    assert "another run holds" in message and str(out) in message, message
    winner = (_resnet if failed[1] else _timm_resnet)(1)
    loaded = fx.load_attributions(out, verify=True)  # one model's shards only, and all of them
    _assert_maps_of(winner, _images(), loaded["attributions"])
    assert fx.attribute_dataset(winner, _images(), "saliency", out, **OPTIONS)["shards_skipped"] == 3
