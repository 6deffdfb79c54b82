"""The body schema of each wire message type: checks on an untrusted decoded map.

:func:`agent._wire.decode` calls one ``check_*`` per message type after the
envelope is read; each validates and converts the body in place (arrays to
ndarrays) and raises :class:`SchemaError` naming the field, what it held and
what was expected.  The schemas themselves are written in the module
docstring of :mod:`agent._wire`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from agent._arrays import ArrayFormatError, unpack_array

if TYPE_CHECKING:
    from agent._wire import Limits


def is_int(v: Any) -> bool:
    return type(v) is int


class SchemaError(ValueError):
    def __init__(self, message: str, value: Any = None) -> None:
        super().__init__(message)
        self.value = value


def require(body: dict, key: str, check, expected: str) -> Any:
    if key not in body:
        raise SchemaError(f"field {key!r} is missing; expected {expected}")
    value = body[key]
    if not check(value):
        shown = (
            repr(value)
            if not isinstance(value, bytes | dict | list)
            else (f"a {type(value).__name__} of length {len(value)}")
        )
        raise SchemaError(f"field {key!r} is {shown}; expected {expected}", value)
    return value


def unpack_tensors(obj: Any, limits: Limits, what: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, dict):
        raise SchemaError(f"{what} must be a map of name -> array")
    out = {}
    for name, packed in obj.items():
        try:
            out[name] = unpack_array(packed, max_elements=limits.max_elements)
        except ArrayFormatError as exc:
            raise SchemaError(f"{what}[{name!r}]: {exc}", exc.value) from None
    return out


def finite(v: Any) -> bool:
    return isinstance(v, float | int) and not isinstance(v, bool) and math.isfinite(v)


def check_hello(body: dict, limits: Limits) -> dict:
    require(body, "model_version", lambda v: is_int(v) and v >= -1, "an int >= -1")
    require(
        body,
        "capabilities",
        lambda v: isinstance(v, list) and all(isinstance(c, str) for c in v),
        "a list of strings",
    )
    return body


def check_model(body: dict, limits: Limits) -> dict:
    require(body, "version", lambda v: is_int(v) and v >= 0, "an int >= 0")
    require(body, "deadline_s", finite, "a finite number of Unix seconds")
    if ("weights" in body) == ("patch" in body):
        raise SchemaError("a MODEL carries exactly one of 'weights' and 'patch'")
    if "weights" in body:
        weights = require(body, "weights", lambda v: isinstance(v, dict), "a map")
        body["weights"] = unpack_tensors(weights, limits, "weights")
        return body
    version = body["version"]
    require(
        body,
        "base_version",
        lambda v: is_int(v) and 0 <= v <= version,
        f"an int from 0 to the version, {version}",
    )
    require(body, "crc32", lambda v: is_int(v) and 0 <= v < 1 << 32, "a u32")
    patch = require(body, "patch", lambda v: isinstance(v, dict), "a map")
    out = {}
    for name, pair in patch.items():
        if not isinstance(name, str):
            raise SchemaError(f"patch tensor name {name!r} must be a str", name)
        if not (isinstance(pair, list) and len(pair) == 2):
            raise SchemaError(f"patch[{name!r}] must be [indices, values]", pair)
        try:
            idx, values = (
                unpack_array(a, max_elements=limits.max_elements) for a in pair
            )
        except ArrayFormatError as exc:
            raise SchemaError(f"patch[{name!r}]: {exc}", exc.value) from None
        if idx.dtype != np.uint32 or idx.ndim != 1 or values.shape != idx.shape:
            raise SchemaError(
                f"patch[{name!r}] holds {idx.dtype}{idx.shape} indices and "
                f"{values.dtype}{values.shape} values; expected uint32 indices "
                "and values of one length, both 1-D"
            )
        out[name] = (idx, values)
    body["patch"] = out
    return body


def check_update(body: dict, limits: Limits) -> dict:
    require(body, "base_version", lambda v: is_int(v) and v >= -1, "an int >= -1")
    require(body, "num_samples", is_int, "an int")
    require(
        body,
        "metrics",
        lambda v: isinstance(v, dict) and all(finite(x) for x in v.values()),
        "a map of name -> finite number",
    )
    if ("update" in body) == ("delta" in body):
        raise SchemaError(
            "an UPDATE must carry exactly one of 'update' (compressed) or "
            f"'delta' (dense); it has {sorted(set(body) & {'update', 'delta'})}"
        )
    if "delta" in body:
        body["delta"] = unpack_tensors(body["delta"], limits, "delta")
    # A compressed update stays in its wire form here; decode_update() turns it
    # into a CompressedUpdate, so that the wire layer does not import the
    # compression kernels.
    return body


def check_of(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 3
        and isinstance(v[0], str)
        and is_int(v[1])
        and is_int(v[2])
    )


def check_ack(body: dict, limits: Limits) -> dict:
    require(body, "of", check_of, "[sender, round, seq]")
    require(body, "duplicate", lambda v: isinstance(v, bool), "a bool")
    return body


def check_nack(body: dict, limits: Limits) -> dict:
    require(body, "of", check_of, "[sender, round, seq]")
    require(body, "reason", lambda v: isinstance(v, str), "a string")
    require(body, "detail", lambda v: isinstance(v, str), "a string")
    return body


def check_heartbeat(body: dict, limits: Limits) -> dict:
    require(body, "model_version", lambda v: is_int(v) and v >= -1, "an int >= -1")
    return body


def check_credit(body: dict, limits: Limits) -> dict:
    require(body, "of", check_of, "[sender, round, seq]")
    return body


def check_relay(body: dict, limits: Limits) -> dict:
    require(
        body,
        "message",
        lambda v: isinstance(v, bytes) and 0 < len(v) <= limits.max_message_bytes,
        f"an encoded UPDATE frame of 1 to {limits.max_message_bytes} bytes",
    )
    return body
