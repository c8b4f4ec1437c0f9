"""Points and weights of the path integral in Integrated Gradients.

``alphas`` are positions on [0, 1] and ``weights`` the quadrature weights: the integral of
g(alpha) is approximated by ``sum_k weights[k] * g(alphas[k])``. The Riemann and
Gauss-Legendre rules place their points as Captum does, so results agree with Captum's.
"""

from __future__ import annotations

import functools

import numpy as np

FIXED_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def minimum_steps(method: str) -> int:
    return 2 if method == "riemann_trapezoid" else 1


def points_and_weights(
    method: str, n_steps: int, *, captum_trapezoid: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) as float64 arrays of length ``n_steps``.

    ``riemann_trapezoid`` is the true trapezoid rule on ``n_steps`` evenly spaced points
    (weights sum to 1). Captum's version uses step 1/n with halved end weights, so its weights
    sum to (n-1)/n; ``captum_trapezoid=True`` reproduces that for the Captum drop-in.
    """
    alphas, weights = _points_and_weights(method, n_steps, captum_trapezoid)
    return alphas.copy(), weights.copy()


@functools.lru_cache(maxsize=64)  # Gauss-Legendre nodes cost an eigenvalue problem per call
def _points_and_weights(method: str, n_steps: int, captum_trapezoid: bool) -> tuple[np.ndarray, np.ndarray]:
    if method not in FIXED_METHODS:
        raise ValueError(f"method must be one of {(*FIXED_METHODS, 'adaptive')}, got {method!r}")
    if n_steps < minimum_steps(method):
        raise ValueError(f"n_steps must be >= {minimum_steps(method)} for {method}, got {n_steps}")
    n = n_steps
    if method == "gausslegendre":
        nodes, gauss_weights = np.polynomial.legendre.leggauss(n)
        return 0.5 * (nodes + 1.0), 0.5 * gauss_weights
    if method == "riemann_trapezoid":
        alphas = np.linspace(0.0, 1.0, n)
        step = 1.0 / n if captum_trapezoid else 1.0 / (n - 1)
        weights = np.full(n, step)
        weights[[0, -1]] /= 2.0
        return alphas, weights
    offsets = {"riemann_left": 0.0, "riemann_middle": 0.5, "riemann_right": 1.0}
    alphas = (np.arange(n) + offsets[method]) / n
    return alphas, np.full(n, 1.0 / n)
