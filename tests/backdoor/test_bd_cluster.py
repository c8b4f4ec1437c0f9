"""The torch PCA, k-means and silhouette of the poisoning detectors, against scikit-learn."""

from __future__ import annotations

import pytest
import torch

from fastxai.backdoor import _cluster

pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0, 0.0, 0.0], [4.0, 0.0, 1.0, 0.0], [0.0, 5.0, 0.0, 2.0]])
    labels = torch.arange(3).repeat_interleave(torch.tensor([40, 25, 15]))
    return centres[labels] + torch.randn(80, 4, generator=generator).double()


def test_principal_components_match_sklearn() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    points = (
        torch.randn(60, 7, generator=torch.Generator().manual_seed(1)).double()
        @ torch.randn(7, 7, generator=torch.Generator().manual_seed(2)).double()
    )
    ours = _cluster.principal_components(points, 3)
    theirs = torch.from_numpy(
        decomposition.PCA(n_components=3, svd_solver="full").fit_transform(points.numpy())
    )
    # each component is defined up to its sign
    torch.testing.assert_close(ours.abs(), theirs.abs(), rtol=1e-9, atol=1e-9)
    white = _cluster.principal_components(points, 3, whiten=True)
    torch.testing.assert_close(torch.cov(white.T), torch.eye(3, dtype=torch.float64), rtol=0, atol=1e-9)
    assert _cluster.principal_components(points[:4], 10).shape == (4, 4)  # at most min(N, D) components


def test_ica_distances_are_those_of_the_whitened_components() -> None:
    """FastICA = whitening + a rotation, so k-means sees the same distances (up to sklearn's
    variance convention, one global scale)."""
    decomposition = pytest.importorskip("sklearn.decomposition")
    points = _blobs()
    ica = decomposition.FastICA(
        n_components=3, whiten="unit-variance", random_state=0, max_iter=1000, tol=1e-6
    )
    sources = torch.from_numpy(ica.fit_transform(points.numpy()))
    ours = torch.cdist(
        _cluster.principal_components(points, 3, whiten=True),
        _cluster.principal_components(points, 3, whiten=True),
    )
    theirs = torch.cdist(sources, sources)
    scale = float(theirs.sum() / ours.sum())
    torch.testing.assert_close(ours * scale, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("k", [2, 3])
def test_kmeans_reaches_sklearn_inertia(k: int) -> None:
    cluster = pytest.importorskip("sklearn.cluster")
    points = _blobs(3)
    labels, centres, inertia = _cluster.kmeans(points, k, generator=torch.Generator().manual_seed(0))
    reference = cluster.KMeans(n_clusters=k, n_init=10, random_state=0).fit(points.numpy())
    assert inertia <= reference.inertia_ * (1 + 1e-9)
    # a fixed point of Lloyd's step: every point at its nearest centre, every centre its points' mean
    assert torch.equal(torch.cdist(points, centres).argmin(1), labels)
    for j in range(k):
        torch.testing.assert_close(centres[j], points[labels == j].mean(0))
    assert inertia == pytest.approx(float((points - centres[labels]).square().sum()))
    again = _cluster.kmeans(points, k, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], labels)


def test_silhouette_matches_sklearn() -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    points = _blobs(4)
    labels = torch.arange(3).repeat_interleave(torch.tensor([40, 25, 15]))
    labels[0] = 3  # a singleton cluster scores 0, as in sklearn
    expected = metrics.silhouette_score(points.numpy(), labels.numpy())
    assert _cluster.silhouette(points, labels) == pytest.approx(expected, rel=1e-9)
    assert _cluster.silhouette(points, torch.zeros(80, dtype=torch.long)) == 0.0
