"""Place the layers of a network on satellite and ground nodes, exactly.

The problem.  A network is a chain of layers ``0 .. L-1``.  A plan cuts the
chain into contiguous stages and gives each stage to a distinct node; nodes
may stay unused and the optimizer chooses both which nodes take stages and in
which order.  A stage ``[a, b)`` on node ``w`` needs the weights of its layers
plus the largest activation buffer of any of them (times the batch size) in
memory, must fit in ``w``'s memory, and takes ``flops / (peak * efficiency)``.
Between consecutive stages the activation at the cut crosses the link between
the two nodes: ``latency_ms + bytes * 8 / bandwidth``.  Inputs come from an
optional ``source`` node and outputs go to an optional ``sink`` node.

Two objectives:

* ``latency``: the end-to-end time of one batch, the sum of every compute and
  every transfer on the path (input and output transfers included).
* ``throughput``: the time of the slowest pipeline resource, the largest of
  the stage compute times and the links' busy times (bytes / bandwidth; the
  propagation latency of a streaming link does not limit its rate).  Among the
  plans with the least bottleneck the one with the least latency is returned.

Hardness.  With at most one stage per node the problem is NP-hard: give every
layer so much memory that no node holds two, equal flops, and arbitrary link
latencies; a plan is then a path through ``L`` distinct nodes and the latency
objective is the travelling salesman path problem.  So no exact method is
polynomial in general; this one is exact always and fast when the bounds bite.

The algorithm and why it is exact.  A partial plan is a label ``(b, w, S, g)``:
layers ``[0, b)`` are placed, the last stage ran on ``w``, ``S`` is the set of
nodes used so far and ``g`` is the cost so far (a sum for latency, a maximum
for throughput).  The cost of completing a label depends only on
``(b, w, S)``, never on how it was reached; this is what makes the following
three steps exact.

1. Best-first (A*) search over labels ordered by ``f = g (+ or max) h``, where
   ``h`` is a lower bound on the cost of completing the label.  When the
   first complete plan leaves the queue every open label has ``f`` at least
   its cost, and ``f`` never exceeds the cost of any completion of that label,
   so no plan is cheaper.
2. Two lower bounds, both valid for every completion, and ``h`` is the larger:
   the cost-to-go of the relaxed problem in which nodes may be reused (a
   dynamic program over ``(layer prefix, node)``, ``O(L^2 N + L N^2)``,
   computed once backwards); and a bound that knows ``S``: the remaining
   layers must go on the unused nodes, each holding at most its memory in
   weights.  For latency that bound is the optimum of the fractional
   transportation problem "memory units of layer i on node u cost
   (flops_i / weight_i) / speed_u"; its cost matrix is a product, hence Monge
   once both sides are sorted, so the greedy fill of the fastest node with
   the densest layers is optimal (Hoffman 1963).  For throughput it is the
   remaining flops over the summed speed of the unused nodes and the largest
   remaining layer on the fastest unused node.  An unused capacity smaller
   than the remaining weights proves the label dead.
3. Pruning that removes no optimum: a label is dropped when another label at
   the same ``(b, w)`` used a subset of its nodes at no greater cost (every
   completion of the dropped label completes the other one at no greater
   cost); and nodes that are interchangeable (equal speed and memory, and a
   transposition of the two leaves every link cost unchanged) are used in
   index order, since renaming interchangeable nodes maps any plan to one
   that obeys this order at the same cost.

Throughput is found in two passes: the least bottleneck ``B*`` with the max
cost, then the least latency among plans whose every stage and link stays
within ``B*`` (the same search on the instance with the other edges removed).

Successors are generated lazily: expanding a label builds one sorted array of
all its ``(end layer, node)`` successors and queues a single cursor over it,
so the queue grows by one entry per expansion, not by ``L * N``.
"""

from __future__ import annotations

import heapq
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import numpy as np

MB = 1e6  # decimal units throughout: 1 MB = 1e6 bytes, 1 GB = 1000 MB
GB_MB = 1000.0
_REL_TOL = 1e-9


# -- inputs -------------------------------------------------------------------


class NodeType(StrEnum):
    """Where a node is: in orbit or on the ground (picks the default links)."""

    SATELLITE = "satellite"
    GROUND = "ground"


def _finite_nonneg(owner: str, **values: float) -> list[str]:
    problems = []
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"{owner} {name}={value!r} is not a number")
        elif not math.isfinite(value) or value < 0:
            problems.append(f"{owner} {name}={value!r} must be finite and >= 0")
    return problems


@dataclass(frozen=True, slots=True)
class LayerProfile:
    """One layer: weights in MB, flops per sample and forward pass.

    ``output_bytes`` is the size of the layer's output activation per sample
    (what crosses a link when the chain is cut after this layer; 0 when
    unknown, so a cut then costs only the link latency).  ``activation_mb``
    is the working memory of the layer's forward pass per sample (input and
    output buffers); a stage keeps its largest one.
    """

    name: str
    params_mb: float
    flops: float
    output_bytes: float = 0.0
    activation_mb: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not self.name:
            problems.append(f"layer name {self.name!r} must be a non-empty string")
        problems += _finite_nonneg(
            f"layer {self.name!r}",
            params_mb=self.params_mb,
            flops=self.flops,
            output_bytes=self.output_bytes,
            activation_mb=self.activation_mb,
        )
        if problems:
            raise ValueError("invalid LayerProfile: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params_mb": self.params_mb,
            "flops": self.flops,
            "output_bytes": self.output_bytes,
            "activation_mb": self.activation_mb,
        }


class ModelProfile:
    """The chain of layers to place, with the input size per sample in bytes."""

    def __init__(
        self, layers: Iterable[LayerProfile], input_bytes: float = 0.0
    ) -> None:
        self.layers: tuple[LayerProfile, ...] = tuple(layers)
        problems = _finite_nonneg("model", input_bytes=input_bytes)
        if not self.layers:
            problems.append("a model needs at least one layer")
        seen: set[str] = set()
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, LayerProfile):
                problems.append(
                    f"layer {i} is a {type(layer).__name__}, not a LayerProfile"
                )
            elif layer.name in seen:
                problems.append(f"layer name {layer.name!r} appears twice")
            else:
                seen.add(layer.name)
        if problems:
            raise ValueError("invalid ModelProfile: " + "; ".join(problems))
        self.input_bytes = float(input_bytes)

    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return (
            f"ModelProfile({len(self.layers)} layers, input_bytes={self.input_bytes})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_bytes": self.input_bytes,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_spec(cls, spec_path: str | Path, weights_path: str | Path | None = None):
        """Build the profile of a model spec (JSON + .npz) by shape inference.

        Flops are counted analytically (a multiply-add is two flops).
        """
        from agent._nn import load_model

        model = load_model(spec_path, weights_path)
        return cls(
            [LayerProfile(**row) for row in model.layer_profiles()],
            input_bytes=model.input_bytes,
        )

    @classmethod
    def from_measurements(
        cls, source: str | Path | Mapping[str, Any], device_tflops: float | None = None
    ) -> ModelProfile:
        """Build a profile from ``python -m agent profile`` output.

        Each layer's flops become its *equivalent* flops: the measured time
        times ``device_tflops``, the rate a ``NodeConfig`` of that device
        would state.  Without ``device_tflops`` the device's achieved rate
        over the whole model is used, so a node declared with that rate (and
        efficiency 1) reproduces the measured times, and a node declared
        twice as fast halves them.
        """
        if isinstance(source, Mapping):
            data = source
        else:
            data = json.loads(Path(source).read_text())
        if data.get("format") != "orbitfl-profile/1":
            raise ValueError(
                f"profile format is {data.get('format')!r}; expected "
                "'orbitfl-profile/1' as written by `python -m agent profile`"
            )
        rows = data["layers"]
        if device_tflops is None:
            device_tflops = float(data["device"]["achieved_tflops"])
        if not device_tflops > 0:
            raise ValueError(f"device_tflops={device_tflops!r} must be > 0")
        layers = [
            LayerProfile(
                row["name"],
                float(row["params_mb"]),
                float(row["measured_ms"]) * 1e-3 * device_tflops * 1e12,
                float(row["output_bytes"]),
                float(row["activation_mb"]),
            )
            for row in rows
        ]
        return cls(layers, input_bytes=float(data.get("input_bytes", 0.0)))


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """A computer that can take one stage: memory in GB, peak TFLOPS.

    ``efficiency`` is achieved / peak throughput on this kind of network
    (in (0, 1]); the optimizer plans with ``compute_tflops * efficiency``.
    """

    name: str
    node_type: NodeType
    memory_gb: float
    compute_tflops: float
    efficiency: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.name, str) or not self.name:
            problems.append(f"node name {self.name!r} must be a non-empty string")
        if not isinstance(self.node_type, NodeType):
            try:
                object.__setattr__(self, "node_type", NodeType(self.node_type))
            except ValueError:
                problems.append(
                    f"node {self.name!r} node_type={self.node_type!r} is not one of "
                    + ", ".join(t.value for t in NodeType)
                )
        problems += _finite_nonneg(
            f"node {self.name!r}",
            memory_gb=self.memory_gb,
            compute_tflops=self.compute_tflops,
            efficiency=self.efficiency,
        )
        if not problems:
            if self.compute_tflops <= 0:
                problems.append(f"node {self.name!r} compute_tflops must be > 0")
            if not 0 < self.efficiency <= 1:
                problems.append(
                    f"node {self.name!r} efficiency={self.efficiency} must be in "
                    "(0, 1] (achieved / peak)"
                )
        if problems:
            raise ValueError("invalid NodeConfig: " + "; ".join(problems))

    @property
    def flops_per_ms(self) -> float:
        return self.compute_tflops * self.efficiency * 1e9


# -- links ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Link:
    """A one-way path between two nodes: rate in Mbit/s, latency in ms."""

    bandwidth_mbps: float
    latency_ms: float

    def transfer_ms(self, nbytes: float) -> float:
        """Latency plus serialisation of ``nbytes`` bytes."""
        return self.latency_ms + self.busy_ms(nbytes)

    def busy_ms(self, nbytes: float) -> float:
        """Time the link is occupied by ``nbytes`` bytes (8 bits / byte)."""
        return nbytes * 8.0 / (self.bandwidth_mbps * 1e3) if nbytes else 0.0


class LinkModel(Protocol):
    def link(self, a: NodeConfig, b: NodeConfig) -> Link | None:
        """The link from a to b, or None when b cannot be reached from a."""


# Default links when none are given, by the node types at each end.  Rough
# figures for the hardware this project targets: optical inter-satellite
# terminals (~1 Gbit/s, ~10 ms for a few thousand km plus switching), a Ka/X
# band downlink (~100 Mbit/s, ~20 ms including the ground station), and
# terrestrial fibre between ground stations (~1 Gbit/s, ~30 ms).
DEFAULT_LINKS: dict[frozenset[NodeType], Link] = {
    frozenset({NodeType.SATELLITE}): Link(1000.0, 10.0),
    frozenset({NodeType.SATELLITE, NodeType.GROUND}): Link(100.0, 20.0),
    frozenset({NodeType.GROUND}): Link(1000.0, 30.0),
}


class DefaultLinks:
    """Every pair of nodes is linked, with the figures of ``DEFAULT_LINKS``."""

    def link(self, a: NodeConfig, b: NodeConfig) -> Link | None:
        return DEFAULT_LINKS[frozenset({a.node_type, b.node_type})]


class LinkTable:
    """Links from ``{(a, b): (bandwidth_mbps, latency_ms)}``.

    A pair given in one direction serves both; a pair missing from the table
    is not linked (the optimizer will never put those two nodes next to each
    other).
    """

    def __init__(self, table: Mapping[tuple[str, str], tuple[float, float]]) -> None:
        self._links: dict[tuple[str, str], Link] = {}
        problems = []
        for key, value in table.items():
            try:
                (a, b), (bw, lat) = key, value
            except (TypeError, ValueError):
                problems.append(
                    f"entry {key!r}: {value!r} is not (a, b): (bandwidth_mbps, "
                    "latency_ms)"
                )
                continue
            bad = _finite_nonneg(f"link {a}-{b}", bandwidth_mbps=bw, latency_ms=lat)
            if not bad and bw <= 0:
                bad.append(f"link {a}-{b} bandwidth_mbps={bw} must be > 0")
            problems += bad
            if not bad:
                self._links[(a, b)] = Link(float(bw), float(lat))
        if problems:
            raise ValueError("invalid link table: " + "; ".join(problems))

    def link(self, a: NodeConfig, b: NodeConfig) -> Link | None:
        found = self._links.get((a.name, b.name))
        return found if found is not None else self._links.get((b.name, a.name))


class MeshLinks:
    """Links as routes through a ``SpaceMesh``: latency summed, rate the bottleneck."""

    def __init__(self, mesh: Any, metric: str = "latency") -> None:
        self.mesh = mesh
        self.metric = metric

    def link(self, a: NodeConfig, b: NodeConfig) -> Link | None:
        try:
            route = self.mesh.find_route(a.name, b.name, self.metric)
        except KeyError:
            return None
        if route is None or not route.bottleneck_mbps > 0:
            return None
        return Link(float(route.bottleneck_mbps), float(route.total_latency_ms))


def as_link_model(links: Any) -> LinkModel:
    """Accept None, a table mapping, a SpaceMesh or a LinkModel."""
    if links is None:
        return DefaultLinks()
    if isinstance(links, Mapping):
        return LinkTable(links)
    if hasattr(links, "find_route"):
        return MeshLinks(links)
    if hasattr(links, "link"):
        return links
    raise TypeError(
        f"links must be None, a {{(a, b): (bandwidth_mbps, latency_ms)}} table, a "
        f"SpaceMesh or an object with link(a, b); got {type(links).__name__}"
    )


# -- result ---------------------------------------------------------------------


class Objective(StrEnum):
    LATENCY = "latency"
    THROUGHPUT = "throughput"


@dataclass(frozen=True, slots=True)
class Stage:
    """One stage: layers ``[first_layer, end_layer)`` on ``node``.

    ``transfer_ms`` is the time to send this stage's output to the next stage
    (or to the sink; 0 for the last stage without a sink) and ``link_busy_ms``
    the part of it that occupies the link.
    """

    node: str
    first_layer: int
    end_layer: int
    layer_names: tuple[str, ...]
    compute_ms: float
    transfer_ms: float
    link_busy_ms: float
    memory_mb: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "first_layer": self.first_layer,
            "end_layer": self.end_layer,
            "layers": list(self.layer_names),
            "compute_ms": self.compute_ms,
            "transfer_ms": self.transfer_ms,
            "link_busy_ms": self.link_busy_ms,
            "memory_mb": self.memory_mb,
        }


@dataclass(frozen=True)
class PartitionPlan:
    """Where each layer runs, and what the plan is expected to cost."""

    objective: Objective
    stages: tuple[Stage, ...]
    input_transfer_ms: float
    input_link_busy_ms: float
    batch_size: int
    source: str | None = None
    sink: str | None = None
    labels_expanded: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def assignments(self) -> list[tuple[str, str]]:
        """``(layer name, node name)`` in layer order."""
        return [(name, s.node) for s in self.stages for name in s.layer_names]

    @property
    def estimated_latency_ms(self) -> float:
        """One batch end to end: every compute and every transfer on the path."""
        return self.input_transfer_ms + sum(
            s.compute_ms + s.transfer_ms for s in self.stages
        )

    @property
    def bottleneck_ms(self) -> float:
        """The slowest pipeline resource: a stage's compute or a link's busy time."""
        return max(
            [self.input_link_busy_ms]
            + [max(s.compute_ms, s.link_busy_ms) for s in self.stages]
        )

    @property
    def estimated_throughput_per_s(self) -> float:
        """Samples per second when the pipeline is kept full."""
        b = self.bottleneck_ms
        return math.inf if b <= 0 else self.batch_size * 1e3 / b

    @property
    def memory_mb_per_node(self) -> dict[str, float]:
        return {s.node: s.memory_mb for s in self.stages}

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective.value,
            "batch_size": self.batch_size,
            "source": self.source,
            "sink": self.sink,
            "estimated_latency_ms": self.estimated_latency_ms,
            "bottleneck_ms": self.bottleneck_ms,
            "estimated_throughput_per_s": self.estimated_throughput_per_s,
            "input_transfer_ms": self.input_transfer_ms,
            "input_link_busy_ms": self.input_link_busy_ms,
            "assignments": [list(a) for a in self.assignments],
            "stages": [s.to_dict() for s in self.stages],
            "memory_mb_per_node": self.memory_mb_per_node,
            "labels_expanded": self.labels_expanded,
        }


class InfeasiblePartitionError(ValueError):
    """No placement satisfies the memory limits and the links."""


class PartitionSearchLimitError(RuntimeError):
    """The exact search would exceed its label budget on this instance."""


# -- the instance as arrays -----------------------------------------------------


class _Instance:
    """Everything the search needs, as arrays indexed by layer cut and node."""

    def __init__(
        self,
        profile: ModelProfile,
        nodes: Sequence[NodeConfig],
        links: LinkModel,
        batch_size: int,
        source: int | None,
        sink: int | None,
    ) -> None:
        layers = profile.layers
        L, N = len(layers), len(nodes)
        self.L, self.N = L, N
        self.flops_prefix = np.concatenate(
            ([0.0], np.cumsum([lay.flops * batch_size for lay in layers]))
        )
        self.weights_mb = np.array([lay.params_mb for lay in layers])
        self.act_mb = np.array([lay.activation_mb * batch_size for lay in layers])
        self.cut_bytes = np.array(
            [profile.input_bytes * batch_size]
            + [lay.output_bytes * batch_size for lay in layers]
        )
        self.speed = np.array([n.flops_per_ms for n in nodes])
        self.cap_mb = np.array([n.memory_gb * GB_MB for n in nodes])

        # hi[w, a]: the largest stage end b such that [a, b) fits on w (a when
        # not even layer a fits).  Stage memory grows with b, so every end in
        # (a, hi] fits: weights sum plus the largest activation buffer.
        w_prefix = np.concatenate(([0.0], np.cumsum(self.weights_mb)))
        self.hi = np.empty((N, L), dtype=np.int64)
        self.mem_rows: list[np.ndarray] = []
        for a in range(L):
            mem = (
                w_prefix[a + 1 :] - w_prefix[a] + np.maximum.accumulate(self.act_mb[a:])
            )
            self.mem_rows.append(mem)
            self.hi[:, a] = a + np.searchsorted(
                mem, self.cap_mb * (1 + _REL_TOL), "right"
            )

        # Link costs per cut: row v in 0..N-1 is "the last stage ran on v", row
        # N is the start (from the source, or free without one).  A node
        # never follows itself (that would be one stage split in two).
        self.transfer = np.full((N + 1, N, L + 1), np.inf)
        self.busy = np.full((N + 1, N, L + 1), np.inf)
        for v in range(N):
            for w in range(N):
                if v != w:
                    link = links.link(nodes[v], nodes[w])
                    if link is not None:
                        self.busy[v, w] = (
                            self.cut_bytes * 8.0 / (link.bandwidth_mbps * 1e3)
                        )
                        self.transfer[v, w] = link.latency_ms + self.busy[v, w]
        if source is None:
            self.transfer[N] = 0.0
            self.busy[N] = 0.0
        else:
            self.transfer[N] = self.transfer[source]
            self.busy[N] = self.busy[source]
            self.transfer[N, source] = 0.0
            self.busy[N, source] = 0.0
        self.sink_transfer = np.zeros(N)
        self.sink_busy = np.zeros(N)
        if sink is not None:
            self.sink_transfer = self.transfer[:N, sink, L].copy()
            self.sink_busy = self.busy[:N, sink, L].copy()
            self.sink_transfer[sink] = 0.0
            self.sink_busy[sink] = 0.0

        # the cheapest cut strictly after b, over all ordered node pairs
        per_cut_t = self.transfer[:N].min(axis=(0, 1))
        per_cut_b = self.busy[:N].min(axis=(0, 1))
        self.tau_transfer = np.full(L + 1, np.inf)
        self.tau_busy = np.full(L + 1, np.inf)
        for b in range(L - 2, -1, -1):
            self.tau_transfer[b] = min(self.tau_transfer[b + 1], per_cut_t[b + 1])
            self.tau_busy[b] = min(self.tau_busy[b + 1], per_cut_b[b + 1])
        self.classes = self._interchangeable_classes()
        self._suffix_density()

    def compute_ms(self, w: int, a: int, b: int) -> float:
        return float((self.flops_prefix[b] - self.flops_prefix[a]) / self.speed[w])

    def _interchangeable_classes(self) -> np.ndarray:
        """prev[w]: the previous member of w's class of interchangeable nodes, or -1.

        Nodes i and j are interchangeable when swapping them changes no cost:
        equal speed and memory, and the link arrays unchanged by the
        transposition of i and j.  Transpositions that are symmetries compose
        into symmetries, so this relation is transitive.
        """
        N = self.N
        prev = np.full(N, -1)
        rep_of = list(range(N))
        idx = np.arange(N)
        for j in range(N):
            for i in range(j):
                if rep_of[i] != i:
                    continue
                if self.speed[i] != self.speed[j] or self.cap_mb[i] != self.cap_mb[j]:
                    continue
                perm = idx.copy()
                perm[i], perm[j] = j, i
                rows = np.append(perm, N)
                if (
                    np.array_equal(self.transfer[np.ix_(rows, perm)], self.transfer)
                    and np.array_equal(self.busy[np.ix_(rows, perm)], self.busy)
                    and np.array_equal(self.sink_transfer[perm], self.sink_transfer)
                    and np.array_equal(self.sink_busy[perm], self.sink_busy)
                ):
                    rep_of[j] = i
                    members = [k for k in range(j) if rep_of[k] == i]
                    prev[j] = members[-1]
                    break
        return prev

    def _suffix_density(self) -> None:
        """Per suffix [b, L): the layers by flops per MB of weights, densest first.

        ``dens_x[b]`` is the cumulative weight (MB) and ``dens_y[b]`` the
        cumulative flops along that order, starting at (0, flops of the
        weightless layers), for the fractional fill in ``_capacity_bound``.
        """
        L = self.L
        flops = np.diff(self.flops_prefix)
        w = self.weights_mb
        density = np.where(w > 0, flops / np.where(w > 0, w, 1.0), np.inf)
        self.dens_x: list[np.ndarray] = []
        self.dens_y: list[np.ndarray] = []
        self.rem_weights = np.concatenate((np.cumsum(w[::-1])[::-1], [0.0]))
        self.rem_flops = self.flops_prefix[-1] - self.flops_prefix
        self.max_layer_flops = np.concatenate(
            (np.maximum.accumulate(flops[::-1])[::-1], [0.0])
        )
        for b in range(L):
            weighted = np.flatnonzero(w[b:] > 0) + b
            order = weighted[np.argsort(-density[weighted], kind="stable")]
            free = flops[b:][w[b:] == 0].sum()
            self.dens_x.append(np.concatenate(([0.0], np.cumsum(w[order]))))
            self.dens_y.append(np.concatenate(([free], free + np.cumsum(flops[order]))))
        self.speed_order = np.argsort(-self.speed, kind="stable")


# -- search ---------------------------------------------------------------------

_SUM, _MAX = "sum", "max"


@dataclass(slots=True)
class _Relaxed:
    """The relaxed problem's solution: cost-to-go, start value, optimal path."""

    H: np.ndarray  # H[b, w]: finishing from "the stage on w ended at b"
    start: float  # the relaxed optimum from the start
    path_nodes: list[int]  # the nodes of one relaxed optimum, in order


def _dp_kernel():
    """The compiled relaxed DP where built (ORBITFL_KERNELS), else its twin."""
    global _DP
    if _DP is None:
        from agent.kernels import _partition_dp_twin
        from agent.kernels._select import load_compiled

        _DP = load_compiled("_partition_dp") or _partition_dp_twin
    return _DP


_DP = None


def _relaxed_cost_to_go(
    inst: _Instance, mode: str, penalty: np.ndarray | None = None
) -> _Relaxed:
    """Solve the problem with node reuse allowed, by DP over (layer cut, node).

    ``penalty[u]`` (sum mode only) is added to every stage placed on u; it is
    the Lagrange multiplier of "u takes at most one stage".  The DP itself is
    the kernel ``agent.kernels._partition_dp`` (compiled, or its NumPy twin).
    """
    L = inst.L
    add = mode == _SUM
    if add:
        step = inst.transfer if penalty is None else inst.transfer + penalty[:, None]
        sink = inst.sink_transfer
    else:
        step, sink = inst.busy, inst.sink_busy
    H, best_end, best_next, first = _dp_kernel().relaxed_dp(
        inst.flops_prefix, 1.0 / inst.speed, inst.hi, step, sink, add
    )
    u = int(first.argmin())
    start = float(first[u])
    path = []
    b = 0
    while math.isfinite(start) and b < L:
        path.append(u)
        b = int(best_end[b, u])
        if b < L:
            u = int(best_next[b, u])
    return _Relaxed(H, start, path)


def _lagrangian_bound(
    inst: _Instance, iterations: int = 100
) -> tuple[np.ndarray, np.ndarray, float]:
    """Multipliers for "each node takes at most one stage", by subgradient ascent.

    For any multipliers ``lam >= 0`` and any plan using each node at most
    once, ``cost >= H_lam[b, w] - sum(lam over nodes still unused)`` for the
    plan's state at every cut (the plan's remaining stages pay at most the
    multipliers of the unused nodes).  Ascent on the start value
    ``H_lam(start) - sum(lam)`` (Held & Karp 1971; Polyak's step) sharpens
    that bound where the relaxed optimum reuses nodes.  Returns
    ``(lam, H_lam, lower bound)``.
    """
    N = inst.N
    lam = np.zeros(N)
    best_lam, best = lam, _relaxed_cost_to_go(inst, _SUM)
    best_value = best.start
    relaxed = best
    theta = 1.0
    stall = 0
    for _ in range(iterations):
        uses = np.bincount(relaxed.path_nodes, minlength=N).astype(float)
        grad = uses - 1.0
        grad[(lam <= 0) & (grad < 0)] = 0.0  # lam stays >= 0
        if not math.isfinite(relaxed.start) or not (uses > 1).any():
            break
        target = best_value * 1.05 + 1e-9
        step = theta * (target - (relaxed.start - lam.sum())) / float(grad @ grad)
        lam = np.maximum(0.0, lam + step * grad)
        relaxed = _relaxed_cost_to_go(inst, _SUM, lam)
        value = relaxed.start - lam.sum()
        if value > best_value * (1 + 1e-6):
            best_value, best_lam, best = value, lam.copy(), relaxed
            stall = 0
        else:
            stall += 1
            if stall >= 3:
                theta /= 2
                stall = 0
                if theta < 1e-3:
                    break
    return best_lam, best.H, best_value


class _CapacityBound:
    """Lower bounds on completing a label that know which nodes are used.

    For the unused nodes U of a label at cut b:

    * compute (latency): the fractional transportation bound of the module
      docstring, one ``np.interp`` and one dot product per label, since
      ``sum_k (F_k - F_{k-1}) / s_k = sum_k F_k (1/s_k - 1/s_{k+1})``;
    * transfers: one out of the label's node, then at least ``k_min - 1``
      more, where ``k_min`` is the fewest nodes of U whose memories add up
      to the remaining weights, each at least the cheapest cut after b; and
      the cheapest way from any node of U to the sink;
    * bottleneck (throughput): the least T with
      ``sum_u min(T * speed_u, Q_b(memory_u)) >= remaining flops``, where
      ``Q_b(m)`` is the most flops any m MB of the remaining layers carry.
    """

    def __init__(self, inst: _Instance, mode: str) -> None:
        self.inst = inst
        self.mode = mode
        self._per_set: dict[int, tuple] = {}
        self._cache: dict[tuple[int, int], float] = {}

    def _unused(self, used: int) -> tuple:
        got = self._per_set.get(used)
        if got is None:
            inst = self.inst
            order = np.array(
                [u for u in inst.speed_order if not used >> int(u) & 1], dtype=np.int64
            )
            caps = inst.cap_mb[order]
            speeds = inst.speed[order]
            inv = 1.0 / speeds
            coef = inv - np.append(inv[1:], 0.0)
            caps_desc = np.cumsum(np.sort(caps)[::-1])
            sink = inst.sink_transfer if self.mode == _SUM else inst.sink_busy
            sink_min = float(sink[order].min()) if order.size else math.inf
            link = inst.transfer if self.mode == _SUM else inst.busy
            # first[w, b]: the cheapest way out of w into an unused node at cut b
            first = link[:, order, :].min(axis=1) if order.size else None
            got = (
                order,
                np.cumsum(caps),
                coef,
                caps_desc,
                sink_min,
                caps,
                speeds,
                first,
            )
            self._per_set[used] = got
        return got

    def __call__(self, b: int, w: int, used: int) -> float:
        inst = self.inst
        if b >= inst.L:
            return 0.0
        rest = self._cache.get((b, used))
        if rest is None:
            rest = self._cache[(b, used)] = self._rest(b, used)
        if rest == math.inf:
            return math.inf
        first = float(self._unused(used)[-1][w, b])
        return first + rest if self.mode == _SUM else max(first, rest)

    def _rest(self, b: int, used: int) -> float:
        """The part of the bound that does not depend on the label's node."""
        inst = self.inst
        order, cumcap, coef, caps_desc, sink_min, caps, speeds, _ = self._unused(used)
        rem_w = inst.rem_weights[b]
        if order.size == 0 or cumcap[-1] * (1 + _REL_TOL) < rem_w:
            return math.inf
        k_min = int(np.searchsorted(caps_desc, rem_w * (1 - _REL_TOL))) + 1
        if self.mode == _SUM:
            filled = np.interp(cumcap, inst.dens_x[b], inst.dens_y[b])
            more = (k_min - 1) * inst.tau_transfer[b] if k_min > 1 else 0.0
            return float(filled @ coef + more + sink_min)
        hosted = np.interp(caps, inst.dens_x[b], inst.dens_y[b])
        return max(
            sink_min,
            inst.tau_busy[b] if k_min > 1 else 0.0,
            _least_time(hosted, speeds, inst.rem_flops[b]),
            inst.max_layer_flops[b] / speeds[0],
        )


def _least_time(hosted: np.ndarray, speeds: np.ndarray, flops: float) -> float:
    """The least T with ``sum_u min(T * speeds[u], hosted[u]) >= flops``."""
    if flops <= 0:
        return 0.0
    t = hosted / speeds
    order = np.argsort(t)
    t, hosted, speeds = t[order], hosted[order], speeds[order]
    # at T = t[k] nodes 0..k are saturated, k+1.. run at full speed
    saturated = np.cumsum(hosted)
    running = np.concatenate((np.cumsum(speeds[::-1])[::-1][1:], [0.0]))
    reach = saturated + t * running
    k = int(np.searchsorted(reach, flops * (1 - _REL_TOL)))
    if k >= len(t):
        return math.inf
    done = saturated[k - 1] if k else 0.0
    speed = running[k - 1] if k else float(speeds.sum())
    return float((flops - done) / speed) if speed > 0 else float(t[k])


@dataclass(slots=True)
class _Label:
    end: int  # layers [0, end) are placed
    node: int  # the node of the last stage (N for the start)
    used: int  # bitmask of nodes used
    cost: float
    parent: int
    start: int  # first layer of the last stage
    lam_used: float = 0.0  # sum of the Lagrange multipliers of the used nodes


class _Dominance:
    """Labels expanded per (cut, node): is a new one beaten by a subset?

    A label is dominated when an expanded label at the same cut and node used
    a subset of its nodes at no greater cost.  Kept as arrays so one check is
    a few vector operations however many labels were expanded.
    """

    def __init__(self) -> None:
        self._used: dict[tuple[int, int], np.ndarray] = {}
        self._cost: dict[tuple[int, int], np.ndarray] = {}
        self._n: dict[tuple[int, int], int] = {}

    def dominated_or_add(self, key: tuple[int, int], used: int, cost: float) -> bool:
        n = self._n.get(key, 0)
        if n:
            u, c = self._used[key][:n], self._cost[key][:n]
            if ((u & ~np.int64(used)) == 0)[c <= cost].any():
                return True
            if n == len(self._used[key]):
                self._used[key] = np.resize(self._used[key], 2 * n)
                self._cost[key] = np.resize(self._cost[key], 2 * n)
        else:
            self._used[key] = np.empty(4, dtype=np.int64)
            self._cost[key] = np.empty(4)
        self._used[key][n] = used
        self._cost[key][n] = cost
        self._n[key] = n + 1
        return False


def _search(
    inst: _Instance, mode: str, max_labels: int
) -> tuple[list[_Label], int, int]:
    """Return (labels, index of the optimal complete label, labels expanded).

    When the relaxed optimum of the latency problem reuses a node, the search
    runs with the Lagrangian bound as well, which is much tighter there.
    """
    relaxed = _relaxed_cost_to_go(inst, mode)
    lagrange = None
    if mode == _SUM and len(set(relaxed.path_nodes)) < len(relaxed.path_nodes):
        lam, H_lam, _ = _lagrangian_bound(inst)
        lagrange = (lam, H_lam)
    return _best_first(inst, mode, relaxed.H, lagrange, max_labels)


def _best_first(
    inst: _Instance,
    mode: str,
    H: np.ndarray,
    lagrange: tuple[np.ndarray, np.ndarray] | None,
    max_labels: int,
) -> tuple[list[_Label], int, int]:
    L, N = inst.L, inst.N
    add = mode == _SUM
    use_lagrange = lagrange is not None and bool(lagrange[0].any())
    if use_lagrange:
        lam, H_lam = lagrange
        lam_total = float(lam.sum())
    inv_speed = 1.0 / inst.speed
    prev_in_class = inst.classes
    ends_all = np.arange(L + 1)
    capacity_bound = _CapacityBound(inst, mode)
    dominance = _Dominance()

    labels = [_Label(0, N, 0, 0.0, -1, 0)]
    # heap items: (f, -end, seq, kind, payload); kind 0 = a label to expand,
    # kind 1 = a cursor over one expansion's successors sorted by f.
    heap: list[tuple] = [(0.0, 0, 0, 0, 0)]
    seq = 1
    # best[S][end, u]: the least cost of any label generated for the state
    # (end, u, S + u), u not in S.  A copy of a state at no smaller cost is
    # dominated (same completions), so it is not queued, or dropped when a
    # cheaper copy appeared after it was queued.
    best: dict[int, np.ndarray] = {}
    expanded = 0

    while heap:
        f, _, _, kind, payload = heapq.heappop(heap)
        if kind == 1:
            parent_id, succ_end, succ_node, succ_cost, succ_f, pos = payload
            if pos + 1 < len(succ_end):
                nxt = (parent_id, succ_end, succ_node, succ_cost, succ_f, pos + 1)
                item = (float(succ_f[pos + 1]), -int(succ_end[pos + 1]), seq, 1, nxt)
                heapq.heappush(heap, item)
                seq += 1
            p = labels[parent_id]
            b, w, cost = int(succ_end[pos]), int(succ_node[pos]), float(succ_cost[pos])
            used = p.used | 1 << w
            if cost > best[p.used][b, w]:
                continue
            lam_used = p.lam_used + (float(lam[w]) if use_lagrange else 0.0)
            labels.append(_Label(b, w, used, cost, parent_id, p.end, lam_used))
            lid = len(labels) - 1
            if b == L:
                return labels, lid, expanded
            extra = capacity_bound(b, w, used)
            f2 = cost + extra if add else max(cost, extra)
            if f2 > f * (1 + _REL_TOL) + 1e-12:
                if math.isfinite(f2):
                    heapq.heappush(heap, (f2, -b, seq, 0, lid))
                    seq += 1
                continue
        else:
            lid = payload
        lab = labels[lid]
        if lid and lab.cost > best[lab.used & ~(1 << lab.node)][lab.end, lab.node]:
            continue
        if dominance.dominated_or_add((lab.end, lab.node), lab.used, lab.cost):
            continue
        expanded += 1
        if expanded > max_labels:
            raise PartitionSearchLimitError(
                f"the exact search expanded {max_labels} partial plans without "
                f"finishing ({L} layers, {N} nodes); the instance is hard for the "
                "bounds (see the module docstring). Raise max_labels, or give "
                "nodes of one kind equal links so they become interchangeable"
            )

        # All successors: a stage [a, e) on an allowed node u.
        a, v = lab.end, lab.node
        allowed = np.array(
            [
                not lab.used >> u & 1
                and (prev_in_class[u] < 0 or lab.used >> int(prev_in_class[u]) & 1)
                for u in range(N)
            ],
            dtype=bool,
        )
        last = int(inst.hi[:, a].max())  # no stage from a ends later
        ok = allowed & (ends_all[a + 1 : last + 1, None] <= inst.hi[:, a])
        fp = inst.flops_prefix[a + 1 : last + 1, None] - inst.flops_prefix[a]
        comp = fp * inv_speed
        if add:
            cost = lab.cost + inst.transfer[v, :, a] + comp
            h = H[a + 1 : last + 1]
            if use_lagrange:
                # the successor on u leaves unused all but used + u
                unused_lam = lam_total - lab.lam_used - lam
                h = np.maximum(h, H_lam[a + 1 : last + 1] - unused_lam)
            fval = cost + h
        else:
            cost = np.maximum(np.maximum(lab.cost, inst.busy[v, :, a]), comp)
            fval = np.maximum(cost, H[a + 1 : last + 1])
        ok &= np.isfinite(fval)
        table = best.get(lab.used)
        if table is None:
            table = best[lab.used] = np.full((L + 1, N), np.inf)
        block = table[a + 1 : last + 1]
        ok &= cost < block
        block[ok] = cost[ok]
        rows, cols = np.nonzero(ok)
        if rows.size == 0:
            continue
        fv = fval[rows, cols]
        order = np.lexsort((-rows, fv))
        payload = (
            lid,
            rows[order] + a + 1,
            cols[order],
            cost[rows, cols][order],
            fv[order],
            0,
        )
        head = (float(fv[order[0]]), -int(rows[order[0]] + a + 1), seq, 1, payload)
        heapq.heappush(heap, head)
        seq += 1
    return labels, -1, expanded


def _restricted(inst: _Instance, limit_ms: float) -> _Instance:
    """A copy of ``inst`` without stages or links slower than ``limit_ms``."""
    import copy

    out = copy.copy(inst)
    limit = limit_ms * (1 + 1e-9) + 1e-12
    hi = inst.hi.copy()
    for a in range(inst.L):
        comp = (inst.flops_prefix[a + 1 :, None] - inst.flops_prefix[a]) / inst.speed
        fast = comp <= limit  # monotone in the end layer
        hi[:, a] = np.minimum(hi[:, a], a + fast.sum(axis=0))
    out.hi = hi
    out.transfer = np.where(inst.busy <= limit, inst.transfer, np.inf)
    out.busy = np.where(inst.busy <= limit, inst.busy, np.inf)
    out.sink_transfer = np.where(inst.sink_busy <= limit, inst.sink_transfer, np.inf)
    return out


# -- the optimizer -----------------------------------------------------------------


class PartitionOptimizer:
    """Find the best placement of a layer chain on nodes (see the module doc).

    ``links``: None for the default link model (``DEFAULT_LINKS``), a table
    ``{(a, b): (bandwidth_mbps, latency_ms)}``, a ``SpaceMesh`` or any object
    with ``link(a, b) -> Link | None``.  ``batch_size`` scales flops,
    activations and transfers.  ``max_labels`` caps the exact search's work.
    """

    def __init__(
        self,
        objective: Objective | str = Objective.LATENCY,
        links: Any = None,
        *,
        batch_size: int = 1,
        max_labels: int = 1_000_000,
    ) -> None:
        try:
            self.objective = Objective(objective)
        except ValueError:
            raise ValueError(
                f"objective={objective!r} is not known; expected 'latency' or "
                "'throughput'"
            ) from None
        if (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int)
            or batch_size < 1
        ):
            raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
        self.links = as_link_model(links)
        self.batch_size = batch_size
        self.max_labels = max_labels

    def optimize(
        self,
        profile: ModelProfile,
        nodes: Sequence[NodeConfig],
        *,
        source: str | None = None,
        sink: str | None = None,
    ) -> PartitionPlan:
        """Return the optimal plan; InfeasiblePartitionError if none exists."""
        nodes = list(nodes)
        if not nodes:
            raise ValueError("nodes is empty; give at least one NodeConfig")
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"node names must be unique; repeated: {', '.join(dup)}")
        index = {n: i for i, n in enumerate(names)}
        for role, name in (("source", source), ("sink", sink)):
            if name is not None and name not in index:
                raise ValueError(
                    f"{role}={name!r} is not one of the nodes ({', '.join(names)}); "
                    "list the ground station that sends or collects as a node"
                )
        inst = _Instance(
            profile,
            nodes,
            self.links,
            self.batch_size,
            None if source is None else index[source],
            None if sink is None else index[sink],
        )
        self._check_layers_fit(profile, nodes, inst)

        expanded = 0
        if self.objective is Objective.LATENCY:
            labels, goal, expanded = _search(inst, _SUM, self.max_labels)
        else:
            labels, goal, n1 = _search(inst, _MAX, self.max_labels)
            expanded = n1
            if goal >= 0:
                end = labels[goal]
                best = max(end.cost, float(inst.sink_busy[end.node]))
                labels, goal, n2 = _search(
                    _restricted(inst, best), _SUM, self.max_labels
                )
                expanded += n2
        if goal < 0:
            raise InfeasiblePartitionError(self._why_infeasible(profile, nodes))
        return self._plan(profile, nodes, inst, labels, goal, expanded, source, sink)

    def _check_layers_fit(
        self, profile: ModelProfile, nodes: Sequence[NodeConfig], inst: _Instance
    ) -> None:
        largest = max(nodes, key=lambda n: n.memory_gb)
        for i, layer in enumerate(profile.layers):
            if not (inst.hi[:, i] > i).any():
                need = layer.params_mb + layer.activation_mb * self.batch_size
                raise InfeasiblePartitionError(
                    f"layer {layer.name!r} (index {i}) needs {need:.6g} MB "
                    f"(weights {layer.params_mb:.6g} MB + activations "
                    f"{layer.activation_mb * self.batch_size:.6g} MB at batch "
                    f"{self.batch_size}) but the largest memory available is "
                    f"{largest.memory_gb * GB_MB:.6g} MB on {largest.name!r}"
                )

    def _why_infeasible(
        self, profile: ModelProfile, nodes: Sequence[NodeConfig]
    ) -> str:
        total_w = sum(lay.params_mb for lay in profile.layers)
        total_m = sum(n.memory_gb * GB_MB for n in nodes)
        return (
            f"no placement fits: the {len(profile.layers)} layers hold "
            f"{total_w:.6g} MB of weights and the {len(nodes)} nodes "
            f"{total_m:.6g} MB of memory in all (largest "
            f"{max(n.memory_gb for n in nodes) * GB_MB:.6g} MB), with each node "
            "taking at most one contiguous stage and consecutive stages linked"
        )

    def _plan(self, profile, nodes, inst, labels, goal, expanded, source, sink):
        path = []
        lid = goal
        while labels[lid].parent >= 0:
            path.append(labels[lid])
            lid = labels[lid].parent
        path.reverse()
        stages = []
        for k, lab in enumerate(path):
            a, b, w = lab.start, lab.end, lab.node
            if k + 1 < len(path):
                nxt = path[k + 1].node
                transfer = float(inst.transfer[w, nxt, b])
                busy = float(inst.busy[w, nxt, b])
            else:
                transfer = float(inst.sink_transfer[w])
                busy = float(inst.sink_busy[w])
            stages.append(
                Stage(
                    node=nodes[w].name,
                    first_layer=a,
                    end_layer=b,
                    layer_names=tuple(lay.name for lay in profile.layers[a:b]),
                    compute_ms=inst.compute_ms(w, a, b),
                    transfer_ms=transfer,
                    link_busy_ms=busy,
                    memory_mb=float(inst.mem_rows[a][b - a - 1]),
                )
            )
        first = path[0].node
        return PartitionPlan(
            objective=self.objective,
            stages=tuple(stages),
            input_transfer_ms=float(inst.transfer[inst.N, first, 0]),
            input_link_busy_ms=float(inst.busy[inst.N, first, 0]),
            batch_size=self.batch_size,
            source=source,
            sink=sink,
            labels_expanded=expanded,
        )
