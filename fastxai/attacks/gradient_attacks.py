"""PGD, FGSM, BIM and MI-FGSM: iterative sign / normalised-gradient attacks on the fused step."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastxai._model import Model
from fastxai.attacks._core import iterative_attack


def pgd(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    norm: str = "linf",
    random_start: bool = True,
    restarts: int = 1,
    targeted: bool = False,
    loss: str = "ce",
    early_stop: bool = False,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    seed: int | None = None,
    backend: str | None = None,
    cuda_graph: bool = False,
    eot_samples: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2018): ``steps`` ascent steps on the loss of
    size ``alpha`` (sign of the gradient for ``linf``, gradient / ||gradient||_2 for ``l2``),
    each projected onto the ``eps``-ball around the input and clamped to ``bounds``.

    - ``labels``: true classes [B] (untargeted), target classes (``targeted=True``), or None
      for the predicted classes.
    - ``loss``: ``"ce"`` (cross-entropy) or ``"margin"`` (the logit margin of Carlini-Wagner).
    - ``random_start``: start from a random point of the ball (torchattacks' distribution).
    - ``restarts``: independent random starts, run together as one batch of ``restarts x B``;
      per sample the result fools the model if any restart did, else has the largest loss.
    - ``early_stop``: a sample stops being updated (and costs nothing more) once it is
      adversarial; it is returned as the first iterate that fooled the model.
    - ``normalize``: (mean, std) per channel when the model expects normalised inputs; ``eps``,
      ``bounds`` and the returned examples stay in input (pixel) space.
    - ``seed``: makes the random start reproducible.
    - ``cuda_graph``: on CUDA, record one whole step (forward, backward, fused step) as a CUDA
      graph and replay it ``steps`` times: no launch or Python cost per operation, which
      dominates small models on a GPU. The model must be capturable (no host synchronisation,
      fixed shapes); not with ``early_stop`` (see ``fastxai.attacks._cuda_graph``).
    - ``eot_samples``: expectation over transformation (Athalye et al. 2018) against a model
      that draws randomness at each call (``fastxai.RandomResizePad``): each step's gradient is
      the mean over that many draws, run as one batch of ``eot_samples x B``; success checks use
      the mean logits. 1 (default) is the plain gradient. For a non-differentiable defence use
      its ``bpda=True`` (straight-through gradient) form.
    - ``dtype``: ``torch.bfloat16`` (or ``torch.float16``) runs every forward and backward of
      the model under autocast in that dtype (``fastxai._precision``); the iterate, the steps
      and the returned examples stay in the inputs' dtype, the loss is taken in float32. The
      README's "bf16" table measures what it costs in attack success.

    inputs: [B, *F] within ``bounds``; returns adversarial examples [B, *F]. The model is left
    as found: mode, ``requires_grad``, hooks, and no gradients in its parameters.

    >>> x_adv = fastxai.pgd(model, x, y, eps=8/255, alpha=2/255, steps=10, seed=0)
    """
    return iterative_attack(
        model,
        inputs,
        labels,
        eps=eps,
        alpha=alpha,
        steps=steps,
        norm=norm,
        random_start_=random_start,
        restarts=restarts,
        targeted=targeted,
        loss=loss,
        early_stop=early_stop,
        bounds=bounds,
        normalize=normalize,
        seed=seed,
        backend=backend,
        cuda_graph=cuda_graph,
        eot_samples=eot_samples,
        dtype=dtype,
    )


def fgsm(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    eps: float = 8 / 255,
    targeted: bool = False,
    loss: str = "ce",
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    backend: str | None = None,
    eot_samples: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): ``clamp(x + eps * sign(grad), bounds)``.

    ``dtype`` as in ``pgd``.

    >>> x_adv = fastxai.fgsm(model, x, y, eps=8/255)
    """
    # the step is eps itself; alpha must be > 0, and with eps = 0 any step is projected away
    zero = isinstance(eps, (int, float)) and not isinstance(eps, bool) and eps == 0
    return iterative_attack(
        model,
        inputs,
        labels,
        eps=eps,
        alpha=1.0 if zero else eps,
        steps=1,
        targeted=targeted,
        loss=loss,
        bounds=bounds,
        normalize=normalize,
        backend=backend,
        eot_samples=eot_samples,
        dtype=dtype,
    )


def bim(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    targeted: bool = False,
    loss: str = "ce",
    early_stop: bool = False,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    backend: str | None = None,
    cuda_graph: bool = False,
    eot_samples: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Basic iterative method / I-FGSM (Kurakin et al. 2017): L-inf PGD from the input itself;
    ``dtype`` as in ``pgd``.

    >>> x_adv = fastxai.bim(model, x, y, eps=8/255, alpha=2/255, steps=10)
    """
    return iterative_attack(
        model,
        inputs,
        labels,
        eps=eps,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        loss=loss,
        early_stop=early_stop,
        bounds=bounds,
        normalize=normalize,
        backend=backend,
        cuda_graph=cuda_graph,
        eot_samples=eot_samples,
        dtype=dtype,
    )


def mifgsm(
    model: Model,
    inputs: torch.Tensor,
    labels: object = None,
    *,
    eps: float = 8 / 255,
    alpha: float = 2 / 255,
    steps: int = 10,
    decay: float = 1.0,
    targeted: bool = False,
    loss: str = "ce",
    early_stop: bool = False,
    bounds: Sequence[float] = (0.0, 1.0),
    normalize: tuple[object, object] | None = None,
    backend: str | None = None,
    cuda_graph: bool = False,
    eot_samples: int = 1,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Momentum iterative FGSM (Dong et al. 2018): ``g <- grad / mean|grad| + decay * g``, then an
    L-inf step along ``sign(g)``, projected and clamped; ``dtype`` as in ``pgd``.

    >>> x_adv = fastxai.mifgsm(model, x, y, eps=8/255, alpha=2/255, steps=10, decay=1.0)
    """
    return iterative_attack(
        model,
        inputs,
        labels,
        eps=eps,
        alpha=alpha,
        steps=steps,
        targeted=targeted,
        loss=loss,
        early_stop=early_stop,
        bounds=bounds,
        normalize=normalize,
        momentum_decay=decay,
        backend=backend,
        cuda_graph=cuda_graph,
        eot_samples=eot_samples,
        dtype=dtype,
    )
