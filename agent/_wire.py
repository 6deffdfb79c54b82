"""The wire protocol between agents and the ground: a versioned msgpack envelope.

Every message is one ZeroMQ frame holding a msgpack array of seven items::

    [version, type, sender, round, seq, send_time_s, body]

``version`` is :data:`PROTOCOL_VERSION`; ``type`` a :class:`MessageType`;
``sender`` the node id (``"ground"`` for the daemon); ``round`` the federated
round the message belongs to; ``seq`` the sender's sequence number (unique per
sender, kept across reboots by the agent's outbox); ``send_time_s`` Unix
seconds on the sender's (possibly simulated) clock; ``body`` a msgpack-encoded
map, carried as ``bin``.  Nesting the body as bytes lets the envelope be read,
and a NACK addressed, before the body is trusted, and lets the agent's outbox
keep an update's body and wrap it in a fresh envelope at every resend.

Bodies by type (arrays use :mod:`agent._arrays`, ``[dtype, shape, bytes]``):

- ``HELLO``: ``model_version`` (int, -1 for none), ``capabilities`` (strings).
- ``MODEL``: ``version`` (int), ``deadline_s`` (Unix seconds), and either
  ``weights`` (name -> array; the full global model) or a patch from a model
  the agent holds: ``base_version`` (int), ``patch`` (name -> ``[indices,
  values]``, flat uint32 indices, strictly increasing) and ``crc32`` of the
  patched model (:mod:`agent._model_patch`).  The ground sends a patch only
  to an agent whose HELLO lists the ``model_patch`` capability.
- ``UPDATE``: ``base_version`` (the model version trained from),
  ``num_samples`` (int > 0), ``metrics`` (name -> float), and either
  ``update`` (a compressed update, ``CompressedUpdate.to_wire()``) or
  ``delta`` (name -> dense array).
- ``ACK``: ``of`` = ``[sender, round, seq]`` of the acknowledged update and
  ``duplicate`` (bool).
- ``NACK``: ``of`` as for ACK, ``reason`` (a short code from
  :class:`NackReason`) and ``detail`` (a sentence).
- ``HEARTBEAT``: ``model_version`` (int).
- ``CREDIT``: ``of`` = ``[sender, round, seq]`` of an update.  From an agent:
  "may I send this update?"; from the ground: "send it now".  The ground
  grants a bounded number at a time, which bounds the UPDATE frames queued
  toward it whatever the number of agents (credit-based flow control).
- ``RELAY``: ``message`` (bin), the complete encoded UPDATE frame of another
  agent (its origin), carried by a neighbour that reached the ground sooner
  (store-and-forward over inter-satellite links).  The envelope is the
  relayer's; the inner frame is decoded with the same limits, must be an
  UPDATE, and the ground ACKs or NACKs it by the origin's (sender, round, seq).

Decoding treats the bytes as untrusted: the total size is capped before
parsing, msgpack's own length limits bound every string, binary, array and
map, ``ext`` types are refused, and each body is checked against its schema.
Every failure raises a :class:`WireError` subclass whose ``reason`` is a short
code (used as a metric label) and which carries whatever of the sender, round
and seq could be read, so that the ground can NACK a sender it knows.
"""

import enum
import math
import re
from dataclasses import dataclass, field
from typing import Any

import msgpack
import numpy as np

from agent import _wire_bodies as bodies
from agent._arrays import ArrayFormatError, pack_array
from agent._wire_bodies import SchemaError as _SchemaError
from agent._wire_bodies import is_int as _is_int

PROTOCOL_VERSION = 1
GROUND_ID = "ground"

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_ELEMENTS = 1 << 26  # per array: 64 Mi elements, 256 MB as float32
MAX_ID_LEN = 64
MAX_STR_LEN = 4096
MAX_MAP_LEN = 65536  # tensors per model, metrics per update
MAX_ARRAY_LEN = 65536
ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class MessageType(enum.IntEnum):
    HELLO = 1
    MODEL = 2
    UPDATE = 3
    ACK = 4
    NACK = 5
    HEARTBEAT = 6
    CREDIT = 7
    RELAY = 8


class NackReason(enum.StrEnum):
    """Why the ground refused an update: the ``reason`` field of a NACK."""

    MALFORMED = "malformed"
    TRUNCATED = "truncated"
    TOO_LARGE = "too_large"
    BAD_VERSION = "bad_version"
    UNKNOWN_TYPE = "unknown_type"
    BAD_UPDATE = "bad_update"
    STALE_ROUND = "stale_round"
    FUTURE_ROUND = "future_round"
    REJECTED = "rejected"
    IMPOSTOR = "impostor"


class WireError(ValueError):
    """A message could not be decoded.

    ``reason`` is a short code (a :class:`NackReason` value); ``sender``,
    ``round`` and ``seq`` are set when they could be read before the failure,
    ``value`` holds the offending part when there is one.
    """

    reason = NackReason.MALFORMED

    def __init__(
        self,
        message: str,
        value: Any = None,
        *,
        sender: str | None = None,
        round: int | None = None,
        seq: int | None = None,
    ) -> None:
        super().__init__(message)
        self.value = value
        self.sender = sender
        self.round = round
        self.seq = seq


class MalformedMessage(WireError):
    reason = NackReason.MALFORMED


class TruncatedMessage(MalformedMessage):
    reason = NackReason.TRUNCATED


class MessageTooLarge(WireError):
    reason = NackReason.TOO_LARGE


class UnsupportedVersion(WireError):
    reason = NackReason.BAD_VERSION


class UnknownMessageType(WireError):
    reason = NackReason.UNKNOWN_TYPE


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds applied to untrusted bytes before and while they are parsed."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_elements: int = DEFAULT_MAX_ELEMENTS

    def __post_init__(self) -> None:
        if self.max_message_bytes < 64:
            raise ValueError(
                f"max_message_bytes={self.max_message_bytes} is below the 64 "
                "bytes an empty envelope may need"
            )
        if self.max_elements < 1:
            raise ValueError(f"max_elements={self.max_elements} must be >= 1")


@dataclass(slots=True)
class Message:
    """One decoded message; ``body`` is the type's map, arrays as ndarrays."""

    type: MessageType
    sender: str
    round: int
    seq: int
    send_time_s: float
    body: dict[str, Any] = field(default_factory=dict)
    version: int = PROTOCOL_VERSION
    # The body exactly as received (decode only): the ground journals it.
    body_bytes: bytes | None = field(default=None, repr=False, compare=False)


# --------------------------------------------------------------------- encoding


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, strict_types=False)


def encode_envelope(
    type: MessageType,
    sender: str,
    round: int,
    seq: int,
    send_time_s: float,
    body_bytes: bytes | memoryview,
    *,
    version: int = PROTOCOL_VERSION,
) -> bytes:
    """Wrap an already encoded body in an envelope."""
    if not ID_PATTERN.fullmatch(sender):
        raise ValueError(
            f"sender id {sender!r} must be 1 to {MAX_ID_LEN} characters of "
            "letters, digits, '_', '.', ':' or '-'"
        )
    return _packb(
        [
            int(version),
            int(type),
            sender,
            int(round),
            int(seq),
            float(send_time_s),
            body_bytes,
        ]
    )


def _pack_tensors(tensors: dict[str, np.ndarray]) -> dict[str, list]:
    return {str(name): pack_array(a) for name, a in tensors.items()}


def encode_body(type: MessageType, body: dict[str, Any]) -> bytes:
    """Encode a body map for ``type``, packing ndarrays where the schema has them."""
    body = dict(body)
    if type is MessageType.MODEL and "patch" in body:
        body["patch"] = {
            str(name): [pack_array(idx), pack_array(values)]
            for name, (idx, values) in body["patch"].items()
        }
    elif type is MessageType.MODEL:
        body["weights"] = _pack_tensors(body["weights"])
    elif type is MessageType.UPDATE and "delta" in body:
        body["delta"] = _pack_tensors(body["delta"])
    return _packb(body)


def encode(message: Message) -> bytes:
    """Encode a :class:`Message` to the bytes of one ZeroMQ frame."""
    return encode_envelope(
        message.type,
        message.sender,
        message.round,
        message.seq,
        message.send_time_s,
        encode_body(message.type, message.body),
        version=message.version,
    )


# Constructors for each message type: they pin the body schema in one place.


def hello(
    sender: str,
    seq: int,
    send_time_s: float,
    *,
    model_version: int = -1,
    round: int = -1,
    capabilities: list[str] | None = None,
) -> Message:
    body = {"model_version": int(model_version), "capabilities": capabilities or []}
    return Message(MessageType.HELLO, sender, round, seq, send_time_s, body)


def model(
    sender: str,
    round: int,
    seq: int,
    send_time_s: float,
    *,
    version: int,
    deadline_s: float,
    weights: dict[str, np.ndarray],
) -> Message:
    body = {"version": int(version), "deadline_s": float(deadline_s)}
    body["weights"] = weights
    return Message(MessageType.MODEL, sender, round, seq, send_time_s, body)


def model_patch(
    sender: str,
    round: int,
    seq: int,
    send_time_s: float,
    *,
    version: int,
    deadline_s: float,
    base_version: int,
    patch: dict[str, tuple[np.ndarray, np.ndarray]],
    crc32: int,
) -> Message:
    body = {
        "version": int(version),
        "deadline_s": float(deadline_s),
        "base_version": int(base_version),
        "patch": patch,
        "crc32": int(crc32),
    }
    return Message(MessageType.MODEL, sender, round, seq, send_time_s, body)


def update_body(
    *,
    base_version: int,
    num_samples: int,
    metrics: dict[str, float] | None = None,
    update: Any = None,
    delta: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The body of an UPDATE: exactly one of ``update`` (wire form) or ``delta``."""
    if (update is None) == (delta is None):
        raise ValueError("an UPDATE carries exactly one of update= or delta=")
    body: dict[str, Any] = {
        "base_version": int(base_version),
        "num_samples": int(num_samples),
        "metrics": {str(k): float(v) for k, v in (metrics or {}).items()},
    }
    if update is not None:
        body["update"] = update
    else:
        body["delta"] = delta
    return body


def update(
    sender: str, round: int, seq: int, send_time_s: float, **body: Any
) -> Message:
    return Message(
        MessageType.UPDATE, sender, round, seq, send_time_s, update_body(**body)
    )


def ack(
    sender: str,
    seq: int,
    send_time_s: float,
    *,
    of: tuple[str, int, int],
    duplicate: bool = False,
) -> Message:
    body = {"of": [of[0], int(of[1]), int(of[2])], "duplicate": bool(duplicate)}
    return Message(MessageType.ACK, sender, int(of[1]), seq, send_time_s, body)


def nack(
    sender: str,
    seq: int,
    send_time_s: float,
    *,
    of: tuple[str, int, int],
    reason: str,
    detail: str = "",
) -> Message:
    body = {
        "of": [of[0], int(of[1]), int(of[2])],
        "reason": str(reason),
        "detail": str(detail)[:MAX_STR_LEN],
    }
    return Message(MessageType.NACK, sender, int(of[1]), seq, send_time_s, body)


def heartbeat(
    sender: str, seq: int, send_time_s: float, *, model_version: int = -1
) -> Message:
    body = {"model_version": int(model_version)}
    return Message(MessageType.HEARTBEAT, sender, -1, seq, send_time_s, body)


def credit(
    sender: str, seq: int, send_time_s: float, *, of: tuple[str, int, int]
) -> Message:
    body = {"of": [of[0], int(of[1]), int(of[2])]}
    return Message(MessageType.CREDIT, sender, int(of[1]), seq, send_time_s, body)


def relay(
    sender: str, round: int, seq: int, send_time_s: float, *, message: bytes
) -> Message:
    """A RELAY from ``sender`` carrying another agent's encoded UPDATE frame."""
    body = {"message": bytes(message)}
    return Message(MessageType.RELAY, sender, round, seq, send_time_s, body)


# --------------------------------------------------------------------- decoding


def _unpackb(data: bytes | memoryview, limit: int, *, envelope: bool) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        use_list=True,
        strict_map_key=True,
        max_bin_len=limit,
        max_str_len=MAX_ID_LEN if envelope else MAX_STR_LEN,
        max_array_len=16 if envelope else MAX_ARRAY_LEN,
        max_map_len=0 if envelope else MAX_MAP_LEN,
        max_ext_len=0,
    )


def _read(data: bytes | memoryview, limit: int, what: str, *, envelope: bool) -> Any:
    """Parse msgpack with limits, turning every parser failure into a WireError."""
    try:
        return _unpackb(data, limit, envelope=envelope)
    except msgpack.OutOfData:
        raise TruncatedMessage(
            f"{what} of {len(data)} bytes ends before its msgpack data does "
            "(truncated message)",
            len(data),
        ) from None
    except msgpack.ExtraData as exc:
        raise MalformedMessage(
            f"{what} has {len(exc.extra)} bytes after its msgpack object",
            len(exc.extra),
        ) from None
    except (ValueError, TypeError, msgpack.StackError, msgpack.FormatError) as exc:
        if "incomplete input" in str(exc):  # the C unpacker's OutOfData
            raise TruncatedMessage(
                f"{what} of {len(data)} bytes ends before its msgpack data does "
                "(truncated message)",
                len(data),
            ) from None
        # msgpack raises ValueError for a length above a max_*_len limit, for
        # invalid UTF-8 and for ext types; FormatError for reserved bytes.
        raise MalformedMessage(f"{what} is not valid bounded msgpack: {exc}") from None


def decode(data: bytes | memoryview, limits: Limits = Limits()) -> Message:
    """Decode one frame into a :class:`Message`, validating everything.

    Raises a :class:`WireError` subclass; the message names the problem and
    the value.  Arrays in the body are read-only views of the received bytes.
    """
    size = len(data)
    if size > limits.max_message_bytes:
        raise MessageTooLarge(
            f"message of {size} bytes is over the cap of "
            f"{limits.max_message_bytes} bytes",
            size,
        )
    env = _read(data, limits.max_message_bytes, "envelope", envelope=True)
    if not isinstance(env, list) or not env:
        raise MalformedMessage(
            f"envelope must be a msgpack array of 7 items, got {type(env).__name__}",
            env if not isinstance(env, bytes) else None,
        )

    # Read what identifies the sender first, so that even a message refused
    # later (bad version, bad body) can be answered with a NACK.
    sender = env[2] if len(env) > 2 and isinstance(env[2], str) else None
    if sender is not None and not ID_PATTERN.fullmatch(sender):
        sender = None
    rnd = env[3] if len(env) > 3 and _is_int(env[3]) else None
    seq = env[4] if len(env) > 4 and _is_int(env[4]) else None
    known = {"sender": sender, "round": rnd, "seq": seq}

    version = env[0]
    if version != PROTOCOL_VERSION or not _is_int(version):
        raise UnsupportedVersion(
            f"protocol version {version!r} is not supported; this side speaks "
            f"version {PROTOCOL_VERSION}",
            version,
            **known,
        )
    if len(env) != 7:
        raise MalformedMessage(
            f"envelope has {len(env)} items; expected 7 "
            "[version, type, sender, round, seq, send_time_s, body]",
            len(env),
            **known,
        )
    _, mtype, _, _, _, send_time_s, body_bytes = env
    try:
        mtype = MessageType(mtype) if _is_int(mtype) else None
    except ValueError:
        mtype = None
    if mtype is None:
        raise UnknownMessageType(
            f"message type {env[1]!r} is unknown; expected one of "
            + ", ".join(f"{t.value} ({t.name})" for t in MessageType),
            env[1],
            **known,
        )
    problems = []
    if sender is None:
        problems.append(
            f"sender {env[2]!r} must be 1 to {MAX_ID_LEN} characters of letters, "
            "digits, '_', '.', ':' or '-'"
        )
    if rnd is None or rnd < -1:
        problems.append(f"round {env[3]!r} must be an int >= -1")
    if seq is None or seq < 0:
        problems.append(f"seq {env[4]!r} must be an int >= 0")
    if not isinstance(send_time_s, float | int) or not math.isfinite(send_time_s):
        problems.append(f"send_time_s {send_time_s!r} must be a finite number")
    if not isinstance(body_bytes, bytes):
        problems.append(f"body must be msgpack bin, got {type(body_bytes).__name__}")
    if problems:
        raise MalformedMessage(
            f"{mtype.name} envelope: " + "; ".join(problems), None, **known
        )

    try:
        body = decode_body(mtype, body_bytes, limits, sender=sender)
    except WireError as exc:
        exc.sender, exc.round, exc.seq = sender, rnd, seq
        raise
    return Message(
        mtype, sender, rnd, seq, float(send_time_s), body, body_bytes=body_bytes
    )


def decode_body(
    mtype: MessageType,
    body_bytes: bytes,
    limits: Limits = Limits(),
    *,
    sender: str | None = None,
) -> dict[str, Any]:
    """Decode and check one body of type ``mtype`` (also used to replay a journal)."""
    raw_body = _read(body_bytes, limits.max_message_bytes, "body", envelope=False)
    if not isinstance(raw_body, dict):
        raise MalformedMessage(
            f"{mtype.name} body must be a map, got {type(raw_body).__name__}"
        )
    try:
        return _BODY_CHECKS[mtype](raw_body, limits)
    except (ArrayFormatError, _SchemaError) as exc:
        raise MalformedMessage(
            f"{mtype.name} body from {sender!r}: {exc}", exc.value
        ) from None


_BODY_CHECKS = {
    MessageType.HELLO: bodies.check_hello,
    MessageType.MODEL: bodies.check_model,
    MessageType.UPDATE: bodies.check_update,
    MessageType.ACK: bodies.check_ack,
    MessageType.NACK: bodies.check_nack,
    MessageType.HEARTBEAT: bodies.check_heartbeat,
    MessageType.CREDIT: bodies.check_credit,
    MessageType.RELAY: bodies.check_relay,
}


def relayed_update(body: dict[str, Any], limits: Limits = Limits()) -> Message:
    """Decode the UPDATE a RELAY body carries, with the same bounds as any frame.

    Raises a :class:`WireError` (``MalformedMessage`` when the inner frame is
    not an UPDATE: a relay carries one origin's update, never another relay).
    """
    inner = decode(body["message"], limits)
    if inner.type is not MessageType.UPDATE:
        raise MalformedMessage(
            f"a RELAY must carry an UPDATE; it carries a {inner.type.name} "
            f"from {inner.sender!r}",
            int(inner.type),
            sender=inner.sender,
            round=inner.round,
            seq=inner.seq,
        )
    return inner


def decode_update(body: dict[str, Any], limits: Limits = Limits()) -> Any:
    """Return the update an UPDATE body carries: a CompressedUpdate or a dense dict.

    Raises ``ValueError`` (the compression module's ``UpdateFormatError`` or a
    :class:`MalformedMessage`) when the compressed form is invalid.
    """
    if "delta" in body:
        return body["delta"]
    from agent._compression import CompressedUpdate

    return CompressedUpdate.from_wire(body["update"], max_elements=limits.max_elements)
