"""Content fingerprints that bind the data set runner's files to their run: the model (class,
parameters and buffers), the data each shard read, and the method's arguments.

A fingerprint is a sha256 over dtype, shape and raw bytes of each tensor, in a fixed order, so
two runs agree exactly when their tensors are bit-identical. Hashing costs one pass over the
bytes (about 0.7 GB/s on one core): parameters once per run, inputs as each batch is read.

>>> model_fingerprint(model)
{'class': 'torch.nn.modules.container.Sequential', 'parameters_sha256': '3f0c...'}
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def update_tensor(digest: Any, tensor: torch.Tensor) -> None:
    """Feed dtype, shape and the bytes of ``tensor`` (any device, layout or dtype) to ``digest``."""
    value = tensor.detach()
    digest.update(f"{value.dtype}{tuple(value.shape)};".encode())
    if value.is_sparse or value.device.type == "meta":
        raise ValueError(f"cannot fingerprint a {value.layout} tensor on {value.device}")
    flat = value.cpu().contiguous().reshape(-1)
    digest.update(flat.view(torch.uint8).numpy() if flat.numel() else b"")


def tensors_sha256(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    digest = hashlib.sha256()
    for name, tensor in tensors:
        digest.update(f"{name}:".encode())
        update_tensor(digest, tensor)
    return digest.hexdigest()


def _qualified_name(value: object) -> str:
    named: object = value if isinstance(value, type) else type(value)
    if not isinstance(value, (type, nn.Module)) and hasattr(value, "__qualname__"):
        named = value  # a function: its own name, not 'function'
    return f"{getattr(named, '__module__', '?')}.{getattr(named, '__qualname__', type(value).__name__)}"


def _modules_behind(model: object, visited: set[int] | None = None) -> list[nn.Module]:
    """The modules a callable runs: itself, a bound method's object, a partial's function and
    arguments, a function's closure cells and the globals its code names."""
    if isinstance(model, nn.Module):
        return [model]
    visited = set() if visited is None else visited
    if id(model) in visited:
        return []
    visited.add(id(model))
    found: list[nn.Module] = []
    candidates: list[object] = []
    if isinstance(model, functools.partial):
        candidates += [model.func, *model.args, *model.keywords.values()]
    owner = getattr(model, "__self__", None)
    if owner is not None:
        candidates.append(owner)
    wrapped = getattr(model, "__wrapped__", None)
    if wrapped is not None:
        candidates.append(wrapped)
    for cell in getattr(model, "__closure__", None) or ():
        try:
            candidates.append(cell.cell_contents)
        except ValueError:  # an empty cell
            continue
    code, namespace = getattr(model, "__code__", None), getattr(model, "__globals__", None)
    if code is not None and isinstance(namespace, dict):
        candidates += [namespace[name] for name in code.co_names if name in namespace]
    for candidate in candidates:
        if isinstance(candidate, nn.Module) and all(candidate is not seen for seen in found):
            found.append(candidate)
        elif callable(candidate) and not isinstance(candidate, type):
            found += [m for m in _modules_behind(candidate, visited) if all(m is not seen for seen in found)]
    return found


def model_fingerprint(model: object) -> dict[str, Any]:
    """``{"class": dotted name, "parameters_sha256": hex}`` over every parameter and buffer (name,
    dtype, shape, bytes) of the modules the model runs; ``parameters_sha256`` is None for a callable
    whose modules cannot be found (its identity cannot be checked)."""
    modules = _modules_behind(model)
    if not modules:
        return {"class": _qualified_name(model), "parameters_sha256": None}

    def tensors() -> Iterable[tuple[str, torch.Tensor]]:
        for number, module in enumerate(modules):
            yield f"module{number}:{_qualified_name(module)}", torch.empty(0)
            yield from module.named_parameters()
            yield from ((f"buffer:{name}", buffer) for name, buffer in module.named_buffers())

    return {"class": _qualified_name(model), "parameters_sha256": tensors_sha256(tensors())}


def jsonable(value: Any) -> Any:
    """``method_kwargs`` as JSON: numbers, strings, lists and dicts as they are; a tensor by its
    dtype, shape and sha256 (exact, and small for a baseline image); a ``torch.dtype`` (the
    methods' ``dtype=torch.bfloat16``) by its name, tagged so that no string reads the same."""
    if isinstance(value, torch.dtype):
        return {"torch_dtype": str(value)}
    if isinstance(value, torch.Tensor):
        return {
            "tensor_sha256": tensors_sha256([("", value)]),
            "dtype": str(value.dtype),
            "shape": list(value.shape),
        }
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(
        f"method_kwargs values must be numbers, strings, lists, tensors or torch dtypes, got "
        f"{type(value).__name__}"
    )


def differences(recorded: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """What differs between two run records, one ``key: recorded -> current`` line per leaf."""
    lines = []
    for key in sorted(set(recorded) | set(current), key=str):
        old, new = recorded.get(key, "(absent)"), current.get(key, "(absent)")
        if isinstance(old, dict) and isinstance(new, dict):
            lines += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            lines.append(f"{prefix}{key}: {_short(old)} -> {_short(new)}")
    return lines


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
