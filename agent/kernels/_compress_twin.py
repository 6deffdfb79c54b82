"""NumPy twin of the compiled compression kernels (``kernels_pyx/_compress.pyx``).

Same signatures, same results, bit for bit: every choice the compiled kernels
make (tie breaks, rounding, random draws, summation order) is written here the
same way, and the test suite runs against both.  This module is the reference;
it is also what runs where no C compiler was available.

Conventions shared with the compiled kernels:

- Magnitude order uses the float bit pattern with the sign cleared, read as an
  unsigned integer ("key"); it orders finite floats like ``abs`` does, costs
  no float arithmetic and is immune to subnormal slow paths.
- Error feedback accumulates ``residual + gradient`` saturated to the largest
  finite value of the dtype.  A gradient holding NaN or Inf raises
  :class:`NonFiniteError` before anything is written.
- Selected indices come back strictly increasing, as uint32.
"""

import numpy as np

from agent.kernels import _compress_common as cc
from agent.kernels._compress_errors import NonFiniteError

_KEY = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}
_MASK = {np.dtype(np.float32): 0x7FFFFFFF, np.dtype(np.float64): 0x7FFFFFFFFFFFFFFF}
_INF_KEY = {np.dtype(np.float32): 0x7F800000, np.dtype(np.float64): 0x7FF << 52}
_F64_MIN_NORMAL_KEY = 1 << 52
_F32_MIN_NORMAL_KEY = 0x00800000


def _keys(x: np.ndarray) -> np.ndarray:
    t = _KEY[x.dtype]
    return x.view(t) & t(_MASK[x.dtype])


def _mix(seed: int, counters: np.ndarray) -> np.ndarray:
    """splitmix64 draws for an array of uint64 counters (see _compress_common)."""
    u = np.uint64
    z = u(seed) + (counters + u(1)) * u(cc.GOLDEN_GAMMA)
    z = (z ^ (z >> u(30))) * u(cc.MIX_MUL_1)
    z = (z ^ (z >> u(27))) * u(cc.MIX_MUL_2)
    return z ^ (z >> u(31))


def _raise_if_nonfinite(x: np.ndarray) -> None:
    count, first = count_nonfinite(x)
    if count:
        raise NonFiniteError(count, first)


def _accumulate(residual, grad) -> tuple[np.ndarray, np.ndarray]:
    """Check the pair, return (residual, saturated residual + grad)."""
    residual, g = cc.check_residual(residual, grad)
    cc.check_size(residual.size)
    _raise_if_nonfinite(g)
    big = np.finfo(residual.dtype).max
    with np.errstate(over="ignore"):
        acc = residual + g
    np.clip(acc, -big, big, out=acc)
    return residual, acc


def count_nonfinite(x) -> tuple[int, int]:
    """Return (number of NaN/Inf values in x, flat index of the first or -1)."""
    a = cc.as_vector(x)
    bad = _keys(a) >= _INF_KEY[a.dtype]
    count = int(np.count_nonzero(bad))
    return count, (int(np.argmax(bad)) if count else -1)


# ---------------------------------------------------------------- exact top-k


def _topk_select(acc: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest magnitudes, ties to the lower index, ascending."""
    n = acc.size
    if k >= n:
        return np.arange(n, dtype=np.uint32)
    key = _keys(acc)
    kth = np.partition(key, n - k)[n - k]
    chosen = key > kth
    need = k - int(np.count_nonzero(chosen))
    chosen[np.flatnonzero(key == kth)[:need]] = True
    return np.flatnonzero(chosen).astype(np.uint32)


def topk(x, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices, values) of the k largest |x|, indices ascending."""
    a = cc.as_vector(x)
    cc.check_size(a.size)
    k = cc.check_k(k)
    _raise_if_nonfinite(a)
    idx = _topk_select(a, k)
    return idx, a[idx]


def ef_topk(residual, grad, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Add grad into residual, take its exact top-k out, return (indices, values)."""
    k = cc.check_k(k)
    residual, acc = _accumulate(residual, grad)
    idx = _topk_select(acc, k)
    vals = acc[idx]
    acc[idx] = 0
    residual[...] = acc
    return idx, vals


# --------------------------------------------------- sampled-threshold top-k


def _threshold_select(acc: np.ndarray, k: int, seed: int) -> np.ndarray:
    n = acc.size
    if k >= n:
        return np.arange(n, dtype=np.uint32)
    key = _keys(acc)
    lo, hi = cc.accept_band(k)
    for attempt in range(cc.THRESHOLD_ATTEMPTS):
        blocks = cc.sample_blocks(n, k, attempt)
        if not blocks:
            break
        z = _mix((seed + attempt) & cc.U64_MASK, np.arange(blocks, dtype=np.uint64))
        starts = ((z >> np.uint64(32)) * np.uint64(n - cc.SAMPLE_BLOCK + 1)) >> (
            np.uint64(32)
        )
        pos = (starts[:, None] + np.arange(cc.SAMPLE_BLOCK, dtype=np.uint64)).ravel()
        sample = key[pos]
        s = sample.size
        ks = (s * k + n - 1) // n
        thr = np.partition(sample, s - ks)[s - ks]
        chosen = key >= thr
        count = int(np.count_nonzero(chosen))
        if lo <= count <= hi:
            return np.flatnonzero(chosen).astype(np.uint32)
    return _topk_select(acc, k)


def threshold_topk(x, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Approximate top-k: between ceil(0.8 k) and floor(1.25 k) largest |x|."""
    a = cc.as_vector(x)
    cc.check_size(a.size)
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    _raise_if_nonfinite(a)
    idx = _threshold_select(a, k, seed)
    return idx, a[idx]


def ef_threshold_topk(residual, grad, k: int, seed: int):
    """Error-feedback form of :func:`threshold_topk`; returns (indices, values)."""
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    residual, acc = _accumulate(residual, grad)
    idx = _threshold_select(acc, k, seed)
    vals = acc[idx]
    acc[idx] = 0
    residual[...] = acc
    return idx, vals


# ----------------------------------------------------------------- random-k


def randomk_indices(n: int, k: int, seed: int) -> np.ndarray:
    """Return k distinct ascending indices in [0, n), one per stratum.

    Stratum j is [floor(j n / k), floor((j + 1) n / k)); its index is drawn from
    draw j of stream ``seed``.  Both ends derive the same indices from the seed.
    """
    cc.check_size(n)
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    if k >= n:
        return np.arange(n, dtype=np.uint32)
    j = np.arange(k, dtype=np.uint64)
    u = np.uint64
    lo = (j * u(n)) // u(k)
    size = ((j + u(1)) * u(n)) // u(k) - lo
    offset = ((_mix(seed, j) >> u(32)) * size) >> u(32)
    return (lo + offset).astype(np.uint32)


def _strata_sizes(n: int, k: int) -> np.ndarray:
    j = np.arange(k, dtype=np.uint64)
    return ((j + 1) * np.uint64(n)) // np.uint64(k) - (j * np.uint64(n)) // np.uint64(k)


def randomk(x, k: int, seed: int, unbiased: bool = False) -> np.ndarray:
    """Return the values at :func:`randomk_indices`, times the stratum size if
    ``unbiased`` (so the expectation equals x)."""
    a = cc.as_vector(x)
    cc.check_size(a.size)
    k = cc.check_k(k)
    _raise_if_nonfinite(a)
    idx = randomk_indices(a.size, k, seed)
    vals = a[idx]
    if unbiased and k < a.size:
        vals = vals * _strata_sizes(a.size, k).astype(a.dtype)
    return vals


def ef_randomk(residual, grad, k: int, seed: int, unbiased: bool = False):
    """Error-feedback random-k: returns the sent values, residual keeps the rest."""
    k = cc.check_k(k)
    seed = cc.check_seed(seed)
    residual, acc = _accumulate(residual, grad)
    n = acc.size
    idx = randomk_indices(n, k, seed)
    vals = acc[idx]
    if unbiased and k < n:
        sent = vals * _strata_sizes(n, k).astype(acc.dtype)
        acc[idx] = vals - sent
        vals = sent
    else:
        acc[idx] = 0
    residual[...] = acc
    return vals


# ------------------------------------------------------------- quantization


def _chunk_amax(a: np.ndarray, chunk: int) -> np.ndarray:
    n = a.size
    if n == 0:
        return np.zeros(0, a.dtype)
    key = _keys(a)
    if a.dtype == np.float32:
        # float32 subnormals quantize to 0 (see _codes_f32)
        key = np.where(key >= _F32_MIN_NORMAL_KEY, key, np.uint32(0))
    keymax = np.maximum.reduceat(key, np.arange(0, n, chunk))
    if a.dtype == np.float64:
        # A float64 chunk whose largest magnitude is subnormal quantizes to 0:
        # 1 / amax would overflow.  Its error is below 2.3e-308.
        keymax[keymax < _F64_MIN_NORMAL_KEY] = 0
    return keymax.view(a.dtype)


def _uniform16(seed: int, n: int) -> np.ndarray:
    """Element i's 16-bit uniform: bits 16*(i % 4) up of splitmix64 draw i // 4."""
    z = _mix(seed, np.arange((n + 3) // 4, dtype=np.uint64))
    shifts = np.arange(0, 64, 16, dtype=np.uint64)
    return ((z[:, None] >> shifts) & np.uint64(0xFFFF)).astype(np.uint16).ravel()[:n]


def _codes(a, amax, bits, chunk, stochastic, seed) -> np.ndarray:
    """Unpacked codes q + 2**(bits-1) in [1, 2**bits - 1], one per element."""
    if a.dtype == np.float32:
        return _codes_f32(a, amax, bits, chunk, stochastic, seed)
    return _codes_f64(a, amax, bits, chunk, stochastic, seed)


def _codes_f32(a, amax, bits, chunk, stochastic, seed) -> np.ndarray:
    """float32 arithmetic.  Values below max(amax * 2**-26, smallest normal)
    are zeroed first: their level rounds to 0 anyway, and the compiled kernel
    then never feeds a subnormal to the FPU."""
    n = a.size
    levels, half = cc.quant_levels(bits)
    f = np.float32
    tiny = np.finfo(f).smallest_normal
    lim = np.maximum(amax * f(1.0 / 67108864.0), tiny).astype(f)
    xf = np.where(np.abs(a) >= np.repeat(lim, chunk)[:n], a, f(0))
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, f(1) / amax, f(0)).astype(f)
    v = (xf * np.repeat(inv, chunk)[:n]) * f(levels)
    if stochastic:
        off = f(half) + _uniform16(seed, n).astype(f) * f(1.0 / 65536.0)
    else:
        off = f(half) + f(0.5)
    t = np.clip(v + off, f(1), f(2 * half - 1))
    return t.astype(np.int32).astype(np.uint8)


def _codes_f64(a, amax, bits, chunk, stochastic, seed) -> np.ndarray:
    """float64 arithmetic on float64 input."""
    n = a.size
    levels, half = cc.quant_levels(bits)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, 1.0 / amax, 0.0)
    xd = a.copy()
    # Magnitudes 2**64 times below the chunk's largest round to code 0 anyway;
    # zeroing them (and subnormals) first keeps subnormal products out of the
    # FPU.
    e = (_keys(a) >> np.uint64(52)).astype(np.int64)
    emax = np.repeat((amax.view(np.uint64) >> np.uint64(52)).astype(np.int64), chunk)
    xd[(e == 0) | (e + 64 < emax[:n])] = 0.0
    v = (xd * np.repeat(inv, chunk)[:n]) * float(levels)
    if stochastic:
        off = half + _uniform16(seed, n).astype(np.float64) * (1.0 / 65536.0)
    else:
        off = half + 0.5
    t = v + off
    return np.clip(t.astype(np.int64), 1, 2 * half - 1).astype(np.uint8)


def _pack(codes: np.ndarray, bits: int) -> np.ndarray:
    if bits == 8:
        return codes
    per = 8 // bits
    padded = np.zeros(-(-codes.size // per) * per, np.uint8)
    padded[: codes.size] = codes
    shifts = (np.arange(per) * bits).astype(np.uint8)
    return np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1).astype(
        np.uint8
    )


def _unpack(packed: np.ndarray, n: int, bits: int) -> np.ndarray:
    if bits == 8:
        return packed[:n]
    per = 8 // bits
    shifts = (np.arange(per) * bits).astype(np.uint8)
    mask = np.uint8((1 << bits) - 1)
    return ((packed[:, None] >> shifts) & mask).reshape(-1)[:n]


def _dequant(codes: np.ndarray, amax: np.ndarray, bits: int, chunk: int):
    levels, half = cc.quant_levels(bits)
    n = codes.size
    step = np.repeat(amax.astype(np.float64) / levels, chunk)[:n]
    with np.errstate(over="ignore"):
        v = (codes.astype(np.float64) - half) * step
    # L * (amax / L) can round past the largest finite value: saturate
    big = float(np.finfo(amax.dtype).max)
    return np.clip(v, -big, big).astype(amax.dtype)


def _check_quant_args(bits, chunk_size, seed):
    return cc.check_bits(bits), cc.check_chunk(chunk_size), cc.check_seed(seed)


def quantize(
    x, bits: int, chunk_size: int, stochastic: bool = False, seed: int = 0, out=None
):
    """Return (packed codes uint8, per-chunk largest magnitude in x's dtype).

    Code q + 2**(bits-1) for level q = round(x / amax * L), L = 2**(bits-1) - 1,
    saturated to [-L, L]; ``stochastic`` rounds up with probability equal to
    the fraction (a 16-bit counter-based draw per element).  ``out``, if
    given, receives the packed codes (no allocation).
    """
    bits, chunk, seed = _check_quant_args(bits, chunk_size, seed)
    a = cc.as_vector(x)
    cc.check_size(a.size)
    out = cc.check_out(out, cc.packed_len(a.size, bits))
    _raise_if_nonfinite(a)
    amax = _chunk_amax(a, chunk)
    return _into(out, _pack(_codes(a, amax, bits, chunk, stochastic, seed), bits)), amax


def _into(out, packed):
    if out is None:
        return packed
    out[...] = packed
    return out


def ef_quantize(
    residual, grad, bits: int, chunk_size: int, stochastic=False, seed=0, out=None
):
    """Error-feedback quantization: residual keeps what the codes do not carry."""
    bits, chunk, seed = _check_quant_args(bits, chunk_size, seed)
    out = cc.check_out(out, cc.packed_len(np.asarray(residual).size, bits))
    residual, acc = _accumulate(residual, grad)
    amax = _chunk_amax(acc, chunk)
    codes = _codes(acc, amax, bits, chunk, stochastic, seed)
    residual[...] = acc - _dequant(codes, amax, bits, chunk)
    return _into(out, _pack(codes, bits)), amax


def _check_codes(packed, amax, n, bits, chunk) -> tuple[np.ndarray, np.ndarray]:
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    amax = np.asarray(amax)
    if amax.dtype not in (np.float32, np.float64) or amax.ndim != 1:
        raise TypeError(f"amax must be 1-D float32 or float64, got {amax.dtype}")
    if packed.size != cc.packed_len(n, bits):
        raise ValueError(
            f"{packed.size} code bytes for {n} {bits}-bit codes; expected "
            f"{cc.packed_len(n, bits)}"
        )
    if amax.size != -(-n // chunk):
        raise ValueError(
            f"{amax.size} chunk scales for {n} elements in chunks of {chunk}; "
            f"expected {-(-n // chunk)}"
        )
    return packed, np.ascontiguousarray(amax)


def dequantize(packed, amax, n: int, bits: int, chunk_size: int) -> np.ndarray:
    """Invert :func:`quantize`: level times amax / L, in amax's dtype."""
    bits, chunk = cc.check_bits(bits), cc.check_chunk(chunk_size)
    packed, amax = _check_codes(packed, amax, n, bits, chunk)
    return _dequant(_unpack(packed, n, bits), amax, bits, chunk)


# --------------------------------------------------------------------- sign


def _sign_scale(acc: np.ndarray) -> float:
    """Mean |acc| summed in float64 over 4 interleaved lanes, each in order."""
    n = acc.size
    if n == 0:
        return 0.0
    lanes = np.zeros(-(-n // 4) * 4, np.float64)
    lanes[:n] = np.abs(acc)

    def lane_sum(f: float) -> float:
        with np.errstate(over="ignore"):
            s = np.cumsum(lanes.reshape(-1, 4) * f, axis=0)[-1]
            return (s[0] + s[1]) + (s[2] + s[3])

    big = float(np.finfo(np.float64).max)
    total = lane_sum(1.0)
    if total <= big:
        mean = total / n
    else:  # a float64 sum that overflows is redone scaled by 2**-64
        mean = min((lane_sum(2.0**-64) / n) * 2.0**64, big)
    return float(acc.dtype.type(mean))


def sign(x) -> tuple[np.ndarray, float]:
    """Return (sign bits, 1 = non-negative, packed LSB first; mean |x|)."""
    a = cc.as_vector(x)
    cc.check_size(a.size)
    _raise_if_nonfinite(a)
    return np.packbits(a >= 0, bitorder="little"), _sign_scale(a)


def ef_sign(residual, grad) -> tuple[np.ndarray, float]:
    """EF-signSGD (Karimireddy et al. 2019): send scale * sign, keep the rest."""
    residual, acc = _accumulate(residual, grad)
    scale = _sign_scale(acc)
    positive = acc >= 0
    s = acc.dtype.type(scale)
    residual[...] = acc - np.where(positive, s, -s)
    return np.packbits(positive, bitorder="little"), scale


def unsign(packed, n: int, scale: float, dtype=np.float32) -> np.ndarray:
    """Expand sign bits into +scale / -scale values of ``dtype``."""
    packed = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    if packed.size != (n + 7) // 8:
        raise ValueError(f"{packed.size} sign bytes for {n} elements")
    s = np.dtype(dtype).type(scale)
    bits = np.unpackbits(packed, count=n, bitorder="little").astype(bool)
    return np.where(bits, s, -s)


# ------------------------------------------------------------ scatter-add


def _contribution(vals: np.ndarray, weight: float, acc_dtype) -> np.ndarray:
    return (weight * vals.astype(np.float64)).astype(acc_dtype)


def scatter_add(acc, idx, vals, weight: float) -> None:
    """acc[idx] += weight * vals (idx strictly increasing), or dense if idx None.

    Each term is formed in float64 and rounded to acc's dtype before the add.
    """
    acc = cc.check_accumulator(acc)
    w = cc.check_weight(weight)
    v = np.asarray(vals)
    if v.dtype not in (np.float16, np.float32, np.float64) or v.ndim != 1:
        raise TypeError(f"values must be a 1-D float array, got {v.dtype}")
    if idx is None:
        if v.size != acc.size:
            raise ValueError(f"{v.size} dense values for an accumulator of {acc.size}")
        acc += _contribution(v, w, acc.dtype)
        return
    i = cc.check_indices(idx, acc.size, v.size)
    acc[i] += _contribution(v, w, acc.dtype)


def add_dequantized(acc, idx, packed, amax, bits, chunk_size, weight) -> None:
    """acc[idx] += weight * dequantize(...) (dense when idx is None)."""
    acc = cc.check_accumulator(acc)
    w = cc.check_weight(weight)
    bits, chunk = cc.check_bits(bits), cc.check_chunk(chunk_size)
    n = acc.size if idx is None else int(np.asarray(idx).size)
    packed, amax = _check_codes(packed, amax, n, bits, chunk)
    vals = _dequant(_unpack(packed, n, bits), amax, bits, chunk)
    if idx is None:
        acc += _contribution(vals, w, acc.dtype)
    else:
        i = cc.check_indices(idx, acc.size, n)
        acc[i] += _contribution(vals, w, acc.dtype)


def add_signs(acc, packed, scale: float, weight: float, dtype=np.float32) -> None:
    """acc += weight * (+scale or -scale per sign bit); scale rounded to dtype."""
    acc = cc.check_accumulator(acc)
    w = cc.check_weight(weight)
    acc += _contribution(unsign(packed, acc.size, scale, dtype), w, acc.dtype)


# ------------------------------------------------------- index bit-packing


def pack_indices(idx) -> tuple[np.ndarray, np.ndarray]:
    """Delta-code strictly increasing indices and bit-pack them in blocks.

    Deltas are idx[0], then idx[j] - idx[j-1] - 1.  Each block of
    INDEX_BLOCK deltas uses the bit width of its largest delta (one byte in
    ``widths``); value j of a block occupies bits [j w, (j+1) w) of the block's
    little-endian bit stream; the last block is cut to whole bytes.
    Returns (widths uint8, payload uint8).
    """
    i = np.asarray(idx, dtype=np.uint64).reshape(-1)
    k = i.size
    if k == 0:
        return np.zeros(0, np.uint8), np.zeros(0, np.uint8)
    d = np.empty(k, np.uint64)
    d[0] = i[0]
    d[1:] = i[1:] - i[:-1] - np.uint64(1)
    nb = -(-k // cc.INDEX_BLOCK)
    blocks = np.zeros(nb * cc.INDEX_BLOCK, np.uint64)
    blocks[:k] = d
    blocks = blocks.reshape(nb, cc.INDEX_BLOCK)
    top = blocks.max(axis=1)
    powers = np.uint64(1) << np.arange(33, dtype=np.uint64)
    widths = np.count_nonzero(top[:, None] >= powers, axis=1).astype(np.uint8)
    lens = widths.astype(np.int64) * (cc.INDEX_BLOCK // 8)
    out = np.zeros(int(lens.sum()), np.uint8)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    for w in np.unique(widths):
        if w == 0:
            continue
        sel = np.flatnonzero(widths == w)
        shifts = np.arange(w, dtype=np.uint64)
        bitplanes = ((blocks[sel][:, :, None] >> shifts) & np.uint64(1)).astype(
            np.uint8
        )
        packed = np.packbits(bitplanes.reshape(sel.size, -1), axis=1, bitorder="little")
        pos = starts[sel][:, None] + np.arange(packed.shape[1])
        out[pos] = packed
    last = k - (nb - 1) * cc.INDEX_BLOCK
    cut = int(starts[-1]) + (last * int(widths[-1]) + 7) // 8
    return widths, out[:cut]


def packed_indices_len(widths: np.ndarray, k: int) -> int:
    """Bytes of payload that ``widths`` imply for k indices."""
    nb = widths.size
    if nb == 0:
        return 0
    last = k - (nb - 1) * cc.INDEX_BLOCK
    full = int(widths[:-1].astype(np.int64).sum()) * (cc.INDEX_BLOCK // 8)
    return full + (last * int(widths[-1]) + 7) // 8


def unpack_indices(widths, payload, k: int, n: int) -> np.ndarray:
    """Invert :func:`pack_indices`, validating everything (input is untrusted)."""
    widths = np.ascontiguousarray(widths, dtype=np.uint8).reshape(-1)
    payload = np.ascontiguousarray(payload, dtype=np.uint8).reshape(-1)
    _check_packed_indices(widths, payload, k, n)
    if k == 0:
        return np.zeros(0, np.uint32)
    nb = widths.size
    lens = widths.astype(np.int64) * (cc.INDEX_BLOCK // 8)
    starts = np.concatenate(([0], np.cumsum(lens)[:-1]))
    full = np.zeros(int(lens.sum()), np.uint8)
    full[: payload.size] = payload
    d = np.zeros((nb, cc.INDEX_BLOCK), np.uint64)
    for w in np.unique(widths):
        if w == 0:
            continue
        sel = np.flatnonzero(widths == w)
        pos = starts[sel][:, None] + np.arange(int(w) * cc.INDEX_BLOCK // 8)
        bits = np.unpackbits(full[pos], axis=1, bitorder="little")
        bits = bits.reshape(sel.size, cc.INDEX_BLOCK, int(w)).astype(np.uint64)
        d[sel] = (bits << np.arange(w, dtype=np.uint64)).sum(axis=2)
    idx = np.cumsum(d.reshape(-1)[:k] + np.uint64(1)) - np.uint64(1)
    if int(idx[-1]) >= n:
        raise ValueError(f"packed indices reach {int(idx[-1])}, outside [0, {n})")
    return idx.astype(np.uint32)


def _check_packed_indices(widths, payload, k, n) -> None:
    if not 0 <= k <= n:
        raise ValueError(f"{k} indices cannot address a tensor of {n} elements")
    if widths.size != -(-k // cc.INDEX_BLOCK):
        raise ValueError(
            f"{widths.size} index block widths for {k} indices; expected "
            f"{-(-k // cc.INDEX_BLOCK)}"
        )
    if widths.size and int(widths.max()) > 32:
        raise ValueError(
            f"index block width {int(widths.max())} bits; at most 32 allowed"
        )
    expected = packed_indices_len(widths, k)
    if payload.size != expected:
        raise ValueError(
            f"packed indices hold {payload.size} bytes; the block widths imply "
            f"{expected}"
        )
