"""PCA, k-means and the silhouette in torch (float64), for the poisoning detectors.

Written here rather than taken from scikit-learn so that the package needs no more than torch;
the tests check each against scikit-learn.
"""

from __future__ import annotations

import torch


def principal_components(points: torch.Tensor, n_components: int, *, whiten: bool = False) -> torch.Tensor:
    """Centred ``points`` [N, D] projected on their top ``min(n_components, N, D)`` principal
    directions: ``U_k S_k`` ([N, k]) from the SVD ``X - mean = U S V^T``; with ``whiten`` every
    component scaled to unit variance, ``U_k sqrt(N - 1)`` (directions of zero variance dropped).

    FastICA (Hyvaerinen 1999) is this whitening followed by an orthogonal rotation, so
    Euclidean distances, and hence k-means on ICA components, are those of the whitened points.
    """
    centred = points.double() - points.double().mean(0, keepdim=True)
    u, s, _ = torch.linalg.svd(centred, full_matrices=False)
    k = min(n_components, s.numel())
    if not whiten:
        return u[:, :k] * s[:k]
    kept = s[:k] > s[0] * 1e-10 if s.numel() else s[:k] > 0
    return u[:, :k][:, kept] * (max(points.shape[0] - 1, 1) ** 0.5)


def _plus_plus_start(points: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means++ seeding (Arthur and Vassilvitskii 2007): the first centre uniformly, each next
    one with probability proportional to the squared distance to the nearest chosen centre."""
    n = points.shape[0]
    first = int(torch.randint(n, (1,), generator=generator))
    centres = [points[first]]
    nearest = (points - points[first]).square().sum(1)
    for _ in range(1, k):
        total = float(nearest.sum())
        if total <= 0:  # every point sits on a centre already: any choice is as good
            choice = int(torch.randint(n, (1,), generator=generator))
        else:
            choice = int(torch.multinomial(nearest / total, 1, generator=generator))
        centres.append(points[choice])
        nearest = torch.minimum(nearest, (points - points[choice]).square().sum(1))
    return torch.stack(centres)


def kmeans(
    points: torch.Tensor, k: int, *, generator: torch.Generator, n_init: int = 10, max_iter: int = 300
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Lloyd's k-means from ``n_init`` k-means++ starts; the run with the least inertia
    ``sum_i min_j ||x_i - c_j||^2`` wins. Returns (labels [N] int64, centres [k, D], inertia).

    A cluster that empties keeps its centre (it can take points back at the next step).
    """
    x = points.double()
    best: tuple[torch.Tensor, torch.Tensor, float] | None = None
    for _ in range(n_init):
        centres = _plus_plus_start(x, k, generator)
        labels = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        for _ in range(max_iter):
            new_labels = torch.cdist(x, centres).argmin(1)
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
            counts = torch.bincount(labels, minlength=k).unsqueeze(1)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        inertia = float((x - centres[labels]).square().sum())
        if best is None or inertia < best[2]:
            best = (labels, centres, inertia)
    assert best is not None
    return best


def silhouette(points: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette (Rousseeuw 1987) of a clustering: per point ``(b - a) / max(a, b)`` with
    ``a`` its mean distance to the rest of its cluster and ``b`` the least mean distance to
    another cluster; 0 for a point alone in its cluster, and 0 when there is one cluster."""
    x = points.double()
    clusters = labels.unique()
    if clusters.numel() < 2:
        return 0.0
    distances = torch.cdist(x, x)
    member = labels.unsqueeze(1) == clusters.unsqueeze(0)  # [N, K]
    sums = distances @ member.double()  # [N, K]: summed distance to each cluster
    sizes = member.sum(0).double()
    own = member.double().argmax(1)
    own_size = sizes[own]
    a = sums.gather(1, own.unsqueeze(1)).squeeze(1) / (own_size - 1).clamp_min(1)
    others = (sums / sizes).masked_fill(member, float("inf"))
    b = others.min(1).values
    score = (b - a) / torch.maximum(a, b).clamp_min(1e-300)
    score = torch.where(own_size > 1, score, torch.zeros_like(score))
    return float(score.mean())
