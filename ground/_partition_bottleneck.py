"""The least bottleneck (throughput objective) by search over candidate values.

With the bottleneck fixed at ``B`` the throughput problem becomes a yes/no
question: can the chain be covered by stages on distinct nodes with every
stage compute and every link busy time at most ``B``, memory respected?  The
answer is monotone in ``B`` and the optimum ``B*`` is one of finitely many
values (a stage compute time, a link busy time), so a binary search over the
sorted candidates finds ``B*`` exactly.  Each question is a depth-first
search over (cut, last node, used nodes) that only has to keep yes/no
information, which is what makes it small:

* a state that failed stays failed for every superset of its used nodes at
  the same (cut, node), so one failed set prunes all its supersets;
* a state is dead when the unused nodes it can still reach over links within
  ``B`` (and that can still reach the sink) cannot carry the remaining flops
  or hold the remaining weights: node ``u`` carries at most the flops of its
  longest stage within ``B`` starting at any cut from here on;
* nodes that are interchangeable under the threshold (equal speed and memory,
  and the same links within ``B``, a weaker condition than equal link
  costs) are used in index order.  Satellites of one kind whose links all
  differ in cost become interchangeable once only "within ``B``" matters.

All three remove no feasible plan, so the search answers exactly.  The plan
with the least latency among those within ``B*`` is then found by the
latency search of ground/_partition_search.py on the restricted instance.
"""

from __future__ import annotations

import copy

import numpy as np

from ground._partition_search import (
    _REL_TOL,
    PartitionSearchLimitError,
    _Instance,
)


def _candidates(inst: _Instance) -> np.ndarray:
    """Every value the bottleneck can take, sorted: stage computes, link busy."""
    values = [inst.busy[np.isfinite(inst.busy)], inst.sink_busy]
    F = inst.flops_prefix
    for a in range(inst.L):
        top = int(inst.hi[:, a].max())
        if top > a:
            flops = F[a + 1 : top + 1] - F[a]
            comp = flops[:, None] / inst.speed[None, :]
            fits = np.arange(a + 1, top + 1)[:, None] <= inst.hi[:, a][None, :]
            values.append(comp[fits])
    return np.unique(np.concatenate(values))


class _Question:
    """Is there a plan whose every stage and link is within ``limit_ms``?"""

    # The pooled table (below) costs about as much as a few hundred states;
    # it is built only for a question that is not answered by then.
    KIND_TABLE_AFTER = 200

    def __init__(self, inst: _Instance, limit_ms: float, budget: int) -> None:
        self.inst = inst
        self.budget = budget
        self.visited = 0
        L, N = inst.L, inst.N
        F = inst.flops_prefix
        limit = limit_ms * (1 + _REL_TOL) + 1e-12

        # reach[u, a]: the furthest end of a stage [a, e) on u within the limit
        top = F[:-1][None, :] + limit * inst.speed[:, None]
        within = np.searchsorted(F, top.ravel(), "right").reshape(N, L) - 1
        exact = (F[within] - F[:-1][None, :]) / inst.speed[:, None] <= limit
        within = np.where(exact, within, within - 1)  # rounding of the sum
        self.reach = np.maximum(np.minimum(within, inst.hi), np.arange(L)[None, :])

        self.link_ok = inst.busy <= limit  # [v, u, cut], row N = the start
        self.link_ok[N, :, 1:] = False  # the start hands over at cut 0 only
        self.sink_mask = _mask(inst.sink_busy <= limit)

        # carry[u, b]: the most flops u can take in one stage that starts at a
        # cut >= b some node can hand over at, and ends at a cut u can hand
        # over at (or at L with the sink within the limit)
        enter = self.link_ok.any(axis=0)  # [u, a]
        leave = self.link_ok[:N].any(axis=1)  # [u, e]
        leave[:, L] = (inst.sink_busy <= limit) & np.isfinite(inst.sink_busy)
        idx = np.where(leave, np.arange(L + 1)[None, :], -1)
        last_leave = np.maximum.accumulate(idx, axis=1)
        end = np.take_along_axis(last_leave, self.reach, axis=1)
        ok = enter[:, :L] & (end > np.arange(L)[None, :])
        gain = np.where(ok, F[np.maximum(end, 0)] - F[:-1][None, :], 0.0)
        carry = np.maximum.accumulate(gain[:, ::-1], axis=1)[:, ::-1]
        self.carry = np.concatenate((carry, np.zeros((N, 1))), axis=1)

        later = np.logical_or.accumulate(self.link_ok[:, :, ::-1], axis=2)[:, :, ::-1]
        weights = 1 << np.arange(N, dtype=np.int64)
        # later_mask[v][b]: nodes u with a link v -> u within the limit at a cut >= b
        self.later_mask = (later * weights[None, :, None]).sum(axis=1).tolist()
        self.now_mask = (self.link_ok * weights[None, :, None]).sum(axis=1).tolist()
        self.prev = _threshold_classes(inst, self.link_ok, self.sink_mask)
        self.failed: dict[tuple[int, int], list[int]] = {}
        self.cap_mb = inst.cap_mb.tolist()
        self.total_flops = float(F[-1])
        self.flops = F.tolist()
        self.order = np.argsort(-inst.speed, kind="stable").tolist()
        self.kinds: _KindTable | None = None

    def solve(self) -> list[tuple[int, int, int]] | None:
        """A plan as [(first layer, end layer, node)], or None when none exists."""
        path: list[tuple[int, int, int]] = []
        return path if self._dfs(0, self.inst.N, 0, path) else None

    def _alive(self, b: int, w: int, used: int) -> bool:
        """Can the unused nodes reachable from w still carry layers [b, L)?"""
        N = self.inst.N
        unused = ~used & ((1 << N) - 1)
        later = self.later_mask
        seen = self.now_mask[w][b] & unused
        frontier = seen
        while frontier:
            nxt = 0
            for v in _bits(frontier):
                nxt |= later[v][b]
            frontier = nxt & unused & ~seen
            seen |= frontier
        # keep the nodes from which the sink can still be reached
        good = seen & self.sink_mask
        grown = True
        while grown:
            grown = False
            for v in _bits(seen & ~good):
                if later[v][b] & good:
                    good |= 1 << v
                    grown = True
        flops = mem = 0.0
        for u in _bits(good):
            flops += self.carry[u, b]
            mem += self.cap_mb[u]
        rest_flops = (self.total_flops - self.flops[b]) * (1 - _REL_TOL)
        rest_mb = self.inst.rem_weights[b] * (1 - _REL_TOL)
        return flops >= rest_flops and mem >= rest_mb

    def _dfs(self, b: int, w: int, used: int, path: list) -> bool:
        inst = self.inst
        if b == inst.L:
            return bool(self.sink_mask >> w & 1)
        key = (b, w)
        for m in self.failed.get(key, ()):
            if m & ~used == 0:
                return False
        self.visited += 1
        if self.visited > self.budget:
            raise PartitionSearchLimitError(
                f"the bottleneck search visited {self.budget} partial plans "
                f"without an answer ({inst.L} layers, {inst.N} nodes); raise "
                "max_labels"
            )
        if self.kinds is None and self.visited > self.KIND_TABLE_AFTER:
            self.kinds = _KindTable(self)
        if self._alive(b, w, used) and (
            self.kinds is None or self.kinds.alive(b, w, used)
        ):
            link = self.link_ok[w]
            for u in self.order:
                if used >> u & 1 or not link[u, b]:
                    continue
                p = self.prev[u]
                if p >= 0 and not used >> p & 1:
                    continue
                for e in range(int(self.reach[u, b]), b, -1):
                    path.append((b, e, u))
                    if self._dfs(e, u, used | 1 << u, path):
                        return True
                    path.pop()
        self.failed.setdefault(key, []).append(used)
        return False


class _KindTable:
    """The yes/no question with only the node counts per kind kept, by DP.

    Nodes of one kind (equal speed and memory, hence equal stage reach) are
    counted, not named: ``ok[c, u, k]`` says whether layers ``[c, L)`` can be
    covered starting with a stage on ``u`` at cut ``c`` when ``k`` (a
    mixed-radix vector of counts per kind, ``u``'s kind included) nodes are
    still unused, where a later stage may land on any node whose kind still
    has a count left, even one used before.  Every plan is such a plan, so a
    state without an answer here has no completion.  This keeps what the
    capacity test of ``_Question._alive`` loses: that stages are contiguous
    and where they can be cut.  The table has ``L * N * prod(count + 1)``
    entries; above ``MAX_ENTRIES`` it is not built and ``alive`` says yes.
    """

    MAX_ENTRIES = 4_000_000

    def __init__(self, q: _Question) -> None:
        inst = q.inst
        L, N = inst.L, inst.N
        keys = list(zip(inst.speed.tolist(), inst.cap_mb.tolist(), strict=True))
        first: dict[tuple[float, float], int] = {}
        self.kind = [first.setdefault(key, len(first)) for key in keys]
        T = len(first)
        counts = np.bincount(self.kind, minlength=T)
        self.stride = np.concatenate(([1], np.cumprod(counts + 1)[:-1])).astype(int)
        K = int(np.prod(counts + 1))
        self.built = L * N * K <= self.MAX_ENTRIES
        if not self.built:
            return
        digits = (np.arange(K)[:, None] // self.stride[None, :]) % (counts + 1)
        valid = [np.flatnonzero(digits[:, t] >= 1) for t in range(T)]
        of_kind = [np.flatnonzero(np.array(self.kind) == t) for t in range(T)]
        link = q.link_ok[:N].astype(np.float32)  # [u, u2, cut]
        sink = np.array([q.sink_mask >> u & 1 for u in range(N)], dtype=np.int32)

        # done[u, e, k]: how many ends e' >= e of a stage on u complete the plan
        done = np.zeros((N, L + 2, K), dtype=np.int32)
        for t in range(T):
            rows = of_kind[t]
            done[np.ix_(rows, [L], valid[t])] = sink[rows, None, None]
        self.ok = np.zeros((L + 1, N, K), dtype=bool)
        for c in range(L - 1, -1, -1):
            e = c + 1
            if e < L:
                nxt = self.ok[e].astype(np.float32)  # [u2, k]
                for t in range(T):
                    rows, cols = of_kind[t], valid[t]
                    reach = link[rows, :, e] @ nxt[:, cols - self.stride[t]]
                    done[np.ix_(rows, [e], cols)] = (reach > 0)[:, None, :]
                done[:, e] += done[:, e + 1]
            for u in range(N):
                r = int(q.reach[u, c])
                if r > c:
                    t = self.kind[u]
                    cols = valid[t]
                    self.ok[c, u, cols] = done[u, c + 1, cols] > done[u, r + 1, cols]
        self.link_ok = q.link_ok

    def alive(self, b: int, w: int, used: int) -> bool:
        if not self.built:
            return True
        k = 0
        firsts = []
        link = self.link_ok[w]
        for u, t in enumerate(self.kind):
            if not used >> u & 1:
                k += int(self.stride[t])
                if link[u, b]:
                    firsts.append(u)
        return any(self.ok[b, u, k] for u in firsts)


def _bits(mask: int):
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


def _mask(flags: np.ndarray) -> int:
    return sum(1 << int(i) for i in np.flatnonzero(flags))


def _threshold_classes(inst: _Instance, link_ok: np.ndarray, sink_mask: int):
    """Interchangeable classes for the yes/no question (see the module doc)."""
    view = copy.copy(inst)
    view.transfer = view.busy = np.where(link_ok, 0.0, np.inf)
    sink = np.array([0.0 if sink_mask >> u & 1 else np.inf for u in range(inst.N)])
    view.sink_transfer = view.sink_busy = sink
    return view._interchangeable_classes().tolist()


def least_bottleneck(
    inst: _Instance, lower_ms: float, budget: int
) -> tuple[float, int] | None:
    """(the least bottleneck B*, partial plans visited), None when no plan fits.

    ``lower_ms`` is a known lower bound on ``B*`` (the relaxed DP's value);
    candidates below it are not asked about.  ``budget`` caps the states one
    question may visit.
    """
    values = _candidates(inst)
    lo = int(np.searchsorted(values, lower_ms * (1 - _REL_TOL)))
    hi = len(values) - 1
    visited = 0
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        question = _Question(inst, float(values[mid]), budget)
        plan = question.solve()
        visited += question.visited
        if plan is None:
            lo = mid + 1
            continue
        best = _bottleneck_of(inst, plan)
        # the plan found may be better than asked for: skip to its value
        hi = int(np.searchsorted(values, best * (1 - _REL_TOL))) - 1
    return None if best is None else (best, visited)


def _bottleneck_of(inst: _Instance, plan: list[tuple[int, int, int]]) -> float:
    worst = 0.0
    prev = inst.N
    for a, e, u in plan:
        worst = max(worst, inst.compute_ms(u, a, e), float(inst.busy[prev, u, a]))
        prev = u
    return max(worst, float(inst.sink_busy[prev]))
