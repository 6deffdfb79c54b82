# cython: language_level=3
"""Compiled gradient-compression kernels; twin: agent/kernels/_compress_twin.py.

Two tiers, after scipy's Cython kernels: each ``def`` validates (with the same
helpers as the twin, agent/kernels/_compress_common.py), allocates outputs and
scratch, and raises; the arithmetic runs in ``cdef ... noexcept nogil``
functions over raw contiguous buffers inside ``with nogil``.  Nothing inside a
nogil function allocates or raises.

Results equal the twin's bit for bit.  Both order magnitudes by the float bit
pattern with the sign cleared, read as an integer ("key"): it orders finite
floats like ``abs``, needs no float arithmetic, and so subnormals cost nothing.
Float arithmetic that reaches the output (clamped residual sums, quantization
in float64, dequantization, weighted adds) is written in the same order as in
the twin, and setup.py compiles with -ffp-contract=off, so no FMA changes a
rounding on aarch64.

Exact top-k is O(n) without a sort (Floyd & Rivest, "Expected time bounds for
selection", CACM 1975, in its sampling form): a random sample of cache-line
blocks brackets the k-th largest key between two sample order statistics; one
streaming pass keeps everything above the upper bracket and records the few
elements inside it; an exact radix select over those few finishes the job.
When the bracket misses (rare), a 12-bit-digit radix select over the whole
array does the work instead, still O(n).

Fused types: ``real`` (float32, float64) is the gradient dtype; the hottest
loops are written once per dtype because the keys are 32-bit for float32,
which is what lets them vectorize on SSE2 and NEON.
"""

import threading

import numpy as np

from agent.kernels import _compress_common as cc
from agent.kernels._compress_errors import NonFiniteError
from agent.kernels._compress_twin import (
    _check_codes,
    _check_packed_indices,
    packed_indices_len,
)

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

cdef extern from "_compress_simd.h":
    uint64_t ofl_mix(uint64_t seed, uint64_t i) noexcept nogil
    uint32_t ofl_count_nonfinite32(const float *x, Py_ssize_t m) noexcept nogil
    int32_t ofl_max_key32(const float *x, Py_ssize_t m) noexcept nogil
    void ofl_ef_add_keys32(float *r, const float *g, Py_ssize_t m,
                           int32_t *keys) noexcept nogil
    void ofl_keys32(const float *x, Py_ssize_t m, int32_t *keys) noexcept nogil
    void ofl_codes32(const float *x, Py_ssize_t m, float inv, float lim, int bits,
                     const uint16_t *u, uint8_t *codes) noexcept nogil

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    #define OFL_SSE2 1
    #endif

    static inline int32_t ofl_key32(float x) {
        uint32_t u; memcpy(&u, &x, 4); return (int32_t)(u & 0x7FFFFFFFu);
    }
    static inline int64_t ofl_key64(double x) {
        uint64_t u; memcpy(&u, &x, 8);
        return (int64_t)(u & 0x7FFFFFFFFFFFFFFFull);
    }
    static inline float ofl_float_of(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }
    static inline double ofl_double_of(uint64_t u) { double x; memcpy(&x, &u, 8); return x; }

    /* u[j] = bits 16*(i % 4) up of ofl_mix(seed, i / 4), i = i0 + j; the
       whole draws come from ofl_draws16 (_compress_simd.h). */
    static void ofl_uniform16(uint64_t seed, int64_t i0, int64_t m, uint16_t *u) {
        int64_t i = i0, end = i0 + m;
        for (; i < end && (i & 3); ++i)
            u[i - i0] = (uint16_t)(ofl_mix(seed, (uint64_t)(i >> 2)) >> (16 * (i & 3)));
        if (i < ((end >> 2) << 2)) {
            ofl_draws16(seed, i >> 2, end >> 2, u + (i - i0));
            i = (end >> 2) << 2;
        }
        for (; i < end; ++i)
            u[i - i0] = (uint16_t)(ofl_mix(seed, (uint64_t)(i >> 2)) >> (16 * (i & 3)));
    }

    static inline int ofl_ctz(uint32_t m) {
    #if defined(__GNUC__)
        return __builtin_ctz(m);
    #else
        int n = 0; while (!(m & 1u)) { m >>= 1; ++n; } return n;
    #endif
    }

    /* Bit t of the result is set when keys[t] >= t0, for t in 0..15. */
    static inline uint32_t ofl_mask16_ge(const int32_t *keys, int32_t t0) {
    #ifdef OFL_SSE2
        __m128i t = _mm_set1_epi32(t0 - 1);
        uint32_t m0 = (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(
            _mm_cmpgt_epi32(_mm_loadu_si128((const __m128i *)(keys + 0)), t)));
        uint32_t m1 = (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(
            _mm_cmpgt_epi32(_mm_loadu_si128((const __m128i *)(keys + 4)), t)));
        uint32_t m2 = (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(
            _mm_cmpgt_epi32(_mm_loadu_si128((const __m128i *)(keys + 8)), t)));
        uint32_t m3 = (uint32_t)_mm_movemask_ps(_mm_castsi128_ps(
            _mm_cmpgt_epi32(_mm_loadu_si128((const __m128i *)(keys + 12)), t)));
        return m0 | (m1 << 4) | (m2 << 8) | (m3 << 12);
    #else
        uint32_t m = 0;
        for (int j = 0; j < 16; ++j) m |= (uint32_t)(keys[j] >= t0) << j;
        return m;
    #endif
    }

    static inline void ofl_prefetch_r(const void *p) {
    #if defined(__GNUC__)
        __builtin_prefetch(p, 0, 3);
    #endif
    }
    static inline void ofl_prefetch_w(const void *p) {
    #if defined(__GNUC__)
        __builtin_prefetch(p, 1, 0);
    #endif
    }
    """
    int32_t ofl_key32(float x) noexcept nogil
    int64_t ofl_key64(double x) noexcept nogil
    float ofl_float_of(uint32_t u) noexcept nogil
    double ofl_double_of(uint64_t u) noexcept nogil
    void ofl_uniform16(uint64_t seed, int64_t i0, int64_t m, uint16_t *u) noexcept nogil
    int ofl_ctz(uint32_t m) noexcept nogil
    uint32_t ofl_mask16_ge(const int32_t *keys, int32_t t0) noexcept nogil
    void ofl_prefetch_r(const void *p) noexcept nogil
    void ofl_prefetch_w(const void *p) noexcept nogil

ctypedef fused real:
    float
    double

# The accumulator and the values of a scatter-add vary independently.
ctypedef fused accum:
    float
    double

cdef float F32_MAX = 3.4028234663852886e38
cdef double F64_MAX = 1.7976931348623157e308
cdef int32_t INF_KEY32 = 0x7F800000
cdef int64_t INF_KEY64 = 0x7FF0000000000000
cdef int64_t F64_MIN_NORMAL_KEY = 0x0010000000000000
cdef int32_t F32_MIN_NORMAL_KEY = 0x00800000
cdef float F32_MIN_NORMAL = 1.1754943508222875e-38
cdef Py_ssize_t cc_SAMPLE_BLOCK = cc.SAMPLE_BLOCK

cdef enum:
    BLOCK = 1024          # elements per streaming block (its keys stay in L1)
    DIGIT_BITS = 12       # radix digit of the exact selection
    DIGITS = 4096
    PREFETCH_AHEAD = 64   # scatter-add: enough misses in flight to cover DRAM

cdef enum:                # scan modes
    READ_ONLY = 0         # select from x, write nothing
    ADD_WRITE = 1         # r = clamp(r + g), zero what is selected
    ZERO_ONLY = 2         # select from r, zero what is selected


# ------------------------------------------------------------------ helpers

cdef inline int64_t key_of(real x) noexcept nogil:
    if real is float:
        return ofl_key32(x)
    else:
        return ofl_key64(x)


cdef inline int64_t inf_key(real x) noexcept nogil:
    if real is float:
        return INF_KEY32
    else:
        return INF_KEY64


cdef inline int key_bits(real x) noexcept nogil:
    if real is float:
        return 31
    else:
        return 63


cdef inline real clamp_sum(real a, real b) noexcept nogil:
    cdef real s = a + b
    if real is float:
        s = s if s < F32_MAX else F32_MAX
        s = s if s > -F32_MAX else -F32_MAX
    else:
        s = s if s < F64_MAX else F64_MAX
        s = s if s > -F64_MAX else -F64_MAX
    return s


cdef Py_ssize_t _count_nonfinite(const real *x, Py_ssize_t n,
                                 Py_ssize_t *first) noexcept nogil:
    cdef Py_ssize_t i, j, count = 0
    cdef uint32_t c32 = 0
    first[0] = -1
    if real is float:
        # uint32 counter in blocks keeps the loop in 32-bit SIMD lanes
        i = 0
        while i < n:
            count += ofl_count_nonfinite32(x + i, min(n - i, 1 << 30))
            i += 1 << 30
    else:
        for i in range(n):
            count += ofl_key64(x[i]) >= INF_KEY64
    if count:
        for i in range(n):
            if key_of(x[i]) >= inf_key(x[i]):
                first[0] = i
                break
    return count


def count_nonfinite(x):
    """Return (number of NaN/Inf values in x, flat index of the first or -1)."""
    a = cc.as_vector(x)
    cdef Py_ssize_t first = -1, count = 0
    cdef const float[::1] a32
    cdef const double[::1] a64
    if a.size == 0:
        return 0, -1
    if a.dtype == np.float32:
        a32 = a
        with nogil:
            count = _count_nonfinite(&a32[0], a32.shape[0], &first)
    else:
        a64 = a
        with nogil:
            count = _count_nonfinite(&a64[0], a64.shape[0], &first)
    return int(count), int(first)


cdef _raise_if_nonfinite(a):
    count, first = count_nonfinite(a)
    if count:
        raise NonFiniteError(count, first)


cdef void _ef_add(real *r, const real *g, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        r[i] = clamp_sum(r[i], g[i])


# --------------------------------------------------------- radix selection

cdef int64_t _kth_largest(int64_t *keys, Py_ssize_t cnt, Py_ssize_t k,
                          int keybits, int64_t *hist) noexcept nogil:
    """Return the k-th largest (1-based) of keys[0:cnt]; reorders keys.

    MSD radix select with 12-bit digits: histogram the current digit over the
    survivors, find the digit holding the k-th, keep only those, repeat.
    """
    cdef int shift = keybits - DIGIT_BITS
    cdef int width = DIGIT_BITS
    cdef int64_t prefix = 0, above
    cdef Py_ssize_t i, m
    cdef int64_t d, mask
    while True:
        if shift < 0:
            width += shift
            shift = 0
        mask = (<int64_t>1 << width) - 1
        for i in range(1 << width):
            hist[i] = 0
        for i in range(cnt):
            hist[(keys[i] >> shift) & mask] += 1
        above = 0
        d = mask
        while d > 0 and above + hist[d] < k:
            above += hist[d]
            d -= 1
        k -= above
        prefix = (prefix << width) | d
        m = 0
        for i in range(cnt):
            if ((keys[i] >> shift) & mask) == d:
                keys[m] = keys[i]
                m += 1
        cnt = m
        if shift == 0:
            return prefix
        shift -= DIGIT_BITS


cdef void _threshold_full(const real *x, Py_ssize_t n, Py_ssize_t k,
                          int64_t *hist, int64_t *thr, Py_ssize_t *ties) noexcept nogil:
    """Exact k-th largest key of x[0:n] and how many keys equal to it to take.

    One read-only pass per 12-bit digit over the whole array (the fallback
    path; the fast path only radix-selects the few bracketed candidates).
    """
    cdef int keybits = key_bits(x[0])
    cdef int shift = keybits - DIGIT_BITS, width = DIGIT_BITS, pshift
    cdef int64_t prefix = 0, above, d, mask, key
    cdef Py_ssize_t i
    pshift = keybits
    while True:
        if shift < 0:
            width += shift
            shift = 0
        mask = (<int64_t>1 << width) - 1
        for i in range(1 << width):
            hist[i] = 0
        for i in range(n):
            key = key_of(x[i])
            if (key >> pshift) == prefix:
                hist[(key >> shift) & mask] += 1
        above = 0
        d = mask
        while d > 0 and above + hist[d] < k:
            above += hist[d]
            d -= 1
        k -= above
        prefix = (prefix << width) | d
        pshift = shift
        if shift == 0:
            thr[0] = prefix
            ties[0] = k
            return
        shift -= DIGIT_BITS


cdef Py_ssize_t _select_full(real *x, Py_ssize_t n, int64_t thr, Py_ssize_t ties,
                             bint zero, uint32_t *oi, real *ov) noexcept nogil:
    """Take keys > thr and the first ``ties`` keys == thr, ascending index."""
    cdef Py_ssize_t i, c = 0
    cdef int64_t key
    for i in range(n):
        key = key_of(x[i])
        if key > thr or (key == thr and ties > 0):
            if key == thr:
                ties -= 1
            oi[c] = <uint32_t>i
            ov[c] = x[i]
            c += 1
            if zero:
                x[i] = 0
    return c


# ------------------------------------------------------------ the scan pass

cdef struct ScanResult:
    Py_ssize_t sure
    Py_ssize_t band
    bint overflow


cdef ScanResult _scan_f32(float *r, const float *g, Py_ssize_t n, int mode,
                          int32_t t_hi, int32_t t_lo, Py_ssize_t cap_sure,
                          Py_ssize_t cap_band, uint32_t *oi, float *ov,
                          uint32_t *cand, float *cval, int32_t *keys) noexcept nogil:
    """One streaming pass: keys > t_hi are taken, t_lo <= key <= t_hi recorded.

    Blocks of BLOCK elements: a vectorizable loop forms the accumulated values
    and their keys; a 16-wide mask then finds the rare interesting ones.  When
    a list overflows its capacity, recording stops (what was taken stays
    taken: the caller restores it) and the pass still completes ADD_WRITE.
    """
    cdef ScanResult res
    cdef Py_ssize_t i0 = 0, m, j, t, base, ns = 0, nb = 0, si, bi
    cdef uint32_t mask
    cdef int sure
    cdef float a, v
    cdef int32_t t_any = t_lo if t_lo <= t_hi else t_hi + 1
    res.sure = 0
    res.band = 0
    res.overflow = False
    while i0 < n:
        m = n - i0 if n - i0 < BLOCK else BLOCK
        if mode == ADD_WRITE:
            ofl_ef_add_keys32(r + i0, g + i0, m, keys)
        else:
            ofl_keys32(r + i0, m, keys)
        for j in range(m, (m + 15) & ~15):
            keys[j] = -1
        for j in range(0, m, 16):
            mask = ofl_mask16_ge(&keys[j], t_any)
            while mask:
                # branch-free: whether a hit is sure or banded is a coin flip
                # to the predictor; both lists get the write, one advances
                t = j + ofl_ctz(mask)
                mask &= mask - 1
                base = i0 + t
                v = r[base]
                sure = keys[t] > t_hi
                si = ns if ns < cap_sure else cap_sure
                bi = nb if nb < cap_band else cap_band
                oi[si] = <uint32_t>base
                ov[si] = v
                cand[bi] = <uint32_t>base
                cval[bi] = v
                if mode != READ_ONLY:
                    r[base] = 0 if sure & (ns < cap_sure) else v
                ns += sure
                nb += 1 - sure
        i0 += m
    res.sure = ns
    res.band = nb
    res.overflow = ns > cap_sure or nb > cap_band
    return res


cdef ScanResult _scan_f64(double *r, const double *g, Py_ssize_t n, int mode,
                          int64_t t_hi, int64_t t_lo, Py_ssize_t cap_sure,
                          Py_ssize_t cap_band, uint32_t *oi, double *ov,
                          uint32_t *cand, double *cval) noexcept nogil:
    """Scalar float64 form of :func:`_scan_f32` (same rules)."""
    cdef ScanResult res
    cdef Py_ssize_t i
    cdef int64_t kb
    cdef double a
    res.sure = 0
    res.band = 0
    res.overflow = False
    for i in range(n):
        if mode == ADD_WRITE:
            a = clamp_sum(r[i], g[i])
            r[i] = a
        else:
            a = r[i]
        kb = ofl_key64(a)
        if kb > t_hi:
            if res.sure < cap_sure:
                oi[res.sure] = <uint32_t>i
                ov[res.sure] = a
                if mode != READ_ONLY:
                    r[i] = 0
            else:
                res.overflow = True
            res.sure += 1
        elif kb >= t_lo:
            if res.band < cap_band:
                cand[res.band] = <uint32_t>i
                cval[res.band] = a
            else:
                res.overflow = True
            res.band += 1
    return res


cdef void _sample_keys(const real *r, const real *g, bint add, Py_ssize_t n,
                       uint64_t seed, Py_ssize_t blocks, int64_t *out) noexcept nogil:
    """Keys of SAMPLE_BLOCK-long runs starting at counter-derived positions."""
    cdef Py_ssize_t b, t, B = cc_SAMPLE_BLOCK
    cdef uint64_t start
    cdef uint64_t span = <uint64_t>(n - B + 1)
    for b in range(blocks):
        start = ((ofl_mix(seed, <uint64_t>b) >> 32) * span) >> 32
        for t in range(B):
            if add:
                out[b * B + t] = key_of(clamp_sum(r[start + t], g[start + t]))
            else:
                out[b * B + t] = key_of(r[start + t])


cdef Py_ssize_t _merge(uint32_t *ai, real *av, Py_ssize_t na,
                       const uint32_t *bi, const real *bv, Py_ssize_t nb) noexcept nogil:
    """Merge b into a (a has room for na + nb), both ascending; backwards."""
    cdef Py_ssize_t i = na - 1, j = nb - 1, o = na + nb - 1
    while j >= 0:
        if i >= 0 and ai[i] > bi[j]:
            ai[o] = ai[i]
            av[o] = av[i]
            i -= 1
        else:
            ai[o] = bi[j]
            av[o] = bv[j]
            j -= 1
        o -= 1
    return na + nb


cdef ScanResult _scan(real *r, const real *g, Py_ssize_t n, int mode,
                      int64_t t_hi, int64_t t_lo, Py_ssize_t cap_sure,
                      Py_ssize_t cap_band, uint32_t *oi, real *ov, uint32_t *cand,
                      real *cval, int32_t *keys) noexcept nogil:
    if real is float:
        return _scan_f32(r, g, n, mode, <int32_t>t_hi, <int32_t>t_lo, cap_sure,
                         cap_band, oi, ov, cand, cval, keys)
    else:
        return _scan_f64(r, g, n, mode, t_hi, t_lo, cap_sure, cap_band, oi, ov, cand,
                         cval)


cdef Py_ssize_t _finish_band(real *r, bint zero, Py_ssize_t need, Py_ssize_t nband,
                             const uint32_t *cand, const real *cval, int64_t *ckeys,
                             int64_t *hist, uint32_t *bi, real *bv) noexcept nogil:
    """Exact top-``need`` of the recorded band, ties to the lower index."""
    cdef Py_ssize_t j, c = 0, ties
    cdef int64_t thr, key, above = 0
    cdef int keybits = key_bits(r[0])
    if need <= 0:
        return 0
    for j in range(nband):
        ckeys[j] = key_of(cval[j])
    thr = _kth_largest(ckeys, nband, need, keybits, hist)
    for j in range(nband):
        above += key_of(cval[j]) > thr
    ties = need - above
    for j in range(nband):
        key = key_of(cval[j])
        if key > thr or (key == thr and ties > 0):
            if key == thr:
                ties -= 1
            bi[c] = cand[j]
            bv[c] = cval[j]
            c += 1
            if zero:
                r[cand[j]] = 0
    return c


# ----------------------------------------------------------------- top-k

def _all(src, g, bint ef):
    """k >= n: everything is sent."""
    n = src.size
    if ef:
        _ef_add_py(src, g)
        vals = src.copy()
        src[...] = 0
        return np.arange(n, dtype=np.uint32), vals
    return np.arange(n, dtype=np.uint32), src.copy()


def _ef_add_py(r, g):
    cdef float[::1] r32
    cdef const float[::1] g32
    cdef double[::1] r64
    cdef const double[::1] g64
    if r.size == 0:
        return
    if r.dtype == np.float32:
        r32, g32 = r, g
        with nogil:
            _ef_add(&r32[0], &g32[0], r32.shape[0])
    else:
        r64, g64 = r, g
        with nogil:
            _ef_add(&r64[0], &g64[0], r64.shape[0])


def _exact_fallback(src, Py_ssize_t k, bint zero):
    """Radix select over the whole array (read passes), then one take pass."""
    cdef int64_t thr = 0
    cdef Py_ssize_t ties = 0, c = 0
    cdef int64_t[::1] hist = np.empty(DIGITS, np.int64)
    cdef float[::1] s32, v32
    cdef double[::1] s64, v64
    cdef uint32_t[::1] oi = np.empty(k, np.uint32)
    ov = np.empty(k, src.dtype)
    cdef Py_ssize_t n = src.size
    if src.dtype == np.float32:
        s32, v32 = src, ov
        with nogil:
            _threshold_full(&s32[0], n, k, &hist[0], &thr, &ties)
            c = _select_full(&s32[0], n, thr, ties, zero, &oi[0], &v32[0])
    else:
        s64, v64 = src, ov
        with nogil:
            _threshold_full(&s64[0], n, k, &hist[0], &thr, &ties)
            c = _select_full(&s64[0], n, thr, ties, zero, &oi[0], &v64[0])
    return np.asarray(oi)[:c], ov[:c]


# Scratch of the top-k passes, kept per thread between calls.  Allocating it
# fresh each call cost 600-1,000 minor page faults at n = 1e7 (the arrays are
# large enough that malloc maps and unmaps them every time), measured at
# 18-25% of an ef_topk call.  Only arrays up to SCRATCH_MAX_BYTES are kept, so
# a thread holds at most a few tens of MB between rounds; nothing kept here is
# ever returned to the caller (results are fresh arrays or copies).
SCRATCH_MAX_BYTES = 8 << 20
_tls = threading.local()


def _scratch(slot, Py_ssize_t size, dtype):
    """Return an uninitialized 1-D array of ``size``; reused per thread."""
    dt = np.dtype(dtype)
    if size * dt.itemsize > SCRATCH_MAX_BYTES:
        return np.empty(size, dt)
    cache = getattr(_tls, "bufs", None)
    if cache is None:
        cache = _tls.bufs = {}
    buf = cache.get((slot, dt.char))
    if buf is None or buf.size < size:
        buf = cache[(slot, dt.char)] = np.empty(size, dt)
    return buf[:size]


def _bracket(src, g, bint add, Py_ssize_t n, Py_ssize_t k, Py_ssize_t blocks,
                    uint64_t seed):
    """Sample keys; return (t_hi, t_lo, expected band) bracketing the k-th key."""
    s = blocks * cc.SAMPLE_BLOCK
    sample = _sample(src, g, add, n, seed, blocks)
    ks = (s * k + n - 1) // n
    margin = 4 * int(ks**0.5) + 16
    r_hi = max(1, ks - margin)
    r_lo = min(s, ks + margin)
    work = _scratch("sample_work", sample.size, np.int64)
    np.copyto(work, sample)
    t_hi = _kth_py(work, r_hi, src.dtype)
    t_lo = _kth_py(sample, r_lo, src.dtype)
    return t_hi, t_lo, (n * (r_lo - r_hi + 1)) // s + 1


def _sample(src, g, bint add, Py_ssize_t n, uint64_t seed, Py_ssize_t blocks):
    out = _scratch("sample", blocks * cc.SAMPLE_BLOCK, np.int64)
    cdef int64_t[::1] o = out
    cdef const float[::1] s32, g32
    cdef const double[::1] s64, g64
    if src.dtype == np.float32:
        s32 = src
        g32 = g if add else src
        with nogil:
            _sample_keys(&s32[0], &g32[0], add, n, seed, blocks, &o[0])
    else:
        s64 = src
        g64 = g if add else src
        with nogil:
            _sample_keys(&s64[0], &g64[0], add, n, seed, blocks, &o[0])
    return out


def _kth_py(keys, Py_ssize_t k, dtype):
    cdef int64_t[::1] kv = keys
    cdef int64_t[::1] hist = _scratch("hist", DIGITS, np.int64)
    cdef int64_t out
    cdef int keybits = 31 if dtype == np.float32 else 63
    with nogil:
        out = _kth_largest(&kv[0], kv.shape[0], k, keybits, &hist[0])
    return out


def _run_scan(src, g, int mode, int64_t t_hi, int64_t t_lo, Py_ssize_t cap_sure,
              Py_ssize_t cap_band):
    """Run one scan; return (result dict, oi, ov, cand, cval)."""
    cdef Py_ssize_t n = src.size
    # one spare slot each: the branch-free scan parks unrecorded hits there
    cdef uint32_t[::1] oi = _scratch("scan_oi", cap_sure + 1, np.uint32)
    cdef uint32_t[::1] cand = _scratch("scan_cand", cap_band + 1, np.uint32)
    cdef int32_t[::1] keys = _scratch("scan_keys", BLOCK + 16, np.int32)
    ov = _scratch("scan_ov", cap_sure + 1, src.dtype)
    cval = _scratch("scan_cval", cap_band + 1, src.dtype)
    cdef float[::1] r32, v32, c32
    cdef double[::1] c64
    cdef const float[::1] g32
    cdef double[::1] r64, v64
    cdef const double[::1] g64
    cdef ScanResult res
    if src.dtype == np.float32:
        r32, v32, c32 = src, ov, cval
        g32 = g if mode == ADD_WRITE else src
        with nogil:
            res = _scan(&r32[0], &g32[0], n, mode, t_hi, t_lo, cap_sure, cap_band,
                        &oi[0], &v32[0], &cand[0], &c32[0], &keys[0])
    else:
        r64, v64, c64 = src, ov, cval
        g64 = g if mode == ADD_WRITE else src
        with nogil:
            res = _scan(&r64[0], &g64[0], n, mode, t_hi, t_lo, cap_sure, cap_band,
                        &oi[0], &v64[0], &cand[0], &c64[0], &keys[0])
    return res, np.asarray(oi), ov, np.asarray(cand), cval


def _finish(src, bint zero, Py_ssize_t need, cand, cval, Py_ssize_t nband, oi, ov,
            Py_ssize_t nsure):
    """Pick the band's top ``need``, merge with the sure ones, return (idx, vals)."""
    k = nsure + need
    out_i = np.empty(k, np.uint32)
    out_v = np.empty(k, src.dtype)
    out_i[:nsure] = oi[:nsure]
    out_v[:nsure] = ov[:nsure]
    if need <= 0:
        return out_i, out_v
    bi = _scratch("finish_bi", need, np.uint32)
    bv = _scratch("finish_bv", need, src.dtype)
    cdef uint32_t[::1] cv = cand, biv = bi, oiv = out_i
    cdef int64_t[::1] ckeys = _scratch("finish_keys", max(nband, 1), np.int64)
    cdef int64_t[::1] hist = _scratch("hist", DIGITS, np.int64)
    cdef float[::1] s32, b32, o32, q32
    cdef double[::1] s64, b64, o64, q64
    cdef Py_ssize_t c
    if src.dtype == np.float32:
        s32, b32, o32, q32 = src, bv, out_v, cval
        with nogil:
            c = _finish_band(&s32[0], zero, need, nband, &cv[0], &q32[0], &ckeys[0],
                             &hist[0], &biv[0], &b32[0])
            _merge(&oiv[0], &o32[0], nsure, &biv[0], &b32[0], c)
    else:
        s64, b64, o64, q64 = src, bv, out_v, cval
        with nogil:
            c = _finish_band(&s64[0], zero, need, nband, &cv[0], &q64[0], &ckeys[0],
                             &hist[0], &biv[0], &b64[0])
            _merge(&oiv[0], &o64[0], nsure, &biv[0], &b64[0], c)
    return out_i, out_v


def _restore(src, oi, ov, Py_ssize_t count):
    """Undo the zeroing of a failed scan: the recorded values are exact."""
    if count:
        src[oi[:count]] = ov[:count]


EXACT_SEED = 0x6F72626974666C21  # any seed gives the same (exact) result


def _topk_impl(src, g, Py_ssize_t k, bint ef):
    cdef Py_ssize_t n = src.size
    if k >= n:
        return _all(src, g, ef)
    blocks = cc.sample_blocks(n, k, 0)
    if blocks:
        t_hi, t_lo, expected = _bracket(src, g, ef, n, k, blocks, EXACT_SEED)
        cap_band = min(n, 3 * expected + 1024)
        mode = ADD_WRITE if ef else READ_ONLY
        res, oi, ov, cand, cval = _run_scan(src, g, mode, t_hi, t_lo, k, cap_band)
        if not res["overflow"] and res["sure"] <= k <= res["sure"] + res["band"]:
            return _finish(src, ef, k - res["sure"], cand, cval, res["band"], oi, ov,
                           res["sure"])
        if ef:
            _restore(src, oi, ov, min(res["sure"], k))
    elif ef:
        _ef_add_py(src, g)
    return _exact_fallback(src, k, ef)


def topk(x, k):
    """Return (indices, values) of the k largest |x|, indices ascending.

    Ties go to the lower index; k >= n returns everything.
    """
    a = cc.as_vector(x)
    cc.check_size(a.size)
    k = cc.check_k(k)
    _raise_if_nonfinite(a)
    return _topk_impl(a, None, k, False)


def ef_topk(residual, grad, k):
    """Add grad into residual, take its exact top-k out, return (indices, values)."""
    k = cc.check_k(k)
    residual, g = cc.check_residual(residual, grad)
    cc.check_size(residual.size)
    _raise_if_nonfinite(g)
    return _topk_impl(residual, g, k, True)


# ------------------------------------------------ sampled-threshold top-k

def _threshold_impl(src, g, Py_ssize_t k, uint64_t seed, bint ef):
    cdef Py_ssize_t n = src.size
    if k >= n:
        return _all(src, g, ef)
    lo, hi = cc.accept_band(k)
    applied = not ef
    for attempt in range(cc.THRESHOLD_ATTEMPTS):
        blocks = cc.sample_blocks(n, k, attempt)
        if not blocks:
            break
        s = blocks * cc.SAMPLE_BLOCK
        sample = _sample(src, g, not applied, n, (seed + attempt) & cc.U64_MASK,
                         blocks)
        ks = (s * k + n - 1) // n
        thr = _kth_py(sample, ks, src.dtype)
        if not ef:
            mode = READ_ONLY
        elif not applied:
            mode = ADD_WRITE
        else:
            mode = ZERO_ONLY
        # keys >= thr are taken: "above thr - 1"; nothing is banded
        res, oi, ov, _, _ = _run_scan(src, g, mode, thr - 1, thr, hi, 0)
        applied = True
        if not res["overflow"] and res["sure"] >= lo:
            c = res["sure"]
            return oi[:c].copy(), ov[:c].copy()
        if ef:
            _restore(src, oi, ov, min(res["sure"], hi))
    if not applied:
        _ef_add_py(src, g)
    return _exact_fallback(src, k, ef)


def threshold_topk(x, k, seed):
    """Approximate top-k: between ceil(0.8 k) and floor(1.25 k) largest |x|."""
    a = cc.as_vector(x)
    cc.check_size(a.size)
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    _raise_if_nonfinite(a)
    return _threshold_impl(a, None, k, seed, False)


def ef_threshold_topk(residual, grad, k, seed):
    """Error-feedback form of :func:`threshold_topk`; returns (indices, values)."""
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    residual, g = cc.check_residual(residual, grad)
    cc.check_size(residual.size)
    _raise_if_nonfinite(g)
    return _threshold_impl(residual, g, k, seed, True)


# ---------------------------------------------------------------- random-k

cdef void _randomk_indices(uint64_t n, uint64_t k, uint64_t seed,
                           uint32_t *out) noexcept nogil:
    cdef uint64_t j, lo, size
    for j in range(k):
        lo = (j * n) // k
        size = ((j + 1) * n) // k - lo
        out[j] = <uint32_t>(lo + (((ofl_mix(seed, j) >> 32) * size) >> 32))


def randomk_indices(n, k, seed):
    """Return k distinct ascending indices in [0, n), one per stratum.

    Stratum j is [floor(j n / k), floor((j + 1) n / k)); its index comes from
    draw j of stream ``seed``, so both ends derive the same indices.
    """
    cc.check_size(n)
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    if k >= n:
        return np.arange(n, dtype=np.uint32)
    out = np.empty(k, np.uint32)
    cdef uint32_t[::1] o = out
    cdef uint64_t nn = n, kk = k, s = seed
    with nogil:
        _randomk_indices(nn, kk, s, &o[0])
    return out


cdef void _gather_scaled(real *x, const uint32_t *idx, Py_ssize_t k, uint64_t n,
                         bint unbiased, bint ef, real *out) noexcept nogil:
    """out[j] = x[idx[j]] (times its stratum size if unbiased); EF keeps the rest."""
    cdef Py_ssize_t j
    cdef uint64_t size
    cdef real v, sent
    for j in range(k):
        v = x[idx[j]]
        sent = v
        if unbiased:
            size = ((<uint64_t>j + 1) * n) // <uint64_t>k - (<uint64_t>j * n) // <uint64_t>k
            sent = v * <real>size
        out[j] = sent
        if ef:
            x[idx[j]] = v - sent if unbiased else 0


def _randomk_impl(src, g, Py_ssize_t k, seed, bint unbiased, bint ef):
    n = src.size
    if ef:
        _ef_add_py(src, g)
    if k >= n:
        vals = src.copy()
        if ef:
            src[...] = 0
        return vals
    idx = randomk_indices(n, k, seed)
    out = np.empty(k, src.dtype)
    cdef uint32_t[::1] iv = idx
    cdef float[::1] s32, o32
    cdef double[::1] s64, o64
    cdef uint64_t nn = n
    if src.dtype == np.float32:
        s32, o32 = src, out
        with nogil:
            _gather_scaled(&s32[0], &iv[0], k, nn, unbiased, ef, &o32[0])
    else:
        s64, o64 = src, out
        with nogil:
            _gather_scaled(&s64[0], &iv[0], k, nn, unbiased, ef, &o64[0])
    return out


def randomk(x, k, seed, unbiased=False):
    """Return the values at :func:`randomk_indices`, times the stratum size if
    ``unbiased`` (so the expectation equals x)."""
    a = cc.as_vector(x)
    cc.check_size(a.size)
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    _raise_if_nonfinite(a)
    return _randomk_impl(a, None, k, seed, bool(unbiased), False)


def ef_randomk(residual, grad, k, seed, unbiased=False):
    """Error-feedback random-k: returns the sent values, residual keeps the rest."""
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    residual, g = cc.check_residual(residual, grad)
    cc.check_size(residual.size)
    _raise_if_nonfinite(g)
    return _randomk_impl(residual, g, k, seed, bool(unbiased), True)


# ------------------------------------------------------------ quantization

cdef real _chunk_amax(const real *x, Py_ssize_t m, bint *bad) noexcept nogil:
    """Largest magnitude of a chunk, exact, via integer keys; 0 if subnormal.

    The float32 reduction is ofl_max_key32 (_compress_simd.h), which GCC
    vectorizes as lane-wise integer maxima.
    """
    cdef Py_ssize_t j
    cdef int32_t b32 = 0
    cdef int64_t b64 = 0, kk64
    if real is float:
        b32 = ofl_max_key32(x, m)
        if b32 >= INF_KEY32:
            bad[0] = True
        # float32 subnormals quantize to 0 (see _codes_f32)
        if b32 < F32_MIN_NORMAL_KEY:
            b32 = 0
        return ofl_float_of(<uint32_t>b32)
    else:
        for j in range(m):
            kk64 = ofl_key64(x[j])
            b64 = kk64 if kk64 > b64 else b64
        if b64 >= INF_KEY64:
            bad[0] = True
        # a float64 chunk whose largest magnitude is subnormal quantizes to 0
        if b64 < F64_MIN_NORMAL_KEY:
            b64 = 0
        return ofl_double_of(<uint64_t>b64)


cdef void _codes_f32(const float *x, Py_ssize_t m, float amax, int bits,
                     const uint16_t *u, uint8_t *codes) noexcept nogil:
    """Codes of one float32 chunk in float32 arithmetic.

    Values below max(amax * 2**-26, smallest normal) are zeroed first: their
    level rounds to 0 anyway, and no float op then sees a subnormal operand
    or result, so none takes a slow path.  Clamping t in float before the
    truncation equals clamping the integer code after it.
    """
    cdef float inv = <float>1.0 / amax if amax > 0 else <float>0.0
    cdef float lim = amax * <float>(1.0 / 67108864.0)
    lim = lim if lim > F32_MIN_NORMAL else F32_MIN_NORMAL
    # The loops are ofl_codes32 in _compress_simd.h (an AVX2 clone on x86-64).
    # Per element: xf = x if |x| >= lim else 0; t = (xf * inv) * lv + off,
    # clamped to [1, top] and truncated.  Stochastic rounding replaces off by
    # half + u / 2**16, built from bits: 1 + u / 2**16 is the float
    # 0x3F800000 | u << 7, and adding half - 1 to it is exact, so t equals the
    # twin's (xf * inv) * lv + (half + u * 2**-16) bit for bit while skipping
    # an int-to-float conversion and a multiply.
    ofl_codes32(x, m, inv, lim, bits, u, codes)


cdef void _codes_chunk(const real *x, Py_ssize_t m, real amax, int bits,
                       const uint16_t *u, uint8_t *codes) noexcept nogil:
    """Codes of one chunk; u is NULL for round-to-nearest (ties up)."""
    cdef int levels = (1 << (bits - 1)) - 1, half = 1 << (bits - 1)
    cdef int top = (1 << bits) - 1
    cdef double inv = 1.0 / <double>amax if amax > 0 else 0.0
    cdef double lv = <double>levels, off = half + 0.5, xd, t
    cdef int64_t emax = 0, e
    cdef int32_t c
    cdef Py_ssize_t j
    if real is double:
        emax = ofl_key64(amax) >> 52
    for j in range(m):
        xd = <double>x[j]
        if real is double:
            # magnitudes 2**64 below the chunk's largest round to code 0 anyway;
            # zeroing them keeps subnormal products out of the FPU.
            e = ofl_key64(x[j]) >> 52
            if e == 0 or e + 64 < emax:
                xd = 0.0
        if u != NULL:
            off = half + <double>u[j] * (1.0 / 65536.0)
        t = (xd * inv) * lv + off
        c = <int32_t>t
        c = c if c > 1 else 1
        c = c if c < top else top
        codes[j] = <uint8_t>c


cdef void _dequant_chunk(const uint8_t *codes, Py_ssize_t m, real amax, int bits,
                         real *out) noexcept nogil:
    cdef int half = 1 << (bits - 1)
    cdef double step = <double>amax / <double>(half - 1)
    cdef double v, big
    cdef Py_ssize_t j
    if real is float:
        big = F32_MAX
    else:
        big = F64_MAX
    for j in range(m):
        # L * (amax / L) can round past the largest finite value: saturate
        v = <double>(<int32_t>codes[j] - half) * step
        v = v if v < big else big
        v = v if v > -big else -big
        out[j] = <real>v


cdef void _pack(const uint8_t *codes, Py_ssize_t n, int bits,
                uint8_t *out) noexcept nogil:
    cdef Py_ssize_t i, per = 8 // bits, nb = (n * bits + 7) // 8, j
    cdef uint8_t b
    for i in range(nb):
        b = 0
        for j in range(per):
            if i * per + j < n:
                b |= codes[i * per + j] << (j * bits)
        out[i] = b


cdef void _unpack(const uint8_t *packed, Py_ssize_t n, int bits,
                  uint8_t *codes) noexcept nogil:
    cdef Py_ssize_t i
    cdef int per = 8 // bits, mask = (1 << bits) - 1
    for i in range(n):
        codes[i] = (packed[i // per] >> ((i % per) * bits)) & mask


cdef bint _quantize(real *r, const real *g, bint ef, Py_ssize_t n, int bits,
                    Py_ssize_t chunk, bint stochastic, uint64_t seed, real *acc,
                    uint16_t *u, uint8_t *codes, real *deq,
                    real *amax_out) noexcept nogil:
    """Chunk by chunk: (accumulate,) scale, code, (and keep the remainder).

    Returns True, having stopped, at the first chunk holding NaN or Inf: the
    finiteness check rides on the amax pass instead of costing a pass of its
    own (the EF form checks the gradient before, as it writes the residual).
    """
    cdef Py_ssize_t c0 = 0, m, j, ci = 0
    cdef const real *x
    cdef real amax
    cdef bint bad = False
    while c0 < n:
        m = n - c0 if n - c0 < chunk else chunk
        if ef:
            for j in range(m):
                acc[j] = clamp_sum(r[c0 + j], g[c0 + j])
            x = acc
        else:
            x = r + c0
            # stream the next chunk in while this one is computed: the amax
            # pass would otherwise wait on DRAM with the FPU idle
            for j in range(0, min(chunk, n - c0 - m), 16):
                ofl_prefetch_r(r + c0 + m + j)
        amax = _chunk_amax(x, m, &bad)
        if bad:
            return True
        amax_out[ci] = amax
        if stochastic:
            ofl_uniform16(seed, c0, m, u)
        if real is float:
            _codes_f32(x, m, amax, bits, u if stochastic else NULL, codes + c0)
        else:
            _codes_chunk(x, m, amax, bits, u if stochastic else NULL, codes + c0)
        if ef:
            _dequant_chunk(codes + c0, m, amax, bits, deq)
            for j in range(m):
                r[c0 + j] = acc[j] - deq[j]
        c0 += m
        ci += 1
    return False


def _quantize_impl(src, g, int bits, Py_ssize_t chunk, bint stochastic, seed, bint ef,
                   out):
    cdef Py_ssize_t n = src.size
    cdef Py_ssize_t nchunks = (n + chunk - 1) // chunk
    cdef Py_ssize_t m = min(n, chunk)
    cdef uint64_t s = seed
    amax = np.empty(nchunks, src.dtype)
    if out is None:
        out = np.empty(cc.packed_len(n, bits), np.uint8)
    codes = out if bits == 8 else np.empty(n, np.uint8)
    if n == 0:
        return out, amax
    acc = np.empty(m if ef else 1, src.dtype)
    deq = np.empty(m if ef else 1, src.dtype)
    cdef uint16_t[::1] u = np.empty(m if stochastic else 1, np.uint16)
    cdef uint8_t[::1] cv = codes
    cdef float[::1] r32, a32, d32, m32
    cdef const float[::1] g32
    cdef double[::1] r64, a64, d64, m64
    cdef const double[::1] g64
    cdef bint bad = False
    if src.dtype == np.float32:
        r32, a32, d32, m32 = src, acc, deq, amax
        g32 = g if ef else src
        with nogil:
            bad = _quantize(&r32[0], &g32[0], ef, n, bits, chunk, stochastic, s,
                            &a32[0], &u[0], &cv[0], &d32[0], &m32[0])
    else:
        r64, a64, d64, m64 = src, acc, deq, amax
        g64 = g if ef else src
        with nogil:
            bad = _quantize(&r64[0], &g64[0], ef, n, bits, chunk, stochastic, s,
                            &a64[0], &u[0], &cv[0], &d64[0], &m64[0])
    if bad:
        _raise_if_nonfinite(src)
    if bits == 8:
        return out, amax
    cdef uint8_t[::1] pv = out
    with nogil:
        _pack(&cv[0], n, bits, &pv[0])
    return out, amax


def quantize(x, bits, chunk_size, stochastic=False, seed=0, out=None):
    """Return (packed codes uint8, per-chunk largest magnitude in x's dtype).

    Code q + 2**(bits-1) for level q = round(x / amax * L), L = 2**(bits-1) - 1,
    saturated to [-L, L]; ``stochastic`` rounds up with probability equal to
    the fraction (a 16-bit counter-based draw per element).  ``out``, if
    given, receives the packed codes (no allocation).
    """
    bits, chunk, seed = cc.check_bits(bits), cc.check_chunk(chunk_size), cc.check_seed(seed)
    a = cc.as_vector(x)
    cc.check_size(a.size)
    out = cc.check_out(out, cc.packed_len(a.size, bits))
    # NaN / Inf raise from the kernel's amax pass (see _quantize)
    return _quantize_impl(a, None, bits, chunk, bool(stochastic), seed, False, out)


def ef_quantize(residual, grad, bits, chunk_size, stochastic=False, seed=0, out=None):
    """Error-feedback quantization: residual keeps what the codes do not carry."""
    bits, chunk, seed = cc.check_bits(bits), cc.check_chunk(chunk_size), cc.check_seed(seed)
    out = cc.check_out(out, cc.packed_len(np.asarray(residual).size, bits))
    residual, g = cc.check_residual(residual, grad)
    cc.check_size(residual.size)
    _raise_if_nonfinite(g)
    return _quantize_impl(residual, g, bits, chunk, bool(stochastic), seed, True, out)


cdef void _dequantize(const uint8_t *codes, const real *amax, Py_ssize_t n, int bits,
                      Py_ssize_t chunk, real *out) noexcept nogil:
    cdef Py_ssize_t c0 = 0, ci = 0, m
    while c0 < n:
        m = n - c0 if n - c0 < chunk else chunk
        _dequant_chunk(codes + c0, m, amax[ci], bits, out + c0)
        c0 += m
        ci += 1


def _codes_of(packed, Py_ssize_t n, int bits):
    if bits == 8:
        return packed
    codes = np.empty(n, np.uint8)
    cdef const uint8_t[::1] pv = packed
    cdef uint8_t[::1] cv = codes
    if n:
        with nogil:
            _unpack(&pv[0], n, bits, &cv[0])
    return codes


def dequantize(packed, amax, n, bits, chunk_size):
    """Invert :func:`quantize`: level times amax / L, in amax's dtype."""
    bits, chunk = cc.check_bits(bits), cc.check_chunk(chunk_size)
    packed, amax = _check_codes(packed, amax, n, bits, chunk)
    out = np.empty(n, amax.dtype)
    if n == 0:
        return out
    codes = _codes_of(packed, n, bits)
    cdef const uint8_t[::1] cv = codes
    cdef const float[::1] m32
    cdef const double[::1] m64
    cdef float[::1] o32
    cdef double[::1] o64
    cdef Py_ssize_t nn = n, ch = chunk
    cdef int b = bits
    if amax.dtype == np.float32:
        m32, o32 = amax, out
        with nogil:
            _dequantize(&cv[0], &m32[0], nn, b, ch, &o32[0])
    else:
        m64, o64 = amax, out
        with nogil:
            _dequantize(&cv[0], &m64[0], nn, b, ch, &o64[0])
    return out


# -------------------------------------------------------------------- sign

cdef double _abs_sum(const real *x, Py_ssize_t n, double f) noexcept nogil:
    """Sum of |x| * f in float64 over 4 interleaved lanes, each in index order."""
    cdef double s0 = 0, s1 = 0, s2 = 0, s3 = 0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        s0 += <double>(x[i] if x[i] >= 0 else -x[i]) * f
        s1 += <double>(x[i + 1] if x[i + 1] >= 0 else -x[i + 1]) * f
        s2 += <double>(x[i + 2] if x[i + 2] >= 0 else -x[i + 2]) * f
        s3 += <double>(x[i + 3] if x[i + 3] >= 0 else -x[i + 3]) * f
        i += 4
    if i < n:
        s0 += <double>(x[i] if x[i] >= 0 else -x[i]) * f
    if i + 1 < n:
        s1 += <double>(x[i + 1] if x[i + 1] >= 0 else -x[i + 1]) * f
    if i + 2 < n:
        s2 += <double>(x[i + 2] if x[i + 2] >= 0 else -x[i + 2]) * f
    return (s0 + s1) + (s2 + s3)


cdef double _mean_abs(const real *x, Py_ssize_t n) noexcept nogil:
    """Mean |x|; a float64 sum that overflows is redone scaled by 2**-64."""
    cdef double total = _abs_sum(x, n, 1.0), m
    if total <= F64_MAX:
        return total / n
    m = (_abs_sum(x, n, 5.421010862427522e-20) / n) * 1.8446744073709552e19
    return m if m < F64_MAX else F64_MAX


cdef void _sign_bits(real *x, Py_ssize_t n, bint ef, real scale,
                     uint8_t *out) noexcept nogil:
    """Pack sign bits (1 = non-negative), then leave x - sent if ef.

    Branch-free: signs of gradients are coin flips to a branch predictor.
    """
    cdef Py_ssize_t i, j, nb = n // 8
    cdef uint8_t b
    cdef real neg = -scale
    for i in range(nb):
        b = 0
        for j in range(8):
            b |= <uint8_t>(x[i * 8 + j] >= 0) << j
        out[i] = b
    if n % 8:
        b = 0
        for j in range(n - nb * 8):
            b |= <uint8_t>(x[nb * 8 + j] >= 0) << j
        out[nb] = b
    if ef:
        for i in range(n):
            x[i] = x[i] - (scale if x[i] >= 0 else neg)


def _sign_impl(src, g, bint ef):
    cdef Py_ssize_t n = src.size
    if ef:
        _ef_add_py(src, g)
    packed = np.empty((n + 7) // 8, np.uint8)
    if n == 0:
        return packed, 0.0
    cdef uint8_t[::1] pv = packed
    cdef float[::1] s32
    cdef double[::1] s64
    cdef float sc32
    cdef double sc64
    if src.dtype == np.float32:
        s32 = src
        with nogil:
            sc32 = <float>_mean_abs(&s32[0], n)
            _sign_bits(&s32[0], n, ef, sc32, &pv[0])
        return packed, float(sc32)
    s64 = src
    with nogil:
        sc64 = _mean_abs(&s64[0], n)
        _sign_bits(&s64[0], n, ef, sc64, &pv[0])
    return packed, float(sc64)


def sign(x):
    """Return (sign bits, 1 = non-negative, packed LSB first; mean |x|)."""
    a = cc.as_vector(x)
    cc.check_size(a.size)
    _raise_if_nonfinite(a)
    return _sign_impl(a, None, False)


def ef_sign(residual, grad):
    """EF-signSGD (Karimireddy et al. 2019): send scale * sign, keep the rest."""
    residual, g = cc.check_residual(residual, grad)
    cc.check_size(residual.size)
    _raise_if_nonfinite(g)
    return _sign_impl(residual, g, True)


cdef void _unsign(const uint8_t *packed, Py_ssize_t n, real s,
                  real *out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        out[i] = s if (packed[i >> 3] >> (i & 7)) & 1 else -s


def unsign(packed, n, scale, dtype=np.float32):
    """Expand sign bits into +scale / -scale values of ``dtype``."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != (n + 7) // 8:
        raise ValueError(f"{packed.size} sign bytes for {n} elements")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dt}")
    out = np.empty(n, dt)
    if n == 0:
        return out
    cdef const uint8_t[::1] pv = packed
    cdef float[::1] o32
    cdef double[::1] o64
    cdef Py_ssize_t nn = n
    cdef float s32 = scale
    cdef double s64 = scale
    if dt == np.float32:
        o32 = out
        with nogil:
            _unsign(&pv[0], nn, s32, &o32[0])
    else:
        o64 = out
        with nogil:
            _unsign(&pv[0], nn, s64, &o64[0])
    return out


# ------------------------------------------------------------ scatter-add

cdef Py_ssize_t _first_bad_index(const uint32_t *idx, Py_ssize_t k,
                                  uint64_t n) noexcept nogil:
    """Position of the first index that is >= n or not above its predecessor.

    Returns -1 when all are good.  One branch-free pass over k uint32 (the
    NumPy checks took three passes and two temporaries, 15% of a 1% scatter).
    """
    cdef Py_ssize_t j
    cdef uint32_t bad = 0
    if k == 0:
        return -1
    if idx[k - 1] >= n:
        bad = 1
    for j in range(1, k):
        bad |= idx[j] <= idx[j - 1]
    if not bad:
        return -1
    for j in range(k):
        if idx[j] >= n or (j > 0 and idx[j] <= idx[j - 1]):
            return j
    return -1


cdef void _scatter(accum *acc, const uint32_t *idx, const real *v, Py_ssize_t k,
                   double w) noexcept nogil:
    """acc[idx[j]] += (accum)(w * v[j]); prefetching ahead hides the misses."""
    cdef Py_ssize_t j, k0 = k - PREFETCH_AHEAD if k > PREFETCH_AHEAD else 0
    for j in range(k0):
        ofl_prefetch_w(&acc[idx[j + PREFETCH_AHEAD]])
        acc[idx[j]] = acc[idx[j]] + <accum>(w * <double>v[j])
    for j in range(k0, k):
        acc[idx[j]] = acc[idx[j]] + <accum>(w * <double>v[j])


cdef void _dense_add(accum *acc, const real *v, Py_ssize_t n,
                     double w) noexcept nogil:
    cdef Py_ssize_t j
    for j in range(n):
        acc[j] = acc[j] + <accum>(w * <double>v[j])


def _add_values(acc, idx, v, double w):
    cdef const uint32_t[::1] iv
    cdef float[::1] a32
    cdef double[::1] a64
    cdef const float[::1] v32
    cdef const double[::1] v64
    cdef Py_ssize_t k = v.size
    if k == 0:
        return
    cdef bint dense = idx is None
    if not dense:
        iv = idx
    if acc.dtype == np.float32:
        a32 = acc
        if v.dtype == np.float32:
            v32 = v
            with nogil:
                if dense:
                    _dense_add(&a32[0], &v32[0], k, w)
                else:
                    _scatter(&a32[0], &iv[0], &v32[0], k, w)
        else:
            v64 = v
            with nogil:
                if dense:
                    _dense_add(&a32[0], &v64[0], k, w)
                else:
                    _scatter(&a32[0], &iv[0], &v64[0], k, w)
    else:
        a64 = acc
        if v.dtype == np.float32:
            v32 = v
            with nogil:
                if dense:
                    _dense_add(&a64[0], &v32[0], k, w)
                else:
                    _scatter(&a64[0], &iv[0], &v32[0], k, w)
        else:
            v64 = v
            with nogil:
                if dense:
                    _dense_add(&a64[0], &v64[0], k, w)
                else:
                    _scatter(&a64[0], &iv[0], &v64[0], k, w)


def scatter_add(acc, idx, vals, weight):
    """acc[idx] += weight * vals (idx strictly increasing), or dense if idx None.

    Each term is formed in float64 and rounded to acc's dtype before the add.
    """
    acc = cc.check_accumulator(acc)
    w = cc.check_weight(weight)
    v = np.asarray(vals)
    if v.dtype not in (np.float16, np.float32, np.float64) or v.ndim != 1:
        raise TypeError(f"values must be a 1-D float array, got {v.dtype}")
    if v.dtype == np.float16:
        v = v.astype(np.float32)  # exact
    v = np.ascontiguousarray(v)
    if idx is None:
        if v.size != acc.size:
            raise ValueError(
                f"{v.size} dense values for an accumulator of {acc.size}"
            )
        _add_values(acc, None, v, w)
        return
    _add_values(acc, _checked_indices(idx, acc.size, v.size), v, w)


def _checked_indices(idx, Py_ssize_t n, Py_ssize_t count):
    """cc.check_indices, with the common uint32 case checked in one C pass."""
    cdef const uint32_t[::1] iv
    cdef Py_ssize_t bad
    if (
        not isinstance(idx, np.ndarray)
        or idx.dtype != np.uint32
        or idx.ndim != 1
        or idx.size != count
        or not idx.flags.c_contiguous
    ):
        return cc.check_indices(idx, n, count)
    iv = idx
    with nogil:
        bad = _first_bad_index(&iv[0], count, n) if count else -1
    if bad >= 0:
        cc.check_indices(idx, n, count)  # raises, naming the bad position
        raise AssertionError(f"index check disagrees at position {bad}")
    return idx


def add_dequantized(acc, idx, packed, amax, bits, chunk_size, weight):
    """acc[idx] += weight * dequantize(...) (dense when idx is None)."""
    acc = cc.check_accumulator(acc)
    w = cc.check_weight(weight)
    bits, chunk = cc.check_bits(bits), cc.check_chunk(chunk_size)
    n = acc.size if idx is None else int(np.asarray(idx).size)
    packed, amax = _check_codes(packed, amax, n, bits, chunk)
    i = None if idx is None else _checked_indices(idx, acc.size, n)
    vals = dequantize(packed, amax, n, bits, chunk)
    _add_values(acc, i, vals, w)


def add_signs(acc, packed, scale, weight, dtype=np.float32):
    """acc += weight * (+scale or -scale per sign bit); scale rounded to dtype."""
    acc = cc.check_accumulator(acc)
    w = cc.check_weight(weight)
    _add_values(acc, None, unsign(packed, acc.size, scale, dtype), w)


# ------------------------------------------------------ index bit-packing

cdef Py_ssize_t _pack_indices(const uint32_t *idx, Py_ssize_t k, uint8_t *widths,
                              uint8_t *out) noexcept nogil:
    """Delta-code and bit-pack; returns payload bytes (see the twin's doc)."""
    cdef Py_ssize_t b, j, nb = (k + 127) // 128, m, pos = 0, bitpos, nbytes
    cdef uint64_t d, top, acc
    cdef int w, have
    cdef uint32_t prev
    for b in range(nb):
        m = k - b * 128 if k - b * 128 < 128 else 128
        top = 0
        for j in range(m):
            d = idx[b * 128 + j] if b * 128 + j == 0 else (
                <uint64_t>idx[b * 128 + j] - idx[b * 128 + j - 1] - 1)
            top = d if d > top else top
        w = 0
        while w < 64 and (top >> w) != 0:
            w += 1
        widths[b] = <uint8_t>w
        nbytes = (m * w + 7) // 8 if b == nb - 1 else 16 * w
        acc = 0
        have = 0
        for j in range(m):
            d = idx[b * 128 + j] if b * 128 + j == 0 else (
                <uint64_t>idx[b * 128 + j] - idx[b * 128 + j - 1] - 1)
            acc |= d << have
            have += w
            while have >= 8:
                out[pos] = <uint8_t>(acc & 0xFF)
                pos += 1
                acc >>= 8
                have -= 8
        # pad a full block's bit stream to its 16 w bytes
        bitpos = m * w
        while have > 0:
            out[pos] = <uint8_t>(acc & 0xFF)
            pos += 1
            acc >>= 8
            have -= 8
        bitpos = (bitpos + 7) // 8
        while bitpos < nbytes:
            out[pos] = 0
            pos += 1
            bitpos += 1
    return pos


def pack_indices(idx):
    """Delta-code strictly increasing indices and bit-pack them in blocks."""
    i = np.ascontiguousarray(idx, dtype=np.uint32).reshape(-1)
    cdef Py_ssize_t k = i.size
    widths = np.zeros((k + cc.INDEX_BLOCK - 1) // cc.INDEX_BLOCK, np.uint8)
    out = np.zeros(4 * k + 16, np.uint8)
    if k == 0:
        return widths, out[:0]
    cdef const uint32_t[::1] iv = i
    cdef uint8_t[::1] wv = widths, ov = out
    cdef Py_ssize_t used
    with nogil:
        used = _pack_indices(&iv[0], k, &wv[0], &ov[0])
    return widths, out[:used]


cdef int _unpack_indices(const uint8_t *widths, const uint8_t *payload,
                         Py_ssize_t k, uint64_t n, uint32_t *out) noexcept nogil:
    """Decode; returns 0, or 1 when an index reaches n (the caller raises)."""
    cdef Py_ssize_t b, j, nb = (k + 127) // 128, m, pos, start = 0
    cdef uint64_t acc, d, mask, cur = 0
    cdef int w, have
    for b in range(nb):
        m = k - b * 128 if k - b * 128 < 128 else 128
        w = widths[b]
        mask = (<uint64_t>1 << w) - 1
        pos = start
        acc = 0
        have = 0
        for j in range(m):
            while have < w:
                acc |= <uint64_t>payload[pos] << have
                pos += 1
                have += 8
            d = acc & mask
            acc >>= w
            have -= w
            cur = d if b == 0 and j == 0 else cur + d + 1
            if cur >= n:
                return 1
            out[b * 128 + j] = <uint32_t>cur
        start += 16 * w  # a full block's stream is 16 w bytes
    return 0


def unpack_indices(widths, payload, k, n):
    """Invert :func:`pack_indices`, validating everything (input is untrusted)."""
    widths = np.ascontiguousarray(widths, dtype=np.uint8).reshape(-1)
    payload = np.ascontiguousarray(payload, dtype=np.uint8).reshape(-1)
    _check_packed_indices(widths, payload, k, n)
    out = np.empty(k, np.uint32)
    if k == 0:
        return out
    # the decoder reads whole bytes ahead of the last value: pad by 8
    padded = np.zeros(payload.size + 8, np.uint8)
    padded[: payload.size] = payload
    cdef const uint8_t[::1] wv = widths, pv = padded
    cdef uint32_t[::1] ov = out
    cdef Py_ssize_t kk = k
    cdef uint64_t nn = n
    cdef int bad
    with nogil:
        bad = _unpack_indices(&wv[0], &pv[0], kk, nn, &ov[0])
    if bad:
        raise ValueError(f"packed indices reach beyond the tensor's {n} elements")
    return out
