"""The relaxed partition DP kernel: compiled and NumPy twin, bit for bit."""

import numpy as np
import pytest

from agent.kernels import _partition_dp_twin as twin
from agent.kernels._select import load_compiled

compiled = load_compiled("_partition_dp")
BACKENDS = [twin] + ([compiled] if compiled is not None else [])


def random_dp_inputs(rng, L, N, add):
    flops = rng.choice([0.0, 1.0, 5.0], size=L) * rng.uniform(1e8, 1e9, size=L)
    fp = np.concatenate(([0.0], np.cumsum(flops)))
    inv = 1.0 / rng.uniform(1e6, 1e9, size=N)
    span = rng.integers(0, 5, size=(N, L))
    hi = np.minimum(np.arange(L)[None, :] + span, L)
    step = rng.uniform(0, 50, size=(N + 1, N, L + 1))
    step[rng.random(step.shape) < 0.2] = np.inf
    for w in range(N):
        step[w, w] = np.inf
    sink = rng.uniform(0, 10, size=N)
    return fp, inv, hi, step, sink, add


def reference_dp(fp, inv, hi, step, sink, add):
    """The recurrence written out with Python loops and floats."""
    L, N = len(fp) - 1, len(inv)
    comb = (lambda x, y: x + y) if add else max
    H = [[float("inf")] * N for _ in range(L + 1)]
    H[L] = list(sink)
    G = [float("inf")] * N
    for b in range(L - 1, -1, -1):
        G = [
            min(
                [
                    comb((fp[e] - fp[b]) * inv[u], H[e][u])
                    for e in range(b + 1, hi[u][b] + 1)
                ],
                default=float("inf"),
            )
            for u in range(N)
        ]
        H[b] = [min(comb(step[w][u][b], G[u]) for u in range(N)) for w in range(N)]
    first = [comb(step[N][u][0], G[u]) for u in range(N)]
    return np.array(H), np.array(first)


@pytest.mark.skipif(compiled is None, reason="the compiled kernel is not built")
@pytest.mark.parametrize("seed", range(30))
def test_compiled_equals_twin_bit_for_bit(seed):
    rng = np.random.default_rng(seed)
    args = random_dp_inputs(
        rng, int(rng.integers(1, 30)), int(rng.integers(1, 7)), seed % 2
    )
    for got, want in zip(
        compiled.relaxed_dp(*args), twin.relaxed_dp(*args), strict=True
    ):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "backend", BACKENDS, ids=lambda m: m.__name__.rsplit(".", 1)[1]
)
@pytest.mark.parametrize("seed", range(10))
def test_dp_matches_the_written_out_recurrence(backend, seed):
    rng = np.random.default_rng(100 + seed)
    args = random_dp_inputs(
        rng, int(rng.integers(1, 12)), int(rng.integers(1, 5)), seed % 2
    )
    H, best_end, best_next, first = backend.relaxed_dp(*args)
    want_H, want_first = reference_dp(*args)
    np.testing.assert_allclose(H, want_H, rtol=1e-12)
    np.testing.assert_allclose(first, want_first, rtol=1e-12)
    fp, inv, hi, step, sink, add = args
    L = len(fp) - 1
    for b in range(L):
        for w in range(len(inv)):
            u = best_next[b, w]
            e = best_end[b, u]
            assert b < e <= L


@pytest.mark.parametrize(
    "backend", BACKENDS, ids=lambda m: m.__name__.rsplit(".", 1)[1]
)
def test_dp_refuses_bad_shapes(backend):
    rng = np.random.default_rng(0)
    fp, inv, hi, step, sink, add = random_dp_inputs(rng, 5, 3, True)
    with pytest.raises(ValueError, match=r"hi has shape \(3, 4\), expected \(3, 5\)"):
        backend.relaxed_dp(fp, inv, hi[:, :4], step, sink, add)
    with pytest.raises(ValueError, match=r"step has shape"):
        backend.relaxed_dp(fp, inv, hi, step[:3], sink, add)
    bad = hi.copy()
    bad[0, 3] = 1
    with pytest.raises(ValueError, match="cannot end before it starts"):
        backend.relaxed_dp(fp, inv, bad, step, sink, add)
