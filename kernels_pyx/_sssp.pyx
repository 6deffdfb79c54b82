# cython: language_level=3
"""Single-source shortest paths on a CSR graph, compiled (Dijkstra).

Two tiers, after scipy.sparse.csgraph: ``sssp`` validates and allocates, then
``_dijkstra`` runs without the GIL over contiguous memoryviews and a binary
heap on preallocated arrays.  The NumPy twin is agent/kernels/_sssp_twin.py;
both give the same results bit for bit, ties included, because both settle
nodes in increasing (distance, node index) order and relax edges in CSR order
with a strict ``<``.

Besides distances and predecessors the kernel returns, per node, the first
hop from the source (what a forwarding table needs) and the minimum of a
per-edge attribute along the chosen path (the path's bottleneck bandwidth, or
the time until its first link goes down).
"""

import numpy as np

# one validation for both backends, so their error messages cannot drift apart
from agent.kernels._sssp_twin import validate_csr, validate_sources

from libc.math cimport INFINITY

cdef extern from *:
    """
    /* Node a precedes node b in the heap: smaller distance, then smaller index. */
    #define SSSP_BEFORE(dist, a, b) \
        ((dist)[a] < (dist)[b] || ((dist)[a] == (dist)[b] && (a) < (b)))
    """
    bint SSSP_BEFORE(double *dist, int a, int b) noexcept nogil


cdef inline void _sift_up(
    int *heap, int *pos, double *dist, int i
) noexcept nogil:
    cdef int node = heap[i]
    cdef int parent
    while i > 0:
        parent = (i - 1) >> 1
        if not SSSP_BEFORE(dist, node, heap[parent]):
            break
        heap[i] = heap[parent]
        pos[heap[i]] = i
        i = parent
    heap[i] = node
    pos[node] = i


cdef inline void _sift_down(
    int *heap, int *pos, double *dist, int size, int i
) noexcept nogil:
    cdef int node = heap[i]
    cdef int child
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and SSSP_BEFORE(dist, heap[child + 1], heap[child]):
            child += 1
        if not SSSP_BEFORE(dist, heap[child], node):
            break
        heap[i] = heap[child]
        pos[heap[i]] = i
        i = child
    heap[i] = node
    pos[node] = i


cdef void _dijkstra(
    const int[::1] indptr,
    const int[::1] indices,
    const double[::1] weight,
    const double[::1] aux,
    int source,
    double[::1] dist,
    int[::1] pred,
    int[::1] first_hop,
    double[::1] path_min,
    int[::1] heap,
    int[::1] pos,
) noexcept nogil:
    # pos[v]: index in the heap, -1 never queued, -2 settled.
    cdef int n = dist.shape[0]
    cdef int size = 0
    cdef int u, v, e, i
    cdef double d, a

    for i in range(n):
        dist[i] = INFINITY
        pred[i] = -1
        first_hop[i] = -1
        path_min[i] = -INFINITY
        pos[i] = -1

    dist[source] = 0.0
    first_hop[source] = source
    path_min[source] = INFINITY
    heap[0] = source
    pos[source] = 0
    size = 1

    while size > 0:
        u = heap[0]
        pos[u] = -2
        size -= 1
        if size > 0:
            heap[0] = heap[size]
            pos[heap[0]] = 0
            _sift_down(&heap[0], &pos[0], &dist[0], size, 0)

        for e in range(indptr[u], indptr[u + 1]):
            v = indices[e]
            if pos[v] == -2:
                continue
            # a link that is down carries +inf and never relaxes anything
            d = dist[u] + weight[e]
            if d < dist[v]:
                dist[v] = d
                pred[v] = u
                first_hop[v] = v if u == source else first_hop[u]
                a = aux[e]
                path_min[v] = a if a < path_min[u] else path_min[u]
                if pos[v] == -1:
                    heap[size] = v
                    size += 1
                    _sift_up(&heap[0], &pos[0], &dist[0], size - 1)
                else:
                    _sift_up(&heap[0], &pos[0], &dist[0], pos[v])


def sssp(indptr, indices, weight, aux, source):
    """Run Dijkstra from ``source`` over the CSR graph (indptr, indices, weight).

    ``weight`` holds non-negative costs (+inf for a link that is down); ``aux``
    holds a per-edge attribute whose minimum along each chosen path is
    returned.  Return ``(dist, pred, first_hop, path_min)``: float64 distances
    (+inf unreachable), int32 predecessors and first hops (-1 unreachable; the
    source is its own first hop) and float64 path minima (+inf at the source,
    -inf unreachable).
    """
    indptr_a = np.ascontiguousarray(indptr, dtype=np.int32)
    indices_a = np.ascontiguousarray(indices, dtype=np.int32)
    weight_a = np.ascontiguousarray(weight, dtype=np.float64)
    aux_a = np.ascontiguousarray(aux, dtype=np.float64)
    validate_csr(indptr_a, indices_a, weight_a, aux_a, source)

    cdef int n = indptr_a.shape[0] - 1
    dist = np.empty(n, dtype=np.float64)
    pred = np.empty(n, dtype=np.int32)
    first_hop = np.empty(n, dtype=np.int32)
    path_min = np.empty(n, dtype=np.float64)
    heap = np.empty(n, dtype=np.int32)
    pos = np.empty(n, dtype=np.int32)

    cdef const int[::1] ip = indptr_a
    cdef const int[::1] ix = indices_a
    cdef const double[::1] w = weight_a
    cdef const double[::1] ax = aux_a
    cdef double[::1] dv = dist
    cdef int[::1] pv = pred
    cdef int[::1] fv = first_hop
    cdef double[::1] mv = path_min
    cdef int[::1] hv = heap
    cdef int[::1] sv = pos
    cdef int src = source
    with nogil:
        _dijkstra(ip, ix, w, ax, src, dv, pv, fv, mv, hv, sv)
    return dist, pred, first_hop, path_min



def sssp_many(indptr, indices, weight, sources):
    """Run ``sssp`` from each of ``sources``; return (dist, pred, first_hop).

    Each output has one row per source.  Validation happens once and the
    whole loop runs without the GIL, which is what makes all-pairs tables of
    a 1,584-satellite shell take a fraction of a second.
    """
    indptr_a = np.ascontiguousarray(indptr, dtype=np.int32)
    indices_a = np.ascontiguousarray(indices, dtype=np.int32)
    weight_a = np.ascontiguousarray(weight, dtype=np.float64)
    sources_a = np.ascontiguousarray(sources, dtype=np.int32)
    validate_sources(indptr_a, indices_a, weight_a, sources_a)

    cdef int n = indptr_a.shape[0] - 1
    cdef int k = sources_a.shape[0]
    dist = np.empty((k, n), dtype=np.float64)
    pred = np.empty((k, n), dtype=np.int32)
    first_hop = np.empty((k, n), dtype=np.int32)
    path_min = np.empty(n, dtype=np.float64)
    heap = np.empty(n, dtype=np.int32)
    pos = np.empty(n, dtype=np.int32)

    cdef const int[::1] ip = indptr_a
    cdef const int[::1] ix = indices_a
    cdef const double[::1] w = weight_a
    cdef const int[::1] src = sources_a
    cdef double[:, ::1] dv = dist
    cdef int[:, ::1] pv = pred
    cdef int[:, ::1] fv = first_hop
    cdef double[::1] mv = path_min
    cdef int[::1] hv = heap
    cdef int[::1] sv = pos
    cdef int r
    with nogil:
        for r in range(k):
            _dijkstra(ip, ix, w, w, src[r], dv[r], pv[r], fv[r], mv, hv, sv)
    return dist, pred, first_hop
