"""Finding poisoned items in a training set from the model's representations: activation
clustering (Chen et al. 2018) and spectral signatures (Tran et al. 2018).

Both read the penultimate activations (by default the input of the last ``nn.Linear``) of
every training item, class by class: poisoned items carry the label of the target class but
the features of their source class plus the trigger, and the trigger's feature separates
them from the genuine members of that class.

>>> found = spectral_signatures(model, x_train, y_train, poison_fraction=0.3)
>>> precision_recall(found.flagged, poisoned.indices)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch

from fastxai import _model, _scheduling
from fastxai._checks import check_count
from fastxai._model import Model
from fastxai.backdoor import _cluster, _representations
from fastxai.backdoor._args import check_data, check_fraction, check_seed

_REDUCTIONS = ("ica", "pca")


class ClusteringResult(NamedTuple):
    """What ``activation_clustering`` returns, for classes ``0 .. K-1`` (``K = max label + 1``).

    flagged: sorted int64 indices of the items in the clusters judged poisoned;
    suspicious: [K] bool, the classes with such a cluster;
    relative_size: [K] float64, the smaller cluster's share of its class (NaN: under 2 items);
    silhouette: [K] float64, the mean silhouette of the class's 2-means split (NaN likewise);
    smaller: [N] bool, whether each item is in the smaller cluster of its class.
    """

    flagged: torch.Tensor
    suspicious: torch.Tensor
    relative_size: torch.Tensor
    silhouette: torch.Tensor
    smaller: torch.Tensor


class SpectralResult(NamedTuple):
    """What ``spectral_signatures`` returns.

    scores: [N] float64, each item's outlier score in its class (0 for classes not examined);
    flagged: sorted int64 indices of the items removed (the top scores of each class).
    """

    scores: torch.Tensor
    flagged: torch.Tensor


def activation_clustering(
    model: Model,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    layer: object = None,
    n_components: int = 10,
    reduction: str = "pca",
    size_threshold: float = 0.35,
    silhouette_threshold: float = 0.10,
    n_init: int = 10,
    seed: int = 0,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> ClusteringResult:
    """Activation clustering (Chen et al. 2018, "Detecting backdoor attacks on deep neural
    networks by activation clustering").

    Per class: the activations [n_c, D] are reduced to ``n_components`` dimensions, split by
    2-means (k-means++, ``n_init`` starts from ``seed``), and the smaller cluster is judged
    poisoned when its relative size is at most ``size_threshold`` and the split's mean
    silhouette at least ``silhouette_threshold`` (a clean class splits into two comparable
    halves, or two overlapping ones).

    ``reduction="ica"`` is the paper's independent components, computed as whitened principal
    components: FastICA only rotates the whitened data, and k-means distances do not see
    rotations. ``"pca"`` (the default) keeps the principal components' variances: whitening
    gives the trigger's direction no more weight than each noise direction (on 3 Gaussian
    classes with 20 planted outliers, PCA finds exactly them; ICA 19 of them and 6 clean items).

    inputs: [N, *F] the (possibly poisoned) training set; labels: [N] its labels; layer: whose
    output to read (a module or its dotted name; None: the input of the last ``nn.Linear``).
    ``dtype=torch.bfloat16`` (or ``torch.float16``): the activation passes run under autocast in
    that dtype (``fastxai._precision``); the activations are clustered in float64 as without it.

    >>> found = activation_clustering(model, x_train, y_train)   # found.flagged, found.suspicious
    """
    model = _model.check_model(model)
    x, y = check_data(inputs, labels)
    n_components = check_count("n_components", n_components, 1)
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    size_threshold = check_fraction("size_threshold", size_threshold)
    if (
        isinstance(silhouette_threshold, bool)
        or not isinstance(silhouette_threshold, (int, float))
        or not -1 <= silhouette_threshold <= 1
    ):
        raise ValueError(f"silhouette_threshold must be a number in [-1, 1], got {silhouette_threshold!r}")
    n_init = check_count("n_init", n_init, 1)
    generator = torch.Generator().manual_seed(check_seed(seed))
    chunk = _scheduling.check_chunk_size(chunk_size)
    features = _representations.read(model, x, layer, chunk, dtype).cpu()
    y = y.cpu()
    classes = int(y.max()) + 1
    relative = torch.full((classes,), float("nan"), dtype=torch.float64)
    scores = torch.full((classes,), float("nan"), dtype=torch.float64)
    suspicious = torch.zeros(classes, dtype=torch.bool)
    smaller = torch.zeros(y.shape[0], dtype=torch.bool)
    for c in range(classes):
        members = (y == c).nonzero().squeeze(1)
        if members.numel() < 2:
            continue
        reduced = _cluster.principal_components(features[members], n_components, whiten=reduction == "ica")
        if reduced.shape[1] == 0:  # every member has the same activation: nothing to split
            relative[c], scores[c] = 0.0, 0.0
            continue
        assignment, _, _ = _cluster.kmeans(reduced, 2, generator=generator, n_init=n_init)
        counts = torch.bincount(assignment, minlength=2)
        minority = int(counts.argmin())
        relative[c] = float(counts[minority]) / members.numel()
        scores[c] = _cluster.silhouette(reduced, assignment)
        smaller[members] = assignment == minority
        suspicious[c] = bool(relative[c] <= size_threshold and scores[c] >= silhouette_threshold)
    flagged = (smaller & suspicious[y]).nonzero().squeeze(1)
    return ClusteringResult(flagged, suspicious, relative, scores, smaller)


def spectral_signatures(
    model: Model,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    poison_fraction: float,
    multiplier: float = 1.5,
    layer: object = None,
    classes: Sequence[int] | None = None,
    chunk_size: int | None = None,
    dtype: torch.dtype | None = None,
) -> SpectralResult:
    """Spectral signatures (Tran et al. 2018, "Spectral signatures in backdoor attacks").

    Per class (all, or those in ``classes``): with ``R`` the activations [n_c, D] centred on
    their mean and ``v`` the top right singular vector of ``R``, item ``i`` scores
    ``tau_i = (R_i . v)^2``; the ``round(multiplier * poison_fraction * n_c)`` top-scoring items
    of the class are removed. ``poison_fraction`` is the paper's epsilon, an upper bound on the
    poisoned share of a class; the poisoned class holds them all, so each clean class examined
    gives up that many clean items too.

    inputs: [N, *F]; labels: [N]; layer and ``dtype``: as in ``activation_clustering``.

    >>> found = spectral_signatures(model, x_train, y_train, poison_fraction=0.3, classes=[0])
    """
    model = _model.check_model(model)
    x, y = check_data(inputs, labels)
    poison_fraction = check_fraction("poison_fraction", poison_fraction)
    if (
        isinstance(multiplier, bool)
        or not isinstance(multiplier, (int, float))
        or not 0 < multiplier < float("inf")
    ):
        raise ValueError(f"multiplier must be a finite number > 0, got {multiplier!r}")
    y = y.cpu()
    present = sorted(int(c) for c in y.unique())
    if classes is None:
        examined = present
    else:
        if (
            not isinstance(classes, Sequence)
            or isinstance(classes, str)
            or not classes
            or not all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
        ):
            raise ValueError(
                f"classes must be None or a non-empty sequence of class indices, got {classes!r}"
            )
        missing = sorted(set(classes) - set(present))
        if missing:
            raise ValueError(f"classes {missing} have no item in labels")
        examined = sorted(set(classes))
    chunk = _scheduling.check_chunk_size(chunk_size)
    features = _representations.read(model, x, layer, chunk, dtype).cpu()
    scores = torch.zeros(y.shape[0], dtype=torch.float64)
    flagged = []
    for c in examined:
        members = (y == c).nonzero().squeeze(1)
        centred = features[members] - features[members].mean(0, keepdim=True)
        # the top right singular vector: of the small D x D Gram matrix when D < n_c
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        tau = (centred @ vh[0]).square()
        scores[members] = tau
        removed = min(members.numel(), round(multiplier * poison_fraction * members.numel()))
        flagged.append(members[tau.argsort(descending=True)[:removed]])
    return SpectralResult(scores, torch.cat(flagged).sort().values)


def precision_recall(flagged: torch.Tensor, poisoned: torch.Tensor) -> tuple[float, float]:
    """(precision, recall) of the ``flagged`` indices against the truly ``poisoned`` ones:
    ``|F & P| / |F|`` (0 when nothing is flagged) and ``|F & P| / |P|``.

    >>> precision_recall(found.flagged, poisoned.indices)
    """
    for name, value in (("flagged", flagged), ("poisoned", poisoned)):
        if not isinstance(value, torch.Tensor) or value.is_floating_point() or value.dim() != 1:
            raise TypeError(f"{name} must be a 1-d integer tensor of indices, got {value!r:.60}")
    if not poisoned.numel():
        raise ValueError("poisoned must hold at least one index (recall is undefined without)")
    flagged_set, poisoned_set = set(flagged.tolist()), set(poisoned.tolist())
    found = len(flagged_set & poisoned_set)
    return (found / len(flagged_set) if flagged_set else 0.0), found / len(poisoned_set)
