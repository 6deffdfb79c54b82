"""A compressed update: what a satellite sends, and what the ground reads back.

Wire form (a msgpack map; arrays are ``agent._arrays.pack_array`` triples)::

    {"format": "orbitfl.update", "version": 1, "node_id": str,
     "round_index": int, "method": str, "config": {...}, "kind": "array"|"dict",
     "tensors": [{"name": str, "shape": [int], "dtype": "<f4", ...}, ...]}

Per-tensor fields by method:

=============== ===========================================================
none            values
topk            k, index_widths, index_bits, values
threshold_topk  k, index_widths, index_bits, values
randomk         k, values (indices re-derived from node, round and name)
quantize        amax (one per chunk), codes (bit-packed)
topk_quantize   k, index_widths, index_bits, amax, codes
sign            scale, signs (bit-packed)
=============== ===========================================================

:meth:`CompressedUpdate.from_wire` and :meth:`CompressedUpdate.decode` treat
their input as untrusted: every length, dtype, index and value is checked
before anything is sized from it.
"""

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from agent import kernels
from agent._arrays import ArrayFormatError, pack_array, unpack_array, unpack_bounded
from agent._compression_config import CompressionConfig, CompressionType

WIRE_FORMAT = "orbitfl.update"
WIRE_VERSION = 1
SINGLE_TENSOR_NAME = "gradient"
MAX_TENSORS = 65536
MAX_NAME_LEN = 256
MAX_TENSOR_ELEMENTS = 2**32 - 1
DEFAULT_MAX_BYTES = 1 << 30
INDEX_BLOCK = 128

_SPARSE = (
    CompressionType.TOPK,
    CompressionType.THRESHOLD_TOPK,
    CompressionType.TOPK_QUANTIZE,
)
_TENSOR_DTYPES = {"<f2": np.float16, "<f4": np.float32, "<f8": np.float64}


class UpdateFormatError(ValueError):
    """An encoded update is malformed; ``value`` holds the offending part."""

    def __init__(self, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.value = value


_DTYPE_NAMES = {np.dtype(d): np.dtype(d).name for d in _TENSOR_DTYPES.values()}


def _dtype_name(dtype: np.dtype) -> str:
    # numpy's dtype.name is computed in Python on every access.
    name = _DTYPE_NAMES.get(dtype)
    return dtype.name if name is None else name


def work_dtype(dtype: Any) -> np.dtype:
    """The dtype residuals and kernels use for a tensor of ``dtype``."""
    return np.dtype(np.float64 if np.dtype(dtype) == np.float64 else np.float32)


def derive_seed(purpose: str, node_id: str, round_index: int, name: str) -> int:
    """Return the 64-bit seed both ends derive for one tensor of one round.

    BLAKE2b of the fields, so it is the same on every platform and Python.
    """
    text = f"orbitfl/{purpose}\0{node_id}\0{round_index}\0{name}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


@dataclass
class TensorPayload:
    """One tensor's compressed data; which fields are set depends on the method."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    k: int
    idx: np.ndarray | None = None
    values: np.ndarray | None = None
    codes: np.ndarray | None = None
    amax: np.ndarray | None = None
    scale: float | None = None
    packed_idx: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        return math.prod(self.shape)

    def index_wire(self) -> tuple[np.ndarray, np.ndarray]:
        if self.packed_idx is None:
            self.packed_idx = kernels.pack_indices(self.idx)
        return self.packed_idx


class CompressedUpdate:
    """One node's compressed gradients for one round.

    Built by :meth:`agent.FederatedClient.compress` or decoded from the wire;
    immutable in use.  ``compression_ratio`` compares the dense float32 size
    with the exact encoded bytes.
    """

    def __init__(
        self,
        *,
        node_id: str,
        round_index: int,
        config: CompressionConfig,
        kind: str,
        tensors: list[TensorPayload],
    ) -> None:
        self.node_id = node_id
        self.round_index = round_index
        self.config = config
        self.kind = kind
        self._tensors = tensors
        self._encoded: bytes | None = None
        # The tensors never change; the aggregator asks for them per update.
        self._declared = {t.name: (t.shape, _dtype_name(t.dtype)) for t in tensors}

    @property
    def method(self) -> CompressionType:
        return self.config.method

    @property
    def tensors(self) -> dict[str, tuple[tuple[int, ...], str]]:
        """Tensor name -> (shape, dtype name), in sending order."""
        return dict(self._declared)

    @property
    def num_elements(self) -> int:
        return sum(t.n for t in self._tensors)

    @property
    def kept_elements(self) -> int:
        """Elements whose value travels (all of them for dense types)."""
        if self.method in (*_SPARSE, CompressionType.RANDOMK):
            return sum(t.k for t in self._tensors)
        return self.num_elements

    @property
    def dense_nbytes(self) -> int:
        """Bytes of the same update as dense float32."""
        return 4 * self.num_elements

    @property
    def wire_nbytes(self) -> int:
        """Bytes of :meth:`encode`, header and all."""
        return len(self.encode())

    @property
    def compression_ratio(self) -> float:
        """Dense float32 bytes over encoded bytes (above 1 means smaller)."""
        return self.dense_nbytes / self.wire_nbytes

    def __repr__(self) -> str:
        return (
            f"CompressedUpdate(node_id={self.node_id!r}, round_index="
            f"{self.round_index}, method={self.method.value}, tensors="
            f"{len(self._tensors)}, elements={self.num_elements})"
        )

    # ------------------------------------------------------------ encoding

    def to_wire(self) -> dict[str, Any]:
        """Return the msgpack-ready map (arrays as memoryviews, no copies)."""
        return {
            "format": WIRE_FORMAT,
            "version": WIRE_VERSION,
            "node_id": self.node_id,
            "round_index": self.round_index,
            "method": self.method.value,
            "config": self.config.to_dict(),
            "kind": self.kind,
            "tensors": [self._tensor_wire(t) for t in self._tensors],
        }

    def _tensor_wire(self, t: TensorPayload) -> dict[str, Any]:
        e: dict[str, Any] = {
            "name": t.name,
            "shape": list(t.shape),
            "dtype": t.dtype.str,
        }
        m = self.method
        if m in _SPARSE or m is CompressionType.RANDOMK:
            e["k"] = t.k
        if m in _SPARSE:
            widths, bits = t.index_wire()
            e["index_widths"] = pack_array(widths)
            e["index_bits"] = pack_array(bits)
        if t.values is not None:
            e["values"] = pack_array(t.values)
        if m in (CompressionType.QUANTIZE, CompressionType.TOPK_QUANTIZE):
            e["amax"] = pack_array(t.amax)
            e["codes"] = pack_array(t.codes)
        if m is CompressionType.SIGN:
            e["scale"] = float(t.scale)
            e["signs"] = pack_array(t.codes)
        return e

    def encode(self) -> bytes:
        """Return the update as msgpack bytes (cached)."""
        if self._encoded is None:
            self._encoded = msgpack.packb(self.to_wire(), use_bin_type=True)
        return self._encoded

    @classmethod
    def decode(
        cls,
        data: bytes | bytearray | memoryview,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_elements: int | None = None,
    ) -> "CompressedUpdate":
        """Parse untrusted msgpack bytes; UpdateFormatError if anything is off."""
        size = len(data)
        if size > max_bytes:
            raise UpdateFormatError(
                f"encoded update is {size} bytes, more than the limit of {max_bytes}",
                size,
            )
        obj = unpack_bounded(
            data,
            lambda message: UpdateFormatError(message, size),
            "encoded update is not valid msgpack",
            max_bin_len=size,
            max_str_len=min(size, 1 << 20),
            max_array_len=min(size, MAX_TENSORS),
            max_map_len=min(size, 64),
        )
        update = cls.from_wire(obj, max_elements=max_elements)
        update._encoded = bytes(data)
        return update

    @classmethod
    def from_wire(
        cls, obj: Any, *, max_elements: int | None = None
    ) -> "CompressedUpdate":
        """Build an update from its (untrusted) wire map, validating everything."""
        return _WireReader(max_elements).update(obj)

    # ------------------------------------------------------------ decoding

    def decompress(self) -> np.ndarray | dict[str, np.ndarray]:
        """Return the dense gradient(s) this update carries, in original shapes."""
        out = {t.name: self._dense(t).reshape(t.shape).astype(t.dtype, copy=False)
               for t in self._tensors}  # fmt: skip
        if self.kind == "array" and len(out) == 1:
            return next(iter(out.values()))
        return out

    def _dense(self, t: TensorPayload) -> np.ndarray:
        kb = kernels.backend()
        wd = work_dtype(t.dtype)
        n = t.n
        m = self.method
        cfg = self.config
        if m is CompressionType.NONE:
            return t.values.astype(wd)
        if m is CompressionType.QUANTIZE:
            return kb.dequantize(t.codes, t.amax, n, cfg.bits, cfg.chunk_size)
        if m is CompressionType.SIGN:
            return kb.unsign(t.codes, n, t.scale, wd)
        out = np.zeros(n, wd)
        if m is CompressionType.TOPK_QUANTIZE:
            out[t.idx] = kb.dequantize(t.codes, t.amax, t.k, cfg.bits, cfg.chunk_size)
        else:
            out[self._indices(t)] = t.values
        return out

    def _indices(self, t: TensorPayload) -> np.ndarray:
        if self.method is CompressionType.RANDOMK:
            if t.idx is None:
                seed = derive_seed("randomk", self.node_id, self.round_index, t.name)
                t.idx = (
                    kernels.randomk_indices(t.n, t.k, seed)
                    if t.k
                    else np.zeros(0, np.uint32)
                )
        return t.idx

    def add_to(self, accumulators: dict[str, np.ndarray], weight: float) -> None:
        """Add ``weight`` times this update into flat dense accumulators.

        ``accumulators`` maps tensor name -> flat float32/float64 array of the
        tensor's element count.  Everything is checked before anything is added.
        """
        w = float(weight)
        if not math.isfinite(w):
            raise ValueError(f"weight {weight!r} is not finite")
        problems = []
        for t in self._tensors:
            acc = accumulators.get(t.name)
            if acc is None:
                problems.append(f"no accumulator for tensor {t.name!r}")
            elif not isinstance(acc, np.ndarray) or acc.dtype not in (
                np.float32,
                np.float64,
            ):
                problems.append(
                    f"accumulator {t.name!r} must be a float32/float64 array, got "
                    f"{getattr(acc, 'dtype', type(acc).__name__)}"
                )
            elif acc.ndim != 1 or acc.size != t.n:
                problems.append(
                    f"accumulator {t.name!r} has shape {acc.shape}; expected flat "
                    f"({t.n},) for tensor shape {t.shape}"
                )
            elif not (acc.flags.c_contiguous and acc.flags.writeable):
                problems.append(f"accumulator {t.name!r} must be contiguous, writeable")
        if problems:
            raise ValueError("cannot add update: " + "; ".join(problems))

        kb = kernels.backend()
        cfg = self.config
        m = self.method
        for t in self._tensors:
            acc = accumulators[t.name]
            if t.n == 0:
                continue
            if m is CompressionType.NONE:
                kb.scatter_add(acc, None, t.values, w)
            elif m is CompressionType.QUANTIZE:
                kb.add_dequantized(
                    acc, None, t.codes, t.amax, cfg.bits, cfg.chunk_size, w
                )
            elif m is CompressionType.TOPK_QUANTIZE:
                kb.add_dequantized(
                    acc, t.idx, t.codes, t.amax, cfg.bits, cfg.chunk_size, w
                )
            elif m is CompressionType.SIGN:
                kb.add_signs(acc, t.codes, t.scale, w, work_dtype(t.dtype))
            else:
                kb.scatter_add(acc, self._indices(t), t.values, w)


# Every update of a run carries the same few configs: parse each once.  The
# key is the config map itself (scalars only), so a different map is parsed
# and validated in full; the cache is bounded against a sender varying it.
_CONFIG_CACHE: dict[tuple, CompressionConfig] = {}
_CONFIG_CACHE_MAX = 64


def _config_from_wire(raw: Any) -> CompressionConfig:
    key = None
    if isinstance(raw, dict) and all(
        isinstance(v, str | int | float | bool | None) for v in raw.values()
    ):
        key = tuple(sorted((str(k), type(v).__name__, v) for k, v in raw.items()))
        config = _CONFIG_CACHE.get(key)
        if config is not None:
            return config
    try:
        config = CompressionConfig.from_dict(raw)
    except (ValueError, TypeError) as exc:
        raise UpdateFormatError(f"update config: {exc}", raw) from exc
    if key is not None:
        if len(_CONFIG_CACHE) >= _CONFIG_CACHE_MAX:
            _CONFIG_CACHE.clear()
        _CONFIG_CACHE[key] = config
    return config


class _WireReader:
    """Validate an untrusted wire map into a CompressedUpdate."""

    def __init__(self, max_elements: int | None) -> None:
        self.max_elements = max_elements
        self.total = 0

    def update(self, obj: Any) -> CompressedUpdate:
        if not isinstance(obj, dict):
            raise UpdateFormatError(
                f"an update must be a map, got {type(obj).__name__}", type(obj)
            )
        fmt, version = obj.get("format"), obj.get("version")
        if fmt != WIRE_FORMAT or version != WIRE_VERSION:
            raise UpdateFormatError(
                f"update format {fmt!r} version {version!r}; expected "
                f"{WIRE_FORMAT!r} version {WIRE_VERSION}",
                (fmt, version),
            )
        node_id = obj.get("node_id")
        if not isinstance(node_id, str) or not 0 < len(node_id) <= MAX_NAME_LEN:
            raise UpdateFormatError(
                f"node_id {node_id!r} must be a non-empty str of at most "
                f"{MAX_NAME_LEN} characters",
                node_id,
            )
        round_index = obj.get("round_index")
        if type(round_index) is not int or round_index < 0:
            raise UpdateFormatError(
                f"round_index {round_index!r} must be an int >= 0", round_index
            )
        config = _config_from_wire(obj.get("config"))
        method = obj.get("method")
        if method != config.method.value:
            raise UpdateFormatError(
                f"method {method!r} disagrees with the config's "
                f"{config.method.value!r}",
                method,
            )
        kind = obj.get("kind")
        if kind not in ("array", "dict"):
            raise UpdateFormatError(f"kind {kind!r} must be 'array' or 'dict'", kind)
        raw = obj.get("tensors")
        if not isinstance(raw, list) or not raw or len(raw) > MAX_TENSORS:
            raise UpdateFormatError(
                f"tensors must be a list of 1 to {MAX_TENSORS} entries, got "
                f"{type(raw).__name__}"
                + (f" of {len(raw)}" if isinstance(raw, list) else ""),
                raw if not isinstance(raw, list) else len(raw),
            )
        if kind == "array" and len(raw) != 1:
            raise UpdateFormatError(
                f"an 'array' update carries one tensor, this one {len(raw)}", len(raw)
            )
        self.config = config
        self.node_id, self.round_index = node_id, round_index
        tensors = []
        seen = set()
        for i, e in enumerate(raw):
            t = self.tensor(i, e)
            if t.name in seen:
                raise UpdateFormatError(f"tensor name {t.name!r} appears twice", t.name)
            seen.add(t.name)
            tensors.append(t)
        return CompressedUpdate(
            node_id=node_id,
            round_index=round_index,
            config=config,
            kind=kind,
            tensors=tensors,
        )

    def array(self, where: str, e: dict, key: str, dtypes: tuple, count: int):
        if key not in e:
            raise UpdateFormatError(f"{where} lacks field {key!r}", key)
        try:
            a = unpack_array(e[key], max_elements=count)
        except ArrayFormatError as exc:
            raise UpdateFormatError(f"{where} field {key!r}: {exc}", exc.value) from exc
        if a.dtype.str not in dtypes:
            raise UpdateFormatError(
                f"{where} field {key!r} has dtype {a.dtype.str}; expected "
                f"{' or '.join(dtypes)}",
                a.dtype.str,
            )
        if a.ndim != 1 or a.size != count:
            raise UpdateFormatError(
                f"{where} field {key!r} has shape {a.shape}; expected ({count},)",
                a.shape,
            )
        return a

    def finite(self, where: str, key: str, a: np.ndarray) -> None:
        count, first = kernels.count_nonfinite(a)
        if count:
            raise UpdateFormatError(
                f"{where} field {key!r} holds {count} non-finite values, the "
                f"first at index {first} ({a[first]!r})",
                float(a[first]),
            )

    def tensor(self, i: int, e: Any) -> TensorPayload:
        if not isinstance(e, dict):
            raise UpdateFormatError(
                f"tensor {i} must be a map, got {type(e).__name__}", type(e)
            )
        name = e.get("name")
        if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME_LEN:
            raise UpdateFormatError(
                f"tensor {i} name {name!r} must be a non-empty str of at most "
                f"{MAX_NAME_LEN} characters",
                name,
            )
        where = f"tensor {name!r}"
        shape = e.get("shape")
        if (
            not isinstance(shape, list)
            or len(shape) > 8
            or not all(type(d) is int and d >= 0 for d in shape)
        ):
            raise UpdateFormatError(
                f"{where} shape {shape!r} must be a list of at most 8 ints >= 0",
                shape,
            )
        n = math.prod(shape)
        if n > MAX_TENSOR_ELEMENTS:
            raise UpdateFormatError(
                f"{where} has {n} elements, more than {MAX_TENSOR_ELEMENTS}", n
            )
        self.total += n
        if self.max_elements is not None and self.total > self.max_elements:
            raise UpdateFormatError(
                f"update holds more than the limit of {self.max_elements} elements "
                f"(reached {self.total} at {where})",
                self.total,
            )
        dtype_str = e.get("dtype")
        if dtype_str not in _TENSOR_DTYPES:
            raise UpdateFormatError(
                f"{where} dtype {dtype_str!r} must be one of "
                f"{', '.join(_TENSOR_DTYPES)}",
                dtype_str,
            )
        dtype = np.dtype(_TENSOR_DTYPES[dtype_str])
        wd = work_dtype(dtype)
        t = TensorPayload(name=name, shape=tuple(shape), dtype=dtype, k=n)
        cfg = self.config
        m = cfg.method
        value_dtypes = ("<f2", "<f4", "<f8")

        if m in (*_SPARSE, CompressionType.RANDOMK):
            k = e.get("k")
            if type(k) is not int or not 0 <= k <= n:
                raise UpdateFormatError(
                    f"{where} k {k!r} must be an int in [0, {n}]", k
                )
            t.k = k
        if m in _SPARSE:
            widths = self.array(
                where, e, "index_widths", ("|u1",), -(-t.k // INDEX_BLOCK)
            )
            expected = 0
            if widths.size:
                top = int(widths.max())
                if top > 32:
                    raise UpdateFormatError(
                        f"{where} index block width {top} exceeds 32 bits", top
                    )
                # All blocks but the last are full (INDEX_BLOCK indices).
                last = t.k - (widths.size - 1) * INDEX_BLOCK
                expected = (int(widths.sum(dtype=np.int64)) - int(widths[-1])) * (
                    INDEX_BLOCK // 8
                ) + (last * int(widths[-1]) + 7) // 8
            bits = self.array(where, e, "index_bits", ("|u1",), expected)
            try:
                t.idx = kernels.unpack_indices(widths, bits, t.k, n)
            except ValueError as exc:
                raise UpdateFormatError(f"{where} indices: {exc}", None) from exc
            t.packed_idx = (widths, bits)
        if m in (*_SPARSE[:2], CompressionType.RANDOMK, CompressionType.NONE):
            count = n if m is CompressionType.NONE else t.k
            t.values = self.array(where, e, "values", value_dtypes, count)
            self.finite(where, "values", t.values)
        if m in (CompressionType.QUANTIZE, CompressionType.TOPK_QUANTIZE):
            count = n if m is CompressionType.QUANTIZE else t.k
            t.amax = self.array(
                where, e, "amax", (wd.str,), -(-count // cfg.chunk_size)
            )
            self.finite(where, "amax", t.amax)
            if t.amax.size and bool(np.any(t.amax < 0)):
                bad = int(np.argmax(t.amax < 0))
                raise UpdateFormatError(
                    f"{where} amax[{bad}] = {t.amax[bad]!r} is negative",
                    float(t.amax[bad]),
                )
            t.codes = self.array(
                where, e, "codes", ("|u1",), (count * cfg.bits + 7) // 8
            )
        if m is CompressionType.SIGN:
            scale = e.get("scale")
            if not isinstance(scale, float) or not (
                math.isfinite(scale) and scale >= 0
            ):
                raise UpdateFormatError(
                    f"{where} scale {scale!r} must be a finite float >= 0", scale
                )
            t.scale = scale
            t.codes = self.array(where, e, "signs", ("|u1",), (n + 7) // 8)
        return t
