"""Attribution over whole data sets: sharded, crash-safe, resumable, and split across
``torch.distributed`` ranks.

On-disk format (``out/``), chosen so that anyone can read it with numpy alone:

- ``shard-00000.attributions.npy``, ``shard-00000.targets.npy``, ... : one ``.npy`` file per
  field and shard (``np.load(path, mmap_mode="r")`` maps it without reading it). ``.npy`` is
  numpy's own documented format: no extra dependency, memory-mappable, exact dtypes.
- ``shard-00000.done.json``: written last, atomically; the shard is complete when it is whole
  (every field, ``fastxai._run_store.read_done``), belongs to this run, its files match their
  sha256, and the inputs the shard read then hash as the data's items do now.
- ``run.json``: the run's identity, written (under the lock) once the arguments are checked:
  method and arguments, target, item count, batch and shard size, the model's class and the
  sha256 of its parameters and buffers, the inputs' dtype and item shape, device type and the
  backend the fused ops resolve to. Each ``done.json`` carries a copy, so a shard stays bound
  to its run even if ``run.json`` is deleted.
- ``index.json``: written when every shard is complete: the run, the versions, and per
  shard its record.
- ``.lock``: held (``flock``) by the run writing the folder.

The identity rule: ``resume=True`` reuses a shard only when its run equals this one in every
field above and its inputs hash equal; a folder holding shards of another run is refused with
the fields that differ (start afresh with ``resume=False``, or write to another ``out``).

Every file is written to a temporary name in ``out`` and renamed into place, so a killed run
leaves only complete files (and temporaries, which the next run removes); ``resume=True``
skips the complete shards and redoes the others. Results are a function of each item alone
(SmoothGrad noise is keyed by the item's index), so any split into shards and ranks, and any
interruption, gives the same bytes.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastxai import _backends, _fingerprint, _model, _run_store
from fastxai._items import Items, hash_batch
from fastxai._model import Model
from fastxai._registry import CAM_METHODS, DATASET_METHODS, METHODS
from fastxai._version import __version__

FORMAT_VERSION = 2
__all__ = ["CAM_METHODS", "METHODS", "attribute_dataset", "load_attributions"]

_SET_BY_THE_RUNNER = ("target", "return_convergence_delta", "row_offset")


def _save_array(stream: Any, array: np.ndarray) -> None:
    np.save(stream, array)


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _check_method_kwargs(method: str, kwargs: dict[str, Any]) -> None:
    """Refuse a name the method does not take (``n_stepz``) before anything is written."""
    parameters = inspect.signature(DATASET_METHODS[method]).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    accepted = [
        name
        for name, p in list(parameters.items())[2:]  # after (model, inputs)
        if p.kind in keyword and name not in _SET_BY_THE_RUNNER
    ]
    for name in kwargs:
        if name in _SET_BY_THE_RUNNER:
            raise ValueError(f"method_kwargs must not set {name!r}: the runner sets it")
        if name not in accepted:
            raise TypeError(f"method_kwargs: {method} takes no argument {name!r}; it takes {accepted}")


def _share(problem: BaseException | None, world: int) -> BaseException | None:
    """Rank 0's outcome of a step only it runs, on every rank (so that none waits at a barrier)."""
    if world == 1:
        return problem
    message = [None if problem is None else (type(problem), str(problem))]
    torch.distributed.broadcast_object_list(message, src=0)
    if message[0] is None or problem is not None:
        return problem
    kind, text = message[0]
    return kind(text)


def _any_rank(messages: list[str], world: int) -> list[str]:
    if world == 1:
        return messages
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, messages)
    return [message for part in gathered for message in part]


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
    - ``resume``: keep the complete shards of the same run (same model parameters and class,
      same data, dtype, backend, method, arguments, target, batch and shard size) and redo the
      rest; a folder holding shards of another run is refused, naming what differs.
      ``resume=False`` discards whatever run the folder holds and starts afresh.
    - One run at a time holds ``out`` (an OS lock on ``out/.lock``): a second one started on it
      raises at once.
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
    _check_method_kwargs(method, kwargs)
    if method == "smoothgrad" and kwargs.get("seed") is None:
        raise ValueError(
            "smoothgrad over a data set needs method_kwargs['seed'] so that a resumed run is identical"
        )
    for name, value in (("batch_size", batch_size), ("shard_size", shard_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if target not in ("predicted", "label"):
        raise ValueError(f"target must be 'predicted' or 'label', got {target!r}")
    if not isinstance(resume, bool):
        raise TypeError(f"resume must be a bool, got {type(resume).__name__}")
    items = Items(data)
    total = len(items)
    if total == 0:
        raise ValueError("data is empty")
    first_inputs, first_labels = items.slice(0, 1)
    _model.check_inputs(first_inputs)
    if target == "label" and first_labels is None:
        raise ValueError("target='label' needs data with labels")
    shard_size = shard_size or 16 * batch_size
    run_device = torch.device(device) if device is not None else first_inputs.device
    run = {
        "format": FORMAT_VERSION,
        "method": method,
        "method_kwargs": _fingerprint.jsonable(kwargs),
        "target": target,
        "items": total,
        "shard_size": shard_size,
        "batch_size": batch_size,
        "model": _fingerprint.model_fingerprint(model),
        "inputs": {"dtype": str(first_inputs.dtype), "shape": list(first_inputs.shape[1:])},
        "labels": first_labels is not None,
        "device": run_device.type,
        "backend": _backends.resolve(None, run_device, first_inputs.dtype),
    }
    fields = ["attributions", "targets", "predictions"]
    fields += ["labels"] if first_labels is not None else []
    fields += ["deltas"] if method == "integrated_gradients" else []
    out_path = Path(out)
    rank, world = _distributed()
    out_path.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as held:
        problem: BaseException | None = None
        if rank == 0:
            try:
                held.enter_context(_run_store.folder_lock(out_path))
                _run_store.prepare(out_path, run, resume)
            except (RuntimeError, ValueError) as error:
                problem = error
        problem = _share(problem, world)
        if problem is not None:
            raise problem
        return _run(model, items, method, kwargs, run, fields, out_path, resume, device, progress)


def _run(
    model: Model,
    items: Items,
    method: str,
    kwargs: dict[str, Any],
    run: dict[str, Any],
    fields: list[str],
    out: Path,
    resume: bool,
    device: torch.device | str | None,
    progress: bool | None,
) -> dict[str, float]:
    rank, world = _distributed()
    total, shard_size, batch_size = run["items"], run["shard_size"], run["batch_size"]
    shards = [
        (index, start, min(start + shard_size, total))
        for index, start in enumerate(range(0, total, shard_size))
    ]
    mine = [shard for shard in shards if shard[0] % world == rank]
    if len(set(_any_rank([json.dumps(run, sort_keys=True)], world))) > 1:
        raise ValueError("the ranks disagree on the run (another model, data or setting on some rank)")
    complete: set[int] = set()
    changed: list[str] = []
    for index, start, stop in mine if resume else []:
        record = _run_store.read_done(out, index, start, stop, run, fields)
        if record is None:
            continue
        digest = hashlib.sha256()
        for batch_start in range(start, stop, batch_size):
            hash_batch(digest, *items.slice(batch_start, min(batch_start + batch_size, stop)))
        if digest.hexdigest() != record["inputs_sha256"]:
            changed.append(f"shard {index} (items {start}:{stop})")
        complete.add(index)
    changed = _any_rank(changed, world)
    if changed:
        raise ValueError(
            f"{out} holds shards computed from other inputs: {', '.join(changed)} read other data than "
            "now; write to another out, or pass resume=False to discard them and start afresh"
        )
    problem: BaseException | None = None
    if rank == 0:
        try:
            _run_store.start(out, run, resume)
        except OSError as error:
            problem = error
    problem = _share(problem, world)
    if problem is not None:
        raise problem
    written = skipped = 0
    started = time.perf_counter()
    bar = _progress_bar(total=sum(stop - start for _, start, stop in mine), enabled=progress, rank=rank)
    method_function = DATASET_METHODS[method]
    for index, start, stop in mine:
        if index in complete:
            skipped += 1
            bar.update(stop - start)
            continue
        digest = hashlib.sha256()
        arrays = _attribute_shard(
            model, items, method_function, method, kwargs, run["target"], (start, stop), batch_size, device,
            bar, digest,
        )  # fmt: skip
        name = f"shard-{index:05d}"
        files = {}
        for field, array in arrays.items():
            path = out / f"{name}.{field}.npy"
            _run_store.write_atomically(path, functools.partial(_save_array, array=array), binary=True)
            files[field] = {
                "file": path.name,
                "sha256": _run_store.sha256_file(path),
                "dtype": str(array.dtype),
                "shape": list(array.shape),
            }
        record = {
            "shard": index,
            "start": start,
            "stop": stop,
            "run": run,
            "inputs_sha256": digest.hexdigest(),
            "files": files,
        }
        _run_store.write_json(out / f"{name}.done.json", record)
        written += 1
    bar.close()
    if world > 1:
        torch.distributed.barrier()
    if rank == 0:
        _write_index(out, run, shards, fields)
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
    items: Items,
    attribution_method: Callable[..., Any],
    method: str,
    kwargs: dict[str, Any],
    target: str,
    rows: tuple[int, int],
    batch_size: int,
    device: torch.device | str | None,
    bar: Any,
    digest: Any,
) -> dict[str, np.ndarray]:
    start, stop = rows
    parts: dict[str, list[np.ndarray]] = {}
    for batch_start in range(start, stop, batch_size):
        batch_stop = min(batch_start + batch_size, stop)
        inputs, labels = items.slice(batch_start, batch_stop)
        hash_batch(digest, inputs, labels)
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


def _write_index(
    out: Path, run: dict[str, Any], shards: Sequence[tuple[int, int, int]], fields: list[str]
) -> None:
    records = []
    for index, start, stop in shards:
        record = _run_store.read_done(out, index, start, stop, run, fields)
        if record is None:
            raise RuntimeError(f"shard {index} of {out} is not complete; run again with resume=True")
        records.append(record)
    content: dict[str, Any] = {
        "run": run,
        "versions": {"fastxai": __version__, "torch": torch.__version__, "numpy": np.__version__},
        "shards": records,
    }
    _run_store.write_json(out / "index.json", content)


def load_attributions(out: str | os.PathLike[str], *, verify: bool = True) -> dict[str, np.ndarray]:
    """Read a finished run back in data set order: ``{"attributions": [N, *F], "targets": [N], ...}``.

    The index is checked to tile the data set's rows with shards of one run and the same fields;
    with ``verify`` every file's sha256 is checked against the index too.
    """
    out_path = Path(out)
    index_file = out_path / "index.json"
    if not index_file.exists():
        raise FileNotFoundError(f"{index_file} not found: the run in {out_path} is missing or unfinished")
    records = _run_store.check_index(json.loads(index_file.read_text()), index_file)
    fields: dict[str, list[np.ndarray]] = {}
    for record in records:
        for field, entry in record["files"].items():
            path = out_path / entry["file"]
            if verify and _run_store.sha256_file(path) != entry["sha256"]:
                raise ValueError(f"{path} does not match its checksum in {index_file}")
            array = np.load(path, mmap_mode="r")
            if array.shape[:1] != (record["stop"] - record["start"],):
                raise ValueError(
                    f"{path} holds {array.shape[:1]} rows, its shard {record['stop'] - record['start']}"
                )
            fields.setdefault(field, []).append(array)
    return {field: np.concatenate(arrays) for field, arrays in fields.items()}
