"""Points and weights of the path integral in Integrated Gradients.

``alphas`` are positions on [0, 1] and ``weights`` the quadrature weights: the integral of
g(alpha) is approximated by ``sum_k weights[k] * g(alphas[k])``. The Riemann and
Gauss-Legendre rules place their points as Captum does, so results agree with Captum's.
"""

from __future__ import annotations

import functools

import numpy as np

FIXED_METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


GAUSS_LEGENDRE_MAX_STEPS = 1 << 14
"""The most Gauss-Legendre points: 16384 cost about 1 s of Newton iterations (O(n^2) work,
O(n) memory) and integrate polynomials of degree 32767 exactly; more cannot help a path
integral, and 65536 points already cost 12 s before any model call."""

_LEGGAUSS_MAX_STEPS = 512
"""Up to here numpy's ``leggauss`` (Captum's nodes, bit for bit); it solves a dense n x n
eigenvalue problem, O(n^2) memory and O(n^3) time: 2000 points 0.4 s, 100000 points 74 GiB."""


def minimum_steps(method: str) -> int:
    return 2 if method == "riemann_trapezoid" else 1


def check_method(method: object) -> str:
    """``method``, one of the fixed rules; a ValueError naming it otherwise."""
    if method not in FIXED_METHODS:
        raise ValueError(f"method must be one of {FIXED_METHODS}, got {method!r}")
    return str(method)


def check_steps(method: str, n_steps: object) -> int:
    """``n_steps`` for a fixed rule: an int >= ``minimum_steps(method)``, and for
    ``gausslegendre`` at most ``GAUSS_LEGENDRE_MAX_STEPS``; a ValueError naming it otherwise."""
    low = minimum_steps(method)
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < low:
        raise ValueError(f"n_steps must be an int >= {low} for method {method!r}, got {n_steps!r}")
    if method == "gausslegendre" and n_steps > GAUSS_LEGENDRE_MAX_STEPS:
        raise ValueError(
            f"n_steps={n_steps}: Gauss-Legendre takes at most {GAUSS_LEGENDRE_MAX_STEPS} points (exact for "
            f"polynomials of degree {2 * GAUSS_LEGENDRE_MAX_STEPS - 1}; computing more nodes costs O(n^2) "
            "before any model call); use fewer steps or a riemann_* method"
        )
    return n_steps


def bytes_per_step(batch: int) -> int:
    """Memory a fixed rule holds per step for a batch of ``batch`` inputs: the float64 points and
    weights (numpy, Python lists, tensors) and the [n_steps, B] target scores."""
    return 96 + 8 * batch


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
    check_steps(method, n_steps)
    n = n_steps
    if method == "gausslegendre":
        if n <= _LEGGAUSS_MAX_STEPS:
            nodes, gauss_weights = np.polynomial.legendre.leggauss(n)
        else:
            nodes, gauss_weights = _gauss_legendre_newton(n)
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


def _legendre(n: int, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(P_n(x), P_n'(x)) by the three-term recurrence ``j P_j = (2j - 1) x P_{j-1} - (j - 1) P_{j-2}``."""
    p0, p1 = np.ones_like(x), x.copy()
    for j in range(2, n + 1):
        p0, p1 = p1, ((2 * j - 1) * x * p1 - (j - 1) * p0) / j
    return p1, n * (x * p1 - p0) / (x * x - 1.0)


def _gauss_legendre_newton(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [-1, 1] in O(n^2) time and O(n) memory: Newton's
    method on P_n from Tricomi's estimates ``cos(pi (4k - 1) / (4n + 2)) (1 - (n - 1) / (8 n^3))``
    (converging in 2-3 steps), weights ``2 / ((1 - x^2) P_n'(x)^2)``; half the nodes by symmetry.
    Agrees with ``leggauss`` to 1e-16 (nodes) and 1e-13 (weights) at n = 1000."""
    half = (n + 1) // 2
    k = np.arange(1, half + 1, dtype=np.float64)
    x = np.cos(np.pi * (4 * k - 1) / (4 * n + 2)) * (1 - (n - 1) / (8.0 * n**3))
    for _ in range(10):
        value, slope = _legendre(n, x)
        step = value / slope
        x = x - step
        if float(np.max(np.abs(step))) < 1e-15:
            break
    _, slope = _legendre(n, x)
    w = 2.0 / ((1.0 - x * x) * slope * slope)
    # x runs from near 1 down; leggauss returns ascending nodes
    return np.concatenate([-x, x[: n // 2][::-1]]), np.concatenate([w, w[: n // 2][::-1]])
