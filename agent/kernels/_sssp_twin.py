"""Single-source shortest paths on a CSR graph: the pure-Python twin.

Same signature and the same results, ties included, as the compiled
kernels_pyx/_sssp.pyx: nodes are settled in increasing (distance, node index)
order and edges relaxed in CSR order with a strict ``<``.  A heap of
``(distance, node)`` tuples with lazy deletion pops in exactly that order,
because one node never sits in it twice with the same distance.
"""

import heapq
import math

import numpy as np


def sssp(indptr, indices, weight, aux, source):
    """Run Dijkstra from ``source``; see the compiled kernel for the contract."""
    indptr_a = np.ascontiguousarray(indptr, dtype=np.int32)
    indices_a = np.ascontiguousarray(indices, dtype=np.int32)
    weight_a = np.ascontiguousarray(weight, dtype=np.float64)
    aux_a = np.ascontiguousarray(aux, dtype=np.float64)
    validate_csr(indptr_a, indices_a, weight_a, aux_a, source)

    n = indptr_a.shape[0] - 1
    ip = indptr_a.tolist()
    ix = indices_a.tolist()
    w = weight_a.tolist()
    ax = aux_a.tolist()
    dist = [math.inf] * n
    pred = [-1] * n
    first = [-1] * n
    pmin = [-math.inf] * n
    settled = [False] * n

    dist[source] = 0.0
    first[source] = source
    pmin[source] = math.inf
    heap = [(0.0, source)]
    while heap:
        du, u = heapq.heappop(heap)
        if settled[u] or du != dist[u]:
            continue
        settled[u] = True
        fu = first[u]
        mu = pmin[u]
        for e in range(ip[u], ip[u + 1]):
            v = ix[e]
            if settled[v]:
                continue
            d = du + w[e]
            if d < dist[v]:
                dist[v] = d
                pred[v] = u
                first[v] = v if u == source else fu
                a = ax[e]
                pmin[v] = a if a < mu else mu
                heapq.heappush(heap, (d, v))

    return (
        np.array(dist, dtype=np.float64),
        np.array(pred, dtype=np.int32),
        np.array(first, dtype=np.int32),
        np.array(pmin, dtype=np.float64),
    )


def validate_csr(indptr, indices, weight, aux, source):
    """Raise ValueError listing every problem of the CSR input at once."""
    problems = []
    if indptr.ndim != 1 or indptr.shape[0] < 1:
        raise ValueError(
            f"indptr must be a 1-D array of n + 1 offsets, got shape {indptr.shape}"
        )
    n = indptr.shape[0] - 1
    m = indices.shape[0]
    if indptr[0] != 0 or indptr[n] != m:
        problems.append(
            f"indptr must run from 0 to len(indices)={m}, "
            f"got {int(indptr[0])} .. {int(indptr[n])}"
        )
    if n > 0 and np.any(np.diff(indptr) < 0):
        problems.append("indptr must be non-decreasing")
    if weight.shape[0] != m or aux.shape[0] != m:
        problems.append(
            f"weight ({weight.shape[0]}) and aux ({aux.shape[0]}) need one value "
            f"per edge ({m})"
        )
    elif m:
        if np.any(np.isnan(weight)) or weight.min() < 0.0:
            problems.append(
                f"weights must be >= 0 or +inf, got minimum {float(weight.min())!r} "
                f"and {int(np.isnan(weight).sum())} NaN"
            )
    if m and (indices.min() < 0 or indices.max() >= n):
        problems.append(
            f"indices must lie in [0, {n}), got {int(indices.min())} .. "
            f"{int(indices.max())}"
        )
    if not isinstance(source, int | np.integer) or not 0 <= source < n:
        problems.append(f"source={source!r} is not a node index in [0, {n})")
    if problems:
        raise ValueError("invalid graph for sssp: " + "; ".join(problems))


def sssp_many(indptr, indices, weight, sources):
    """Run ``sssp`` from each of ``sources``; return (dist, pred, first_hop)."""
    indptr_a = np.ascontiguousarray(indptr, dtype=np.int32)
    indices_a = np.ascontiguousarray(indices, dtype=np.int32)
    weight_a = np.ascontiguousarray(weight, dtype=np.float64)
    sources_a = np.ascontiguousarray(sources, dtype=np.int32)
    validate_sources(indptr_a, indices_a, weight_a, sources_a)
    n = indptr_a.shape[0] - 1
    k = sources_a.shape[0]
    dist = np.empty((k, n), dtype=np.float64)
    pred = np.empty((k, n), dtype=np.int32)
    first_hop = np.empty((k, n), dtype=np.int32)
    for r, s in enumerate(sources_a.tolist()):
        dist[r], pred[r], first_hop[r], _ = sssp(
            indptr_a, indices_a, weight_a, weight_a, s
        )
    return dist, pred, first_hop


def validate_sources(indptr, indices, weight, sources):
    """Validate a CSR graph and a 1-D array of source indices, raising once."""
    n = indptr.shape[0] - 1 if indptr.ndim == 1 else -1
    bad = []
    if sources.ndim != 1:
        bad.append(f"sources must be 1-D, got shape {sources.shape}")
    elif sources.size and (sources.min() < 0 or sources.max() >= n):
        bad.append(
            f"sources must lie in [0, {n}), got {int(sources.min())} .. "
            f"{int(sources.max())}"
        )
    try:
        validate_csr(indptr, indices, weight, weight, 0 if n > 0 else None)
    except ValueError as exc:
        if n > 0 or indptr.ndim != 1:
            raise ValueError(f"{exc}" + "".join(f"; {b}" for b in bad)) from None
    if bad:
        raise ValueError("invalid sources for sssp_many: " + "; ".join(bad))
