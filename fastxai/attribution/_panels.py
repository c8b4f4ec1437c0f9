"""Nested Gauss panels of the adaptive path integral and the free split of its error.

Rules on a panel ``[a, b]`` (nodes and weights on ``[0, 1]``, all nodes interior):
``g1`` (the midpoint), ``g3`` (3-point Gauss-Legendre, exact to degree 5, which holds the
midpoint: it is the Kronrod extension of ``g1``) and ``k7`` (the 7-point Kronrod extension of
``g3``, exact to degree 11). Raising a panel's rule keeps all its points.

The same points also carry *cells*: one midpoint panel per node, the cells' ends found from
the left end as ``e_{k+1} = 2 c_k - e_k`` (they end at ``b`` because the rules are symmetric).
A panel can so be cut into midpoint panels without a model call; its points stay in use.

The error split. Along the path ``f(p(t))`` rises by ``int s`` (``s = grad f . (x - x')``, the
slope), and the value ``f`` comes with every gradient. A panel's Hermite interpolant ``q``
(through its nodes' values and slopes) splits the panel's rule ``Q`` into the rise between its
first and last node (known exactly: a difference of values), a left part ``q(c_1) - q(a)``, a
right part ``q(b) - q(c_k)`` and a remainder ``Q - (q(b) - q(a))`` (zero for ``g1`` and ``g3``,
which integrate ``q'`` exactly). With ``f(0)`` and ``f(1)`` known, the completeness error of
the whole rule is then exactly

    sum_panels Q - (f(1) - f(0)) = sum_boundaries m_j + sum_panels remainder,
    m_j = right part (panel left of j) + left part (panel right of j)
          - (f(first node right of j) - f(last node left of j)),

each ``m_j`` the local misfit of the two interpolants across boundary ``j`` (``f(0)``, ``f(1)``
at the ends of the path). It is zero where the path's ``f`` is a polynomial of the panels'
degree, and large at kinks and curvature. ``sum |m_j|`` bounds the completeness error without
the cancellation that can make the signed sum small by luck.
"""

from __future__ import annotations

import functools

import numpy as np

_K7_NODES = (
    0.960491268708020283423507092629080,
    0.774596669241483377035853079956480,
    0.434243749346802558002071502844628,
)
_K7_WEIGHTS = (
    0.104656226026467265193823857192073, 0.268488089868333440728569280666710,
    0.401397414775962222905051818618432, 0.450916538658474142345110087045571,
)  # fmt: skip

RAISE = {"g1": "g3", "g3": "k7"}
"""The next nested rule: its new points join the panel's."""


@functools.cache
def rule(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, weights) on [0, 1], nodes ascending."""
    if name == "g1":
        nodes, weights = np.array([0.0]), np.array([2.0])
    elif name == "g3":
        r = np.sqrt(0.6)
        nodes, weights = np.array([-r, 0.0, r]), np.array([5.0, 8.0, 5.0]) / 9
    elif name == "k7":
        x, w = np.array(_K7_NODES), np.array(_K7_WEIGHTS)
        nodes = np.concatenate([-x, [0.0], x[::-1]])
        weights = np.concatenate([w[:3], [w[3]], w[:3][::-1]])
    else:
        raise ValueError(f"unknown panel rule {name!r}")
    return (nodes + 1) / 2, weights / 2


def new_nodes(name: str) -> np.ndarray:
    """The nodes on [0, 1] that raising ``name`` adds."""
    old = rule(name)[0]
    nodes = rule(RAISE[name])[0]
    return np.array([t for t in nodes if np.min(np.abs(old - t)) > 1e-12])


@functools.cache
def parts(name: str) -> np.ndarray:
    """Rows (left part, right part, remainder) [3, 2k] acting on the data
    ``(f(c_1), ..., f(c_k), h s(c_1), ..., h s(c_k))`` of a panel of width ``h``."""
    nodes, weights = rule(name)
    k = nodes.size
    degree = 2 * k
    u = 2 * nodes - 1  # Legendre-friendly coordinates on [-1, 1]
    powers = np.arange(degree)
    values = u[:, None] ** powers
    # d/dt of u^j is 2 j u^(j-1)
    slopes = 2 * powers * np.where(powers > 0, u[:, None] ** np.maximum(powers - 1, 0), 0.0)
    coefficients = np.linalg.inv(np.vstack([values, slopes]))  # [degree, 2k]: data -> q's coefficients

    def at(point: float) -> np.ndarray:
        return (point**powers) @ coefficients

    left = at(u[0]) - at(-1.0)
    right = at(1.0) - at(u[-1])
    rule_row = np.concatenate([np.zeros(k), weights])
    remainder = rule_row - (at(1.0) - at(-1.0))
    return np.vstack([left, right, remainder])


def cells(name: str) -> np.ndarray:
    """The ends [k + 1] on [0, 1] of the midpoint cells centred on ``name``'s nodes."""
    ends = [0.0]
    for c in rule(name)[0]:
        ends.append(2 * c - ends[-1])
    return np.array(ends)
