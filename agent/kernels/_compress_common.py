"""Argument checks and constants shared by the compiled kernels and the twin.

Both backends call these before any arithmetic, so they accept and reject
exactly the same inputs with exactly the same messages.
"""

from typing import Any

import numpy as np

# Random streams: splitmix64 (Steele, Lea & Flood, "Fast splittable pseudorandom
# number generators", OOPSLA 2014) over a counter, so element i's draw depends
# only on (seed, i) and both backends produce the same bits on every platform.
GOLDEN_GAMMA = 0x9E3779B97F4A7C15
MIX_MUL_1 = 0xBF58476D1CE4E5B9
MIX_MUL_2 = 0x94D049BB133111EB
U64_MASK = (1 << 64) - 1

# Sampled-threshold top-k (Lin et al., "Deep Gradient Compression", ICLR 2018):
# sample enough contiguous blocks that about SAMPLE_ABOVE sampled elements lie
# above the threshold (relative spread ~1/sqrt(256) = 6%, well inside the
# accepted band), retry with a doubled sample, then fall back to exact top-k.
SAMPLE_ABOVE = 256
SAMPLE_BLOCK = 16
SAMPLE_MIN_BLOCKS = 16
THRESHOLD_ATTEMPTS = 3

# Delta-coded indices are bit-packed in blocks of this many, one width per block.
INDEX_BLOCK = 128

MAX_ELEMENTS = 2**32 - 1  # indices travel as uint32
MAX_CHUNK = 2**24
QUANT_BITS = (2, 4, 8)


def splitmix64(seed: int, counter: int) -> int:
    """Return the 64-bit draw number ``counter`` of stream ``seed`` (reference)."""
    z = (seed + (counter + 1) * GOLDEN_GAMMA) & U64_MASK
    z = ((z ^ (z >> 30)) * MIX_MUL_1) & U64_MASK
    z = ((z ^ (z >> 27)) * MIX_MUL_2) & U64_MASK
    return z ^ (z >> 31)


def as_vector(x: Any, name: str = "x") -> np.ndarray:
    """Return ``x`` as a 1-D C-contiguous float32 or float64 array.

    Other float dtypes become float32; anything that is not a real float array
    is rejected.  Multi-dimensional arrays are flattened (a copy only when they
    are not contiguous).
    """
    a = np.asarray(x)
    if a.dtype.kind != "f":
        raise TypeError(
            f"{name} has dtype {a.dtype}; expected float32 or float64 "
            "(float16 is widened to float32)"
        )
    if a.dtype not in (np.float32, np.float64):
        a = a.astype(np.float32)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return np.ascontiguousarray(a.reshape(-1))


def check_residual(residual: Any, grad: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check an error-feedback pair; return (residual, grad as residual's dtype)."""
    if not isinstance(residual, np.ndarray):
        raise TypeError(
            f"residual must be a numpy array, got {type(residual).__name__}"
        )
    if residual.dtype not in (np.float32, np.float64) or residual.ndim != 1:
        raise TypeError(
            f"residual must be a 1-D float32 or float64 array, got "
            f"{residual.ndim}-D {residual.dtype}"
        )
    if not (residual.flags.c_contiguous and residual.flags.writeable):
        raise ValueError("residual must be C-contiguous and writeable")
    g = np.asarray(grad)
    if g.dtype.kind != "f":
        raise TypeError(f"gradient has dtype {g.dtype}; expected a float dtype")
    g = np.ascontiguousarray(g.reshape(-1), dtype=residual.dtype)
    if g.size != residual.size:
        raise ValueError(
            f"gradient has {g.size} elements but the residual has "
            f"{residual.size}; they must match"
        )
    return residual, g


def check_size(n: int) -> None:
    if n > MAX_ELEMENTS:
        raise ValueError(
            f"a vector of {n} elements is too long; at most {MAX_ELEMENTS} "
            "(indices travel as uint32): split the tensor"
        )


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k < 1:
        raise ValueError(
            f"k = {k} selects nothing; k must be at least 1 (k >= n sends everything)"
        )
    return int(k)


def check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed <= U64_MASK:
        raise ValueError(f"seed {seed} is outside the uint64 range [0, 2**64)")
    return int(seed)


def check_bits(bits: Any) -> int:
    if bits not in QUANT_BITS:
        raise ValueError(f"bits = {bits!r}; expected one of 8, 4 or 2")
    return int(bits)


def check_chunk(chunk_size: Any) -> int:
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, int | np.integer)
        or not 1 <= chunk_size <= MAX_CHUNK
    ):
        raise ValueError(
            f"chunk_size = {chunk_size!r}; expected an int in [1, {MAX_CHUNK}]"
        )
    return int(chunk_size)


def check_weight(weight: Any) -> float:
    w = float(weight)
    if not np.isfinite(w):
        raise ValueError(f"weight {weight!r} is not finite")
    return w


def check_accumulator(acc: Any) -> np.ndarray:
    if not isinstance(acc, np.ndarray) or acc.dtype not in (np.float32, np.float64):
        raise TypeError(
            "accumulator must be a float32 or float64 numpy array, got "
            f"{getattr(acc, 'dtype', type(acc).__name__)}"
        )
    if acc.ndim != 1 or not acc.flags.c_contiguous or not acc.flags.writeable:
        raise ValueError(
            f"accumulator must be a flat, C-contiguous, writeable array; got "
            f"shape {acc.shape}"
        )
    return acc


def check_indices(idx: Any, n: int, count: int | None = None) -> np.ndarray:
    """Return ``idx`` as uint32 after checking it is strictly increasing and < n."""
    a = np.asarray(idx)
    if a.ndim != 1 or a.dtype.kind not in "ui":
        raise TypeError(f"indices must be a 1-D integer array, got {a.dtype}")
    if count is not None and a.size != count:
        raise ValueError(f"{a.size} indices for {count} values; they must match")
    if a.size:
        if int(a.min()) < 0 or int(a.max()) >= n:
            bad = np.flatnonzero((a < 0) | (a >= n))[0]
            raise ValueError(
                f"index {int(a[bad])} at position {bad} is outside [0, {n})"
            )
        if a.size > 1 and not bool(np.all(a[1:] > a[:-1])):
            bad = int(np.flatnonzero(a[1:] <= a[:-1])[0]) + 1
            raise ValueError(
                f"indices must be strictly increasing; position {bad} holds "
                f"{int(a[bad])} after {int(a[bad - 1])}"
            )
    return np.ascontiguousarray(a, dtype=np.uint32)


def check_out(out: Any, size: int) -> np.ndarray | None:
    """Check a caller-supplied uint8 output buffer of exactly ``size`` bytes."""
    if out is None:
        return None
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.uint8
        or out.ndim != 1
        or out.size != size
        or not (out.flags.c_contiguous and out.flags.writeable)
    ):
        raise ValueError(
            f"out must be a writeable contiguous uint8 array of {size} bytes, got "
            f"{getattr(out, 'dtype', type(out).__name__)} of shape "
            f"{getattr(out, 'shape', None)}"
        )
    return out


def quant_levels(bits: int) -> tuple[int, int]:
    """Return (largest level L, offset) for ``bits``: codes are q + offset."""
    half = 1 << (bits - 1)
    return half - 1, half


def packed_len(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def sample_blocks(n: int, k: int, attempt: int) -> int:
    """Return how many sample blocks attempt ``attempt`` draws; 0 = go exact."""
    want = -(-SAMPLE_ABOVE * n // k) << attempt
    # never sample more than 1/16 of the vector: past that, sampling costs
    # more than it saves, and an exact select is as cheap
    blocks = min(-(-want // SAMPLE_BLOCK), n // (16 * SAMPLE_BLOCK))
    if blocks < SAMPLE_MIN_BLOCKS:
        return 0
    return blocks


def accept_band(k: int) -> tuple[int, int]:
    """Return the accepted count range [ceil(0.8 k), floor(1.25 k)]."""
    return (4 * k + 4) // 5, (5 * k) // 4
