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
2. Lower bounds, each valid for every completion; ``h`` is the largest.

   a. The cost-to-go of the relaxed problem in which nodes may be reused: a
      dynamic program over ``(layer cut, node)``, ``O(L * window * N +
      L * N^2)``, computed once backwards (the compiled kernel
      ``agent.kernels._partition_dp`` or its NumPy twin).
   b. Lagrangian (latency, when the relaxed optimum reuses a node): with a
      multiplier ``lam_u >= 0`` added to every stage on ``u``, the relaxed
      DP gives ``H_lam``; a completion that uses each node at most once pays
      at most the multipliers of the nodes still unused, so its cost is at
      least ``H_lam[b, w] - sum(lam over unused nodes)``.  The multipliers
      come from subgradient ascent on the start's bound (Held & Karp 1971,
      Polyak's step), about a hundred DP passes.
   c. Bounds that know ``S`` (evaluated when a label leaves the queue): the
      remaining layers go on unused nodes, each holding at most its memory
      in weights.  For latency, the compute part is the optimum of the
      fractional transportation problem "a MB of layer i on node u costs
      (flops_i / weight_i) / speed_u"; its cost matrix is a product, hence
      Monge once both sides are sorted, so filling the fastest node with
      the densest layers first is optimal (Hoffman 1963); transfers add the
      cheapest way out of ``w``, ``k_min - 1`` of the cheapest later cuts
      (``k_min``: fewest unused nodes whose memories hold the remaining
      weights) and the cheapest way to the sink.  For throughput: the least
      ``T`` with ``sum_u min(T * speed_u, Q(memory_u)) >= remaining flops``
      (``Q(m)``: most flops any ``m`` MB of the remaining layers carry), the
      largest remaining layer on the fastest unused node, and the same link
      terms.  Unused memory below the remaining weights proves a label dead.
3. Pruning that removes no optimum: a label is dropped when another label at
   the same ``(b, w)`` used a subset of its nodes at no greater cost (every
   completion of the dropped label completes the other one at no greater
   cost); and nodes that are interchangeable (equal speed and memory, and a
   transposition of the two leaves every link cost unchanged) are used in
   index order, since renaming interchangeable nodes maps any plan to one
   that obeys this order at the same cost.

Throughput is found in two passes: the least bottleneck ``B*`` by binary
search over the finitely many values it can take, each step a yes/no search
"is there a plan within B" (ground/_partition_bottleneck.py, exact for the
same reasons), then the least latency among plans whose every stage and link
stays within ``B*`` (the latency search on the instance with the other edges
removed).

Successors are generated lazily: expanding a label builds one sorted array of
all its ``(end layer, node)`` successors and queues a single cursor over it,
so the queue grows by one entry per expansion, not by ``L * N``.

Speed (bench/partition.py, 200 layers x 20 nodes, 2 shared cores): a few
hundred expansions and under 0.2 s of CPU (0.05-0.47 s wall) for both
objectives when a few ground stations carry most of the model; for latency
also when 9-10 satellites in a row must carry it (median 0.14 s CPU, the
slowest of five instances about 6,000 expansions and 1-3 s).  Known gap:
the throughput objective on that last family (18 satellites with pairwise
different links, nearly all of them needed to balance the pipeline).  The
least bottleneck itself is found in 0.12-0.14 s of CPU on three of its five
instances; on the other two the yes/no question at 60.05 ms (60.15 ms is
feasible) exceeds ``max_labels``: every full stage of a slow satellite then
ends at an 8 MB cut, so they need a chain of fast links, a
Hamiltonian-path-like condition the pooled table cannot see.  Where ``B*``
is found, the second pass, the least latency among plans within it, exceeds
``max_labels`` too: its bounds (the relaxed DP, Lagrangian and memory
capacity) do not know that ``B*`` caps how much each node computes.  The
optimizer raises ``PartitionSearchLimitError`` there instead of returning
a plan it cannot prove optimal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from ground._partition_bottleneck import least_bottleneck
from ground._partition_search import (
    _MAX,
    _SUM,
    GB_MB,
    PartitionSearchLimitError,
    _Instance,
    _relaxed_cost_to_go,
    _restricted,
    _search,
)

__all__ = [
    "DEFAULT_LINKS",
    "InfeasiblePartitionError",
    "LayerProfile",
    "Link",
    "LinkTable",
    "MeshLinks",
    "ModelProfile",
    "NodeConfig",
    "NodeType",
    "Objective",
    "PartitionOptimizer",
    "PartitionPlan",
    "PartitionSearchLimitError",
    "Stage",
]


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
            lower = _relaxed_cost_to_go(inst, _MAX).start
            found = least_bottleneck(inst, lower, self.max_labels)
            goal = -1
            if found is not None:
                best, expanded = found
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
