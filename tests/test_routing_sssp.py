"""The compiled single-source shortest-path kernel against its twin and networkx."""

import math

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.kernels import _sssp_twin
from agent.kernels._select import load_compiled

compiled = load_compiled("_sssp")
needs_compiled = pytest.mark.skipif(
    compiled is None, reason="compiled kernel not built or ORBITFL_KERNELS=numpy"
)
BACKENDS = [pytest.param(_sssp_twin, id="twin")]
if compiled is not None:
    BACKENDS.append(pytest.param(compiled, id="compiled"))


def random_csr(rng, n, m, *, integer_weights=True, down_fraction=0.1):
    src = rng.integers(0, n, m)
    dst = rng.integers(0, n, m)
    keep = src != dst
    src, dst = src[keep], dst[keep]
    if integer_weights:  # many ties, to pin the tie-breaking
        w = rng.integers(0, 4, src.size).astype(np.float64)
    else:
        w = rng.random(src.size) * 10.0
    w[rng.random(src.size) < down_fraction] = math.inf
    order = np.lexsort((dst, src))
    src, dst, w = src[order], dst[order], w[order]
    indptr = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(np.bincount(src, minlength=n), out=indptr[1:])
    aux = rng.random(src.size)
    return indptr, dst.astype(np.int32), w, aux


@needs_compiled
@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 40),
    density=st.integers(0, 6),
    integer=st.booleans(),
)
def test_compiled_sssp_equals_twin_bit_for_bit(seed, n, density, integer):
    rng = np.random.default_rng(seed)
    indptr, indices, w, aux = random_csr(rng, n, n * density, integer_weights=integer)
    source = int(rng.integers(0, n))
    got = compiled.sssp(indptr, indices, w, aux, source)
    want = _sssp_twin.sssp(indptr, indices, w, aux, source)
    for name, a, b in zip(
        ("dist", "pred", "first_hop", "path_min"), got, want, strict=True
    ):
        assert a.dtype == b.dtype, name
        assert np.array_equal(a, b), name


@needs_compiled
def test_compiled_sssp_many_equals_twin():
    rng = np.random.default_rng(7)
    indptr, indices, w, _aux = random_csr(rng, 60, 300)
    sources = np.array([0, 5, 59, 5])
    for a, b in zip(
        compiled.sssp_many(indptr, indices, w, sources),
        _sssp_twin.sssp_many(indptr, indices, w, sources),
        strict=True,
    ):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("kernel", BACKENDS)
def test_sssp_distances_match_networkx(kernel):
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(2, 50))
        indptr, indices, w, aux = random_csr(rng, n, 4 * n, integer_weights=False)
        graph = nx.DiGraph()
        graph.add_nodes_from(range(n))
        for u in range(n):
            for e in range(indptr[u], indptr[u + 1]):
                v, weight = int(indices[e]), float(w[e])
                if math.isfinite(weight) and (
                    not graph.has_edge(u, v) or graph[u][v]["weight"] > weight
                ):
                    graph.add_edge(u, v, weight=weight)
        want = nx.single_source_dijkstra_path_length(graph, 0)
        dist, pred, first, _pmin = kernel.sssp(indptr, indices, w, aux, 0)
        for v in range(n):
            if v in want:
                assert dist[v] == pytest.approx(want[v], rel=1e-12, abs=1e-12)
            else:
                assert dist[v] == math.inf and pred[v] == -1 and first[v] == -1


@pytest.mark.parametrize("kernel", BACKENDS)
def test_sssp_first_hop_and_path_minimum_follow_the_predecessors(kernel):
    rng = np.random.default_rng(11)
    indptr, indices, w, aux = random_csr(rng, 80, 400, integer_weights=False)
    dist, pred, first, pmin = kernel.sssp(indptr, indices, w, aux, 4)
    assert first[4] == 4 and pmin[4] == math.inf and dist[4] == 0.0
    for v in range(80):
        if pred[v] < 0:
            continue
        path = [v]
        while path[-1] != 4:
            path.append(int(pred[path[-1]]))
        path.reverse()
        assert first[v] == path[1]
        aux_on_path = []
        for u, x in zip(path, path[1:], strict=False):
            # parallel edges: the kernel keeps the lightest, first in CSR order
            slots = [e for e in range(indptr[u], indptr[u + 1]) if indices[e] == x]
            best = min(slots, key=lambda e: (w[e], e))
            aux_on_path.append(aux[best])
        assert pmin[v] == pytest.approx(min(aux_on_path))


@pytest.mark.parametrize("kernel", BACKENDS)
def test_sssp_rejects_bad_graphs_naming_every_problem(kernel):
    with pytest.raises(ValueError) as info:
        kernel.sssp([0, 1], [5], [-1.0], [0.0], 3)
    message = str(info.value)
    assert "minimum -1.0" in message
    assert "indices must lie in [0, 1), got 5" in message
    assert "source=3" in message
    with pytest.raises(ValueError, match="NaN"):
        kernel.sssp([0, 1, 1], [1], [math.nan], [0.0], 0)
    with pytest.raises(ValueError, match="sources must lie in"):
        kernel.sssp_many([0, 0], [], [], [1])
