"""ZeroMQ transport: the agent's DEALER socket and the options both sides share.

The agent talks to the ground over one DEALER socket; the ground listens on a
ROUTER (``ground._daemon``).  There is no REQ/REP lockstep: the agent may have
several updates in flight and the ground answers each with an ACK or a NACK.

Liveness has two layers.  ZMTP heartbeats (``HEARTBEAT_IVL`` /
``HEARTBEAT_TIMEOUT``) let libzmq notice a dead peer on a silent link and
reconnect; above that the agent resends whatever was not ACKed with
exponential backoff (:class:`Backoff`), since a message queued into a
connection that then died is lost with it.

``IMMEDIATE`` is set so that a send with no live connection fails at once
(the update stays in the outbox) instead of queueing into a pipe to nowhere,
and ``LINGER`` is short so that closing never hangs on a dead link: nothing
is lost by dropping queued frames, because the outbox holds every un-ACKed
update durably.  ``MAXMSGSIZE`` makes libzmq drop an oversized frame (and the
connection) before the bytes reach Python.
"""

import random
from dataclasses import dataclass

import zmq

from agent._wire import DEFAULT_MAX_MESSAGE_BYTES


@dataclass(frozen=True, slots=True)
class TransportOptions:
    """Socket options shared by the agent's DEALER and the ground's ROUTER."""

    heartbeat_ivl_ms: int = 1000
    heartbeat_timeout_ms: int = 5000
    heartbeat_ttl_ms: int = 10000
    linger_ms: int = 100
    reconnect_ivl_ms: int = 100
    reconnect_ivl_max_ms: int = 5000
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    send_hwm: int = 1000
    recv_hwm: int = 1000

    def __post_init__(self) -> None:
        problems = [
            f"{name}={getattr(self, name)} must be >= 0"
            for name in (
                "heartbeat_ivl_ms",
                "heartbeat_timeout_ms",
                "heartbeat_ttl_ms",
                "linger_ms",
                "reconnect_ivl_ms",
                "reconnect_ivl_max_ms",
                "send_hwm",
                "recv_hwm",
            )
            if getattr(self, name) < 0
        ]
        if self.max_message_bytes < 64:
            problems.append(f"max_message_bytes={self.max_message_bytes} must be >= 64")
        if problems:
            raise ValueError("invalid transport options: " + "; ".join(problems))


def apply_options(sock: zmq.Socket, options: TransportOptions) -> None:
    """Set heartbeats, linger, reconnect, size cap and high-water marks."""
    sock.setsockopt(zmq.LINGER, options.linger_ms)
    sock.setsockopt(zmq.HEARTBEAT_IVL, options.heartbeat_ivl_ms)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, options.heartbeat_timeout_ms)
    sock.setsockopt(zmq.HEARTBEAT_TTL, options.heartbeat_ttl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL, options.reconnect_ivl_ms)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, options.reconnect_ivl_max_ms)
    sock.setsockopt(zmq.MAXMSGSIZE, options.max_message_bytes)
    sock.setsockopt(zmq.SNDHWM, options.send_hwm)
    sock.setsockopt(zmq.RCVHWM, options.recv_hwm)


@dataclass(frozen=True, slots=True)
class CurveClientKeys:
    """An agent's CURVE key pair and the ground's public key (z85 bytes)."""

    public: bytes
    secret: bytes
    server_public: bytes


class Backoff:
    """Exponential backoff with jitter: ``initial_s * factor**attempt``, capped.

    Jitter spreads a constellation's retries so that agents that lost the
    ground together do not all come back in the same instant.  The random
    stream is seeded (by the agent id) so a run can be reproduced.
    """

    def __init__(
        self,
        initial_s: float = 1.0,
        max_s: float = 60.0,
        factor: float = 2.0,
        jitter: float = 0.1,
        seed: int | str | None = None,
    ) -> None:
        problems = []
        if not initial_s > 0:
            problems.append(f"initial_s={initial_s} must be > 0")
        if not max_s >= initial_s:
            problems.append(f"max_s={max_s} must be >= initial_s={initial_s}")
        if not factor >= 1:
            problems.append(f"factor={factor} must be >= 1")
        if not 0 <= jitter < 1:
            problems.append(f"jitter={jitter} must be in [0, 1)")
        if problems:
            raise ValueError("invalid backoff: " + "; ".join(problems))
        self.initial_s = float(initial_s)
        self.max_s = float(max_s)
        self.factor = float(factor)
        self.jitter = float(jitter)
        self._rng = random.Random(seed)

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt`` (0 = first retry)."""
        base = min(self.max_s, self.initial_s * self.factor ** min(attempt, 64))
        return base * (1.0 + self.jitter * (2.0 * self._rng.random() - 1.0))


class DealerTransport:
    """The agent's connection to the ground: one DEALER socket.

    ``identity`` (the agent id) becomes the socket's routing id, so the
    ground's ROUTER can address replies to it and, with CURVE, check it
    against the key the agent authenticated with.  ``send`` never blocks;
    ``recv`` waits at most ``timeout_s``.
    """

    def __init__(
        self,
        endpoint: str,
        identity: str,
        *,
        options: TransportOptions = TransportOptions(),
        curve: CurveClientKeys | None = None,
        context: zmq.Context | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.identity = identity
        self.options = options
        self.curve = curve
        self._context = context or zmq.Context.instance()
        self._sock: zmq.Socket | None = None
        self.reconnects = 0
        self._open()

    def _open(self) -> None:
        sock = self._context.socket(zmq.DEALER)
        apply_options(sock, self.options)
        sock.setsockopt(zmq.ROUTING_ID, self.identity.encode())
        sock.setsockopt(zmq.IMMEDIATE, 1)
        if self.curve is not None:
            sock.curve_publickey = self.curve.public
            sock.curve_secretkey = self.curve.secret
            sock.curve_serverkey = self.curve.server_public
        sock.connect(self.endpoint)
        self._sock = sock

    def send(self, data: bytes) -> bool:
        """Queue one frame; False when no connection is up or the queue is full."""
        try:
            self._sock.send(data, zmq.NOBLOCK, copy=len(data) < 65536)
        except zmq.Again:
            return False
        return True

    def recv(self, timeout_s: float) -> bytes | None:
        """One received frame, or None after ``timeout_s`` seconds."""
        if not self._sock.poll(max(0, int(timeout_s * 1000)), zmq.POLLIN):
            return None
        try:
            return self._sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            return None

    def reconnect(self) -> None:
        """Drop the socket and connect afresh.

        libzmq reconnects by itself, but a connection whose CURVE handshake
        was refused, or a half-open TCP session behind a NAT, is cleared
        fastest by a new socket.
        """
        self._close_socket()
        self._open()
        self.reconnects += 1

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=self.options.linger_ms)
            self._sock = None

    def close(self) -> None:
        self._close_socket()

    def __enter__(self) -> "DealerTransport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
