"""A small CART (Breiman et al. 1984) for soft labels: a depth-limited regression tree on class
probability vectors, readable as rules."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fastxai import _checks
from fastxai.surrogate import _data


@dataclass
class DecisionTree:
    """A binary tree over flattened inputs, stored as arrays indexed by node (node 0 the root).

    feature, threshold: the split of each inner node, ``x[feature] <= threshold`` goes left
    (feature -1 at leaves); left, right: child node ids (-1 at leaves); value: [nodes, C] the
    mean target (class probabilities) of the training rows in each node; samples: rows per node.
    Calling it on [N, *F] inputs returns the leaf values [N, C] (probabilities, as a tensor).
    """

    feature: np.ndarray
    threshold: np.ndarray
    left: np.ndarray
    right: np.ndarray
    value: np.ndarray
    samples: np.ndarray

    @property
    def depth(self) -> int:
        depth = np.zeros(len(self.feature), dtype=np.int64)
        for node in range(len(self.feature)):  # children always come after their parent
            if self.left[node] >= 0:
                depth[self.left[node]] = depth[self.right[node]] = depth[node] + 1
        return int(depth.max())

    def leaves(self, inputs: torch.Tensor | np.ndarray) -> np.ndarray:
        """The leaf id of every row: [N]."""
        data = _data.as_matrix(inputs)
        node = np.zeros(len(data), dtype=np.int64)
        rows = np.arange(len(data))
        while True:
            inner = self.feature[node] >= 0
            if not inner.any():
                return node
            go_left = data[rows, np.maximum(self.feature[node], 0)] <= self.threshold[node]
            node = np.where(inner, np.where(go_left, self.left[node], self.right[node]), node)

    def __call__(self, inputs: torch.Tensor) -> torch.Tensor:
        values = torch.from_numpy(self.value[self.leaves(inputs)])
        return values.to(inputs.device) if isinstance(inputs, torch.Tensor) else values

    def predict(self, inputs: torch.Tensor) -> torch.Tensor:
        """The class of largest leaf value per row: [N]."""
        return self(inputs).argmax(1)

    def rules(
        self, feature_names: Sequence[str] | None = None, class_names: Sequence[str] | None = None
    ) -> str:
        """The tree as indented text rules, one line per test and per leaf, e.g.
        ``|--- x[3] <= 0.5`` then ``|   |--- class 2 (p=0.93, n=120)``."""
        classes = self.value.shape[1]
        if feature_names is not None and len(feature_names) <= int(self.feature.max(initial=-1)):
            raise ValueError(f"feature_names has {len(feature_names)} names, the tree splits feature "
                             f"{int(self.feature.max())}")  # fmt: skip
        if class_names is not None and len(class_names) != classes:
            raise ValueError(f"class_names must have {classes} names, got {len(class_names)}")
        lines: list[str] = []

        def name(feature: int) -> str:
            return feature_names[feature] if feature_names is not None else f"x[{feature}]"

        def walk(node: int, indent: str) -> None:
            if self.feature[node] < 0:
                label = int(self.value[node].argmax())
                shown = class_names[label] if class_names is not None else str(label)
                share, rows = self.value[node, label], int(self.samples[node])
                lines.append(f"{indent}|--- class {shown} (p={share:.3g}, n={rows})")
                return
            test = f"{name(int(self.feature[node]))}"
            lines.append(f"{indent}|--- {test} <= {self.threshold[node]:.6g}")
            walk(int(self.left[node]), indent + "|   ")
            lines.append(f"{indent}|--- {test} >  {self.threshold[node]:.6g}")
            walk(int(self.right[node]), indent + "|   ")

        walk(0, "")
        return "\n".join(lines)


def _best_split(data: np.ndarray, targets: np.ndarray, min_leaf: int) -> tuple[int, float, float]:
    """(feature, threshold, gain) of the split that most reduces the squared error of
    ``targets`` [n, C] about the node means; gain 0 and feature -1 when no split is allowed.

    Every feature at once: rows sorted per feature, prefix sums of the targets give each
    candidate's ``|S_L|^2 / n_L + |S_R|^2 / n_R - |S|^2 / n`` (the decrease of the summed squared
    error); candidates lie between distinct consecutive values, thresholds at the midpoint."""
    n = len(data)
    order = np.argsort(data, axis=0, kind="stable")  # [n, D]
    values = np.take_along_axis(data, order, axis=0)
    prefix = np.cumsum(targets[order], axis=0)[:-1]  # [n-1, D, C]: sums of the first k+1 rows
    total = targets.sum(0)
    count = np.arange(1, n)[:, None]
    gain = (prefix**2).sum(-1) / count + ((total - prefix) ** 2).sum(-1) / (n - count) - (total**2).sum() / n
    allowed = (values[1:] > values[:-1]) & (count >= min_leaf) & (n - count >= min_leaf)
    gain = np.where(allowed, gain, -np.inf)
    if not np.isfinite(gain).any():
        return -1, 0.0, 0.0
    k, feature = np.unravel_index(int(np.argmax(gain)), gain.shape)
    threshold = (values[k, feature] + values[k + 1, feature]) / 2
    return int(feature), float(threshold), float(gain[k, feature])


def fit_tree(
    inputs: torch.Tensor | np.ndarray,
    targets: torch.Tensor | np.ndarray,
    *,
    max_depth: int = 3,
    min_samples_leaf: int = 1,
    min_gain: float = 1e-12,
) -> DecisionTree:
    """A CART regression tree on ``targets`` [N, C] (class probabilities or any vectors): each
    node splits on the feature and threshold that most reduce the squared error about the node
    means (for one-hot targets this is the Gini impurity), greedily, breadth-first, to
    ``max_depth``; a node with fewer than ``2 * min_samples_leaf`` rows, or whose best split
    gains less than ``min_gain``, is a leaf. Leaves hold the mean target, which minimises the
    squared error (and the cross-entropy) of soft labels. inputs: [N, *F], flattened.

    >>> tree = fit_tree(x, teacher_probabilities, max_depth=3)
    >>> print(tree.rules())
    """
    data = _data.as_matrix(inputs)
    values = _data.as_matrix(targets, name="targets")
    if len(values) != len(data):
        raise ValueError(f"targets must have one row per input ({len(data)}), got {len(values)}")
    max_depth = _checks.check_count("max_depth", max_depth, 0)
    min_samples_leaf = _checks.check_count("min_samples_leaf", min_samples_leaf, 1)
    min_gain = _checks.check_number("min_gain", min_gain)
    feature, threshold, left, right, value, samples = [], [], [], [], [], []
    # breadth-first, first in first out: a node's id (given when it is queued) is its position
    # in the arrays, and children come after their parent
    frontier = [(np.arange(len(data)), 0)]
    nodes = 1
    while frontier:
        rows, depth = frontier.pop(0)
        value.append(values[rows].mean(0))
        samples.append(len(rows))
        split = (-1, 0.0, 0.0)
        if depth < max_depth and len(rows) >= 2 * min_samples_leaf:
            split = _best_split(data[rows], values[rows], min_samples_leaf)
        if split[0] < 0 or split[2] < min_gain:
            feature.append(-1)
            threshold.append(0.0)
            left.append(-1)
            right.append(-1)
            continue
        goes_left = data[rows, split[0]] <= split[1]
        feature.append(split[0])
        threshold.append(split[1])
        left.append(nodes)
        right.append(nodes + 1)
        frontier += [(rows[goes_left], depth + 1), (rows[~goes_left], depth + 1)]
        nodes += 2
    return DecisionTree(
        np.asarray(feature, dtype=np.int64),
        np.asarray(threshold, dtype=np.float64),
        np.asarray(left, dtype=np.int64),
        np.asarray(right, dtype=np.int64),
        np.stack(value),
        np.asarray(samples, dtype=np.int64),
    )
