"""The bundled example: scikit-learn's 8x8 digits and a small CNN trained on them in seconds.

Nothing is downloaded: the digits (1797 images, 10 classes) ship inside scikit-learn.

>>> from fastxai.digits import load_digits, train_digits_cnn
>>> (x_train, y_train), (x_test, y_test) = load_digits()
>>> model = train_digits_cnn(x_train, y_train)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastxai.attacks.training import adversarial_training_step

TEST_FRACTION = 0.25


def load_digits(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((x_train, y_train), (x_test, y_test)): images [N, 1, 8, 8] in [0, 1], labels [N] int64.

    The split is a fixed permutation of ``seed``: 75% train, 25% test.
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as error:
        raise ImportError(
            "the digits example needs scikit-learn: pip install scikit-learn (or 'fastxai[peers]')"
        ) from error
    bunch = sklearn_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    split = int(len(labels) * (1 - TEST_FRACTION))
    train, test = order[:split], order[split:]
    return (images[train], labels[train]), (images[test], labels[test])


def digits_cnn() -> nn.Sequential:
    """Conv(1->16)-BN-ReLU-MaxPool, Conv(16->32)-BN-ReLU, global average pool, Linear(32->10)."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def train_digits_cnn(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    *,
    epochs: int = 15,
    batch_size: int = 64,
    seed: int = 0,
    adversarial: dict[str, Any] | None = None,
) -> nn.Sequential:
    """Adam on cross-entropy, deterministic for a seed; returns the model in eval mode.

    ``adversarial``: PGD options (``eps``, ``alpha``, ``steps``, ...) to train on PGD examples
    instead (``fastxai.adversarial_training_step``).
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = digits_cnn()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y_train), generator=generator)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            if adversarial is not None:
                adversarial_training_step(model, optimiser, x_train[batch], y_train[batch], **adversarial)
                continue
            optimiser.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimiser.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())
