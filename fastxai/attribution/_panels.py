"""Nested Gauss panels of the adaptive path integral and the free split of its error.

Rules on a panel ``[a, b]`` (nodes and weights on ``[0, 1]``, all nodes interior):
``g1`` (the midpoint), ``g3`` (3-point Gauss-Legendre, exact to degree 5, which holds the
midpoint: it is the Kronrod extension of ``g1``), ``k7`` (the 7-point Kronrod extension of
``g3``, exact to degree 11) and its Patterson extensions ``k15`` (8 new points, exact to degree
23) and ``k31`` (16 more, exact to degree 47): the family 1, 3, 7, 15, 31 of nested rules with
positive weights. Raising a panel's rule keeps all its points.

The same points also carry *cells*: one midpoint panel per node, the cells' ends found from
the left end as ``e_{k+1} = 2 c_k - e_k`` (they end at ``b`` because the rules are symmetric).
A panel can so be cut into midpoint panels without a model call; its points stay in use.

The error split. Along the path ``f(p(t))`` rises by ``int s`` (``s = grad f . (x - x')``, the
slope), and the value ``f`` comes with every gradient. A panel's Hermite interpolant ``q``
(through its nodes' values and slopes) splits the panel's rule ``Q`` into the rise between its
first and last node (known exactly: a difference of values), a left part ``q(c_1) - q(a)``, a
right part ``q(b) - q(c_k)`` and a remainder ``Q - (q(b) - q(a))`` (zero for ``g1`` and ``g3``,
which integrate ``q'`` exactly; not for ``k7``, ``k15``, ``k31``, whose ``q'`` has degree 12, 28,
60 against their exactness 11, 23, 47). The remainder's row is the rule's minus the left and
right parts' minus ``f(c_k) - f(c_1)`` as data, so the split below holds to rounding whatever the
error of the interpolant's coefficients (``q`` is written in Legendre polynomials: the 62 x 62
Hermite system of ``k31`` has condition 9e5 there, 1e11 already for ``k15`` in monomials; its
rows reproduce a polynomial's parts to 2e-13). With ``f(0)`` and ``f(1)`` known, the completeness
error of the whole rule is then exactly

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
from numpy.polynomial import legendre

_K7_NODES = (
    0.960491268708020283423507092629080,
    0.774596669241483377035853079956480,
    0.434243749346802558002071502844628,
)
_K7_WEIGHTS = (
    0.104656226026467265193823857192073, 0.268488089868333440728569280666710,
    0.401397414775962222905051818618432, 0.450916538658474142345110087045571,
)  # fmt: skip
_K15_NODES = (
    0.993831963212755022208512841307951, 0.960491268708020283423507092629080,
    0.888459232872256998890420167258503, 0.774596669241483377035853079956480,
    0.621102946737226402940687443816595, 0.434243749346802558002071502844628,
    0.223386686428966881628203986843998,
)  # fmt: skip
_K15_WEIGHTS = (
    0.0170017196299402603390274174026535, 0.0516032829970797396969201205678610,
    0.0929271953151245376858942226541688, 0.134415255243784220359968764802492,
    0.171511909136391380787353165019717, 0.200628529376989021033931873331359,
    0.219156858401587496403693161643774, 0.225510499798206687386422549155950,
)  # fmt: skip
"""The 15-point Patterson extension of ``k7`` on [-1, 1]: the positive nodes descending and the
weights (the last one the centre's), exact to degree 23. Derived in 60-digit arithmetic (mpmath):
the 8 new nodes are the roots of the even monic ``G(x) = x^8 + c6 x^6 + ... + c0`` with
``int_{-1}^{1} P(x) G(x) x^j dx = 0`` for odd ``j < 8`` (``P`` the node polynomial of ``k7``; the
even ``j`` vanish by symmetry, so the 15 nodes are exact to ``15 + 9 - 1 = 23``); the weights
solve the moment equations ``sum_i w_i x_i^k = int x^k`` for k < 15 on all 15 nodes. Checked
there: the roots real, simple and in (-1, 1), interlacing ``k7``'s nodes; every weight positive;
the rule exact for ``x^k``, k <= 23, to 1e-45, and not for ``x^24``; the same construction from
``g3`` reproduces ``_K7_NODES`` to 2e-34. ``scripts/patterson_rules.py`` redoes all of it;
``tests/attribution/test_adaptive_ig.py`` rechecks nesting, positivity and exactness in float64."""

_K31_NODES = (
    0.999098124967667597662226062412998, 0.993831963212755022208512841307951,
    0.981531149553740106867361888547026, 0.960491268708020283423507092629080,
    0.929654857429740056670125725933374, 0.888459232872256998890420167258503,
    0.836725938168868735502753818110222, 0.774596669241483377035853079956480,
    0.702496206491527078609800156008001, 0.621102946737226402940687443816595,
    0.531319743644375623972103438052469, 0.434243749346802558002071502844628,
    0.331135393257976833092640782248747, 0.223386686428966881628203986843998,
    0.112488943133186625745843327560319,
)  # fmt: skip
_K31_WEIGHTS = (
    0.00254478079156187441540278232983104, 0.00843456573932110624631492964416020,
    0.0164460498543878109337883880689800, 0.0258075980961766535646461187652328,
    0.0359571033071293220967778262209700, 0.0464628932617579865414046429639417,
    0.0569795094941233574121973665457200, 0.0672077542959907035404010635813430,
    0.0768796204990035310427051900809456, 0.0857559200499903511541865204367977,
    0.0936271099812644736166587803392599, 0.100314278611795578771293642695006,
    0.105669893580234809743815890442169, 0.109578421055924638236688360572517,
    0.111956873020953456880143562321224, 0.112755256720768691607149869983805,
)  # fmt: skip
"""The 31-point Patterson extension of ``k15``, the same way (``G`` of degree 16, odd ``j < 16``),
exact to degree 47: 31 + 17 - 1. Checked as ``k15`` (exact to 1e-45 up to ``x^47``)."""

_SYMMETRIC = {
    "k7": (_K7_NODES, _K7_WEIGHTS),
    "k15": (_K15_NODES, _K15_WEIGHTS),
    "k31": (_K31_NODES, _K31_WEIGHTS),
}

RAISE = {"g1": "g3", "g3": "k7", "k7": "k15", "k15": "k31"}
"""The next nested rule: its new points join the panel's."""


@functools.cache
def rule(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(nodes, weights) on [0, 1], nodes ascending."""
    if name == "g1":
        nodes, weights = np.array([0.0]), np.array([2.0])
    elif name == "g3":
        r = np.sqrt(0.6)
        nodes, weights = np.array([-r, 0.0, r]), np.array([5.0, 8.0, 5.0]) / 9
    elif name in _SYMMETRIC:
        x, w = (np.array(half) for half in _SYMMETRIC[name])
        nodes = np.concatenate([-x, [0.0], x[::-1]])
        weights = np.concatenate([w[:-1], w[-1:], w[-2::-1]])
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
    u = 2 * nodes - 1  # on [-1, 1], where q is written in Legendre polynomials
    values = legendre.legvander(u, degree - 1)
    # d/dt = 2 d/du
    slopes = 2 * np.stack([legendre.legval(u, legendre.legder(e)) for e in np.eye(degree)], axis=1)
    # data -> q's coefficients [degree, 2k]; the Legendre basis keeps it well conditioned
    # (k15: condition 9e2, against 1e11 in monomials)
    coefficients = np.linalg.inv(np.vstack([values, slopes]))

    def at(point: float) -> np.ndarray:
        return legendre.legvander(np.array([point]), degree - 1)[0] @ coefficients

    left = at(u[0]) - at(-1.0)
    right = at(1.0) - at(u[-1])
    rule_row = np.concatenate([np.zeros(k), weights])
    # Q - (q(b) - q(a)) = Q - left - right - (f(c_k) - f(c_1)), the last exact as a difference
    # of data: the split stays exact to rounding whatever the inverse's error
    rise = np.zeros(2 * k)
    rise[k - 1] += 1.0
    rise[0] -= 1.0
    remainder = rule_row - left - right - rise
    return np.vstack([left, right, remainder])


def cells(name: str) -> np.ndarray:
    """The ends [k + 1] on [0, 1] of the midpoint cells centred on ``name``'s nodes."""
    ends = [0.0]
    for c in rule(name)[0]:
        ends.append(2 * c - ends[-1])
    return np.array(ends)
