"""The relaxed partition DP over (layer cut, node): the NumPy twin.

Same signature and the same results, bit for bit, as the compiled
kernels_pyx/_partition_dp.pyx: the same float64 operations in the same
order, and ties broken towards the smaller end layer and the smaller node
index (``argmin`` returns the first minimum; the kernel uses a strict ``<``).

The DP solves the partition problem of ground/_partition.py with node reuse
allowed.  ``H[b, w]`` is the least cost of finishing when the stage on node
``w`` ended at cut ``b``; ``H[L] = sink``.  A stage ``[b, e)`` on node ``u``
costs ``(flops_prefix[e] - flops_prefix[b]) * inv_speed[u]`` and is allowed
for ``e <= hi[u, b]``; entering ``u`` after ``w`` at cut ``b`` costs
``step[w, u, b]`` (row ``N`` is the start).  ``add`` combines costs by sum
(latency), otherwise by max (bottleneck).  Returns ``H``, ``best_end[b, u]``
(the end of the best stage from ``b`` on ``u``), ``best_next[b, w]`` (the
best node after ``w`` at ``b``) and ``first[u]`` (the best plan whose first
stage runs on ``u``).
"""

import numpy as np


def validate(flops_prefix, inv_speed, hi, step, sink):
    """Check shapes and dtypes for both backends; return contiguous arrays."""
    fp = np.ascontiguousarray(flops_prefix, dtype=np.float64)
    inv = np.ascontiguousarray(inv_speed, dtype=np.float64)
    hi_a = np.ascontiguousarray(hi, dtype=np.int64)
    step_a = np.ascontiguousarray(step, dtype=np.float64)
    sink_a = np.ascontiguousarray(sink, dtype=np.float64)
    problems = []
    if fp.ndim != 1 or fp.shape[0] < 2:
        problems.append(f"flops_prefix has shape {fp.shape}, expected (L + 1,), L >= 1")
    if inv.ndim != 1 or inv.shape[0] < 1:
        problems.append(f"inv_speed has shape {inv.shape}, expected (N,), N >= 1")
    if not problems:
        L, N = fp.shape[0] - 1, inv.shape[0]
        if hi_a.shape != (N, L):
            problems.append(f"hi has shape {hi_a.shape}, expected ({N}, {L})")
        elif hi_a.size and (hi_a.min() < 0 or hi_a.max() > L):
            problems.append(f"hi holds values outside [0, {L}]")
        else:
            below = hi_a < np.arange(L)[None, :]
            if below.any():
                problems.append(
                    "hi[u, b] < b somewhere; a stage cannot end before it starts"
                )
        if step_a.shape != (N + 1, N, L + 1):
            problems.append(
                f"step has shape {step_a.shape}, expected ({N + 1}, {N}, {L + 1})"
            )
        if sink_a.shape != (N,):
            problems.append(f"sink has shape {sink_a.shape}, expected ({N},)")
    if problems:
        raise ValueError("relaxed_dp: " + "; ".join(problems))
    return fp, inv, hi_a, step_a, sink_a


def relaxed_dp(flops_prefix, inv_speed, hi, step, sink, add):
    """Return ``(H, best_end, best_next, first)``; see the module docstring."""
    fp, inv, hi_a, step_a, sink_a = validate(flops_prefix, inv_speed, hi, step, sink)
    L, N = fp.shape[0] - 1, inv.shape[0]
    H = np.full((L + 1, N), np.inf)
    H[L] = sink_a
    best_end = np.zeros((L + 1, N), dtype=np.int64)
    best_next = np.zeros((L + 1, N), dtype=np.int64)
    G = np.full(N, np.inf)
    cols = np.arange(N)
    ends_all = np.arange(L + 1)[:, None]
    for b in range(L - 1, -1, -1):
        last = int(hi_a[:, b].max())  # no stage from b ends later
        if last <= b:
            G = np.full(N, np.inf)
            best_end[b] = b + 1
        else:
            comp = (fp[b + 1 : last + 1, None] - fp[b]) * inv
            tail = H[b + 1 : last + 1]
            rest = comp + tail if add else np.maximum(comp, tail)
            rest[ends_all[b + 1 : last + 1] > hi_a[:, b]] = np.inf
            arg = rest.argmin(axis=0)
            G = rest[arg, cols]
            best_end[b] = arg + b + 1
        total = step_a[:N, :, b] + G if add else np.maximum(step_a[:N, :, b], G)
        best_next[b] = total.argmin(axis=1)
        H[b] = total[cols, best_next[b]]
    first = step_a[N, :, 0] + G if add else np.maximum(step_a[N, :, 0], G)
    return H, best_end, best_next, first
