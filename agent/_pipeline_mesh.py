"""Pipeline stages that reach each other through the mesh routing tables.

In direct mode (``agent._pipeline``) every stage is given the endpoint of the
next one.  Here every process is a mesh node: it knows its own routing row
(``agent._routing.RoutingTable``, computed and uploaded by the ground) and
the ZeroMQ endpoints of its ISL neighbours only.  A message is two frames::

    header   {"v": 1, "kind": "route", "dst": str, "src": str,
              "seq": int, "ttl": int}
    payload  a direct-mode pipeline message (batch, error or stop), untouched

A node that receives a message for another node looks up the next hop in its
row and passes it on with ``ttl`` one lower; the payload bytes are never
decoded on the way, so a relay satellite costs a header parse and a copy.
The stage node of the destination runs its layers and addresses the result
to the next stage node of the plan (the ground's node after the last stage),
again through its own next hop.

A neighbour that takes nothing for ``send_timeout_s`` (neighbour sockets
queue only on a live connection; ``first_contact_timeout_s`` until a first
message got through) has its link marked down in the row, the
row is recomputed on board (``RoutingTable.mark_link_down``) and the message
goes to the new next hop.  The link stays down until a new row is loaded,
and the node's other traffic waits while a send times out.

A message that cannot go on is dropped, counted per reason in
``MeshStats.dropped`` and logged: the header is malformed, its ``ttl`` is
spent (a routing loop between rows of different snapshots ends there), the
destination is not in the row, is unreachable (perhaps after links were
marked down), or its route's valid-until time has passed, or the next hop
has no endpoint in the neighbour directory.  Nothing is sent back to the
source: the ground learns of a lost batch by its receive timeout.  Holding a
batch until a link comes back (store and forward) is not done here; the
batch is lost.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import msgpack
import zmq

from agent._arrays import unpack_bounded
from agent._pipeline import (
    DEFAULT_MAX_ELEMENTS,
    DEFAULT_MAX_MESSAGE_BYTES,
    PIPELINE_VERSION,
    PipelineError,
    Stage,
    StageStats,
    _ClientBase,
    _is_stop,
    encode_stop,
)
from agent._routing import RoutingTable

DEFAULT_TTL = 16
MAX_TTL = 255
MAX_HEADER_BYTES = 1024
MAX_NODE_ID_LEN = 256
DEFAULT_SEND_TIMEOUT_S = 5.0
DEFAULT_FIRST_CONTACT_TIMEOUT_S = 10.0
SERVE_SLICE_S = 0.25

# drop reasons, the keys of MeshStats.dropped
BAD_HEADER = "bad-header"
TTL_EXPIRED = "ttl-expired"
UNKNOWN_DESTINATION = "unknown-destination"
UNREACHABLE = "unreachable"
ROUTE_EXPIRED = "route-expired"
NO_ENDPOINT = "no-endpoint"
NO_STAGE = "no-stage"

# log the first drops of each reason, then every 1000th: a flood of bad
# frames must not turn into a flood of log lines on the downlink
_LOG_FIRST = 10
_LOG_EVERY = 1000

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RouteHeader:
    """Where a pipeline message goes: node ids, batch id, hops left."""

    dst: str
    src: str
    seq: int
    ttl: int

    def encode(self) -> bytes:
        return msgpack.packb(
            {
                "v": PIPELINE_VERSION,
                "kind": "route",
                "dst": self.dst,
                "src": self.src,
                "seq": self.seq,
                "ttl": self.ttl,
            }
        )

    @classmethod
    def decode(cls, frame: bytes) -> RouteHeader:
        """Parse an untrusted header frame; PipelineError names what is wrong."""
        if len(frame) > MAX_HEADER_BYTES:
            raise PipelineError(
                f"route header of {len(frame)} bytes exceeds {MAX_HEADER_BYTES}"
            )
        msg = unpack_bounded(
            frame,
            PipelineError,
            "route header is not valid msgpack",
            max_str_len=MAX_NODE_ID_LEN,
            max_bin_len=0,
            max_array_len=0,
            max_map_len=8,
        )
        if (
            not isinstance(msg, dict)
            or msg.get("v") != PIPELINE_VERSION
            or msg.get("kind") != "route"
        ):
            raise PipelineError(
                f"route header must be a map with v={PIPELINE_VERSION} and "
                f"kind='route', got {msg!r:.120}"
            )
        problems = []
        for key in ("dst", "src"):
            if not isinstance(msg.get(key), str) or not msg[key]:
                problems.append(f"{key}={msg.get(key)!r} is not a node id")
        seq, ttl = msg.get("seq"), msg.get("ttl")
        if type(seq) is not int or seq < 0:
            problems.append(f"seq={seq!r} is not a non-negative int")
        if type(ttl) is not int or not 0 <= ttl <= MAX_TTL:
            problems.append(f"ttl={ttl!r} is not an int in [0, {MAX_TTL}]")
        if problems:
            raise PipelineError("route header: " + "; ".join(problems))
        return cls(msg["dst"], msg["src"], seq, ttl)


@dataclass
class MeshStats:
    delivered: int = 0  # messages addressed to this node
    relayed: int = 0  # messages passed on for other nodes
    sent: int = 0  # messages this node originated
    dropped: Counter[str] = field(default_factory=Counter)
    links_down: list[str] = field(default_factory=list)  # neighbours given up on

    def summary(self) -> str:
        drops = ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items()))
        return (
            f"delivered {self.delivered}, relayed {self.relayed}, sent "
            f"{self.sent}, dropped {sum(self.dropped.values())}"
            + (f" ({drops})" if drops else "")
            + (
                f"; links down to {', '.join(self.links_down)}"
                if self.links_down
                else ""
            )
        )


class MeshPort:
    """A node's mesh interface: its inbox, its neighbours, its routing row.

    ``neighbours`` maps the node ids of ISL neighbours (links of the row's
    graph) to their ZeroMQ endpoints; an id that is not a neighbour raises
    ValueError, since only neighbours can be reached in one hop.  ``bind``
    is the inbox (``tcp://127.0.0.1:*`` picks a free port; ``endpoint`` says
    which).  Neighbours may be connected after binding, with ``connect``,
    when their endpoints are only known once every node listens.
    """

    def __init__(
        self,
        table: RoutingTable,
        neighbours: Mapping[str, str] | None = None,
        *,
        bind: str = "tcp://127.0.0.1:*",
        context: zmq.Context | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        send_timeout_s: float = DEFAULT_SEND_TIMEOUT_S,
        first_contact_timeout_s: float = DEFAULT_FIRST_CONTACT_TIMEOUT_S,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        self.table = table
        self.node_id = table.own_id
        self.max_message_bytes = max_message_bytes
        self.send_timeout_s = send_timeout_s
        self.first_contact_timeout_s = max(first_contact_timeout_s, send_timeout_s)
        self._reached: set[str] = set()
        self._clock_s = clock_s
        self._ctx = context or zmq.Context.instance()
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.LINGER, 0)
        self._pull.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        self._pull.bind(bind)
        self.endpoint: str = self._pull.getsockopt_string(zmq.LAST_ENDPOINT)
        self._out: dict[str, zmq.Socket] = {}
        self.stats = MeshStats()
        if neighbours:
            self.connect(neighbours)

    def neighbour_ids(self) -> list[str]:
        """The node ids linked to this node in the row's graph."""
        g = self.table.graph
        i = self.table.own_index
        return [g.node_ids[j] for j in g.indices[g.indptr[i] : g.indptr[i + 1]]]

    def connect(self, neighbours: Mapping[str, str]) -> None:
        """Add neighbour endpoints; ValueError naming ids that are not neighbours."""
        linked = set(self.neighbour_ids())
        strangers = sorted(set(neighbours) - linked)
        if strangers:
            raise ValueError(
                f"{strangers} are not ISL neighbours of {self.node_id!r} in its "
                f"routing row (neighbours: {sorted(linked)}); the directory "
                "holds neighbours only"
            )
        for node, endpoint in neighbours.items():
            if node in self._out:
                self._out[node].close()
            sock = self._ctx.socket(zmq.PUSH)
            # a final stop drains to the neighbour on close.  IMMEDIATE: queue
            # only on a live connection, so a send to a dead neighbour blocks
            # and fails instead of filling a queue.  Until a first message got
            # through, the wait is first_contact_timeout_s: a connection still
            # being set up (a slow handshake on a loaded computer) must not
            # get its link marked down
            sock.setsockopt(zmq.LINGER, 2000)
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.setsockopt(zmq.SNDTIMEO, int(self.first_contact_timeout_s * 1000))
            self._reached.discard(node)
            try:
                sock.connect(endpoint)
            except zmq.ZMQError as exc:
                sock.close()
                raise ValueError(
                    f"endpoint {endpoint!r} of neighbour {node!r}: {exc}; expected "
                    "e.g. tcp://10.0.0.2:7001"
                ) from exc
            self._out[node] = sock

    def send(
        self, dst: str, seq: int, payload: bytes, ttl: int = DEFAULT_TTL
    ) -> str | None:
        """Originate a message to ``dst``; return None, or the drop reason."""
        header = RouteHeader(dst, self.node_id, seq, ttl)
        reason = self._forward(header, payload, ttl)
        if reason is None:
            self.stats.sent += 1
        return reason

    def poll(self, timeout_s: float | None) -> bool:
        """True when a message waits in the inbox within ``timeout_s``."""
        timeout_ms = None if timeout_s is None else max(0, int(timeout_s * 1000))
        return bool(self._pull.poll(timeout_ms))

    def handle_one(self) -> tuple[RouteHeader, bytes] | None:
        """Take one message from the inbox (call after ``poll``).

        Returns (header, payload) when it is addressed to this node; relays
        or drops it and returns None otherwise.
        """
        parts = [self._pull.recv()]
        while self._pull.getsockopt(zmq.RCVMORE) and len(parts) < 3:
            parts.append(self._pull.recv())
        while self._pull.getsockopt(zmq.RCVMORE):
            self._pull.recv()  # discard the rest of an overlong message
        if len(parts) != 2:
            self._drop(None, BAD_HEADER, f"message of {len(parts)}+ frames, not 2")
            return None
        try:
            header = RouteHeader.decode(parts[0])
        except PipelineError as exc:
            self._drop(None, BAD_HEADER, str(exc))
            return None
        if header.dst == self.node_id:
            self.stats.delivered += 1
            return header, parts[1]
        if header.ttl <= 0:
            self._drop(header, TTL_EXPIRED, "no hops left")
            return None
        if self._forward(header, parts[1], header.ttl - 1) is None:
            self.stats.relayed += 1
        return None

    def drop(self, header: RouteHeader, reason: str, detail: str) -> None:
        """Count and log a message addressed here that cannot be used."""
        self._drop(header, reason, detail)

    def close(self) -> None:
        self._pull.close()
        for sock in self._out.values():
            sock.close()

    def _forward(self, header: RouteHeader, payload: bytes, ttl_out: int) -> str | None:
        """Send to the next hop with ``ttl_out``; drops log ``header`` as given.

        A neighbour that takes nothing for ``send_timeout_s`` has its link
        marked down in the row, which is recomputed on board, and the message
        tries the new next hop; it is dropped when no path is left.
        """
        while True:
            reason, busy = self._try_next_hop(header, payload, ttl_out)
            if busy is None:
                return reason
            waited_s = (
                self.send_timeout_s
                if busy in self._reached
                else self.first_contact_timeout_s
            )
            changed = self.table.mark_link_down(self.node_id, busy)
            self.stats.links_down.append(busy)
            log.warning(
                "%s marked its link to %s down after %s s without progress; "
                "row recomputed, %d destinations changed next hop",
                self.node_id, busy, waited_s, changed,
            )  # fmt: skip

    def _try_next_hop(
        self, header: RouteHeader, payload: bytes, ttl_out: int
    ) -> tuple[str | None, str | None]:
        """(drop reason or None, the neighbour that took nothing or None)."""
        try:
            entry = self.table.lookup(header.dst)
        except KeyError:
            reason = self._drop(header, UNKNOWN_DESTINATION, "not in the routing row")
            return reason, None
        if entry.next_hop is None:
            detail = "no path in the routing row"
            if self.stats.links_down:
                detail += f" (links down: {', '.join(self.stats.links_down)})"
            return self._drop(header, UNREACHABLE, detail), None
        now_s = self._clock_s()
        if entry.valid_until is not None and now_s > entry.valid_until.timestamp():
            reason = self._drop(
                header,
                ROUTE_EXPIRED,
                f"route valid until {entry.valid_until.isoformat()}, "
                f"{now_s - entry.valid_until.timestamp():.0f} s ago",
            )
            return reason, None
        sock = self._out.get(entry.next_hop)
        if sock is None:
            reason = self._drop(
                header,
                NO_ENDPOINT,
                f"next hop {entry.next_hop!r} is not in the neighbour directory",
            )
            return reason, None
        try:
            out = RouteHeader(header.dst, header.src, header.seq, ttl_out)
            sock.send_multipart([out.encode(), payload], copy=False)
        except zmq.Again:
            return None, entry.next_hop
        if entry.next_hop not in self._reached:
            self._reached.add(entry.next_hop)
            sock.setsockopt(zmq.SNDTIMEO, int(self.send_timeout_s * 1000))
        return None, None

    def _drop(self, header: RouteHeader | None, reason: str, detail: str) -> str:
        self.stats.dropped[reason] += 1
        n = self.stats.dropped[reason]
        if n <= _LOG_FIRST or n % _LOG_EVERY == 0:
            what = (
                "a message"
                if header is None
                else f"batch {header.seq} from {header.src} to {header.dst} "
                f"(ttl {header.ttl})"
            )
            log.warning(
                "%s dropped %s: %s: %s (%d %s so far)",
                self.node_id, what, reason, detail, n, reason,
            )  # fmt: skip
        return reason


class MeshStageWorker:
    """A mesh node that runs a stage (``stage``) or only relays (None).

    Results are addressed to ``next_node``: the next stage's node of the
    plan, or the ground's node after the last stage.  A stop addressed to
    this node is passed on to ``next_node``, and the node keeps serving: it
    is a router of the mesh as well, so it runs until its idle timeout or
    until its process is told to end.
    """

    def __init__(
        self, port: MeshPort, stage: Stage | None, next_node: str | None
    ) -> None:
        if stage is not None and next_node is None:
            raise ValueError(
                f"stage {stage.start}:{stage.stop} on {port.node_id!r} needs the "
                "node its results go to (next_node)"
            )
        self.port = port
        self.stage = stage
        self.next_node = next_node
        self.ttl = DEFAULT_TTL

    @property
    def stats(self) -> StageStats | None:
        return None if self.stage is None else self.stage.stats

    def step(self, timeout_s: float | None) -> bool:
        """Handle at most one message; False when none came within ``timeout_s``."""
        if not self.port.poll(timeout_s):
            return False
        item = self.port.handle_one()
        if item is None:
            return True
        header, payload = item
        if self.stage is None or self.next_node is None:
            self.port.drop(header, NO_STAGE, "this node runs no stage")
            return True
        out = self.stage.handle(payload)
        if out is None and _is_stop(payload):
            out = encode_stop()
        if out is not None:
            self.port.send(self.next_node, header.seq, out, self.ttl)
        return True

    def serve(
        self,
        idle_timeout_s: float | None = None,
        stop_requested: Callable[[], bool] = lambda: False,
    ) -> MeshStats:
        """Route and compute until idle for ``idle_timeout_s`` or asked to stop.

        ``stop_requested`` is checked between messages (at least every
        SERVE_SLICE_S), so a signal handler can set a flag and the message in
        hand is finished and counted before the loop ends.
        """
        last = time.monotonic()
        while not stop_requested():
            wait_s = SERVE_SLICE_S
            if idle_timeout_s is not None:
                wait_s = min(wait_s, max(0.0, last + idle_timeout_s - time.monotonic()))
            if self.step(wait_s):
                last = time.monotonic()
            elif idle_timeout_s is not None and (
                time.monotonic() - last >= idle_timeout_s
            ):
                log.info(
                    "%s idle for %s s, stopping", self.port.node_id, idle_timeout_s
                )
                break
        return self.port.stats


class MeshPipelineClient(_ClientBase):
    """The ground side in mesh mode: a mesh node that sources and sinks batches.

    Inputs go to ``first_node`` (the first stage's node of the plan) through
    the ground node's own routing row; the last stage addresses its results
    to this port's node.  Messages for other nodes that reach the ground are
    relayed like on any node.
    """

    def __init__(
        self,
        port: MeshPort,
        first_node: str,
        *,
        ttl: int = DEFAULT_TTL,
        max_elements: int = DEFAULT_MAX_ELEMENTS,
    ) -> None:
        self.port = port
        self.first_node = first_node
        self.ttl = ttl
        self.max_message_bytes = port.max_message_bytes
        self.max_elements = max_elements

    @property
    def endpoint(self) -> str:
        return self.port.endpoint

    def _send(self, seq: int, frame: bytes) -> None:
        reason = self.port.send(self.first_node, seq, frame, self.ttl)
        if reason is not None:
            raise PipelineError(
                f"batch {seq} cannot be routed from {self.port.node_id!r} to "
                f"{self.first_node!r}: {reason}",
                seq,
            )

    def _recv_frame(self, timeout_s: float) -> bytes | None:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.port.poll(left):
                return None
            item = self.port.handle_one()
            if item is not None:
                return item[1]
        return None

    def close(self) -> None:
        self.port.close()
