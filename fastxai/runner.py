"""Attribution over whole data sets: sharded, crash-safe, resumable, and split across
``torch.distributed`` ranks.

On-disk format (``out/``), chosen so that anyone can read it with numpy alone:

- ``shard-00000.attributions.npy``, ``shard-00000.targets.npy``, ... : one ``.npy`` file per
  field and shard (``np.load(path, mmap_mode="r")`` maps it without reading it). ``.npy`` is
  numpy's own documented format: no extra dependency, memory-mappable, exact dtypes.
- ``shard-00000.done.json``: written last, atomically; its presence (with matching sha256
  checksums) is what makes a shard complete.
- ``run.json``: method, parameters and data set size of the run, written before any shard;
  a later run with other settings in the same ``out`` is refused.
- ``index.json``: written when every shard is complete: the run, the versions, and per
  shard its rows and the sha256 of each file.

Every file is written to a temporary name in ``out`` and renamed into place, so a killed run
leaves only complete files (and temporaries, which the next run ignores and overwrites);
``resume=True`` skips the complete shards and redoes the others. Results are a function of
each item alone (SmoothGrad noise is keyed by the item's index), so any split into shards and
ranks, and any interruption, gives the same bytes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastxai import _model
from fastxai._model import Model

FORMAT_VERSION = 1


def _methods() -> dict[str, Callable[..., Any]]:
    import fastxai as fx

    # fx.lrp is the callable package; the runner (and its callers) want the function itself.
    return {name: fx.lrp.lrp if name == "lrp" else getattr(fx, name) for name in METHODS}


CAM_METHODS = (
    "grad_cam",
    "grad_cam_plus_plus",
    "xgrad_cam",
    "hires_cam",
    "layer_cam",
    "score_cam",
    "guided_grad_cam",
)
"""The CAM family: each needs the ``layer`` to explain."""

METHODS = (
    "saliency",
    "input_x_gradient",
    "smoothgrad",
    "integrated_gradients",
    "guided_backprop",
    "deconvnet",
    "lrp",
    "occlusion",
    "feature_ablation",
    *CAM_METHODS,
)
"""Methods the runner can apply: those whose result for an item does not depend on which other
items share its batch (SmoothGrad keys its noise by the item's index). The sampled perturbation
methods (KernelSHAP, LIME, Shapley sampling, GradientSHAP) draw per batch and are left out."""


class _Items:
    """Uniform access to (inputs, labels or None) by index range over the supported data kinds."""

    def __init__(self, data: object) -> None:
        if isinstance(data, torch.utils.data.DataLoader):
            data = data.dataset
        self.tensors: tuple[torch.Tensor, torch.Tensor | None] | None = None
        if isinstance(data, torch.Tensor):
            self.tensors = (data, None)
        elif (
            isinstance(data, (tuple, list))
            and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data)
        ):
            if data[0].shape[0] != data[1].shape[0]:
                raise ValueError(f"data holds {data[0].shape[0]} inputs but {data[1].shape[0]} labels")
            self.tensors = (data[0], data[1])
        elif not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
            raise TypeError(
                "data must be a tensor of inputs, (inputs, labels) tensors, a map-style Dataset "
                f"or a DataLoader over one, got {type(data).__name__}"
            )
        self.data = data

    def __len__(self) -> int:
        return int(self.tensors[0].shape[0]) if self.tensors is not None else len(self.data)

    def slice(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.tensors is not None:
            inputs, labels = self.tensors
            return inputs[start:stop], None if labels is None else labels[start:stop]
        items = [self.data[index] for index in range(start, stop)]
        if isinstance(items[0], (tuple, list)):
            return torch.stack([torch.as_tensor(i[0]) for i in items]), torch.as_tensor(
                [int(i[1]) for i in items]
            )
        return torch.stack([torch.as_tensor(i) for i in items]), None


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"tensor": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"method_kwargs values must be numbers, strings, lists or tensors, got {type(value).__name__}"
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomically(path: Path, write: Callable[[Any], None], binary: bool) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb" if binary else "w") as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _save_array(stream: Any, array: np.ndarray) -> None:
    np.save(stream, array)


def _write_json(path: Path, content: dict[str, Any]) -> None:
    _write_atomically(path, lambda stream: json.dump(content, stream, indent=1, sort_keys=True), binary=False)


def _shard_complete(out: Path, name: str) -> dict[str, Any] | None:
    marker = out / f"{name}.done.json"
    if not marker.exists():
        return None
    try:
        record = json.loads(marker.read_text())
        for entry in record["files"].values():
            if _sha256(out / entry["file"]) != entry["sha256"]:
                return None
    except (OSError, ValueError, KeyError):
        return None
    return record


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def attribute_dataset(
    model: Model,
    data: object,
    method: str = "integrated_gradients",
    out: str | os.PathLike[str] = "attrs",
    *,
    method_kwargs: dict[str, Any] | None = None,
    batch_size: int = 64,
    shard_size: int | None = None,
    target: str = "predicted",
    resume: bool = True,
    device: torch.device | str | None = None,
    progress: bool | None = None,
) -> dict[str, float]:
    """Attribute every item of ``data`` with ``method`` and write the results to ``out``.

    - ``data``: a tensor of inputs, ``(inputs, labels)`` tensors, or a map-style Dataset
      (items ``x`` or ``(x, label)``) or a DataLoader over one; items are read in index order.
    - ``method``: one of ``METHODS``; ``method_kwargs`` are passed to it (for SmoothGrad a
      ``seed`` is required, so that a resumed run reproduces the noise).
    - ``target``: ``"predicted"`` (the model's class) or ``"label"`` (the data set's labels).
    - ``shard_size``: items per shard file (default ``16 * batch_size``).
    - Under ``torch.distributed`` shards are dealt round-robin to the ranks, and rank 0 writes
      the index once every rank is done.

    Fields written: ``attributions``, ``targets``, ``predictions``, ``labels`` (when the data
    has labels) and ``deltas`` (integrated gradients). Returns a summary: items, shards
    written and skipped, seconds, items per second.

    >>> fastxai.attribute_dataset(model, (x, y), "smoothgrad", "attrs/", method_kwargs={"seed": 0})
    """
    model = _model.check_model(model)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    kwargs = dict(method_kwargs or {})
    for reserved in ("target", "return_convergence_delta", "row_offset"):
        if reserved in kwargs:
            raise ValueError(f"method_kwargs must not set {reserved!r}: the runner sets it")
    if method == "smoothgrad" and kwargs.get("seed") is None:
        raise ValueError(
            "smoothgrad over a data set needs method_kwargs['seed'] so that a resumed run is identical"
        )
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if target not in ("predicted", "label"):
        raise ValueError(f"target must be 'predicted' or 'label', got {target!r}")
    items = _Items(data)
    total = len(items)
    if total == 0:
        raise ValueError("data is empty")
    first_inputs, first_labels = items.slice(0, 1)
    _model.check_inputs(first_inputs)
    if target == "label" and first_labels is None:
        raise ValueError("target='label' needs data with labels")
    shard_size = shard_size or 16 * batch_size
    run = {
        "format": FORMAT_VERSION,
        "method": method,
        "method_kwargs": _jsonable(kwargs),
        "target": target,
        "items": total,
        "shard_size": shard_size,
    }
    out_path = Path(out)
    rank, world = _distributed()
    out_path.mkdir(parents=True, exist_ok=True)
    run_file = out_path / "run.json"
    if run_file.exists():
        existing = json.loads(run_file.read_text())
        if existing != run:
            raise ValueError(
                f"{out_path} holds a run with other settings ({existing}); use another out or delete it"
            )
        if not resume and rank == 0:
            for stale in out_path.glob("shard-*"):
                stale.unlink()
    elif rank == 0:
        _write_json(run_file, run)
    if world > 1:
        torch.distributed.barrier()

    attribution_method = _methods()[method]
    shards = [
        (index, start, min(start + shard_size, total))
        for index, start in enumerate(range(0, total, shard_size))
    ]
    mine = [shard for shard in shards if shard[0] % world == rank]
    written = skipped = 0
    started = time.perf_counter()
    bar = _progress_bar(total=sum(stop - start for _, start, stop in mine), enabled=progress, rank=rank)
    for index, start, stop in mine:
        name = f"shard-{index:05d}"
        if resume and _shard_complete(out_path, name) is not None:
            skipped += 1
            bar.update(stop - start)
            continue
        fields = _attribute_shard(
            model, items, attribution_method, method, kwargs, target, start, stop, batch_size, device, bar
        )
        files = {}
        for field, array in fields.items():
            path = out_path / f"{name}.{field}.npy"
            _write_atomically(path, functools.partial(_save_array, array=array), binary=True)
            files[field] = {
                "file": path.name,
                "sha256": _sha256(path),
                "dtype": str(array.dtype),
                "shape": list(array.shape),
            }
        _write_json(
            out_path / f"{name}.done.json", {"shard": index, "start": start, "stop": stop, "files": files}
        )
        written += 1
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        _write_index(out_path, run, shards)
    seconds = time.perf_counter() - started
    processed = sum(stop - start for _, start, stop in mine)
    return {
        "items": float(processed),
        "shards_written": float(written),
        "shards_skipped": float(skipped),
        "seconds": seconds,
        "items_per_second": processed / seconds if seconds > 0 else float("inf"),
    }


def _progress_bar(total: int, enabled: bool | None, rank: int) -> Any:
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or rank != 0 or enabled is False:

        class _Silent:
            def update(self, count: int) -> None:
                pass

            def close(self) -> None:
                pass

        return _Silent()
    return tqdm(total=total, unit="item", disable=None if enabled is None else not enabled, desc="attribute")


def _attribute_shard(
    model: Model,
    items: _Items,
    attribution_method: Callable[..., Any],
    method: str,
    kwargs: dict[str, Any],
    target: str,
    start: int,
    stop: int,
    batch_size: int,
    device: torch.device | str | None,
    bar: Any,
) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for batch_start in range(start, stop, batch_size):
        batch_stop = min(batch_start + batch_size, stop)
        inputs, labels = items.slice(batch_start, batch_stop)
        if device is not None:
            inputs = inputs.to(device)
            labels = None if labels is None else labels.to(device)
        with torch.no_grad(), _model.preserved_state(model):
            predictions = _model.logits(model, inputs).argmax(1)
        if target == "label" and labels is None:
            raise ValueError("target='label' needs data with labels")
        targets = labels if target == "label" and labels is not None else predictions
        call = dict(kwargs)
        if method == "smoothgrad":
            call["row_offset"] = batch_start
        if method == "integrated_gradients":
            result = attribution_method(model, inputs, target=targets, return_convergence_delta=True, **call)
            attributions, deltas = result[0], result[1]
            parts.setdefault("deltas", []).append(deltas.detach().cpu().numpy())
        else:
            attributions = attribution_method(model, inputs, target=targets, **call)
        parts.setdefault("attributions", []).append(attributions.detach().cpu().numpy())
        parts.setdefault("targets", []).append(targets.cpu().numpy())
        parts.setdefault("predictions", []).append(predictions.cpu().numpy())
        if labels is not None:
            parts.setdefault("labels", []).append(labels.cpu().numpy())
        bar.update(batch_stop - batch_start)
    return {field: np.concatenate(chunks) for field, chunks in parts.items()}


def _write_index(out: Path, run: dict[str, Any], shards: Sequence[tuple[int, int, int]]) -> None:
    import fastxai

    records = []
    for index, _start, _stop in shards:
        record = _shard_complete(out, f"shard-{index:05d}")
        if record is None:
            raise RuntimeError(f"shard {index} of {out} is not complete; run again with resume=True")
        records.append(record)
    content: dict[str, Any] = {
        "run": run,
        "versions": {"fastxai": fastxai.__version__, "torch": torch.__version__, "numpy": np.__version__},
        "shards": records,
    }
    _write_json(out / "index.json", content)


def load_attributions(out: str | os.PathLike[str], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Read a finished run back in data set order: ``{"attributions": [N, *F], "targets": [N], ...}``.

    With ``verify`` every file's sha256 is checked against the index first.
    """
    out_path = Path(out)
    index_file = out_path / "index.json"
    if not index_file.exists():
        raise FileNotFoundError(f"{index_file} not found: the run in {out_path} is missing or unfinished")
    index = json.loads(index_file.read_text())
    fields: dict[str, list[np.ndarray]] = {}
    for record in index["shards"]:
        for field, entry in record["files"].items():
            path = out_path / entry["file"]
            if verify and _sha256(path) != entry["sha256"]:
                raise ValueError(f"{path} does not match its checksum in {index_file}")
            fields.setdefault(field, []).append(np.load(path, mmap_mode="r"))
    return {field: np.concatenate(arrays) for field, arrays in fields.items()}
