"""A mesh of satellites and ground gateways, and routes through it.

``SpaceMesh`` holds nodes and undirected links (bandwidth, latency, up/down)
and finds routes by latency, by hop count, or by bandwidth (the widest path:
the largest bottleneck, and among the widest the lowest latency).  Shortest
paths run on the compiled single-source kernel (agent/kernels), so the mesh
needs neither scipy nor networkx.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from agent._geo import SPEED_OF_LIGHT_KM_S, Position
from agent._routing import LinkGraph, shortest_paths

METRICS = ("latency", "hops", "bandwidth")


@dataclass(frozen=True, slots=True)
class MeshNode:
    """A satellite or ground gateway; ``position`` is optional."""

    node_id: str
    position: Position | None = None
    is_ground: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.node_id, str) or not self.node_id:
            raise ValueError(
                f"node_id must be a non-empty string, got {self.node_id!r}"
            )


@dataclass(frozen=True, slots=True)
class MeshLink:
    """An undirected link between two nodes."""

    a: str
    b: str
    bandwidth_mbps: float
    latency_ms: float
    up: bool = True


@dataclass(frozen=True, slots=True)
class Route:
    """A path through the mesh and what it costs."""

    hops: tuple[str, ...]
    total_latency_ms: float
    bottleneck_mbps: float
    total_distance_km: float | None
    metric: str = "latency"

    @property
    def hop_count(self) -> int:
        """Number of links on the route (0 when source is the destination)."""
        return len(self.hops) - 1


class SpaceMesh:
    """Nodes and links of a satellite network, with route finding."""

    def __init__(self) -> None:
        self._nodes: dict[str, MeshNode] = {}
        self._links: dict[tuple[str, str], MeshLink] = {}
        self._adjacent: dict[str, set[str]] = {}
        self._csr: _Csr | None = None

    # -- building ------------------------------------------------------------

    def add_node(self, node: MeshNode) -> None:
        """Add a node, or replace the node with the same id (keeping its links)."""
        if not isinstance(node, MeshNode):
            raise TypeError(f"add_node takes a MeshNode, got {type(node).__name__}")
        if node.node_id not in self._nodes:
            self._adjacent[node.node_id] = set()
            self._csr = None
        self._nodes[node.node_id] = node

    def remove_node(self, node_id: str) -> None:
        """Remove a node and all its links; KeyError naming it if unknown."""
        self._require(node_id)
        for other in list(self._adjacent[node_id]):
            self.remove_link(node_id, other)
        del self._adjacent[node_id]
        del self._nodes[node_id]
        self._csr = None

    def add_link(
        self,
        a: str,
        b: str,
        bandwidth_mbps: float,
        latency_ms: float | None = None,
        *,
        up: bool = True,
    ) -> MeshLink:
        """Add (or replace) the undirected link a-b.

        Without ``latency_ms`` the latency is the light time over the distance
        between the two nodes' positions, which must then both be known.
        """
        self._require(a)
        self._require(b)
        if a == b:
            raise ValueError(f"a link needs two different nodes, got {a!r} twice")
        if not (
            isinstance(bandwidth_mbps, numbers.Real) and 0 < bandwidth_mbps < math.inf
        ):
            raise ValueError(
                f"bandwidth_mbps={bandwidth_mbps!r} for link {a!r}-{b!r} must be a "
                "finite number > 0"
            )
        if latency_ms is None:
            distance = self._distance_km(a, b)
            if distance is None:
                raise ValueError(
                    f"link {a!r}-{b!r} has no latency_ms and the nodes' positions "
                    "are not both known; pass latency_ms"
                )
            latency_ms = distance / SPEED_OF_LIGHT_KM_S * 1000.0
        if not (
            isinstance(latency_ms, numbers.Real)
            and math.isfinite(latency_ms)
            and latency_ms >= 0
        ):
            raise ValueError(
                f"latency_ms={latency_ms!r} for link {a!r}-{b!r} must be a finite "
                "number >= 0"
            )
        link = MeshLink(a, b, float(bandwidth_mbps), float(latency_ms), bool(up))
        self._links[_key(a, b)] = link
        self._adjacent[a].add(b)
        self._adjacent[b].add(a)
        self._csr = None
        return link

    def remove_link(self, a: str, b: str) -> None:
        """Remove the link a-b; KeyError if there is none."""
        key = self._link_key(a, b)
        del self._links[key]
        self._adjacent[a].discard(b)
        self._adjacent[b].discard(a)
        self._csr = None

    def set_link_up(self, a: str, b: str, up: bool) -> None:
        """Mark the link a-b up or down; a down link carries no routes."""
        key = self._link_key(a, b)
        link = self._links[key]
        self._links[key] = MeshLink(
            link.a, link.b, link.bandwidth_mbps, link.latency_ms, bool(up)
        )
        self._csr = None

    # -- inspecting ----------------------------------------------------------

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def node(self, node_id: str) -> MeshNode:
        self._require(node_id)
        return self._nodes[node_id]

    def nodes(self) -> Iterator[MeshNode]:
        return iter(self._nodes.values())

    def links(self) -> Iterator[MeshLink]:
        return iter(self._links.values())

    def link(self, a: str, b: str) -> MeshLink:
        """Return the link a-b; KeyError if there is none."""
        return self._links[self._link_key(a, b)]

    def neighbours(self, node_id: str, *, up_only: bool = True) -> list[str]:
        """Return the ids linked to ``node_id``, sorted."""
        self._require(node_id)
        return sorted(
            other
            for other in self._adjacent[node_id]
            if not up_only or self._links[_key(node_id, other)].up
        )

    # -- routing -------------------------------------------------------------

    def find_route(
        self, source: str, destination: str, metric: str = "latency"
    ) -> Route | None:
        """Return the best route from source to destination, or None.

        ``metric`` is ``"latency"`` (least total latency), ``"hops"`` (fewest
        links) or ``"bandwidth"`` (largest bottleneck; among those, least
        latency).  Down links are not used.  KeyError names an unknown node.
        """
        self._require(source)
        self._require(destination)
        if metric not in METRICS:
            raise ValueError(
                f"metric={metric!r} is not known; expected one of {', '.join(METRICS)}"
            )
        csr = self._csr_graph()
        s, t = csr.index[source], csr.index[destination]
        if metric == "latency":
            pred = self._tree(csr, csr.latency_ms, s)
        elif metric == "hops":
            pred = self._tree(csr, np.ones_like(csr.latency_ms), s)
        else:
            pred = self._widest_tree(csr, s, t)
        if pred is None or (s != t and pred[t] < 0):
            return None

        path = [t]
        while path[-1] != s:
            path.append(int(pred[path[-1]]))
        hops = tuple(csr.ids[i] for i in reversed(path))
        return self._route(hops, metric)

    def routing_graph(self) -> LinkGraph:
        """Return the up links as a LinkGraph (latency in whole microseconds)."""
        ids = list(self._nodes)
        index = {name: i for i, name in enumerate(ids)}
        up = [link for link in self._links.values() if link.up]
        return LinkGraph.from_edges(
            ids,
            np.array([index[x.a] for x in up], dtype=np.int64),
            np.array([index[x.b] for x in up], dtype=np.int64),
            np.array([x.latency_ms * 1000.0 for x in up], dtype=np.float64),
        )

    # -- internals -----------------------------------------------------------

    def _route(self, hops: tuple[str, ...], metric: str) -> Route:
        latency = 0.0
        bottleneck = math.inf
        distance: float | None = 0.0
        for a, b in zip(hops, hops[1:], strict=False):
            link = self._links[_key(a, b)]
            latency += link.latency_ms
            bottleneck = min(bottleneck, link.bandwidth_mbps)
            d = self._distance_km(a, b)
            distance = None if distance is None or d is None else distance + d
        return Route(hops, latency, bottleneck, distance, metric)

    @staticmethod
    def _tree(csr: _Csr, weight: np.ndarray, s: int) -> np.ndarray:
        _dist, pred, _first, _pmin = shortest_paths(
            csr.indptr, csr.indices, weight, csr.bandwidth_mbps, s
        )
        return pred

    def _widest_tree(self, csr: _Csr, s: int, t: int) -> np.ndarray | None:
        # The largest bottleneck B* is the largest link bandwidth B such that
        # t stays reachable over links of at least B; find it by bisection
        # over the distinct bandwidths, then take the least-latency path over
        # those links, so ties between equally wide paths are broken by
        # latency (a one-pass widest-shortest Dijkstra is not exact).
        if s == t:
            return np.full(len(csr.ids), -1, dtype=np.int32)
        levels = np.unique(csr.bandwidth_mbps)
        lo, hi = 0, len(levels) - 1
        best = None
        while lo <= hi:
            mid = (lo + hi) // 2
            weight = np.where(csr.bandwidth_mbps >= levels[mid], csr.latency_ms, np.inf)
            pred = self._tree(csr, weight, s)
            if pred[t] >= 0:
                best = pred
                lo = mid + 1
            else:
                hi = mid - 1
        return best

    def _csr_graph(self) -> _Csr:
        if self._csr is None:
            ids = tuple(self._nodes)
            index = {name: i for i, name in enumerate(ids)}
            rows: list[tuple[int, int, float, float]] = []
            for link in self._links.values():
                if link.up:
                    i, j = index[link.a], index[link.b]
                    rows.append((i, j, link.latency_ms, link.bandwidth_mbps))
                    rows.append((j, i, link.latency_ms, link.bandwidth_mbps))
            rows.sort()
            n = len(ids)
            indptr = np.zeros(n + 1, dtype=np.int32)
            if rows:
                src = np.array([r[0] for r in rows], dtype=np.int64)
                np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
            self._csr = _Csr(
                ids,
                index,
                indptr,
                np.array([r[1] for r in rows], dtype=np.int32),
                np.array([r[2] for r in rows], dtype=np.float64),
                np.array([r[3] for r in rows], dtype=np.float64),
            )
        return self._csr

    def _distance_km(self, a: str, b: str) -> float | None:
        pa, pb = self._nodes[a].position, self._nodes[b].position
        if pa is None or pb is None:
            return None
        return pa.distance_km(pb)

    def _require(self, node_id: str) -> None:
        if node_id not in self._nodes:
            raise KeyError(f"unknown mesh node {node_id!r}")

    def _link_key(self, a: str, b: str) -> tuple[str, str]:
        self._require(a)
        self._require(b)
        key = _key(a, b)
        if key not in self._links:
            raise KeyError(f"no link between {a!r} and {b!r}")
        return key


@dataclass(frozen=True, slots=True)
class _Csr:
    ids: tuple[str, ...]
    index: dict[str, int]
    indptr: np.ndarray
    indices: np.ndarray
    latency_ms: np.ndarray
    bandwidth_mbps: np.ndarray


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)
