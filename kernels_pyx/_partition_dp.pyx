# cython: language_level=3
"""The relaxed partition DP over (layer cut, node), compiled.

Two tiers: ``relaxed_dp`` validates and allocates (through the twin's
``validate``, so both backends refuse the same inputs with the same words),
then ``_dp`` runs without the GIL.  The NumPy twin is
agent/kernels/_partition_dp_twin.py; both give the same results bit for bit:
the same float64 operations in the same order, and ties broken towards the
smaller end layer and the smaller node index (a strict ``<`` here, the first
minimum of ``argmin`` there).  See ground/_partition.py for what the DP means.
"""

import numpy as np

from agent.kernels._partition_dp_twin import validate

from libc.math cimport INFINITY


cdef void _dp(
    const double[::1] flops_prefix,
    const double[::1] inv_speed,
    const long long[:, ::1] hi,
    const double[:, :, ::1] step,
    const double[::1] sink,
    bint add,
    double[:, ::1] H,
    long long[:, ::1] best_end,
    long long[:, ::1] best_next,
    double[::1] G,
    double[::1] first,
) noexcept nogil:
    cdef Py_ssize_t L = flops_prefix.shape[0] - 1
    cdef Py_ssize_t N = inv_speed.shape[0]
    cdef Py_ssize_t b, e, u, w, arg
    cdef long long last
    cdef double best, v, comp, s
    for w in range(N):
        H[L, w] = sink[w]
    for b in range(L - 1, -1, -1):
        for u in range(N):
            best = INFINITY
            arg = b + 1
            last = hi[u, b]
            for e in range(b + 1, last + 1):
                comp = (flops_prefix[e] - flops_prefix[b]) * inv_speed[u]
                if add:
                    v = comp + H[e, u]
                else:
                    v = comp if comp > H[e, u] else H[e, u]
                if v < best:
                    best = v
                    arg = e
            G[u] = best
            best_end[b, u] = arg
        for w in range(N):
            best = INFINITY
            arg = 0
            for u in range(N):
                s = step[w, u, b]
                if add:
                    v = s + G[u]
                else:
                    v = s if s > G[u] else G[u]
                if v < best:
                    best = v
                    arg = u
            H[b, w] = best
            best_next[b, w] = arg
    for u in range(N):
        s = step[N, u, 0]
        if add:
            first[u] = s + G[u]
        else:
            first[u] = s if s > G[u] else G[u]


def relaxed_dp(flops_prefix, inv_speed, hi, step, sink, add):
    """Return ``(H, best_end, best_next, first)``; see the twin for the contract."""
    fp, inv, hi_a, step_a, sink_a = validate(flops_prefix, inv_speed, hi, step, sink)
    L = fp.shape[0] - 1
    N = inv.shape[0]
    H = np.full((L + 1, N), np.inf)
    best_end = np.zeros((L + 1, N), dtype=np.int64)
    best_next = np.zeros((L + 1, N), dtype=np.int64)
    G = np.full(N, np.inf)
    first = np.empty(N)
    cdef bint add_c = bool(add)
    cdef const double[::1] fp_v = fp
    cdef const double[::1] inv_v = inv
    cdef const long long[:, ::1] hi_v = hi_a
    cdef const double[:, :, ::1] step_v = step_a
    cdef const double[::1] sink_v = sink_a
    cdef double[:, ::1] H_v = H
    cdef long long[:, ::1] end_v = best_end
    cdef long long[:, ::1] next_v = best_next
    cdef double[::1] G_v = G
    cdef double[::1] first_v = first
    with nogil:
        _dp(fp_v, inv_v, hi_v, step_v, sink_v, add_c, H_v, end_v, next_v, G_v, first_v)
    return H, best_end, best_next, first
