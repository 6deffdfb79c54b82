"""Compression settings: the type of compression and its parameters."""

import enum
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

__all__ = ["CompressionConfig", "CompressionType"]


class CompressionType(enum.Enum):
    """How an update is compressed; the value is its name on the wire."""

    NONE = "none"
    TOPK = "topk"
    THRESHOLD_TOPK = "threshold_topk"
    RANDOMK = "randomk"
    QUANTIZE = "quantize"
    TOPK_QUANTIZE = "topk_quantize"
    SIGN = "sign"


_VALUE_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class CompressionConfig:
    """Immutable compression settings; each ``with_*`` returns a new config.

    ``sparsity`` is the fraction of elements *not* sent by the sparsifying
    types (0.99 keeps the top 1%).  ``bits`` and ``chunk_size`` apply to the
    quantizing types, ``value_dtype`` to the values that travel as floats.
    """

    method: CompressionType = CompressionType.TOPK
    sparsity: float = 0.99
    error_feedback: bool = True
    bits: int = 8
    value_dtype: str = "float32"
    chunk_size: int = 1024
    stochastic_rounding: bool = False
    unbiased_scaling: bool = False

    def __post_init__(self) -> None:
        problems = []
        try:
            object.__setattr__(self, "method", CompressionType(self.method))
        except ValueError:
            problems.append(
                f"method {self.method!r} is not one of "
                f"{', '.join(t.value for t in CompressionType)}"
            )
        s = self.sparsity
        if isinstance(s, bool) or not isinstance(s, int | float) or not 0 <= s < 1:
            problems.append(
                f"sparsity {s!r} must be in [0, 1): the fraction of elements "
                "left out (0.99 keeps 1%)"
            )
        if self.bits not in (2, 4, 8) or isinstance(self.bits, bool):
            problems.append(f"bits {self.bits!r} must be 8, 4 or 2")
        if self.value_dtype not in _VALUE_DTYPES:
            problems.append(
                f"value_dtype {self.value_dtype!r} must be one of "
                f"{', '.join(_VALUE_DTYPES)}"
            )
        c = self.chunk_size
        if isinstance(c, bool) or not isinstance(c, int) or not 1 <= c <= 2**24:
            problems.append(f"chunk_size {c!r} must be an int in [1, 2**24]")
        for flag in ("error_feedback", "stochastic_rounding", "unbiased_scaling"):
            if not isinstance(getattr(self, flag), bool):
                problems.append(f"{flag} must be True or False")
        if problems:
            raise ValueError("bad CompressionConfig: " + "; ".join(problems))
        object.__setattr__(self, "sparsity", float(s))

    def with_sparsity(self, sparsity: float) -> "CompressionConfig":
        return replace(self, sparsity=sparsity)

    def with_error_feedback(self, enabled: bool = True) -> "CompressionConfig":
        return replace(self, error_feedback=enabled)

    def with_bits(self, bits: int) -> "CompressionConfig":
        return replace(self, bits=bits)

    def with_value_dtype(self, dtype: str) -> "CompressionConfig":
        return replace(self, value_dtype=str(np.dtype(dtype)))

    def with_chunk_size(self, chunk_size: int) -> "CompressionConfig":
        return replace(self, chunk_size=chunk_size)

    def with_stochastic_rounding(self, enabled: bool = True) -> "CompressionConfig":
        return replace(self, stochastic_rounding=enabled)

    def with_unbiased_scaling(self, enabled: bool = True) -> "CompressionConfig":
        return replace(self, unbiased_scaling=enabled)

    def kept(self, n: int) -> int:
        """Return how many of n elements the sparsifying types keep (>= 1)."""
        if n == 0:
            return 0
        return max(1, min(n, round(n * (1.0 - self.sparsity))))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["method"] = self.method.value
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "CompressionConfig":
        """Build a config from :meth:`to_dict` output; ValueError if malformed."""
        if not isinstance(d, dict):
            raise ValueError(f"a config must be a map, got {type(d).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in d if k not in known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known: {sorted(known)}")
        return cls(**d)
