"""The exact search behind ``PartitionOptimizer`` (ground/_partition.py).

The instance as arrays, the relaxed DP (through the kernel
``agent.kernels._partition_dp``), the Lagrangian and capacity bounds, and the
best-first search over (layer cut, last node, used nodes).  Why the search is
exact, and what it costs, is written in ground/_partition.py's docstring.
"""

from __future__ import annotations

import copy
import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ground._partition import LinkModel, ModelProfile, NodeConfig

GB_MB = 1000.0  # decimal units throughout: 1 GB = 1000 MB = 1e9 bytes
_REL_TOL = 1e-9


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
    upper = math.inf  # the cost of the best plan met on the way
    for _ in range(iterations):
        if not math.isfinite(relaxed.start):
            break
        uses = np.bincount(relaxed.path_nodes, minlength=N).astype(float)
        if not (uses > 1).any():
            # the relaxed optimum is a plan: its cost without the penalties
            upper = min(upper, relaxed.start - float(lam @ uses))
        grad = uses - 1.0
        grad[(lam <= 0) & (grad < 0)] = 0.0  # lam stays >= 0
        if not grad.any() or best_value >= upper * (1 - 1e-12):
            break
        target = min(upper, best_value * 1.05 + 1e-9)
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
