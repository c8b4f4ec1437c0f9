"""The data set runner: same results as one call, crash safety, resume, ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from models import fail_at_call, small_cnn

import fastxai as fx


def _data(count: int = 23) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(count, 1, 8, 8, generator=generator), torch.randint(
        0, 10, (count,), generator=generator
    )


def _files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if not path.name.startswith(".")}


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        ("saliency", {}),
        ("input_x_gradient", {}),
        ("smoothgrad", {"seed": 3, "n_samples": 4}),
        ("integrated_gradients", {"n_steps": 5}),
        ("guided_backprop", {}),
        ("lrp", {"composite": "epsilon_plus_flat"}),
        ("occlusion", {"sliding_window_shapes": (1, 3, 3), "strides": (1, 2, 2)}),
        ("grad_cam", {"layer": "4", "upsample": True}),
        ("score_cam", {"layer": "4"}),
    ],
)
def test_results_equal_one_call_over_the_whole_data(tmp_path: Path, method: str, kwargs: dict) -> None:
    model = small_cnn(seed=1).eval()
    x, y = _data()
    summary = fx.attribute_dataset(
        model, (x, y), method, tmp_path, method_kwargs=kwargs, batch_size=4, shard_size=10, target="label"
    )
    assert summary["items"] == 23 and summary["shards_written"] == 3
    loaded = fx.load_attributions(tmp_path)
    expected = getattr(fx, method)(model, x, target=y, **kwargs).detach()
    np.testing.assert_allclose(loaded["attributions"], expected.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded["targets"], y.numpy())
    np.testing.assert_array_equal(loaded["labels"], y.numpy())
    np.testing.assert_array_equal(loaded["predictions"], model(x).argmax(1).numpy())
    if method == "integrated_gradients":
        assert loaded["deltas"].shape == (23,)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["run"]["method"] == method and index["versions"]["torch"] == torch.__version__
    first = index["shards"][0]["files"]["attributions"]
    assert np.load(tmp_path / first["file"]).shape == (10, *expected.shape[1:])  # plain numpy reads it


def test_interrupted_run_resumes_to_identical_files(tmp_path: Path) -> None:
    model = small_cnn(seed=2).eval()
    x, y = _data()
    options = dict(method_kwargs={"seed": 1, "n_samples": 3}, batch_size=4, shard_size=8)
    fx.attribute_dataset(model, (x, y), "smoothgrad", tmp_path / "whole", **options)
    # two model calls per batch of 4 (the predictions, then the 3 noisy copies), 4 per shard of 8
    for fail_at in (2, 6, 11):  # during the first, second and third shard
        out = tmp_path / f"crash{fail_at}"
        handle = fail_at_call(model, fail_at)
        with pytest.raises(RuntimeError, match="crash"):
            fx.attribute_dataset(model, (x, y), "smoothgrad", out, **options)
        handle.remove()
        assert not (out / "index.json").exists()
        summary = fx.attribute_dataset(model, (x, y), "smoothgrad", out, **options)
        assert summary["shards_written"] + summary["shards_skipped"] == 3
        assert _files(out) == _files(tmp_path / "whole")


def test_a_killed_process_resumes_to_identical_files(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import fastxai as fx
        from models import small_cnn
        model = small_cnn(seed=2).eval()
        if sys.argv[2] == "slow":  # a hook, so that the model stays the same one to the runner
            model.register_forward_pre_hook(lambda module, args: time.sleep(0.02))
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(40, 1, 8, 8, generator=generator)
        fx.attribute_dataset(model, x, "integrated_gradients", sys.argv[1], method_kwargs={{"n_steps": 4}},
                             batch_size=4, shard_size=8, progress=False)
        """
    )
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run([sys.executable, "-c", script, str(whole), "fast"], check=True)
    process = subprocess.Popen([sys.executable, "-c", script, str(killed), "slow"])
    deadline = time.time() + 60
    while time.time() < deadline and not list(killed.glob("shard-00001.done.json")):
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (killed / "index.json").exists()
    subprocess.run([sys.executable, "-c", script, str(killed), "fast"], check=True)
    assert _files(killed) == _files(whole)


def test_a_corrupted_shard_is_redone(tmp_path: Path) -> None:
    model = small_cnn(seed=2).eval()
    x, _ = _data()
    fx.attribute_dataset(model, x, "saliency", tmp_path, batch_size=8, shard_size=8)
    reference = _files(tmp_path)
    victim = tmp_path / "shard-00001.attributions.npy"
    victim.write_bytes(victim.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="checksum"):
        fx.load_attributions(tmp_path)
    summary = fx.attribute_dataset(model, x, "saliency", tmp_path, batch_size=8, shard_size=8)
    assert summary["shards_written"] == 1 and summary["shards_skipped"] == 2
    assert _files(tmp_path) == reference


def test_refuses_to_mix_runs(tmp_path: Path) -> None:
    model = small_cnn(seed=2).eval()
    x, _ = _data()
    fx.attribute_dataset(model, x, "integrated_gradients", tmp_path, method_kwargs={"n_steps": 4})
    with pytest.raises(ValueError, match=r"another run .*n_steps: 4 -> 8"):
        fx.attribute_dataset(model, x, "integrated_gradients", tmp_path, method_kwargs={"n_steps": 8})


def test_datasets_and_loaders(tmp_path: Path) -> None:
    model = small_cnn(seed=2).eval()
    x, y = _data()
    dataset = torch.utils.data.TensorDataset(x, y)
    loader = torch.utils.data.DataLoader(dataset, batch_size=5)
    fx.attribute_dataset(model, (x, y), "saliency", tmp_path / "tensors", target="label")
    fx.attribute_dataset(model, loader, "saliency", tmp_path / "loader", target="label")
    np.testing.assert_array_equal(
        fx.load_attributions(tmp_path / "tensors")["attributions"],
        fx.load_attributions(tmp_path / "loader")["attributions"],
    )


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (dict(method="kernel_shap"), ValueError, "method must be one of"),
        (dict(method="smoothgrad"), ValueError, "needs method_kwargs"),
        (dict(method_kwargs={"target": 1}), ValueError, "must not set 'target'"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(target="true"), ValueError, "target must be"),
        (dict(data=[1, 2]), TypeError, "inputs must be a floating-point tensor"),
        (dict(data=object()), TypeError, "data must be"),
        (dict(target="label"), ValueError, "needs data with labels"),
    ],
)
def test_bad_arguments(tmp_path: Path, change: dict, error: type, message: str) -> None:
    model = small_cnn(seed=2).eval()
    arguments = dict(data=_data()[0], method="saliency") | change
    with pytest.raises(error, match=message):
        fx.attribute_dataset(model, arguments.pop("data"), out=tmp_path, **arguments)
    assert not list(tmp_path.glob("shard-*"))


def _rank_main(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = small_cnn(seed=2).eval()
        x, y = _data()
        fx.attribute_dataset(
            model,
            (x, y),
            "smoothgrad",
            out,
            method_kwargs={"seed": 5, "n_samples": 3},
            batch_size=4,
            shard_size=4,
            progress=False,
        )
    finally:
        torch.distributed.destroy_process_group()


def test_two_gloo_ranks_write_the_same_files_as_one(tmp_path: Path) -> None:
    import socket

    model = small_cnn(seed=2).eval()
    x, y = _data()
    fx.attribute_dataset(
        model,
        (x, y),
        "smoothgrad",
        tmp_path / "one",
        method_kwargs={"seed": 5, "n_samples": 3},
        batch_size=4,
        shard_size=4,
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_rank_main, args=(2, str(tmp_path / "two"), port), nprocs=2, join=True)
    assert _files(tmp_path / "two") == _files(tmp_path / "one")
