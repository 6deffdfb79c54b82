/* Innermost float32 loops of kernels_pyx/_compress.pyx, in plain C.

   They are here, and not in Cython, for two reasons.  Each is a flat loop
   over raw pointers that GCC -O3 vectorizes with baseline SSE2; and on
   x86-64 GCC also builds an AVX2 clone of each (target_clones), picked once
   at load time by an ifunc resolver, which doubles the lane count and gives
   the integer max, blend and pack instructions SSE2 lacks.  Cython cannot
   put that attribute on its own functions.

   Every clone computes the same bits: the loops use only integer ops and
   IEEE float add, multiply, compare and truncating conversion, written in
   the twin's order, and setup.py passes -ffp-contract=off (the "avx2"
   target does not enable FMA in any case).  On arm64 and with other
   compilers the attribute is empty and the baseline build is used. */

#ifndef OFL_COMPRESS_SIMD_H
#define OFL_COMPRESS_SIMD_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Build with -DOFL_NO_CLONES to get only the baseline loops (to test them
   on an AVX2 machine). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && \
    defined(__linux__) && __GNUC__ >= 8 && !defined(OFL_NO_CLONES)
#define OFL_CLONES __attribute__((target_clones("avx2", "default")))
#define OFL_CLONES_ON 1
#else
#define OFL_CLONES
#endif

/* splitmix64 over a counter: Steele, Lea & Flood, OOPSLA 2014. */
static inline uint64_t ofl_mix(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1u) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* o[4 * (q - q0) + p] = bits 16 * p up of ofl_mix(seed, q), q0 <= q < q1.

   The baseline loop is kept scalar: SSE2 has no 64-bit multiply, and GCC's
   emulation of it with pmuludq ran slower than one scalar imul per draw.
   With AVX2 the same emulation works on four draws at once and wins, so
   the AVX2 build of the loop is left to vectorize. */
#define OFL_DRAWS16_BODY                                       \
    for (int64_t q = q0; q < q1; ++q) {                        \
        uint64_t z = ofl_mix(seed, (uint64_t)q);               \
        uint16_t *p = o + 4 * (q - q0);                        \
        p[0] = (uint16_t)z;                                    \
        p[1] = (uint16_t)(z >> 16);                            \
        p[2] = (uint16_t)(z >> 32);                            \
        p[3] = (uint16_t)(z >> 48);                            \
    }

#if defined(__clang__)
static void ofl_draws16(uint64_t seed, int64_t q0, int64_t q1, uint16_t *o) {
#pragma clang loop vectorize(disable)
    OFL_DRAWS16_BODY
}
#elif defined(__GNUC__)
static __attribute__((optimize("no-tree-vectorize"))) void
ofl_draws16_base(uint64_t seed, int64_t q0, int64_t q1, uint16_t *o) {
    OFL_DRAWS16_BODY
}
#if defined(OFL_CLONES_ON)
/* x86-64 is little-endian: the four 16-bit pieces of z, lowest first, are
   z's own bytes, so one 8-byte store replaces the word shuffles. */
static __attribute__((target("avx2"))) void
ofl_draws16_avx2(uint64_t seed, int64_t q0, int64_t q1, uint16_t *o) {
    for (int64_t q = q0; q < q1; ++q) {
        uint64_t z = ofl_mix(seed, (uint64_t)q);
        memcpy(o + 4 * (q - q0), &z, 8);
    }
}
#endif
static void ofl_draws16(uint64_t seed, int64_t q0, int64_t q1, uint16_t *o) {
#if defined(OFL_CLONES_ON)
    if (__builtin_cpu_supports("avx2")) {
        ofl_draws16_avx2(seed, q0, q1, o);
        return;
    }
#endif
    ofl_draws16_base(seed, q0, q1, o);
}
#else
static void ofl_draws16(uint64_t seed, int64_t q0, int64_t q1, uint16_t *o) {
    OFL_DRAWS16_BODY
}
#endif

#define OFL_F32_MAX 3.4028234663852886e38f
#define OFL_INF_KEY32 0x7F800000

static inline int32_t ofl_simd_key32(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return (int32_t)(u & 0x7FFFFFFFu);
}

/* Number of NaN/Inf values in x (key >= the key of Inf).  The counter is
   32-bit so that the loop stays in 32-bit lanes; the caller passes m < 2**31. */
static OFL_CLONES uint32_t ofl_count_nonfinite32(const float *x, ptrdiff_t m) {
    uint32_t c = 0;
    for (ptrdiff_t j = 0; j < m; ++j)
        c += ofl_simd_key32(x[j]) >= OFL_INF_KEY32;
    return c;
}

/* Largest key of x (0 for an empty x).  Keys are non-negative int32, so the
   integer maximum is the largest magnitude, NaN payloads above Inf. */
static OFL_CLONES int32_t ofl_max_key32(const float *x, ptrdiff_t m) {
    int32_t b = 0;
    for (ptrdiff_t j = 0; j < m; ++j) {
        int32_t k = ofl_simd_key32(x[j]);
        b = k > b ? k : b;
    }
    return b;
}

/* r = clamp(r + g, +-FLT_MAX) and keys = key(r), over one block. */
static OFL_CLONES void ofl_ef_add_keys32(float *r, const float *g, ptrdiff_t m,
                                         int32_t *restrict keys) {
    for (ptrdiff_t j = 0; j < m; ++j) {
        float s = r[j] + g[j];
        s = s < OFL_F32_MAX ? s : OFL_F32_MAX;
        s = s > -OFL_F32_MAX ? s : -OFL_F32_MAX;
        r[j] = s;
        keys[j] = ofl_simd_key32(s);
    }
}

static OFL_CLONES void ofl_keys32(const float *x, ptrdiff_t m,
                                  int32_t *restrict keys) {
    for (ptrdiff_t j = 0; j < m; ++j)
        keys[j] = ofl_simd_key32(x[j]);
}

/* Codes of one float32 chunk; the arithmetic and its reasons are described
   at _codes_f32 in _compress.pyx.  u is NULL for round-to-nearest, else the
   chunk's 16-bit uniforms. */
static OFL_CLONES void ofl_codes32(const float *x, ptrdiff_t m, float inv,
                                   float lim, int bits, const uint16_t *u,
                                   uint8_t *codes) {
    const int half = 1 << (bits - 1), top = (1 << bits) - 1;
    const float lv = (float)(half - 1), ftop = (float)top, one = 1.0f;
    const float off = (float)half + 0.5f, hm1 = (float)(half - 1);
    if (u == NULL) {
        for (ptrdiff_t j = 0; j < m; ++j) {
            float ax = x[j] >= 0 ? x[j] : -x[j];
            float xf = ax >= lim ? x[j] : 0.0f;
            float t = (xf * inv) * lv + off;
            t = t > one ? t : one;
            t = t < ftop ? t : ftop;
            codes[j] = (uint8_t)(int32_t)t;
        }
    } else {
        for (ptrdiff_t j = 0; j < m; ++j) {
            float ax = x[j] >= 0 ? x[j] : -x[j];
            float xf = ax >= lim ? x[j] : 0.0f;
            uint32_t ub = 0x3F800000u | ((uint32_t)u[j] << 7);
            float f;
            memcpy(&f, &ub, 4);
            float t = (xf * inv) * lv + (f + hm1);
            t = t > one ? t : one;
            t = t < ftop ? t : ftop;
            codes[j] = (uint8_t)(int32_t)t;
        }
    }
}

#endif
