"""Relaying over inter-satellite links for the demo agent (custody transfer).

When a satellite holds an update and a neighbour reaches a ground station
sooner than its own next pass, it may hand the update over an ISL to that
neighbour, which uploads it inside a RELAY (``agent._wire``) in its own pass.
Three pieces:

- ``RelayPlanner`` decides, from the run's contact plan (``agent._cgr``):
  relay when the best route of at most two contacts (ISL, then the
  neighbour's pass) arrives at least ``min_gain_s`` before the agent's own
  next pass delivers it (``max_hops=1``), and only while that ISL contact is
  up.  Routes are limited to one ISL hop: a relayer uploads what it holds in
  custody itself and never forwards it again, so custody chains stay one
  link long and a lost relayer costs at most one copy.
- ``CustodyServer`` is the agent's ISL endpoint (a ROUTER on its own thread):
  it takes a neighbour's RELAY, checks that the inner frame is an UPDATE of
  that neighbour, stores it durably in its own outbox and only then answers
  with a custody ACK naming the origin's (sender, round, seq).  The origin
  deletes its copy on that ACK, so a crash of either side loses nothing: the
  update is in at least one outbox until the ground ACKs it.
- ``RelayLedger`` maps each origin triple to the entry that holds it in the
  relayer's outbox, so that the ground's ACK or NACK (which names the
  origin) settles the right entry; it is rebuilt from the outbox at start.

The ISL endpoint uses CURVE when the demo does: the neighbour's public key
authenticates the server to the origin and encrypts the link, and a ZAP
handler admits only clients whose keys are in the run's allowlist, with the
key's name as the User-Id; custody is taken only of an update whose origin
is that authenticated sender.  The ground checks the relayer's key and that
the origin is a known agent, so trust is hop by hop: there is no end-to-end
signature, and a compromised relayer could forge another agent's update.
"""

import logging
import threading
import time
from dataclasses import dataclass

import zmq

from agent import _wire as W
from agent._auth import Allowlist, AllowlistAuthenticator
from agent._cgr import CgrRoute, ContactPlan, earliest_arrival
from agent._outbox import Outbox
from agent._transport import DealerTransport

logger = logging.getLogger(__name__)

Origin = tuple[str, int, int]

# A relay must beat the agent's own next pass by this much (simulated s):
# a small gain is not worth a second transmission and a custody hand-off.
DEFAULT_MIN_GAIN_S = 600.0
# Wall seconds to wait for a neighbour's custody ACK.
CUSTODY_WAIT_S = 0.5


@dataclass(frozen=True, slots=True)
class RelayChoice:
    neighbour: str
    station: str
    arrival_s: float
    direct_arrival_s: float | None
    route: CgrRoute


class RelayPlanner:
    """Chooses between holding an update and handing it to a neighbour."""

    def __init__(
        self,
        node_id: str,
        plan: ContactPlan,
        stations: list[str],
        *,
        min_gain_s: float = DEFAULT_MIN_GAIN_S,
    ) -> None:
        self.id = node_id
        self.plan = plan
        self.stations = list(stations)
        self.min_gain_s = float(min_gain_s)
        self.known = node_id in plan.nodes()

    def choose(self, t_s: float, bundle_bytes: int) -> RelayChoice | None:
        """A neighbour to hand the update to now, or None to hold it.

        ``t_s`` is seconds after the plan's epoch.
        """
        if not self.known or not self.stations:
            return None
        own = earliest_arrival(
            self.plan, self.id, t_s, bundle_bytes, self.stations, max_hops=1
        )
        best = earliest_arrival(
            self.plan, self.id, t_s, bundle_bytes, self.stations, max_hops=2
        )
        if best is None or best.is_direct:
            return None
        if own is not None and best.arrival_s > own.arrival_s - self.min_gain_s:
            return None
        isl = best.contacts[0]
        if not isl.start_s <= t_s < isl.end_s:
            return None  # the route departs later: wait for the link
        return RelayChoice(
            best.first_hop,
            best.destination,
            best.arrival_s,
            None if own is None else own.arrival_s,
            best,
        )

    def book(self, choice: RelayChoice) -> None:
        """Reserve the handed update's bytes on the ISL and the neighbour's pass.

        The booking lives in this agent's copy of the plan only: agents do
        not share bookings, which costs nothing while updates are kilobytes
        and a pass carries megabytes.
        """
        try:
            self.plan.book(choice.route)
        except ValueError as exc:
            logger.info("%s: relay route no longer fits: %s", self.id, exc)


def origin_of(frame: bytes) -> Origin:
    """(sender, round, seq) of an encoded UPDATE frame (decoded with bounds)."""
    message = W.decode(frame)
    return (message.sender, message.round, message.seq)


class RelayLedger:
    """Origin triple -> (round, seq) of the outbox entry holding it in custody."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._lock = threading.Lock()
        self._local: dict[Origin, tuple[int, int]] = {}
        for entry in outbox.pending():
            if entry.kind == int(W.MessageType.RELAY):
                try:
                    self._local[origin_of(entry.body)] = (entry.round, entry.seq)
                except W.WireError as exc:
                    # Stored after the same check, so only disk damage gets
                    # here; the ground will NACK it by the relay's own triple.
                    logger.warning("relay entry %d/%d: %s", entry.round, entry.seq, exc)

    def take(self, origin: Origin, frame: bytes, now_s: float) -> tuple[int, bool]:
        """Store ``frame`` durably unless held already; (local seq, duplicate)."""
        with self._lock:
            held = self._local.get(origin)
            if held is not None:
                return held[1], True
            seq, _ = self.outbox.put(origin[1], int(W.MessageType.RELAY), frame, now_s)
            self._local[origin] = (origin[1], seq)
            return seq, False

    def origin(self, round: int, seq: int) -> Origin | None:
        with self._lock:
            for origin, local in self._local.items():
                if local == (round, seq):
                    return origin
        return None

    def settle(self, origin: Origin, accepted: bool) -> bool:
        """Delete the custody copy of ``origin`` (the ground ACKed or NACKed it)."""
        with self._lock:
            local = self._local.pop(origin, None)
        if local is None:
            return False
        if accepted:
            return self.outbox.ack(*local)
        return self.outbox.nack(*local)

    def __len__(self) -> int:
        with self._lock:
            return len(self._local)


ISL_ZAP_DOMAIN = "isl"


class CustodyServer:
    """The agent's ISL endpoint: takes custody of neighbours' updates.

    With ``curve`` (this node's public and secret key) the link is
    encrypted; with ``allowlist`` too (z85 public key -> agent id) only
    those clients connect, and a RELAY must come from the agent its key
    names.
    """

    def __init__(
        self,
        node_id: str,
        bind: str,
        ledger: RelayLedger,
        now_s,
        on_custody,
        *,
        curve: tuple[bytes, bytes] | None = None,
        allowlist: dict[bytes, str] | None = None,
        limits: W.Limits | None = None,
    ) -> None:
        limits = limits or W.Limits()
        self.id = node_id
        self.ledger = ledger
        self.now_s = now_s
        self.on_custody = on_custody
        self.limits = limits
        self._seq = 0
        self._stop = threading.Event()
        # A context of its own, so its ZAP handler serves this socket only.
        self._ctx = zmq.Context()
        self._auth: AllowlistAuthenticator | None = None
        sock = self._ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes + 4096)
        if curve is not None:
            if allowlist is not None:
                self._auth = AllowlistAuthenticator(
                    self._ctx, Allowlist(names=dict(allowlist)), __name__ + ".auth"
                )
                self._auth.start()
                self._auth.configure_curve_callback(
                    ISL_ZAP_DOMAIN, self._auth.allowlist
                )
                sock.zap_domain = ISL_ZAP_DOMAIN.encode()
            sock.curve_server = True
            sock.curve_publickey, sock.curve_secretkey = curve
        sock.bind(bind)
        self._sock = sock
        self._thread = threading.Thread(
            target=self._serve, name=f"{node_id}-isl", daemon=True
        )
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            if not self._sock.poll(100):
                continue
            try:
                identity, frame = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except (zmq.Again, ValueError):
                continue  # a message of other than one frame: no answer
            # With ZAP, the name the client's key is filed under; else its
            # own claim (the routing id).
            peer = identity.bytes.decode("utf-8", "replace")
            if self._auth is not None:
                peer = frame.get("User-Id")
            reply = self._handle(peer, frame.bytes)
            try:
                self._sock.send_multipart([identity.bytes, reply], zmq.NOBLOCK)
            except zmq.ZMQError as exc:
                logger.info("%s: custody reply to %r lost: %s", self.id, identity, exc)
        self._sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._ctx.term()

    def _answer(self, of: Origin, reason: str | None, detail: str = "", dup=False):
        self._seq += 1
        if reason is None:
            message = W.ack(self.id, self._seq, self.now_s(), of=of, duplicate=dup)
        else:
            logger.warning("%s: refused custody of %s: %s", self.id, of, detail)
            message = W.nack(
                self.id, self._seq, self.now_s(), of=of, reason=reason, detail=detail
            )
        return W.encode(message)

    def _handle(self, peer: str, data: bytes) -> bytes:
        try:
            message = W.decode(data, self.limits)
            if message.type is not W.MessageType.RELAY:
                return self._answer(
                    (message.sender, message.round, message.seq),
                    "unexpected_type",
                    f"an ISL endpoint takes RELAY, not {message.type.name}",
                )
            inner = W.relayed_update(message.body, self.limits)
        except W.WireError as exc:
            of = (
                exc.sender or peer,
                -1 if exc.round is None else exc.round,
                -1 if exc.seq is None else exc.seq,
            )
            return self._answer(of, exc.reason, str(exc))
        of = (inner.sender, inner.round, inner.seq)
        if inner.sender != message.sender or message.sender != peer:
            return self._answer(
                (message.sender, message.round, message.seq),
                W.NackReason.IMPOSTOR,
                f"{peer!r} (claiming {message.sender!r}) handed an update of "
                f"{inner.sender!r}; custody is taken only of the sender's own",
            )
        seq, duplicate = self.ledger.take(of, message.body["message"], self.now_s())
        self.on_custody(of, seq, len(message.body["message"]), duplicate)
        return self._answer(of, None, dup=duplicate)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)


def hand_over(
    transport: DealerTransport,
    node_id: str,
    round: int,
    seq: int,
    frame: bytes,
    now_s: float,
) -> str:
    """Send ``frame`` to a neighbour in a RELAY and wait for its custody answer.

    Returns "ack", "nack" or "none" (nothing came back in time: keep it).
    """
    of = [node_id, round, seq]
    relay = W.encode(W.relay(node_id, round, seq, now_s, message=frame))
    if not transport.send(relay):
        return "none"
    deadline = time.time() + CUSTODY_WAIT_S
    while (remaining := deadline - time.time()) > 0:
        data = transport.recv(remaining)
        if data is None:
            break
        try:
            reply = W.decode(data)
        except W.WireError:
            continue
        if reply.body.get("of") != of:
            continue  # a late answer to an earlier hand-off
        if reply.type is W.MessageType.ACK:
            return "ack"
        if reply.type is W.MessageType.NACK:
            logger.warning(
                "%s: custody of %s refused: %s", node_id, of, reply.body["detail"]
            )
            return "nack"
    return "none"
