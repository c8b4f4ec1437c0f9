"""The data set runner never mixes runs: every shard is bound to its run (model, data, dtype,
backend, method, arguments, target, batch and shard sizes), one run at a time holds a folder,
and ``done.json`` is read whole. Each test here reproduces a case of issue 21 that used to give
silently wrong results."""

from __future__ import annotations

import json
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
from fastxai.digits import digits_cnn


def _data(count: int = 23, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(count, 1, 8, 8, generator=generator), torch.randint(
        0, 10, (count,), generator=generator
    )


def _files(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if not path.name.startswith(".")}


OPTIONS = dict(batch_size=4, shard_size=8, progress=False)


def test_another_model_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    model_a, model_b = small_cnn(seed=1).eval(), small_cnn(seed=2).eval()
    x, _ = _data()
    fx.attribute_dataset(model_a, x, "saliency", tmp_path, **OPTIONS)
    with pytest.raises(ValueError, match=r"(?s)model.*parameters.*resume=False"):
        fx.attribute_dataset(model_b, x, "saliency", tmp_path, **OPTIONS)
    # another architecture (of the same class, nn.Sequential)
    with pytest.raises(ValueError, match=r"model\.parameters_sha256"):
        fx.attribute_dataset(digits_cnn().eval(), x, "saliency", tmp_path, **OPTIONS)
    np.testing.assert_array_equal(
        fx.load_attributions(tmp_path)["attributions"], fx.saliency(model_a, x, target=model_a(x).argmax(1))
    )
    # resume=False starts afresh: model B's attributions, none of A's
    summary = fx.attribute_dataset(model_b, x, "saliency", tmp_path, resume=False, **OPTIONS)
    assert summary["shards_written"] == 3 and summary["shards_skipped"] == 0
    np.testing.assert_array_equal(
        fx.load_attributions(tmp_path)["attributions"], fx.saliency(model_b, x, target=model_b(x).argmax(1))
    )


def test_a_partly_finished_run_is_not_completed_by_another_model(tmp_path: Path) -> None:
    model_a, model_b = small_cnn(seed=1).eval(), small_cnn(seed=2).eval()
    x, _ = _data()
    handle = fail_at_call(model_a, 5)  # two calls per batch, two batches per shard: in shard 2
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="crash"):
        fx.attribute_dataset(model_a, x, "saliency", out, **OPTIONS)
    handle.remove()
    assert len(list(out.glob("shard-*.done.json"))) == 1
    with pytest.raises(ValueError, match="parameters"):
        fx.attribute_dataset(model_b, x, "saliency", out, **OPTIONS)
    assert not (out / "index.json").exists()
    summary = fx.attribute_dataset(model_a, x, "saliency", out, **OPTIONS)
    assert summary["shards_skipped"] == 1 and summary["shards_written"] == 2
    fx.attribute_dataset(model_a, x, "saliency", tmp_path / "whole", **OPTIONS)
    assert _files(out) == _files(tmp_path / "whole")


def test_other_data_dtype_or_backend_is_refused(tmp_path: Path) -> None:
    model = small_cnn(seed=1).eval()
    x, _ = _data()
    fx.attribute_dataset(model, x, "saliency", tmp_path, **OPTIONS)
    changed = x.clone()
    changed[20, 0, 3, 3] += 1.0  # one value in the last shard
    reference = _files(tmp_path)
    with pytest.raises(ValueError, match=r"other inputs: shard 2 \(items 16:23\)"):
        fx.attribute_dataset(model, changed, "saliency", tmp_path, **OPTIONS)
    assert _files(tmp_path) == reference  # a refused run changes nothing
    with pytest.raises(ValueError, match="dtype"):
        fx.attribute_dataset(model.double(), x.double(), "saliency", tmp_path, **OPTIONS)
    model.float()
    with fx.use_backend("reference"), pytest.raises(ValueError, match="backend"):
        fx.attribute_dataset(model, x, "saliency", tmp_path, **OPTIONS)
    with pytest.raises(ValueError, match="batch_size"):
        fx.attribute_dataset(model, x, "saliency", tmp_path, batch_size=8, shard_size=8, progress=False)
    with pytest.raises(ValueError, match="target"):
        fx.attribute_dataset(model, _data(), "saliency", tmp_path, target="label", **OPTIONS)
    # the same run again resumes: nothing to redo
    assert fx.attribute_dataset(model, x, "saliency", tmp_path, **OPTIONS)["shards_skipped"] == 3


def test_deleting_run_json_does_not_relabel_old_shards(tmp_path: Path) -> None:
    model = small_cnn(seed=1).eval()
    x, _ = _data()
    fx.attribute_dataset(model, x, "integrated_gradients", tmp_path, method_kwargs={"n_steps": 4}, **OPTIONS)
    (tmp_path / "run.json").unlink()
    (tmp_path / "index.json").unlink()
    with pytest.raises(ValueError, match=r"(?s)shard.*n_steps.*4.*16"):
        fx.attribute_dataset(
            model, x, "integrated_gradients", tmp_path, method_kwargs={"n_steps": 16}, **OPTIONS
        )


@pytest.mark.parametrize(
    "field",
    ["shard", "start", "stop", "run", "inputs_sha256", "files", "files.labels", "files.targets.shape"],
)
def test_a_done_json_missing_a_field_is_redone(tmp_path: Path, field: str) -> None:
    model = small_cnn(seed=1).eval()
    x, y = _data()
    fx.attribute_dataset(model, (x, y), "saliency", tmp_path, **OPTIONS)
    reference = _files(tmp_path)
    marker = tmp_path / "shard-00001.done.json"
    record = json.loads(marker.read_text())
    *parents, last = field.split(".")
    entry = record
    for key in parents:
        entry = entry[key]
    del entry[last]
    marker.write_text(json.dumps(record))
    (tmp_path / "index.json").unlink()
    summary = fx.attribute_dataset(model, (x, y), "saliency", tmp_path, **OPTIONS)
    assert summary["shards_written"] == 1 and summary["shards_skipped"] == 2
    assert _files(tmp_path) == reference
    loaded = fx.load_attributions(tmp_path)
    np.testing.assert_array_equal(loaded["labels"], y.numpy())


def test_a_misaligned_index_is_refused_by_load(tmp_path: Path) -> None:
    model = small_cnn(seed=1).eval()
    x, y = _data()
    fx.attribute_dataset(model, (x, y), "saliency", tmp_path, **OPTIONS)
    index = json.loads((tmp_path / "index.json").read_text())
    del index["shards"][1]["files"]["labels"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="labels"):
        fx.load_attributions(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [({"n_stepz": 4}, TypeError, "n_stepz"), ({"n_steps": 0}, ValueError, "n_steps")],
)
def test_a_bad_argument_does_not_poison_the_folder(
    tmp_path: Path, kwargs: dict, error: type, message: str
) -> None:
    model = small_cnn(seed=1).eval()
    x, _ = _data()
    with pytest.raises(error, match=message):
        fx.attribute_dataset(model, x, "integrated_gradients", tmp_path, method_kwargs=kwargs, **OPTIONS)
    summary = fx.attribute_dataset(
        model, x, "integrated_gradients", tmp_path, method_kwargs={"n_steps": 4}, **OPTIONS
    )
    assert summary["shards_written"] == 3
    assert json.loads((tmp_path / "run.json").read_text())["method_kwargs"] == {"n_steps": 4}


def test_stale_temporaries_are_cleaned_on_resume(tmp_path: Path) -> None:
    model = small_cnn(seed=1).eval()
    x, _ = _data()
    fx.attribute_dataset(model, x, "saliency", tmp_path, **OPTIONS)
    stale = [tmp_path / ".shard-00001.attributions.npy.abc123.tmp", tmp_path / ".run.json.xyz.tmp"]
    for path in stale:
        path.write_bytes(b"half written")
    keep = tmp_path / ".notes.tmp"  # not a name the runner writes
    keep.write_text("mine")
    fx.attribute_dataset(model, x, "saliency", tmp_path, **OPTIONS)
    assert not any(path.exists() for path in stale) and keep.exists()


_CONCURRENT = textwrap.dedent(
    """
    import sys, time, torch
    sys.path.insert(0, sys.argv[3])
    import fastxai as fx
    from models import small_cnn
    model = small_cnn(seed=int(sys.argv[2])).eval()
    model.register_forward_pre_hook(lambda module, args: time.sleep(0.05))  # a slow model
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    start = float(sys.argv[4])
    while time.time() < start:  # both processes start the run at the same moment
        time.sleep(0.001)
    fx.attribute_dataset(model, x, "saliency", sys.argv[1], batch_size=4, shard_size=8, progress=False)
    """
)


def test_two_runs_started_at_once_on_one_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    start = time.time() + 6.0  # both interpreters have imported fastxai by then
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, str(out), str(seed), str(Path(__file__).parent), str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    results = [(process.wait(120), process.stderr.read()) for process in processes]
    for process in processes:
        process.stdout.close()
        process.stderr.close()
    failed = [seed for seed, (code, _) in zip((1, 2), results, strict=True) if code != 0]
    assert len(failed) == 1, results
    message = results[(1, 2).index(failed[0])][1].strip().splitlines()[-1]
    assert "another run holds" in message and str(out) in message, message
    winner = small_cnn(seed=3 - failed[0]).eval()
    x = torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    loaded = fx.load_attributions(out)  # one model's shards only, and all of them
    np.testing.assert_array_equal(loaded["attributions"], fx.saliency(winner, x, target=winner(x).argmax(1)))
    # the lock dies with its holder: the folder is free again
    assert fx.attribute_dataset(winner, x, "saliency", out, **OPTIONS)["shards_skipped"] == 5


def test_the_lock_is_exclusive_within_one_process_and_released_on_error(tmp_path: Path) -> None:
    from fastxai import _run_store

    with _run_store.folder_lock(tmp_path):
        with pytest.raises(RuntimeError, match="another run holds"):
            fx.attribute_dataset(small_cnn(seed=1).eval(), _data()[0], "saliency", tmp_path, **OPTIONS)
    model = small_cnn(seed=1).eval()
    handle = fail_at_call(model, 1)
    with pytest.raises(RuntimeError, match="crash"):
        fx.attribute_dataset(model, _data()[0], "saliency", tmp_path, **OPTIONS)
    handle.remove()
    assert fx.attribute_dataset(model, _data()[0], "saliency", tmp_path, **OPTIONS)["shards_written"] == 3


def test_a_plain_callable_cannot_be_verified_and_is_not_resumed(tmp_path: Path) -> None:
    model = small_cnn(seed=1).eval()
    x, _ = _data()

    def opaque(inputs: torch.Tensor, _forward=model.forward) -> torch.Tensor:
        return _forward(inputs)

    fx.attribute_dataset(opaque, x, "saliency", tmp_path, **OPTIONS)
    with pytest.raises(ValueError, match="cannot be fingerprinted"):
        fx.attribute_dataset(opaque, x, "saliency", tmp_path, **OPTIONS)
    # a callable that closes over a module is fingerprinted through it
    wrapped = lambda inputs: model(inputs)  # noqa: E731
    fx.attribute_dataset(wrapped, x, "saliency", tmp_path / "wrapped", **OPTIONS)
    assert (
        fx.attribute_dataset(wrapped, x, "saliency", tmp_path / "wrapped", **OPTIONS)["shards_skipped"] == 3
    )


def test_a_finished_run_of_the_first_format_still_loads(tmp_path: Path) -> None:
    model = small_cnn(seed=1).eval()
    x, y = _data()
    fx.attribute_dataset(model, (x, y), "saliency", tmp_path, **OPTIONS)
    expected = fx.load_attributions(tmp_path)
    index = json.loads((tmp_path / "index.json").read_text())
    index["run"] = {"format": 1, "method": "saliency", "items": 23}  # as format 1 wrote it (in part)
    for record in index["shards"]:
        del record["run"], record["inputs_sha256"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    loaded = fx.load_attributions(tmp_path)
    assert loaded.keys() == expected.keys()
    for field, array in loaded.items():
        np.testing.assert_array_equal(array, expected[field])
