"""Time of the Gauss-Legendre nodes: numpy's dense ``leggauss`` against the O(n) Newton
iteration the quadrature uses above 512 points, and their agreement.

    PYTHONPATH=. python benchmarks/gauss_legendre_nodes.py
"""

from __future__ import annotations

import time

import numpy as np

from fastxai.attribution import quadrature


def _timed(fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - start, out


def main() -> None:
    seconds, _ = _timed(np.polynomial.legendre.leggauss, 2000)
    print(f"leggauss(2000): {seconds:.2f} s")
    ref_nodes, _ = np.polynomial.legendre.leggauss(600)
    nodes, _ = quadrature._gauss_legendre_newton(600)
    print(f"600 points: max |Newton - leggauss| in the nodes {np.abs(nodes - ref_nodes).max():.1e}")
    for n in (6000, 16384, 65536):
        seconds, _ = _timed(quadrature._gauss_legendre_newton, n)
        print(f"Newton {n} points: {seconds:.2f} s")


if __name__ == "__main__":
    main()
