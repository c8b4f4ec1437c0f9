"""Maximum flow on a small dense graph with real capacities (Dinic's algorithm), for attention flow."""

from __future__ import annotations

import itertools

import numpy as np

_EPS = 1e-12


def max_flow(capacity: np.ndarray, source: int, sink: int) -> float:
    """The value of a maximum ``source`` -> ``sink`` flow, ``capacity[u, v]`` >= 0 on edge u -> v.

    Dinic (1970): breadth-first levels on the residual graph, then a blocking flow along edges
    that climb one level, until the sink is out of reach. Residual capacities at or below 1e-12
    count as saturated. Dense arrays: meant for graphs of a few thousand nodes at most.
    """
    residual = np.array(capacity, dtype=np.float64)
    if source == sink:
        raise ValueError("source and sink must differ")
    total = 0.0
    nodes = residual.shape[0]
    while True:
        level = np.full(nodes, -1)
        level[source] = 0
        frontier, depth = np.array([source]), 0
        while frontier.size and level[sink] < 0:
            depth += 1
            frontier = np.flatnonzero((residual[frontier] > _EPS).any(0) & (level < 0))
            level[frontier] = depth
        if level[sink] < 0:
            return total
        # edges that climb one level, per node; a pointer per node walks them (each dead end once)
        admissible = [
            np.flatnonzero((residual[u] > _EPS) & (level == level[u] + 1)).tolist() if level[u] >= 0 else []
            for u in range(nodes)
        ]
        pointer = [0] * nodes
        while True:
            pushed = _augment(residual, admissible, pointer, source, sink)
            if pushed <= _EPS:
                break
            total += pushed


def _augment(
    residual: np.ndarray, admissible: list[list[int]], pointer: list[int], source: int, sink: int
) -> float:
    """One augmenting path of the level graph (iterative depth-first search), pushed; 0 if none."""
    path = [source]
    while path:
        u = path[-1]
        if u == sink:
            edges = list(itertools.pairwise(path))
            bottleneck = min(float(residual[a, b]) for a, b in edges)
            for a, b in edges:
                residual[a, b] -= bottleneck
                residual[b, a] += bottleneck
            return bottleneck
        candidates = admissible[u]
        while pointer[u] < len(candidates) and residual[u, candidates[pointer[u]]] <= _EPS:
            pointer[u] += 1
        if pointer[u] == len(candidates):
            path.pop()  # a dead end: never entered again in this phase
            if path:
                pointer[path[-1]] += 1
            continue
        path.append(candidates[pointer[u]])
    return 0.0
