"""All routing tables of a constellation, computed on the ground.

For one topology snapshot the ground computes, for every (node, destination),
the next hop and the path cost, and uploads each satellite its own row
(agent/_routing.RoutingTable).

Links are symmetric, so the shortest-path tree rooted at a destination d
holds every node's route to d: node i's predecessor in d's tree is i's next
hop towards d.  One single-source run per destination therefore gives a
whole column of the next-hop table, with no path reconstruction, and
following the tables hop by hop walks down one tree, so it always arrives at
exactly the tree's cost.  The runs use the agent's compiled kernel over all
sources at once (``method="kernel"``) or ``scipy.sparse.csgraph.dijkstra``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from agent._routing import (
    UNREACHABLE_US,
    LinkGraph,
    RoutingTable,
    _to_unix_s,
    path_costs_us,
    sssp_backend,
)

METHODS = ("scipy", "kernel")


@dataclass(eq=False)
class ConstellationTables:
    """Next hop and cost for every (node, destination) of one snapshot.

    ``next_hop[i, d]`` is the index of i's neighbour towards d (i itself on the
    diagonal, -1 when unreachable), int16 when the node count allows;
    ``cost_us[i, d]`` the path cost in microseconds (UNREACHABLE_US when
    unreachable).
    """

    graph: LinkGraph
    next_hop: np.ndarray
    cost_us: np.ndarray
    expires_s: float

    def row(self, node_id: str) -> RoutingTable:
        """The row to upload to ``node_id``, valid-until times included."""
        g = self.graph
        i = g.index_of(node_id)
        return RoutingTable(
            g,
            i,
            self.next_hop[i].astype(np.int32),
            self.cost_us[i].copy(),
            self._valid_until(i),
            self.expires_s,
        )

    def follow(self, source: str, destination: str) -> list[str] | None:
        """The path found by following every node's table hop by hop."""
        g = self.graph
        cur, d = g.index_of(source), g.index_of(destination)
        path = [cur]
        while cur != d:
            cur = int(self.next_hop[cur, d])
            if cur < 0 or len(path) > g.n_nodes:
                return None
            path.append(cur)
        return [g.node_ids[i] for i in path]

    def _valid_until(self, i: int) -> np.ndarray:
        """Per destination: the earliest valid-until of the links on i's path."""
        g = self.graph
        n = g.n_nodes
        keys = np.repeat(np.arange(n, dtype=np.int64), np.diff(g.indptr)) * n
        keys += g.indices
        until = np.full(n, self.expires_s)
        cur = np.full(n, i, dtype=np.int64)
        dest = np.arange(n)
        active = self.next_hop[i].astype(np.int64) >= 0
        active[i] = False
        # walk all destinations' paths at once, one hop per step
        for _ in range(n):
            if not active.any():
                break
            d = dest[active]
            u = cur[active]
            v = self.next_hop[u, d].astype(np.int64)
            slot = np.searchsorted(keys, u * n + v)
            until[d] = np.minimum(until[d], g.valid_until_s[slot])
            cur[d] = v
            active[d] = v != d
        until[self.next_hop[i] < 0] = -math.inf
        return until


def build_tables(
    graph: LinkGraph, *, expires: datetime | float, method: str = "kernel"
) -> ConstellationTables:
    """Compute all next-hop and cost tables of ``graph``.

    ``expires`` is when the snapshot's tables stop being valid (usually the
    next snapshot's time).  ``method`` is ``"kernel"`` (the agent's compiled
    single-source kernel, run from every node) or ``"scipy"``.
    """
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not one of {', '.join(METHODS)}")
    _require_symmetric(graph)
    n = graph.n_nodes
    if method == "scipy":
        dist, pred = _all_pairs_scipy(graph)
    else:
        dist, pred, _first = sssp_backend().sssp_many(
            graph.indptr, graph.indices, graph.weight_us, np.arange(n)
        )

    # row d of dist/pred is the tree rooted at destination d: transpose
    reached = np.isfinite(dist.T)
    cost = np.full((n, n), UNREACHABLE_US, dtype=np.uint32)
    cost[reached] = path_costs_us(dist.T[reached])
    hop_dtype = np.int16 if n <= np.iinfo(np.int16).max else np.int32
    next_hop = pred.T.astype(hop_dtype)
    next_hop[~reached] = -1
    np.fill_diagonal(next_hop, np.arange(n))
    return ConstellationTables(graph, next_hop, cost, _to_unix_s(expires))


def _require_symmetric(graph: LinkGraph) -> None:
    n = graph.n_nodes
    src = np.repeat(np.arange(n, dtype=np.int64), np.diff(graph.indptr))
    dst = graph.indices.astype(np.int64)
    forward = np.lexsort((dst, src))
    backward = np.lexsort((src, dst))
    if not (
        np.array_equal(src[forward], dst[backward])
        and np.array_equal(dst[forward], src[backward])
        and np.array_equal(graph.weight_us[forward], graph.weight_us[backward])
    ):
        raise ValueError(
            "build_tables needs symmetric links (every a->b with an equal b->a); "
            "build the graph with LinkGraph.from_edges"
        )


def _all_pairs_scipy(graph: LinkGraph) -> tuple[np.ndarray, np.ndarray]:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    n = graph.n_nodes
    # csgraph reads a stored zero as "no edge"; a zero-cost link (two nodes
    # at one site) becomes the smallest positive cost instead, which changes
    # no path between distinct positive-cost alternatives.
    weight = np.where(graph.weight_us > 0, graph.weight_us, np.finfo(float).tiny)
    matrix = csr_matrix((weight, graph.indices, graph.indptr), shape=(n, n))
    dist, pred = dijkstra(matrix, directed=True, return_predecessors=True)
    pred = pred.astype(np.int32)
    pred[pred < 0] = -1
    return dist, pred


def tables_for_snapshot(
    series, k: int, *, method: str = "kernel"
) -> ConstellationTables:
    """Tables for snapshot ``k`` of an ISL series, ready to upload row by row.

    Each link's valid-until is the last snapshot of the series that still
    shows it; the tables expire when the next snapshot is due (or, for the
    last one, one step after it).
    """
    snaps = series.snapshots
    if not 0 <= k < len(snaps):
        raise IndexError(f"snapshot {k} is outside the series of {len(snaps)}")
    graph = snaps[k].link_graph(series.edge_valid_until_s(k))
    expires = snaps[k].time.timestamp() + series.step_s
    return build_tables(graph, expires=expires, method=method)
