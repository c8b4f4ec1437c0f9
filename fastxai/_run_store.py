"""The data set runner's folder: atomic files, the folder lock, and the checks that keep runs apart.

- Every file is written to a temporary name and renamed into place (``write_atomically``), so
  a killed run leaves complete files and temporaries; ``prepare`` removes the runner's own
  temporaries (``.shard-00000.attributions.npy.x1y2.tmp``) under the lock, and nothing else.
- ``folder_lock``: an exclusive ``flock`` on ``out/.lock`` held for the whole run. The OS drops
  it when the holder exits or is killed, so a lock never outlives its process.
- ``shard-00000.done.json`` says a shard is complete only when read whole (``read_done``):
  exactly the fields below, the shard's rows, the run it belongs to, the sha256 of the inputs
  it read, and per field its file, sha256, dtype and shape (checked against the ``.npy`` too).

>>> with folder_lock(out):
...     prepare(out, run, resume=True)  # refuses another run's shards
...     start(out, run, resume=True)  # cleans up, writes run.json
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fastxai import _fingerprint

LOCK_NAME = ".lock"
DONE_KEYS = frozenset({"shard", "start", "stop", "run", "inputs_sha256", "files"})
FILE_KEYS = frozenset({"file", "sha256", "dtype", "shape"})
# what write_atomically names its temporaries: ".<final name>.<mkstemp's random part>.tmp"
_TEMPORARY = re.compile(r"^\.(shard-\d+\.\w+\.(npy|done\.json)|run\.json|index\.json)\.\w+\.tmp$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_atomically(path: Path, write: Callable[[Any], None], binary: bool) -> None:
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


def write_json(path: Path, content: dict[str, Any]) -> None:
    write_atomically(path, lambda stream: json.dump(content, stream, indent=1, sort_keys=True), binary=False)


if sys.platform == "win32":  # pragma: no cover - the lock's Windows form
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

else:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


class FolderInUseError(RuntimeError):
    """Another run holds the output folder's lock."""


@contextlib.contextmanager
def folder_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` exclusively for the block; a RuntimeError at once if another run (in this
    or another process) holds it. Released on exit, on error, and by the OS if the process dies."""
    with open(out / LOCK_NAME, "a+") as handle:
        if not _try_lock(handle.fileno()):
            handle.seek(0)
            holder = handle.read().strip() or "a process"
            raise FolderInUseError(
                f"another run holds {out} ({holder}): two runs must not write one folder; wait for "
                "it to finish, or write to another out"
            )
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        yield  # closing the file releases the lock


def prepare(out: Path, run: dict[str, Any], resume: bool) -> None:
    """Under the lock, before any shard: with ``resume=True`` refuse a folder that holds complete
    shards of another run (naming what differs); nothing is changed yet."""
    if resume:
        _check_same_run(out, run)


def start(out: Path, run: dict[str, Any], resume: bool) -> None:
    """Under the lock, once every check passed: remove the runner's stale temporaries and the
    index (rewritten when every shard is complete), with ``resume=False`` every file of an
    earlier run, then write ``run.json``."""
    for path in out.iterdir():
        if _TEMPORARY.match(path.name) or (not resume and _is_run_file(path.name)):
            path.unlink(missing_ok=True)
    (out / "index.json").unlink(missing_ok=True)
    write_json(out / "run.json", run)


def _is_run_file(name: str) -> bool:
    return name in ("run.json", "index.json") or bool(re.match(r"^shard-\d+\.", name))


def _check_same_run(out: Path, run: dict[str, Any]) -> None:
    foreign: list[tuple[str, Any]] = []
    own = 0
    for marker in sorted(out.glob("shard-*.done.json")):
        try:
            recorded = json.loads(marker.read_text()).get("run")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded == run:
            own += 1
        else:
            foreign.append((marker.name, recorded))
    fresh = "resume=False to discard them and start afresh"
    if foreign and any(isinstance(recorded, dict) for _, recorded in foreign):
        name, recorded = next((n, r) for n, r in foreign if isinstance(r, dict))
        raise ValueError(
            f"{out} holds {len(foreign)} shard(s) of another run ({name}: "
            f"{'; '.join(_fingerprint.differences(recorded, run))}); write to another out, or pass {fresh}"
        )
    run_file = out / "run.json"
    if foreign and run_file.exists():
        try:
            recorded = json.loads(run_file.read_text())
        except ValueError:
            recorded = {}
        if recorded != run:  # an earlier run (or an older format) whose shards are not whole
            changes = "; ".join(_fingerprint.differences(recorded, run))
            raise ValueError(
                f"{out} holds a run with other settings ({changes}) "
                f"and {len(foreign)} shard(s) that are not its own; write to another out, or pass {fresh}"
            )
    if own and run["model"]["parameters_sha256"] is None:
        raise ValueError(
            f"the model ({run['model']['class']}, a callable with no nn.Module found behind it) cannot "
            f"be fingerprinted, so the {own} complete shard(s) in {out} cannot be checked to be its "
            f"own; pass the nn.Module (or a callable closing over it), or {fresh}"
        )


def read_done(
    out: Path, index: int, start: int, stop: int, run: dict[str, Any], fields: list[str]
) -> dict[str, Any] | None:
    """Shard ``index``'s record when it is whole and belongs to ``run`` (see the module docstring),
    with every file's sha256, dtype and shape checked; None when the shard must be redone."""
    name = f"shard-{index:05d}"
    try:
        record = json.loads((out / f"{name}.done.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or set(record) != DONE_KEYS:
        return None
    if (record["shard"], record["start"], record["stop"]) != (index, start, stop) or record["run"] != run:
        return None
    if not isinstance(record["inputs_sha256"], str) or not _HEX64.match(record["inputs_sha256"]):
        return None
    files = record["files"]
    if not isinstance(files, dict) or sorted(files) != sorted(fields):
        return None
    for field, entry in files.items():
        if not _file_ok(out, f"{name}.{field}.npy", entry, stop - start, field != "attributions"):
            return None
    return record


def _file_ok(out: Path, file: str, entry: Any, rows: int, one_dim: bool) -> bool:
    if not isinstance(entry, dict) or set(entry) != FILE_KEYS or entry["file"] != file:
        return False
    shape = entry["shape"]
    if not isinstance(shape, list) or not shape or shape[0] != rows or (one_dim and len(shape) != 1):
        return False
    try:
        if sha256_file(out / file) != entry["sha256"]:
            return False
        array = np.load(out / file, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return list(array.shape) == shape and str(array.dtype) == entry["dtype"]


def check_index(index: Any, index_file: Path) -> list[dict[str, Any]]:
    """The shard records of a finished run's index, checked to tile its rows in order, all of one
    run and with the same fields; a ValueError naming what is wrong otherwise."""
    if not isinstance(index, dict) or not isinstance(index.get("run"), dict) or "shards" not in index:
        raise ValueError(f"{index_file} is not a runner index (it needs 'run' and 'shards')")
    run, records = index["run"], index["shards"]
    # format 1 (before runs were fingerprinted) had no run nor inputs hash in its shard records
    keys = DONE_KEYS if run.get("format", 1) > 1 else frozenset({"shard", "start", "stop", "files"})
    stop = 0
    fields: list[str] | None = None
    for number, record in enumerate(records):
        if not isinstance(record, dict) or set(record) != keys:
            raise ValueError(f"{index_file}: shard record {number} does not have the fields {sorted(keys)}")
        if record["shard"] != number or record["start"] != stop or record.get("run", run) != run:
            raise ValueError(
                f"{index_file}: shard record {number} is not the next shard of the run "
                f"(shard {record['shard']}, rows from {record['start']}, expected {number} from {stop})"
            )
        names = sorted(record["files"])
        if fields is not None and names != fields:
            raise ValueError(
                f"{index_file}: shard {number} has the fields {names}, shard 0 has {fields}: "
                "rows would misalign"
            )
        fields, stop = names, record["stop"]
    if stop != run.get("items"):
        raise ValueError(f"{index_file}: the shards hold {stop} rows, the run has {run.get('items')} items")
    return list(records)
