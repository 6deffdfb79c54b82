"""Onboard routing tables: one satellite's row, forwarding and local repair.

The ground computes every satellite's next hops for a topology snapshot
(ground/_tables.py) and uploads each satellite its own row: for every
destination the next hop, the path cost and the time until which the route
holds.  With the row travels the snapshot's link graph, so that when a link
fails the satellite can mark it down and recompute its row itself with the
compiled single-source shortest-path kernel, without scipy or networkx.

Link costs are whole microseconds.  Sums of whole numbers are exact in
float64, so the kernel's path costs do not depend on the order of additions
and are identical on the flight computer and on the ground.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import ModuleType

import msgpack
import numpy as np

from agent._arrays import ArrayFormatError, pack_array, unpack_array, unpack_bounded
from agent.kernels import _sssp_twin
from agent.kernels._select import load_compiled

ROW_FORMAT_VERSION = 1
UNREACHABLE_US = np.iinfo(np.uint32).max
MAX_ROW_BYTES = 16 * 1024 * 1024
MAX_NODES = 1 << 20
_ROW_KIND = "orbitfl-routing-row"

_backend: ModuleType | None = None


def sssp_backend() -> ModuleType:
    """Return the shortest-path kernel module: compiled where built, else the twin."""
    global _backend
    if _backend is None:
        _backend = load_compiled("_sssp") or _sssp_twin
    return _backend


def shortest_paths(
    indptr: np.ndarray,
    indices: np.ndarray,
    weight: np.ndarray,
    aux: np.ndarray,
    source: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the selected SSSP kernel; return (dist, pred, first_hop, path_min)."""
    return sssp_backend().sssp(indptr, indices, weight, aux, source)


def path_costs_us(dist_us: np.ndarray) -> np.ndarray:
    """Finite path costs as uint32 microseconds; ValueError past what fits.

    A cast alone would wrap a cost of 2**32 us (71.6 minutes) round to a small
    number and make a far destination look near.
    """
    if dist_us.size and float(dist_us.max()) >= UNREACHABLE_US:
        raise ValueError(
            f"a path costs {float(dist_us.max()):.0f} us, more than the "
            f"{UNREACHABLE_US - 1} us a routing row can hold"
        )
    return dist_us.astype(np.uint32)


class RoutingTableError(ValueError):
    """A routing row on the wire is malformed; ``value`` holds the bad part."""

    def __init__(self, message: str, value: object = None) -> None:
        super().__init__(message)
        self.value = value


@dataclass(frozen=True, eq=False)
class LinkGraph:
    """Undirected links in CSR form, each link stored in both directions.

    ``weight_us`` holds whole microseconds as float64 (the kernel's input);
    ``valid_until_s`` holds, per directed edge, the Unix time until which the
    link is predicted to stay up (+inf when unknown or beyond the horizon).
    """

    node_ids: tuple[str, ...]
    indptr: np.ndarray
    indices: np.ndarray
    weight_us: np.ndarray
    valid_until_s: np.ndarray

    @classmethod
    def from_edges(
        cls,
        node_ids: Sequence[str],
        a: np.ndarray,
        b: np.ndarray,
        weight_us: np.ndarray,
        valid_until_s: np.ndarray | None = None,
    ) -> LinkGraph:
        """Build the symmetric CSR graph from undirected edges (a[k], b[k])."""
        n = len(node_ids)
        a = np.asarray(a, dtype=np.int64)
        b = np.asarray(b, dtype=np.int64)
        w = np.rint(np.asarray(weight_us, dtype=np.float64))
        if valid_until_s is None:
            valid_until_s = np.full(a.shape, math.inf)
        v = np.asarray(valid_until_s, dtype=np.float64)
        if not (a.shape == b.shape == w.shape == v.shape) or a.ndim != 1:
            raise ValueError(
                f"edge arrays must be 1-D and of one length, got a{a.shape}, "
                f"b{b.shape}, weight_us{w.shape}, valid_until_s{v.shape}"
            )
        if a.size:
            lo, hi = int(min(a.min(), b.min())), int(max(a.max(), b.max()))
            if lo < 0 or hi >= n:
                raise ValueError(
                    f"edge endpoints must be node indices in [0, {n}), got {lo}..{hi}"
                )
            loops = np.nonzero(a == b)[0]
            if loops.size:
                raise ValueError(
                    f"edge {int(loops[0])} joins node {int(a[loops[0]])} to itself"
                )
            bad = ~np.isfinite(w) | (w < 0) | (w > UNREACHABLE_US - 1)
            if bad.any():
                k = int(np.nonzero(bad)[0][0])
                raise ValueError(
                    f"edge {k} has weight {float(w[k])!r} us; link weights must "
                    f"be whole microseconds in [0, {UNREACHABLE_US - 1}]"
                )
        src = np.concatenate([a, b])
        dst = np.concatenate([b, a])
        order = np.lexsort((dst, src))
        counts = np.bincount(src, minlength=n)
        indptr = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(counts, out=indptr[1:])
        return cls(
            tuple(node_ids),
            indptr,
            dst[order].astype(np.int32),
            np.concatenate([w, w])[order],
            np.concatenate([v, v])[order],
        )

    @property
    def n_nodes(self) -> int:
        return len(self.node_ids)

    def index_of(self, node_id: str) -> int:
        """Return the index of ``node_id``; KeyError naming it if unknown."""
        index = self._index.get(node_id)
        if index is None:
            raise KeyError(f"unknown node {node_id!r} in the routing graph")
        return index

    @property
    def _index(self) -> dict[str, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {name: i for i, name in enumerate(self.node_ids)}
            object.__setattr__(self, "_index_cache", cached)
        return cached

    def edge_slots(self, a: int, b: int) -> list[int]:
        """Return the CSR positions of the edges a->b and b->a (empty if absent)."""
        slots = []
        for u, v in ((a, b), (b, a)):
            lo, hi = int(self.indptr[u]), int(self.indptr[u + 1])
            hits = np.nonzero(self.indices[lo:hi] == v)[0]
            slots.extend(int(lo + h) for h in hits)
        return slots


@dataclass(frozen=True, slots=True)
class RouteEntry:
    """One destination of a routing row."""

    destination: str
    next_hop: str | None
    cost_ms: float
    valid_until: datetime | None


@dataclass(eq=False)
class RoutingTable:
    """A satellite's own routing row, with the link graph to repair it locally.

    ``next_hop[d]`` is the index of the neighbour to forward to for destination
    ``d`` (the own index for itself, -1 when unreachable); ``cost_us[d]`` the
    path cost in microseconds (UNREACHABLE_US when unreachable);
    ``valid_until_s[d]`` the Unix time until which every link on the path is
    predicted up, capped at ``expires_s`` (when the whole row expires).
    """

    graph: LinkGraph
    own_index: int
    next_hop: np.ndarray
    cost_us: np.ndarray
    valid_until_s: np.ndarray
    expires_s: float
    _down: set[tuple[int, int]] = field(default_factory=set, repr=False)

    @classmethod
    def compute(
        cls, graph: LinkGraph, own_id: str, expires: datetime | float
    ) -> RoutingTable:
        """Compute ``own_id``'s row from the graph with the onboard kernel."""
        table = cls(
            graph,
            graph.index_of(own_id),
            np.empty(0, np.int32),
            np.empty(0, np.uint32),
            np.empty(0, np.float64),
            _to_unix_s(expires),
        )
        table.recompute()
        return table

    @property
    def own_id(self) -> str:
        return self.graph.node_ids[self.own_index]

    @property
    def node_ids(self) -> tuple[str, ...]:
        return self.graph.node_ids

    def lookup(self, destination: str) -> RouteEntry:
        """Return the row's entry for ``destination``; KeyError if unknown."""
        d = self.graph.index_of(destination)
        hop = int(self.next_hop[d])
        cost = int(self.cost_us[d])
        until = float(self.valid_until_s[d])
        return RouteEntry(
            destination,
            self.graph.node_ids[hop] if hop >= 0 else None,
            cost / 1000.0 if cost != UNREACHABLE_US else math.inf,
            datetime.fromtimestamp(until, UTC) if math.isfinite(until) else None,
        )

    def next_hop_for(self, destination: str, now: datetime | None = None) -> str | None:
        """Return the neighbour to forward to, or None if unreachable or expired.

        With ``now`` given, a route whose valid-until time has passed counts as
        unknown: the satellite should hold the data or ask for a new table.
        """
        d = self.graph.index_of(destination)
        hop = int(self.next_hop[d])
        if hop < 0:
            return None
        if now is not None and _to_unix_s(now) > float(self.valid_until_s[d]):
            return None
        return self.graph.node_ids[hop]

    def mark_link_down(self, a: str, b: str) -> int:
        """Mark the link a-b down and recompute the row.

        Return how many destinations changed next hop.  KeyError if either node
        is unknown or the graph has no such link.
        """
        key = self._link_key(a, b)
        self._down.add(key)
        return self.recompute()

    def mark_link_up(self, a: str, b: str) -> int:
        """Undo ``mark_link_down`` for a-b and recompute; return changes."""
        key = self._link_key(a, b)
        self._down.discard(key)
        return self.recompute()

    def recompute(self) -> int:
        """Recompute this row over the links not marked down; return changes."""
        g = self.graph
        weight = g.weight_us
        if self._down:
            weight = weight.copy()
            for a, b in self._down:
                weight[g.edge_slots(a, b)] = math.inf
        dist, _pred, first, pmin = shortest_paths(
            g.indptr, g.indices, weight, g.valid_until_s, self.own_index
        )
        reached = np.isfinite(dist)
        cost = np.full(dist.shape, UNREACHABLE_US, dtype=np.uint32)
        cost[reached] = path_costs_us(dist[reached])
        until = np.minimum(pmin, self.expires_s)
        until[~reached] = -math.inf
        old = self.next_hop
        self.next_hop, self.cost_us, self.valid_until_s = first, cost, until
        if old.shape != first.shape:
            return int(first.shape[0])
        return int(np.count_nonzero(old != first))

    def _link_key(self, a: str, b: str) -> tuple[int, int]:
        i, j = self.graph.index_of(a), self.graph.index_of(b)
        if not self.graph.edge_slots(i, j):
            raise KeyError(f"no link {a!r} - {b!r} in the routing graph")
        return (min(i, j), max(i, j))

    # -- wire format ---------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialize the row and its link graph as one msgpack map."""
        g = self.graph
        hop_dtype = np.int16 if g.n_nodes <= np.iinfo(np.int16).max else np.int32
        return msgpack.packb(
            {
                "kind": _ROW_KIND,
                "version": ROW_FORMAT_VERSION,
                "nodes": list(g.node_ids),
                "own": self.own_index,
                "expires_s": self.expires_s,
                "next_hop": pack_array(self.next_hop.astype(hop_dtype)),
                "cost_us": pack_array(self.cost_us),
                "valid_until_s": pack_array(self.valid_until_s),
                "indptr": pack_array(g.indptr),
                "indices": pack_array(g.indices.astype(hop_dtype)),
                "weight_us": pack_array(g.weight_us.astype(np.uint32)),
                "edge_valid_until_s": pack_array(g.valid_until_s),
            },
            use_bin_type=True,
        )

    @classmethod
    def from_bytes(cls, data: bytes, *, max_bytes: int = MAX_ROW_BYTES) -> RoutingTable:
        """Parse a row from untrusted bytes, validating sizes before allocating."""
        if len(data) > max_bytes:
            raise RoutingTableError(
                f"routing row of {len(data)} bytes exceeds the limit of {max_bytes}",
                len(data),
            )
        msg = unpack_bounded(
            data,
            RoutingTableError,
            "routing row is not valid msgpack",
            max_str_len=1024,
            max_bin_len=max_bytes,
            max_array_len=MAX_NODES,
            max_map_len=32,
        )
        if not isinstance(msg, dict) or msg.get("kind") != _ROW_KIND:
            raise RoutingTableError(
                f"expected a map with kind {_ROW_KIND!r}, got "
                f"{type(msg).__name__}"
                + (f" of kind {msg.get('kind')!r}" if isinstance(msg, dict) else ""),
                msg if not isinstance(msg, dict) else msg.get("kind"),
            )
        if msg.get("version") != ROW_FORMAT_VERSION:
            raise RoutingTableError(
                f"routing row format version {msg.get('version')!r} is not "
                f"supported; this agent reads version {ROW_FORMAT_VERSION}",
                msg.get("version"),
            )
        return cls._from_message(msg)

    @classmethod
    def _from_message(cls, msg: dict) -> RoutingTable:
        nodes = msg.get("nodes")
        if not isinstance(nodes, list) or not all(isinstance(x, str) for x in nodes):
            raise RoutingTableError("routing row 'nodes' must be a list of strings")
        n = len(nodes)
        if len(set(nodes)) != n:
            raise RoutingTableError("routing row 'nodes' holds duplicate ids")
        try:
            arrays = {
                key: unpack_array(msg.get(key), max_elements=limit)
                for key, limit in (
                    ("next_hop", n),
                    ("cost_us", n),
                    ("valid_until_s", n),
                    ("indptr", n + 1),
                    ("indices", 4 * MAX_NODES),
                    ("weight_us", 4 * MAX_NODES),
                    ("edge_valid_until_s", 4 * MAX_NODES),
                )
            }
        except ArrayFormatError as exc:
            raise RoutingTableError(f"routing row array is malformed: {exc}") from exc

        problems = []
        for key, size in (
            ("next_hop", n),
            ("cost_us", n),
            ("valid_until_s", n),
            ("indptr", n + 1),
        ):
            if arrays[key].shape != (size,):
                problems.append(
                    f"{key} has shape {arrays[key].shape}, expected ({size},)"
                )
        for key, kinds in (
            ("next_hop", "i"),
            ("indices", "i"),
            ("indptr", "i"),
            ("cost_us", "u"),
            ("weight_us", "u"),
            ("valid_until_s", "f"),
            ("edge_valid_until_s", "f"),
        ):
            if arrays[key].dtype.kind != kinds or arrays[key].dtype.itemsize > 8:
                problems.append(
                    f"{key} has dtype {arrays[key].dtype}, expected "
                    + {"i": "a signed", "u": "an unsigned", "f": "a float"}[kinds]
                    + " type"
                )
        m = arrays["indices"].shape
        for key in ("weight_us", "edge_valid_until_s"):
            if arrays[key].shape != m:
                problems.append(f"{key} has shape {arrays[key].shape}, expected {m}")
        own = msg.get("own")
        if type(own) is not int or not 0 <= own < n:
            problems.append(f"own={own!r} is not a node index in [0, {n})")
        expires = msg.get("expires_s")
        if not isinstance(expires, float | int):
            problems.append(f"expires_s={expires!r} is not a number")
        hops = arrays["next_hop"]
        if hops.size and (hops.min() < -1 or hops.max() >= n):
            problems.append(f"next_hop values must lie in [-1, {n})")
        if problems:
            raise RoutingTableError("invalid routing row: " + "; ".join(problems))

        indptr = arrays["indptr"].astype(np.int32)
        indices = arrays["indices"].astype(np.int32)
        weight = arrays["weight_us"].astype(np.float64)
        edge_until = arrays["edge_valid_until_s"].astype(np.float64)
        try:
            _sssp_twin.validate_csr(indptr, indices, weight, edge_until, own)
        except ValueError as exc:
            raise RoutingTableError(f"routing row graph: {exc}") from exc
        graph = LinkGraph(tuple(nodes), indptr, indices, weight, edge_until)
        return cls(
            graph,
            own,
            hops.astype(np.int32),
            arrays["cost_us"].astype(np.uint32),
            arrays["valid_until_s"].astype(np.float64),
            float(expires),
        )


def _to_unix_s(when: datetime | float) -> float:
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError(
                f"time {when.isoformat()} has no timezone; pass an aware UTC "
                "datetime such as datetime(2026, 1, 1, tzinfo=UTC)"
            )
        return when.timestamp()
    return float(when)
