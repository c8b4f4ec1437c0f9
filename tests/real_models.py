"""Real architectures for the tests, random weights, nothing downloaded.

``torchvision()``, ``timm()``, ``transformers()`` and ``zennit()`` (the LRP peer, which imports
torchvision) return the package or call ``pytest.skip`` when it is not installed, so a test that
needs one skips instead of failing.

The torchvision wheel that matches the pinned torch can be a CUDA build whose compiled ops do
not load on a CPU machine; importing it then fails while registering the fake kernel of
``torchvision::nms`` (timm imports torchvision, so it fails too). The models need none of those
ops (non-maximum suppression, RoI pooling, deformable convolution), so when that happens the
two op schemas that the import registers fake kernels for are declared (declarations only: a
call would raise) and the import is tried once more.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library: torch.library.Library | None = None


def _import_torchvision() -> ModuleType:
    global _library
    try:
        return importlib.import_module("torchvision")
    except RuntimeError as error:
        if "torchvision::" not in str(error) or _library is not None:
            raise
    for name in [name for name in sys.modules if name == "torchvision" or name.startswith("torchvision.")]:
        del sys.modules[name]
    _library = torch.library.Library("torchvision", "DEF")  # kept alive: dropping it removes the ops
    for schema in _SCHEMAS:
        _library.define(schema)
    return importlib.import_module("torchvision")


def torchvision() -> ModuleType:
    if importlib.util.find_spec("torchvision") is None:
        pytest.skip("torchvision is not installed")
    return _import_torchvision()


def timm() -> ModuleType:
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed")
    torchvision()  # timm imports torchvision: make that import work first
    return importlib.import_module("timm")


def zennit() -> ModuleType:
    """Zennit (the LRP peer), or a skip when it is not installed; ``zennit.torchvision`` and its
    canonizers import torchvision, so that import is made to work first."""
    if importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed")
    torchvision()
    return importlib.import_module("zennit")


def _import_hub_kernels() -> None:
    """transformers imports the Hugging Face ``kernels`` package (a dependency of it); this
    repository's top-level ``kernels/`` folder (the Triton kernels, installed as
    ``fastxai.kernels``) shadows it when the repository root is on ``sys.path`` (``python -m
    pytest`` from the root, or ``PYTHONPATH=.``). Import the installed one first, looking past
    the root, so ``sys.modules["kernels"]`` is the package transformers expects."""
    if "kernels" in sys.modules:
        return
    root = Path(__file__).resolve().parents[1]
    saved = list(sys.path)
    sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != root]
    try:
        importlib.import_module("kernels")
    except ImportError:
        pass  # not installed: transformers then runs without hub kernels
    finally:
        sys.path[:] = saved


def transformers() -> ModuleType:
    if importlib.util.find_spec("transformers") is None:
        pytest.skip("transformers is not installed")
    if importlib.util.find_spec("torchvision") is not None:
        _import_torchvision()  # transformers' image models import torchvision: make that import work first
    _import_hub_kernels()
    return importlib.import_module("transformers")


def tiny_bert(pad_token_id: int = 0, **config: Any) -> Any:
    """A one-layer BertForSequenceClassification (vocabulary 50, width 16, 2 heads), random
    weights seeded 0, in eval mode; ``config`` overrides BertConfig fields."""
    tf = transformers()
    torch.manual_seed(0)
    options = {
        "vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "intermediate_size": 32, "pad_token_id": pad_token_id, **config,
    }  # fmt: skip
    return tf.BertForSequenceClassification(tf.BertConfig(**options)).eval()


def tiny_xlnet(pad_token_id: int = 0) -> Any:
    """A two-layer XLNetForSequenceClassification (vocabulary 128, width 32, 4 heads, 3 labels),
    random weights seeded 0, in eval mode: a sequence-first model (its layers are [T, B, D])."""
    tf = transformers()
    torch.manual_seed(0)
    config = tf.XLNetConfig(
        vocab_size=128, d_model=32, n_layer=2, n_head=4, d_inner=64, num_labels=3, pad_token_id=pad_token_id
    )
    return tf.XLNetForSequenceClassification(config).eval()
