"""Compression kernels: every test runs against the NumPy twin and the compiled
build; property tests check that the two agree bit for bit."""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from agent.kernels import NonFiniteError, backends
from agent.kernels import _compress_common as cc

FOUND = backends()
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROPS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.fixture(params=["numpy", "compiled"])
def kb(request):
    """The kernel backend under test."""
    if request.param not in FOUND:
        pytest.skip(
            "compiled kernels are not built (python setup.py build_ext --inplace)"
        )
    return FOUND[request.param]


def needs_both():
    if "compiled" not in FOUND:
        pytest.skip("compiled kernels are not built; nothing to compare the twin with")
    return FOUND["numpy"], FOUND["compiled"]


def same(a, b, what=""):
    """Bitwise equality of (nested tuples of) arrays and floats."""
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            same(x, y, what)
        return
    if isinstance(a, float):
        assert a == b, (what, a, b)
        return
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype)
    assert a.tobytes() == b.tobytes(), (what, a[:8], b[:8])


# Values that stress the kernels: ties, zeros of both signs, huge, tiny and
# subnormal magnitudes.
SPECIAL32 = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0e38, -3.0e38, 1e-38, 1e-45, -7e-42, 2.5]


@st.composite
def vectors(draw, min_size=0, max_size=600, dtype=None):
    dt = draw(st.sampled_from([np.float32, np.float64])) if dtype is None else dtype
    n = draw(st.integers(min_size, max_size))
    width = 32 if dt == np.float32 else 64
    elems = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=width),
        st.sampled_from(SPECIAL32),
        st.floats(-4, 4, width=width),
    )
    return draw(hnp.arrays(dt, n, elements=elems))


def reference_topk(x: np.ndarray, k: int) -> np.ndarray:
    """Sort-based exact top-k by |x|, ties to the lower index."""
    order = np.lexsort((np.arange(x.size), -np.abs(x.astype(np.float64))))
    return np.sort(order[: min(k, x.size)]).astype(np.uint32)


# ----------------------------------------------------------------- top-k


@PROPS
@given(x=vectors(min_size=1), frac=st.floats(0.0001, 1.5))
def test_topk_matches_a_sort_with_ties_to_the_lower_index(x, frac):
    k = max(1, int(x.size * frac))
    for name, kb in FOUND.items():
        idx, vals = kb.topk(x, k)
        same(idx, reference_topk(x, k), name)
        same(vals, x[idx], name)


def test_topk_is_exact_on_large_vectors_with_many_ties(kb):
    rng = np.random.default_rng(3)
    x = rng.integers(-50, 50, 200_000).astype(np.float32)
    for k in (1, 137, 2000, 20_000, 199_999):
        same(kb.topk(x, k)[0], reference_topk(x, k), k)


def test_topk_large_gaussian_takes_the_sampled_fast_path(kb):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(300_000).astype(np.float32)
    idx, vals = kb.topk(x, 3000)
    same(idx, reference_topk(x, 3000))


@PROPS
@given(x=vectors(min_size=1), frac=st.floats(0.001, 1.2), data=st.data())
def test_compiled_equals_twin_on_error_feedback_selection(x, frac, data):
    twin, comp = needs_both()
    k = max(1, int(x.size * frac))
    seed = data.draw(st.integers(0, 2**64 - 1))
    r0 = (x[::-1] * 0.25).astype(x.dtype)
    g = x
    for fn, args in (
        ("ef_topk", (k,)),
        ("ef_threshold_topk", (k, seed)),
        ("ef_randomk", (k, seed, False)),
    ):
        ra, rb = r0.copy(), r0.copy()
        same(getattr(twin, fn)(ra, g, *args), getattr(comp, fn)(rb, g, *args), fn)
        same(ra, rb, fn + " residual")


@PROPS
@given(x=vectors(min_size=1))
def test_error_feedback_topk_and_randomk_conserve_mass_exactly(x):
    """sent + residual == residual + gradient (saturated), bit for bit."""
    r0 = np.flip(x).copy()
    big = np.finfo(x.dtype).max
    with np.errstate(over="ignore"):
        acc = np.clip(r0 + x, -big, big)
    k = max(1, x.size // 7)
    for kb in FOUND.values():
        r = r0.copy()
        idx, vals = kb.ef_topk(r, x, k)
        dense = r.copy()
        assert np.all(dense[idx] == 0)
        dense[idx] = vals
        same(dense, acc, "topk")
        r = r0.copy()
        vals = kb.ef_randomk(r, x, k, 99)
        idx = kb.randomk_indices(x.size, k, 99)
        dense = r.copy()
        assert np.all(dense[idx] == 0)
        dense[idx] = vals
        same(dense, acc, "randomk")


def test_threshold_topk_returns_between_0_8k_and_1_25k(kb):
    rng = np.random.default_rng(5)
    for n, k in ((100_000, 1000), (1_000_000, 1000), (50_000, 5000), (1000, 1)):
        x = rng.standard_normal(n).astype(np.float32)
        idx, vals = kb.threshold_topk(x, k, 17)
        assert (4 * k + 4) // 5 <= idx.size <= (5 * k) // 4
        assert np.all(np.diff(idx.astype(np.int64)) > 0)
        # whatever it takes is the largest: nothing left out is bigger
        left = np.delete(np.abs(x), idx)
        assert left.max() <= np.abs(vals).min()


def test_threshold_topk_with_all_equal_values_falls_back_to_exact(kb):
    x = np.ones(10_000, np.float32)
    idx, _ = kb.threshold_topk(x, 100, 1)
    same(idx, np.arange(100, dtype=np.uint32))


# ---------------------------------------------------------------- random-k


@PROPS
@given(
    n=st.integers(1, 5000), frac=st.floats(0.001, 1.0), seed=st.integers(0, 2**64 - 1)
)
def test_randomk_indices_one_per_stratum(n, frac, seed):
    k = max(1, int(n * frac))
    outs = [kb.randomk_indices(n, k, seed) for kb in FOUND.values()]
    for o in outs[1:]:
        same(o, outs[0])
    idx = outs[0].astype(np.int64)
    assert idx.size == min(n, k)
    j = np.arange(idx.size)
    assert np.all(idx >= j * n // k) and np.all(idx < (j + 1) * n // k)


def test_randomk_unbiased_scaling_has_the_right_expectation(kb):
    x = np.linspace(-1, 1, 1000).astype(np.float64)
    total = np.zeros_like(x)
    trials = 400
    for seed in range(trials):
        vals = kb.randomk(x, 100, seed, True)
        total[kb.randomk_indices(x.size, 100, seed)] += vals
    # each element is kept with probability 1/10 and scaled by 10
    assert np.abs(total / trials - x).max() < 0.5


def test_splitmix64_matches_the_published_first_output():
    # splitmix64 seeded with 0: first output 0xE220A8397B1DCDAF (Vigna's
    # reference implementation, prng.di.unimi.it/splitmix64.c)
    assert cc.splitmix64(0, 0) == 0xE220A8397B1DCDAF


# ------------------------------------------------------------ quantization


@PROPS
@given(
    x=vectors(),
    bits=st.sampled_from([2, 4, 8]),
    chunk=st.sampled_from([1, 3, 64, 1024]),
    stochastic=st.booleans(),
)
def test_dequantize_quantize_is_within_one_step(x, bits, chunk, stochastic):
    levels = (1 << (bits - 1)) - 1
    for name, kb in FOUND.items():
        codes, amax = kb.quantize(x, bits, chunk, stochastic, 5)
        y = kb.dequantize(codes, amax, x.size, bits, chunk)
        assert y.dtype == x.dtype and y.shape == x.shape
        step = np.repeat(amax.astype(np.float64) / levels, chunk)[: x.size]
        # values below the smallest normal quantize to 0 by design
        tiny = np.finfo(x.dtype).smallest_normal
        with np.errstate(over="ignore"):
            err = np.abs(y.astype(np.float64) - x.astype(np.float64))
            bound = np.maximum(step * (1 + 1e-5), tiny)
        assert np.all(err <= bound), (name, x[err > bound][:4], y[err > bound][:4])


@PROPS
@given(
    x=vectors(),
    bits=st.sampled_from([2, 4, 8]),
    chunk=st.sampled_from([1, 5, 256]),
    stochastic=st.booleans(),
)
def test_compiled_equals_twin_on_quantization(x, bits, chunk, stochastic):
    twin, comp = needs_both()
    same(
        twin.quantize(x, bits, chunk, stochastic, 9),
        comp.quantize(x, bits, chunk, stochastic, 9),
    )
    r0 = np.flip(x).copy() * np.asarray(0.5, x.dtype)
    ra, rb = r0.copy(), r0.copy()
    qa = twin.ef_quantize(ra, x, bits, chunk, stochastic, 9)
    same(qa, comp.ef_quantize(rb, x, bits, chunk, stochastic, 9))
    same(ra, rb, "residual")
    same(
        twin.dequantize(*qa, x.size, bits, chunk),
        comp.dequantize(*qa, x.size, bits, chunk),
    )


def test_quantization_saturates_at_the_range_edge(kb):
    # every value at +-amax: x / scale = +-127 exactly, and stochastic rounding
    # adds up to one more level; the code must stay 255 / 1, never wrap to 0
    x = np.array([3.0, -3.0] * 512, np.float32)
    for stochastic in (False, True):
        codes, amax = kb.quantize(x, 8, 1024, stochastic, 123)
        assert set(np.unique(codes)) == {1, 255}
        y = kb.dequantize(codes, amax, x.size, 8, 1024)
        same(y, x)
    codes, _ = kb.quantize(np.array([1.0, -1.0, 0.9, -0.9], np.float32), 4, 4, True, 1)
    unpacked = np.stack([codes & 15, codes >> 4], axis=1).ravel()
    assert unpacked.min() >= 1 and unpacked.max() <= 15


def test_stochastic_draws_are_splitmix64_split_into_16_bit_quarters():
    from agent.kernels import _compress_twin as twin

    seed = 2**63 + 5
    expect = [
        (cc.splitmix64(seed, i // 4) >> (16 * (i % 4))) & 0xFFFF for i in range(11)
    ]
    assert twin._uniform16(seed, 11).tolist() == expect


def test_stochastic_rounding_is_unbiased(kb):
    x = np.full(20_000, 0.3, np.float32)
    x[0] = 1.0  # amax = 1, so 0.3 sits at level 38.1 of 127
    codes, amax = kb.quantize(x, 8, x.size, True, 77)
    y = kb.dequantize(codes, amax, x.size, 8, x.size)
    assert abs(float(y[1:].mean()) - 0.3) < 1e-4
    assert len(np.unique(y[1:])) == 2


def test_all_zero_vector_quantizes_to_zeros(kb):
    for dt in (np.float32, np.float64):
        x = np.zeros(3000, dt)
        for stochastic in (False, True):
            codes, amax = kb.quantize(x, 4, 1024, stochastic, 3)
            y = kb.dequantize(codes, amax, x.size, 4, 1024)
            assert np.all(amax == 0) and np.all(y == 0) and not np.isnan(y).any()
        r = np.zeros(3000, dt)
        kb.ef_quantize(r, x, 8, 64, True, 1)
        assert np.all(r == 0)
    codes, scale = kb.sign(np.zeros(10, np.float32))
    assert scale == 0.0


# -------------------------------------------------------------------- sign


@PROPS
@given(x=vectors())
def test_sign_matches_twin_and_ef_keeps_the_rest(x):
    outs = []
    for kb in FOUND.values():
        r = np.zeros_like(x)
        packed, scale = kb.ef_sign(r, x)
        outs.append((packed, scale, r))
        sent = kb.unsign(packed, x.size, scale, x.dtype)
        big = np.finfo(x.dtype).max
        assert np.all(np.abs(sent + r - x) <= np.abs(x) * 1e-6 + abs(scale) + big * 0)
        if x.size:
            with np.errstate(over="ignore"):
                expect = float(np.abs(x.astype(np.float64)).mean())
            if not np.isfinite(expect):  # the sum overflowed: the kernel rescales
                expect = np.mean(np.abs(x.astype(np.float64)) * 2.0**-64) * 2.0**64
                expect = min(expect, float(np.finfo(np.float64).max))
            tiny = float(np.finfo(x.dtype).smallest_subnormal)
            assert scale == pytest.approx(expect, rel=1e-5, abs=tiny)
    for o in outs[1:]:
        same(o[0], outs[0][0])
        same(o[2], outs[0][2])
        assert o[1] == outs[0][1]


# ------------------------------------------------------------ scatter-add


@PROPS
@given(
    n=st.integers(1, 3000),
    frac=st.floats(0.0, 1.0),
    acc_dt=st.sampled_from([np.float32, np.float64]),
    val_dt=st.sampled_from([np.float16, np.float32, np.float64]),
    w=st.floats(-3, 3),
    seed=st.integers(0, 1000),
)
def test_scatter_add_equals_a_dense_reference(n, frac, acc_dt, val_dt, w, seed):
    rng = np.random.default_rng(seed)
    idx = np.flatnonzero(rng.random(n) < frac).astype(np.uint32)
    vals = rng.standard_normal(idx.size).astype(val_dt)
    base = rng.standard_normal(n).astype(acc_dt)
    expect = base.copy()
    expect[idx] += (w * vals.astype(np.float64)).astype(acc_dt)
    for kb in FOUND.values():
        acc = base.copy()
        kb.scatter_add(acc, idx, vals, w)
        same(acc, expect)


def test_scatter_add_rejects_bad_indices_and_shapes(kb):
    acc = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="index 10 at position 1 is outside"):
        kb.scatter_add(acc, np.array([2, 10], np.uint32), np.ones(2, np.float32), 1.0)
    with pytest.raises(ValueError, match="strictly increasing; position 1 holds 2"):
        kb.scatter_add(acc, np.array([2, 2], np.uint32), np.ones(2, np.float32), 1.0)
    # the compiled kernel checks uint32 indices in C; its verdict must match
    with pytest.raises(ValueError, match="position 2 holds 3 after 9"):
        kb.scatter_add(acc, np.array([5, 9, 3], np.uint32), np.ones(3, np.float32), 1)
    with pytest.raises(ValueError, match="index 12 at position 1 is outside"):
        kb.scatter_add(acc, np.array([1, 12, 4], np.uint32), np.ones(3, np.float32), 1)
    assert not acc.any(), "a rejected update must leave the accumulator untouched"
    with pytest.raises(ValueError, match="3 indices for 2 values"):
        kb.scatter_add(acc, np.array([1, 2, 3]), np.ones(2, np.float32), 1.0)
    with pytest.raises(ValueError, match="weight nan is not finite"):
        kb.scatter_add(acc, None, np.ones(10, np.float32), float("nan"))
    with pytest.raises(TypeError, match="float32 or float64"):
        kb.scatter_add(np.zeros(10, np.int32), None, np.ones(10, np.float32), 1.0)


# ------------------------------------------------------- index packing


@PROPS
@given(
    n=st.integers(1, 200_000),
    data=st.data(),
)
def test_index_packing_round_trips_and_backends_agree(n, data):
    k = data.draw(st.integers(0, min(n, 2000)))
    rng = np.random.default_rng(data.draw(st.integers(0, 99)))
    idx = np.sort(rng.choice(n, k, replace=False)).astype(np.uint32)
    packed = [kb.pack_indices(idx) for kb in FOUND.values()]
    for p in packed[1:]:
        same(p, packed[0])
    widths, payload = packed[0]
    for kb in FOUND.values():
        same(kb.unpack_indices(widths, payload, k, n), idx)
    if k:
        # compact: never more than 4 bytes per index plus one per block
        assert payload.size <= 4 * k and widths.size == -(-k // 128)


def test_index_unpacking_rejects_malformed_input(kb):
    idx = np.array([5, 9, 400], np.uint32)
    widths, payload = kb.pack_indices(idx)
    with pytest.raises(ValueError, match="reach 400, outside|beyond the tensor"):
        kb.unpack_indices(widths, payload, 3, 400)
    with pytest.raises(ValueError, match="block widths imply"):
        kb.unpack_indices(widths, payload[:-1], 3, 1000)
    with pytest.raises(ValueError, match="width 40 bits"):
        kb.unpack_indices(np.array([40], np.uint8), np.zeros(15, np.uint8), 3, 10**6)
    with pytest.raises(ValueError, match="2 index block widths for 3"):
        kb.unpack_indices(np.array([1, 1], np.uint8), payload, 3, 1000)
    with pytest.raises(ValueError, match="cannot address"):
        kb.unpack_indices(widths, payload, 3, 2)


# ------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_gradient_raises_with_count_and_index_and_keeps_residual(kb, bad):
    g = np.ones(5000, np.float32)
    g[[17, 200, 4000]] = bad
    r0 = np.arange(5000, dtype=np.float32) * 1e-3
    calls = [
        lambda r: kb.ef_topk(r, g, 50),
        lambda r: kb.ef_threshold_topk(r, g, 50, 1),
        lambda r: kb.ef_randomk(r, g, 50, 1),
        lambda r: kb.ef_quantize(r, g, 8, 256, True, 1),
        lambda r: kb.ef_sign(r, g),
    ]
    for call in calls:
        r = r0.copy()
        with pytest.raises(NonFiniteError, match="3 non-finite values.*index 17") as e:
            call(r)
        assert e.value.count == 3 and e.value.first_index == 17
        same(r, r0)
    for call in (
        lambda: kb.topk(g, 5),
        lambda: kb.quantize(g, 8, 64),
        lambda: kb.sign(g),
        lambda: kb.randomk(g, 4, 1),
    ):
        with pytest.raises(ValueError, match="index 17"):
            call()


def test_k_zero_is_an_error_and_k_at_least_n_sends_everything(kb):
    x = np.array([3.0, -1.0, 2.0], np.float32)
    with pytest.raises(ValueError, match="k = 0 selects nothing"):
        kb.topk(x, 0)
    with pytest.raises(ValueError, match="k = -2"):
        kb.ef_topk(np.zeros(3, np.float32), x, -2)
    for k in (3, 10):
        idx, vals = kb.topk(x, k)
        same(idx, np.arange(3, dtype=np.uint32))
        r = np.ones(3, np.float32)
        idx, vals = kb.ef_topk(r, x, k)
        same(vals, x + 1)
        assert np.all(r == 0)


def test_empty_arrays_work(kb):
    e = np.zeros(0, np.float32)
    assert kb.topk(e, 5)[0].size == 0
    assert kb.threshold_topk(e, 5, 1)[0].size == 0
    assert kb.randomk(e, 5, 1).size == 0
    codes, amax = kb.quantize(e, 4, 16)
    assert codes.size == 0 and amax.size == 0
    assert kb.dequantize(codes, amax, 0, 4, 16).size == 0
    assert kb.sign(e)[0].size == 0
    r = np.zeros(0, np.float32)
    assert kb.ef_topk(r, e, 1)[0].size == 0
    assert kb.count_nonfinite(e) == (0, -1)
    acc = np.zeros(0, np.float64)
    kb.scatter_add(acc, np.zeros(0, np.uint32), np.zeros(0, np.float32), 2.0)


def test_argument_errors_name_the_value(kb):
    x = np.ones(10, np.float32)
    with pytest.raises(ValueError, match="bits = 3"):
        kb.quantize(x, 3, 16)
    with pytest.raises(ValueError, match="chunk_size = 0"):
        kb.quantize(x, 8, 0)
    with pytest.raises(TypeError, match="dtype int64"):
        kb.topk(np.arange(10), 2)
    with pytest.raises(ValueError, match="9 elements but the residual has 10"):
        kb.ef_topk(np.zeros(10, np.float32), np.ones(9, np.float32), 2)
    with pytest.raises(ValueError, match="seed -1"):
        kb.randomk_indices(10, 2, -1)


def test_float64_subnormals_and_huge_values_quantize_safely(kb):
    x = np.array([1e-310, -4e-320, 1e300, -1e-300, 0.0], np.float64)
    codes, amax = kb.quantize(x, 8, 2)
    y = kb.dequantize(codes, amax, x.size, 8, 2)
    assert np.all(np.isfinite(y))
    assert y[2] == pytest.approx(1e300) and abs(y[0]) < 3e-308


# ------------------------------------------------------- backend choice


def test_environment_variable_picks_the_backend():
    code = "import agent.kernels as k; print(k.accelerated)"
    env = dict(os.environ, PYTHONPATH=REPO, ORBITFL_KERNELS="numpy")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    assert out.stdout.strip() == "False", out.stderr
    env["ORBITFL_KERNELS"] = "compiled"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True
    )
    if "compiled" in FOUND:
        assert out.stdout.strip() == "True", out.stderr
    else:
        assert "ORBITFL_KERNELS=compiled" in out.stderr


def test_subnormal_inputs_do_not_slow_the_compiled_kernels():
    if "compiled" not in FOUND:
        pytest.skip("compiled kernels are not built")
    kb = FOUND["compiled"]
    rng = np.random.default_rng(8)
    normal = rng.standard_normal(1_000_000).astype(np.float32)
    tiny = (normal * np.float32(1e-39)).astype(np.float32)
    assert np.count_nonzero(np.abs(tiny) < np.finfo(np.float32).smallest_normal) > 9e5

    def ratio_tiny_to_normal(fn):
        # Interleave the two inputs so a load spike hits both, and keep each
        # one's fastest run: the minimum is what the code costs, the rest is
        # other processes on the shared cores.
        best = {"tiny": float("inf"), "normal": float("inf")}
        for _ in range(7):
            for name, x in (("tiny", tiny), ("normal", normal)):
                t0 = time.thread_time()
                fn(x)
                best[name] = min(best[name], time.thread_time() - t0)
        return best["tiny"] / max(best["normal"], 1e-9)

    # A kernel that takes the microcode assist on subnormal operands
    # runs 10-100x slower; noise on a loaded machine rarely reaches 2x on the
    # minimum of 7.  Three attempts under a 3x bound keep CI quiet and still
    # fail a real slowdown every time.
    for label, fn in (
        ("ef_topk", lambda x: kb.ef_topk(np.zeros_like(x), x, 10_000)),
        ("quantize", lambda x: kb.quantize(x, 8, 1024)),
        ("ef_quantize", lambda x: kb.ef_quantize(np.zeros_like(x), x, 8, 1024)),
    ):
        ratios = []
        for _ in range(3):
            ratios.append(ratio_tiny_to_normal(fn))
            if ratios[-1] < 3.0:
                break
        else:
            pytest.fail(f"{label} runs {min(ratios):.1f}x slower on subnormals")


def test_dequantization_saturates_instead_of_overflowing(kb):
    for dt in (np.float32, np.float64):
        big = np.finfo(dt).max
        x = np.array([big, -big, big / 3], dt)
        codes, amax = kb.quantize(x, 8, 4)
        y = kb.dequantize(codes, amax, 3, 8, 4)
        assert np.all(np.isfinite(y)) and y[0] == big and y[1] == -big
        r = np.zeros(3, dt)
        kb.ef_quantize(r, x, 8, 4)
        assert np.all(np.isfinite(r))
