"""The CART student: recovery of a planted depth-2 tree, splits against brute force, rules."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fastxai.surrogate import distill, fit_tree


def _planted(x: torch.Tensor) -> torch.Tensor:
    """A depth-2 tree with four leaves of four classes: x3 <= 0.35, then x1 <= -0.25 or x5 <= 0.55."""
    leaf = torch.where(
        x[:, 3] <= 0.35, torch.where(x[:, 1] <= -0.25, 0, 1), torch.where(x[:, 5] <= 0.55, 2, 3)
    )
    return 3.0 * torch.nn.functional.one_hot(leaf, 4).double()


def _grid(rows: int, seed: int) -> torch.Tensor:
    # values on a 0.1 grid: every threshold of the planted tree lies midway between two of them
    return torch.randint(-10, 11, (rows, 8), generator=torch.Generator().manual_seed(seed)).double() / 10


def test_a_depth_two_teacher_tree_is_recovered() -> None:
    result = distill(_planted, _grid(500, 0), student="tree", max_depth=2, test_inputs=_grid(300, 1))
    assert result.fidelity == 1.0 and result.train_fidelity == 1.0
    tree = result.student
    assert tree.depth == 2 and tree.feature[0] == 3
    assert tree.feature[tree.left[0]] == 1 and tree.feature[tree.right[0]] == 5
    np.testing.assert_allclose(
        [tree.threshold[0], tree.threshold[tree.left[0]], tree.threshold[tree.right[0]]],
        [0.35, -0.25, 0.55],
        atol=1e-12,
    )
    rules = tree.rules(feature_names=[f"f{i}" for i in range(8)], class_names=["a", "b", "c", "d"])
    assert rules.splitlines()[0] == "|--- f3 <= 0.35"
    assert "|   |--- f1 <= -0.25" in rules and "|   |--- f5 >  0.55" in rules
    assert sum(line.strip("| -").startswith("class") for line in rules.splitlines()) == 4


def _squared_error(targets: np.ndarray) -> float:
    return float(((targets - targets.mean(0)) ** 2).sum()) if len(targets) else 0.0


def test_root_split_is_the_brute_force_best_and_leaves_hold_the_mixed_target_means() -> None:
    generator = np.random.default_rng(0)
    data = np.round(generator.normal(size=(60, 4)), 1)
    soft = generator.dirichlet(np.ones(3), size=60)
    best = (np.inf, -1, 0.0)
    for feature in range(4):
        values = np.unique(data[:, feature])
        for low, high in itertools.pairwise(values):
            threshold = (low + high) / 2
            left = data[:, feature] <= threshold
            if left.sum() < 5 or (~left).sum() < 5:
                continue
            error = _squared_error(soft[left]) + _squared_error(soft[~left])
            if error < best[0] - 1e-12:
                best = (error, feature, threshold)
    tree = fit_tree(data, soft, max_depth=1, min_samples_leaf=5)
    assert (tree.feature[0], tree.threshold[0]) == pytest.approx((best[1], best[2]))
    left = data[:, best[1]] <= best[2]
    np.testing.assert_allclose(tree.value[tree.left[0]], soft[left].mean(0))
    np.testing.assert_allclose(tree.value[tree.right[0]], soft[~left].mean(0))
    probabilities = tree(torch.from_numpy(data))
    assert probabilities.shape == (60, 3)
    torch.testing.assert_close(probabilities.sum(1), torch.ones(60, dtype=torch.float64))


def test_alpha_mixes_soft_and_hard_labels_in_the_leaves() -> None:
    x = _grid(200, 2)
    labels = torch.randint(0, 4, (200,), generator=torch.Generator().manual_seed(3))
    result = distill(_planted, x, labels, student="tree", alpha=0.25, max_depth=0)
    soft = _planted(x).softmax(1)
    expected = 0.25 * soft.mean(0) + 0.75 * torch.nn.functional.one_hot(labels, 4).double().mean(0)
    np.testing.assert_allclose(result.student.value[0], expected.numpy())


def test_min_samples_leaf_and_depth_limit() -> None:
    x = _grid(300, 4)
    tree = distill(_planted, x, student="tree", max_depth=5, min_samples_leaf=40).student
    assert tree.depth <= 5
    assert tree.samples[tree.feature < 0].min() >= 40


def test_bad_tree_arguments() -> None:
    with pytest.raises(ValueError, match="max_depth must be an int >= 0"):
        fit_tree(np.zeros((4, 2)), np.zeros((4, 1)), max_depth=-1)
    with pytest.raises(ValueError, match="targets must have one row per input"):
        fit_tree(np.zeros((4, 2)), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="inputs contain NaN"):
        fit_tree(np.full((4, 2), np.nan), np.zeros((4, 1)))
    tree = fit_tree(np.arange(8.0).reshape(4, 2), np.eye(2)[[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="class_names must have 2 names"):
        tree.rules(class_names=["a"])
