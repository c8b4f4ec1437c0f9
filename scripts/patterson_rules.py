"""Derive the Patterson extensions of the 7-point Kronrod rule that ``fastxai.attribution._panels``
holds (``_K15_*``, ``_K31_*``), in 60-digit arithmetic, and check them.

``python scripts/patterson_rules.py``: prints the positive nodes (descending) and their weights on
[-1, 1] for ``k7`` (from ``g3``, as a check of the construction), ``k15`` and ``k31``, and asserts:
the new nodes real, simple, in (-1, 1) and interlacing the old ones; every weight positive; the rule
exact for ``x^k`` up to degree 11, 23, 47 and not for the next (even) power; the printed digits
equal to the module's constants to 1e-16.

Construction: the extension of a symmetric rule with ``n`` nodes (node polynomial ``P``, odd) by
``n + 1`` nodes is the even monic ``G`` of degree ``n + 1`` with ``int_{-1}^{1} P G x^j dx = 0``
for odd ``j < n + 1`` (even ``j`` vanish by symmetry, ``j = n + 1`` too); the ``2 n + 1`` nodes
then integrate ``x^k`` exactly for ``k <= 3 n + 2`` (7 -> 15: 23; 15 -> 31: 47). The weights solve
the moment equations on all nodes.
"""

from __future__ import annotations

import itertools

import mpmath as mp

mp.mp.dps = 60


def _multiply(a: list, b: list) -> list:
    out = [mp.mpf(0)] * (len(a) + len(b) - 1)
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            out[i + j] += x * y
    return out


def _moment(k: int) -> mp.mpf:
    """``int_{-1}^{1} x^k dx``."""
    return mp.mpf(0) if k % 2 else mp.mpf(2) / (k + 1)


def _integral(coefficients: list) -> mp.mpf:
    return mp.fsum(c * _moment(i) for i, c in enumerate(coefficients))


def extend(nodes: list) -> list:
    """All nodes (ascending) of the Patterson extension of the symmetric rule on ``nodes``."""
    count = len(nodes) + 1  # new nodes, even
    node_polynomial = [mp.mpf(1)]
    for x in nodes:
        node_polynomial = _multiply(node_polynomial, [-x, mp.mpf(1)])
    unknowns = range(0, count, 2)  # G = x^count + sum c_j x^j, j even
    rows, right = [], []
    for j in range(1, count, 2):
        rows.append([_integral(_multiply(node_polynomial, [0] * (i + j) + [1])) for i in unknowns])
        right.append(-_integral(_multiply(node_polynomial, [0] * (count + j) + [1])))
    c = mp.lu_solve(mp.matrix(rows), mp.matrix(right))
    in_square = [c[i] for i in range(len(unknowns))] + [mp.mpf(1)]  # G as a polynomial in x^2
    new = []
    for root in mp.polyroots(in_square[::-1], maxsteps=500, extraprec=400):
        assert abs(mp.im(root)) < mp.mpf(10) ** -40 and 0 < mp.re(root) < 1, root
        new += [mp.sqrt(mp.re(root)), -mp.sqrt(mp.re(root))]
    everything = sorted(nodes + new)
    assert min(b - a for a, b in itertools.pairwise(everything)) > mp.mpf(10) ** -6
    # interlacing: old and new alternate
    kinds = [x in nodes for x in everything]
    assert all(a != b for a, b in itertools.pairwise(kinds))
    return everything


def weights(nodes: list) -> list:
    matrix = mp.matrix([[x**k for x in nodes] for k in range(len(nodes))])
    return list(mp.lu_solve(matrix, mp.matrix([_moment(k) for k in range(len(nodes))])))


def degree(nodes: list, w: list) -> int:
    """The highest ``d`` with the rule exact (to 1e-45) for every ``x^k``, ``k <= d``."""
    d = 0
    while abs(mp.fsum(a * x ** (d + 1) for a, x in zip(w, nodes, strict=True)) - _moment(d + 1)) < 1e-45:
        d += 1
    return d


def main() -> None:
    from fastxai.attribution import _panels

    g3 = [-mp.sqrt(mp.mpf(3) / 5), mp.mpf(0), mp.sqrt(mp.mpf(3) / 5)]
    k7 = extend(g3)
    k15 = extend(k7)
    k31 = extend(k15)
    stored = {
        "k7": (_panels._K7_NODES, _panels._K7_WEIGHTS),
        "k15": (_panels._K15_NODES, _panels._K15_WEIGHTS),
        "k31": (_panels._K31_NODES, _panels._K31_WEIGHTS),
    }
    for name, nodes, exact in (("k7", k7, 11), ("k15", k15, 23), ("k31", k31, 47)):
        w = weights(nodes)
        assert min(w) > 0
        assert degree(nodes, w) == exact, (name, degree(nodes, w))
        half = [(x, a) for x, a in zip(nodes, w, strict=True) if x > 0][::-1]
        centre = w[len(nodes) // 2]
        store_nodes, store_weights = stored[name]
        assert all(abs(float(x) - s) < 1e-16 for (x, _), s in zip(half, store_nodes, strict=True))
        assert all(abs(float(a) - s) < 1e-16 for (_, a), s in zip(half, store_weights[:-1], strict=True))
        assert abs(float(centre) - store_weights[-1]) < 1e-16
        print(f"{name}: exact to degree {exact}, smallest weight {mp.nstr(min(w), 6)}")
        for x, a in half:
            print(f"  {mp.nstr(x, 33)}  {mp.nstr(a, 33)}")
        print(f"  0 (centre)  {mp.nstr(centre, 33)}")


if __name__ == "__main__":
    main()
