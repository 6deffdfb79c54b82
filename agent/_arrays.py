"""Arrays on the wire: ``[dtype, shape, raw bytes]`` with a dtype allowlist.

This is the one array encoding of the project: the wire protocol, compressed
updates, routing tables and activations all use it.  Encoding passes a
memoryview of the array's buffer to msgpack (no intermediate copy); decoding
wraps the received bytes with ``np.frombuffer`` (no copy, read-only result).
Everything travels little-endian, so an ARM flight computer and an x86-64
ground server read the same bytes.

Decoding treats its input as untrusted: the dtype must be on the allowlist, the
shape must be a short list of non-negative ints, and the byte length must match
shape times item size exactly, before any allocation.
"""

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

# dtype string (numpy .str, little-endian or byte-sized) -> numpy dtype
ALLOWED_DTYPES: dict[str, np.dtype] = {
    s: np.dtype(s)
    for s in (
        "|b1", "|u1", "|i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8",
        "<f2", "<f4", "<f8",
    )
}  # fmt: skip
MAX_NDIM = 8


class ArrayFormatError(ValueError):
    """An encoded array is malformed; ``value`` holds the offending part."""

    def __init__(self, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.value = value


def pack_array(array: np.ndarray) -> list:
    """Return ``[dtype, shape, buffer]`` for msgpack; no copy for contiguous LE."""
    a = np.asarray(array)
    dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
    if dtype.str not in ALLOWED_DTYPES:
        raise ArrayFormatError(
            f"dtype {a.dtype} cannot be sent; allowed: {', '.join(ALLOWED_DTYPES)}",
            a.dtype.str,
        )
    a = np.ascontiguousarray(a, dtype=dtype)
    return [dtype.str, list(a.shape), memoryview(a).cast("B") if a.size else b""]


def unpack_array(obj: Any, *, max_elements: int | None = None) -> np.ndarray:
    """Decode ``[dtype, shape, bytes]`` into a read-only array, validating it all."""
    if not isinstance(obj, list | tuple) or len(obj) != 3:
        raise ArrayFormatError(
            f"an array must be [dtype, shape, bytes], got {type(obj).__name__}"
            + (f" of length {len(obj)}" if isinstance(obj, list | tuple) else ""),
            obj,
        )
    dtype_str, shape, data = obj
    if not isinstance(dtype_str, str) or dtype_str not in ALLOWED_DTYPES:
        raise ArrayFormatError(
            f"array dtype {dtype_str!r} is not allowed; expected one of "
            f"{', '.join(ALLOWED_DTYPES)}",
            dtype_str,
        )
    if (
        not isinstance(shape, list | tuple)
        or len(shape) > MAX_NDIM
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        raise ArrayFormatError(
            f"array shape {shape!r} must be a list of at most {MAX_NDIM} "
            "non-negative ints",
            shape,
        )
    if not isinstance(data, bytes | bytearray | memoryview):
        raise ArrayFormatError(
            f"array data must be bytes, got {type(data).__name__}", type(data)
        )
    dtype = ALLOWED_DTYPES[dtype_str]
    count = 1
    for d in shape:
        count *= d
    if max_elements is not None and count > max_elements:
        raise ArrayFormatError(
            f"array of shape {tuple(shape)} has {count} elements, more than the "
            f"limit of {max_elements}",
            count,
        )
    if len(data) != count * dtype.itemsize:
        raise ArrayFormatError(
            f"array of dtype {dtype_str} and shape {tuple(shape)} needs "
            f"{count * dtype.itemsize} bytes but {len(data)} arrived",
            len(data),
        )
    return np.frombuffer(data, dtype=dtype, count=count).reshape(shape)


def unpack_bounded(
    data: bytes | bytearray | memoryview,
    make_error: Callable[[str], Exception],
    what: str,
    *,
    max_bin_len: int,
    max_str_len: int,
    max_array_len: int,
    max_map_len: int,
) -> Any:
    """Parse untrusted msgpack with every length capped; no ext types.

    Any parser failure (a length over a cap, truncated input, trailing bytes,
    invalid UTF-8, too deep nesting, reserved bytes) becomes
    ``make_error(f"{what}: {reason}")``, so each caller raises its own error
    class.  The wire protocol keeps its own finer classification (truncated vs
    malformed) in ``agent._wire``.
    """
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=max_bin_len,
            max_str_len=max_str_len,
            max_array_len=max_array_len,
            max_map_len=max_map_len,
            max_ext_len=0,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise make_error(f"{what}: {exc}") from exc
