"""The command's inputs: a data file or folder read into tensors, and its one-line errors.

Data is a ``.npy`` or ``.pt`` file of inputs (a ``.pt`` may hold ``(inputs, labels)`` or
``{"inputs", "labels"}``, read with ``weights_only=True``), a folder of images of one size, or
``digits``. Whatever is wrong with a file (damaged, foreign, of the wrong kind) is a
``CliError`` naming it, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch


class CliError(Exception):
    """An error the command reports in one line."""


def one_line(message: object) -> str:
    """``message`` on one line: a multi-line library message (torch.load's, numpy's) joined."""
    return " ".join(str(message).split())


def _first_line(error: BaseException) -> str:
    """An exception as ``Type: first line`` (torch.load's errors add paragraphs of advice)."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_data(spec: str | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    if spec is None or spec == "digits":
        from fastxai.digits import load_digits

        _, (x_test, y_test) = load_digits()
        return x_test, y_test
    path = Path(spec)
    if not path.exists():
        raise CliError(f"data not found: {spec} (a .npy/.pt file, a folder of images, or 'digits')")
    if path.is_dir():
        return _image_folder(path), None
    if path.suffix not in (".npy", ".pt"):
        raise CliError(f"unsupported data file {spec}: use .npy, .pt or a folder of images")
    try:
        content = (
            np.load(path)
            if path.suffix == ".npy"
            else torch.load(path, map_location="cpu", weights_only=True)
        )
    except Exception as error:  # a corrupt or foreign file: numpy and torch raise many kinds
        raise CliError(f"cannot read {spec}: {_first_line(error)}") from None
    labels = None
    if isinstance(content, (tuple, list)) and len(content) == 2:
        content, labels = content
    elif isinstance(content, dict) and "inputs" in content:
        content, labels = content["inputs"], content.get("labels")
    elif not isinstance(content, (torch.Tensor, np.ndarray)):
        raise CliError(f"{spec} must hold a tensor, (inputs, labels) or {{'inputs', 'labels'}}")
    return _as_inputs(content, spec), None if labels is None else _as_labels(labels, spec)


def _as_inputs(content: object, spec: str) -> torch.Tensor:
    """The inputs of a data file as a float32 tensor [N, ...] with N >= 1."""
    if isinstance(content, np.ndarray):
        if content.dtype.kind not in "biuf":
            raise CliError(f"{spec}: inputs must be numbers, got a numpy array of {content.dtype}")
        content = torch.from_numpy(content)
    if not isinstance(content, torch.Tensor) or content.is_complex():
        kind = content.dtype if isinstance(content, torch.Tensor) else type(content).__name__
        raise CliError(f"{spec}: inputs must be a real tensor, got {kind}")
    if content.dim() < 1 or content.shape[0] < 1:
        raise CliError(f"{spec}: inputs must be [N, ...] with N >= 1, got shape {tuple(content.shape)}")
    return content.float()


def _as_labels(labels: object, spec: str) -> torch.Tensor:
    """The labels of a data file as integer class indices [N]."""
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels) if labels.dtype.kind in "biu" else None
    if (
        not isinstance(labels, torch.Tensor)
        or labels.is_floating_point()
        or labels.is_complex()
        or labels.dtype == torch.bool
        or labels.dim() != 1
    ):
        raise CliError(f"{spec}: labels must be a 1-d tensor of integer class indices")
    return labels.long()


def _image_folder(path: Path) -> torch.Tensor:
    try:
        from PIL import Image
    except ImportError:
        raise CliError("reading a folder of images needs Pillow: pip install pillow") from None
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    if not files:
        raise CliError(f"no images (.png, .jpg, .bmp) in {path}")
    arrays = []
    for file in files:
        try:
            with Image.open(file) as image:
                arrays.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
        except Exception as error:  # PIL raises its own error kinds for damaged or foreign files
            raise CliError(f"cannot read image {file}: {_first_line(error)}") from None
    if len({a.shape for a in arrays}) != 1:
        raise CliError(f"images in {path} differ in size; resize them to one size first")
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
