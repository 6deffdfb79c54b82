"""The ground aggregator daemon: a ROUTER socket, rounds, journal and checkpoints.

One thread owns the socket and the aggregation session.  It drains up to
``_BATCH`` waiting messages, handles each (decode, authenticate the sender,
dedupe, validate, ``session.submit``, append to the journal), fsyncs the
journal once for the batch, and only then sends the ACKs, so that an ACK
always names an update that a ``kill -9`` cannot take away.  Between batches
it closes the round when the rule says so:

- as soon as ``min_participants`` updates have arrived and every agent in
  ``expected_agents`` has reported (with no expected list: as soon as
  ``min_participants`` have arrived);
- otherwise at the round deadline, aggregating whatever arrived (below
  ``min_participants`` too: an ACKed update is never dropped), and carrying
  the model over unchanged only when nothing did.  Either way it is logged.

A round close writes the checkpoint to the page cache in this thread and
leaves its fsyncs and rename to a second one, while the next round's updates
are handled; every reply waits until the checkpoint is durable.  Agents send
an UPDATE only with a grant (``CREDIT``), and at most ``max_inflight`` grants
are out at once, which bounds the update frames libzmq queues for the daemon
whatever the number of agents.

FEDASYNC and FEDBUFF change the model as updates arrive; for them a "round"
is the checkpoint period and the unit the deadline applies to, and a round
close flushes FEDBUFF's partial buffer.

With CURVE on, a ``zmq.auth`` ``ThreadAuthenticator`` on an explicit ZAP
domain accepts only the public keys in the allowlist directory and maps each
key to its file name, which becomes the ZMQ ``User-Id``; an update whose
envelope names another agent than its key is refused as an impostor.
"""

import errno
import logging
import os
import threading
import time
from collections.abc import Callable

import numpy as np
import zmq

from agent import _wire as wire
from agent._auth import Allowlist, AllowlistAuthenticator
from agent._clock import SimClock
from agent._keys import load_secret
from agent._transport import apply_options
from ground import GradientAggregator, UpdateRejected
from ground._config import GroundConfig
from ground._journal import (
    Checkpoint,
    Journal,
    JournalRow,
    begin_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from ground._metrics import DaemonMetrics
from ground._model_patches import ModelFrames

log = logging.getLogger(__name__)

_BATCH = 256
# A batch also stops at this many received bytes, which bounds how long the
# first update of a batch waits for its ACK (the journal fsync).
_BATCH_BYTES = 8 * 1024 * 1024
_POLL_CAP_S = 0.2  # longest poll, so stop() and deadlines are seen promptly
_CLOSE_POLL_S = 0.002  # poll period while a checkpoint is being written
# libzmq's own cap sits a little above the application's, so that a message
# just over the cap reaches the decoder and is refused with a counted reason
# and a NACK; anything larger is cut off by libzmq with the connection.
_ZMQ_SLACK_BYTES = 4096


def initial_model(config: GroundConfig) -> dict[str, np.ndarray]:
    """The model round 0 starts from, as ``[model]`` says."""
    if config.model_npz is not None:
        with np.load(config.model_npz, allow_pickle=False) as npz:
            return {k: np.array(npz[k]) for k in npz.files}
    if config.model_trainer is not None:
        from agent._agent import make_trainer

        return {
            k: np.array(v)
            for k, v in make_trainer(config.model_trainer).initial_weights().items()
        }
    return {
        name: np.zeros(tuple(shape), dtype=np.float32)
        for name, shape in (config.model_zeros or {}).items()
    }


class GroundDaemon:
    """The aggregator daemon, usable in-process or from ``python -m ground serve``.

    ``start()`` binds, restores from the state directory and serves in a
    background thread; ``run()`` does the same in the calling thread until
    ``stop()`` or until ``max_rounds`` rounds have closed.
    """

    def __init__(
        self,
        config: GroundConfig,
        *,
        model: dict[str, np.ndarray] | None = None,
        clock: SimClock | None = None,
    ) -> None:
        self.config = config
        self.clock = clock or config.clock or SimClock.realtime()
        options = dict(config.aggregation_options)
        self.weights: dict[str, float] = dict(options.pop("weights", {}) or {})
        self.aggregator = GradientAggregator(config.strategy, **options)
        self.metrics = DaemonMetrics()
        self._model0 = model
        self._stop = threading.Event()
        self.finished = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.endpoint: str | None = None
        self.metrics_port: int | None = None
        self.on_round_closed: Callable[[int, str], None] | None = None
        self._seq = 0
        self._peers: dict[bytes, float] = {}
        self._ctx: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._auth: AllowlistAuthenticator | None = None
        self._journal: Journal | None = None
        # Full weights, or patches for agents that hold a recent model.
        self._frames = ModelFrames(
            config.id,
            lambda: (self._next_seq(), self._now_s()),
            lambda form: self.metrics.models_sent.labels(form).inc(),
        )
        # A round close writes its checkpoint in this thread while the loop
        # goes on ingesting the next round; every reply waits in _held until
        # that checkpoint is durable (see _close_round).
        self._closing: threading.Thread | None = None
        self._closing_error: BaseException | None = None
        self._closed_info: tuple | None = None
        self._held: list[tuple[bytes, bytes]] = []
        # Credit-based flow control: at most max_inflight agents hold a grant
        # to send an UPDATE; the others wait in arrival order.
        self._grants: dict[bytes, float] = {}  # identity -> grant expiry (mono s)
        self._credit_wait: dict[bytes, tuple[str, int, int]] = {}
        self._grants_out: list[tuple[bytes, bytes]] = []

    # ------------------------------------------------------------------ public

    @property
    def round(self) -> int:
        return self._round

    @property
    def version(self) -> int:
        return self.session.version

    @property
    def rounds_closed(self) -> int:
        return self._rounds_closed

    def model(self) -> dict[str, np.ndarray]:
        """A copy of the current global model."""
        return {k: np.array(v) for k, v in self.session.model.items()}

    def start(self, timeout_s: float = 30.0) -> "GroundDaemon":
        """Bind and restore, then serve in a background thread."""
        self._thread = threading.Thread(
            target=self._run_thread, name="ground-daemon", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the ground daemon did not start in {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def _run_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # surfaced to start() or join()
            self._error = exc
            self._ready.set()
            log.exception("ground daemon stopped on an error")

    def run(self) -> None:
        """Serve until :meth:`stop` or until ``max_rounds`` rounds have closed."""
        try:
            self._setup()
            self._ready.set()
            self._loop()
        finally:
            self._teardown()
            self.finished.set()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the daemon has finished (``max_rounds`` or stop)."""
        return self.finished.wait(timeout_s)

    # ------------------------------------------------------------------- setup

    def _now_s(self) -> float:
        return self.clock.now().timestamp()

    def _setup(self) -> None:
        cfg = self.config
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        self._checkpoint_path = cfg.state_dir / "checkpoint.msgpack"
        self._journal = Journal(cfg.state_dir)
        self._restore()

        self._ctx = zmq.Context()
        sock = self._ctx.socket(zmq.ROUTER)
        apply_options(sock, cfg.transport)
        sock.setsockopt(zmq.MAXMSGSIZE, cfg.limits.max_message_bytes + _ZMQ_SLACK_BYTES)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        # An agent that reboots reconnects with the same routing id while its
        # old connection may still look alive: let the new one take over.
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        if cfg.curve:
            allowlist = Allowlist(
                cfg.allowlist_dir, on_refused=self.metrics.auth_refused.inc
            )
            self._auth = AllowlistAuthenticator(self._ctx, allowlist, "ground.auth")
            self._auth.start()
            self._auth.configure_curve_callback(cfg.zap_domain, allowlist)
            public, secret = load_secret(cfg.secret_key)
            sock.curve_server = True
            sock.curve_publickey = public
            sock.curve_secretkey = secret
            sock.zap_domain = cfg.zap_domain.encode()
        bind = cfg.bind
        if bind.startswith("tcp://") and bind.endswith(":0"):
            bind = bind[:-2] + ":*"
        sock.bind(bind)
        self._sock = sock
        self.endpoint = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        if cfg.endpoint_file is not None:
            tmp = cfg.endpoint_file.with_name(cfg.endpoint_file.name + ".tmp")
            tmp.write_text(self.endpoint + "\n")
            os.replace(tmp, cfg.endpoint_file)
        if cfg.metrics_enabled:
            self.metrics_port = self.metrics.serve(cfg.metrics_addr, cfg.metrics_port)
        log.info(
            "serving %s on %s (CURVE %s, ZAP domain %r), round %d, model version %d, "
            "%d update(s) replayed; metrics on %s",
            self.aggregator.strategy.name,
            self.endpoint,
            "on" if cfg.curve else "OFF",
            cfg.zap_domain,
            self._round,
            self.session.version,
            self._round_count,
            f"http://{cfg.metrics_addr}:{self.metrics_port}/metrics"
            if self.metrics_port is not None
            else "(disabled)",
        )

    def _restore(self) -> None:
        cp = read_checkpoint(self._checkpoint_path)
        now = self._now_s()
        if cp is None:
            model = (
                self._model0 if self._model0 is not None else initial_model(self.config)
            )
            if not model:
                raise ValueError(
                    "the initial model has no tensors; set [model] in ground.toml"
                )
            cp = Checkpoint(0, 0, 0, now, model, {})
            write_checkpoint(self._checkpoint_path, cp)
            log.info(
                "no checkpoint in %s: starting round 0 from the initial model "
                "(%d tensors, %d parameters)",
                self.config.state_dir,
                len(model),
                sum(int(np.size(v)) for v in model.values()),
            )
        self.session = self.aggregator.start(
            cp.model, version=cp.version, optimizer_state=cp.optimizer_state or None
        )
        self._round = cp.round
        self._rounds_closed = cp.rounds_closed
        self._round_opened_s = cp.round_opened_s
        self._deadline_s = cp.round_opened_s + self.config.deadline_s
        self._round_agents: set[str] = set()
        self._round_count = 0
        dropped = self._journal.drop_after(self._round)
        if dropped:
            log.warning(
                "dropped the journal of round(s) %s: written while their "
                "checkpoint was being saved, so none of it was ACKed",
                dropped,
            )
        self._seen = self._journal.seen()

        # Replay the round's accepted updates in the order they were accepted;
        # the session is deterministic, so this rebuilds the state exactly.
        for row in self._journal.replay(self._round):
            try:
                body = wire.decode_body(
                    wire.MessageType.UPDATE, row.body, self.config.limits
                )
                update = wire.decode_update(body, self.config.limits)
                self.session.submit(
                    update,
                    num_samples=row.num_samples,
                    staleness=row.staleness,
                    weight=self.weights.get(row.agent),
                )
            except ValueError as exc:
                log.error(
                    "journal row (%s, %d, %d) no longer replays (%s); skipped",
                    row.agent,
                    row.round,
                    row.seq,
                    exc,
                )
                continue
            self._round_agents.add(row.agent)
            self._round_count += 1
        self.metrics.round.set(self._round)
        self.metrics.model_version.set(self.session.version)
        self.metrics.pending.set(self._round_count)

    def _teardown(self) -> None:
        if self._closing is not None:
            try:
                self._finish_close()
            except BaseException:
                log.exception("the last round's checkpoint failed")
        if self._sock is not None:
            # A clean stop lets the last ACKs out (an agent whose final ACK is
            # lost would resend to a daemon that is gone), but never hangs.
            self._sock.close(linger=max(self.config.transport.linger_ms, 1000))
            self._sock = None
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None
        if self._journal is not None:
            self._journal.close()
            self._journal = None
        self.metrics.stop()

    # -------------------------------------------------------------------- loop

    def _loop(self) -> None:
        sock = self._sock
        while not self._stop.is_set():
            if self._closing is not None and not self._closing.is_alive():
                self._finish_close()
            self._expire_grants()
            # Right after the ACKs went out, before the next poll: an agent
            # ACKed for the round that completes it may answer at once with
            # an update for the next round.
            if self._closing is None:
                self._maybe_close_round()
            if self._closing is None and self._max_rounds_reached():
                break
            wait_s = self.clock.wall_seconds(max(0.0, self._deadline_s - self._now_s()))
            if self._closing is not None:
                wait_s = min(wait_s, _CLOSE_POLL_S)
            if sock.poll(int(min(wait_s, _POLL_CAP_S) * 1000) + 1, zmq.POLLIN):
                replies: list[tuple[bytes, bytes]] = []
                batch_bytes = 0
                for _ in range(_BATCH):
                    if batch_bytes >= _BATCH_BYTES:
                        break
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    batch_bytes += sum(len(f) for f in frames)
                    try:
                        self._handle(frames, replies)
                    except Exception:
                        # A bug met by one message must not take the ground
                        # down for every satellite: count it, log it, go on.
                        self.metrics.rejected.labels("internal_error").inc()
                        log.exception("internal error handling a message; dropped")
                if self._grants_out:
                    self._send_grants()
                # Gauges once a batch: each set takes a lock.
                self.metrics.pending.set(self._round_count)
                self.metrics.model_version.set(self.session.version)
                # Durable first, then the ACKs: the heart of "no ACKed update lost".
                self._journal.sync()
                if self._closing is not None:
                    self._held.extend(replies)
                else:
                    for identity, data in replies:
                        self._send(identity, data)

    def _max_rounds_reached(self) -> bool:
        if self.config.max_rounds and self._rounds_closed >= self.config.max_rounds:
            log.info("closed %d round(s): max_rounds reached", self._rounds_closed)
            return True
        return False

    def _send(self, identity: bytes, data: bytes) -> bool:
        try:
            self._sock.send_multipart([identity, data], zmq.NOBLOCK, copy=False)
        except zmq.ZMQError as exc:
            if exc.errno == errno.EHOSTUNREACH:
                self.metrics.send_failures.labels("unreachable").inc()
                self._peers.pop(identity, None)
                self._frames.forget(identity)
                # Its slot goes to the next waiting agent at the next turn.
                self._credit_wait.pop(identity, None)
                self._grants.pop(identity, None)
            elif exc.errno == errno.EAGAIN:
                self.metrics.send_failures.labels("full").inc()
            else:
                raise
            return False
        self.metrics.bytes_out.inc(len(data))
        return True

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _reply(self, replies: list, identity: bytes, message: wire.Message) -> None:
        replies.append((identity, wire.encode(message)))

    def _refuse(
        self,
        replies: list,
        identity: bytes,
        reason: str,
        detail: str,
        of: tuple[str, int, int],
    ) -> None:
        self.metrics.rejected.labels(reason).inc()
        log.warning("refused %s from %r: %s", of, identity, detail)
        nack = wire.nack(
            self.config.id,
            self._next_seq(),
            self._now_s(),
            of=of,
            reason=reason,
            detail=detail,
        )
        replies.append((identity, wire.encode(nack)))

    def _handle(self, frames: list, replies: list) -> None:
        identity = frames[0].bytes
        peer = identity.decode("utf-8", "replace")
        nbytes = sum(len(f) for f in frames[1:])
        self.metrics.bytes_in.inc(nbytes)
        if len(frames) != 2:
            self._refuse(
                replies,
                identity,
                wire.NackReason.MALFORMED,
                f"a message must be one frame; {len(frames) - 1} arrived",
                (peer, -1, -1),
            )
            return
        frame = frames[1]
        try:
            msg = wire.decode(frame.buffer, self.config.limits)
        except wire.WireError as exc:
            self._refuse(
                replies,
                identity,
                exc.reason,
                str(exc),
                (
                    exc.sender or peer,
                    -1 if exc.round is None else exc.round,
                    -1 if exc.seq is None else exc.seq,
                ),
            )
            return
        of = (msg.sender, msg.round, msg.seq)
        # The routing id is the agent's own claim; with CURVE the User-Id is
        # the name its authenticated key is filed under.  Both must match.
        claimed = frame.get("User-Id") if self.config.curve else peer
        if msg.sender != peer or msg.sender != claimed:
            self._refuse(
                replies,
                identity,
                wire.NackReason.IMPOSTOR,
                f"message claims sender {msg.sender!r} but arrived from routing id "
                f"{peer!r} authenticated as {claimed!r}",
                of,
            )
            return
        self._peers[identity] = time.monotonic()

        if msg.type is wire.MessageType.UPDATE:
            if self._grants.pop(identity, None) is not None:
                self._grant_next()
            self._on_update(msg, identity, replies)
        elif msg.type is wire.MessageType.CREDIT:
            self._on_credit(msg, identity, replies)
        elif msg.type is wire.MessageType.RELAY:
            if self._grants.pop(identity, None) is not None:
                self._grant_next()
            self._on_relay(msg, identity, replies)
        elif msg.type is wire.MessageType.HELLO:
            self._on_hello(msg, identity, replies)
        elif msg.type is wire.MessageType.HEARTBEAT:
            self._reply(
                replies,
                identity,
                self._heartbeat(),
            )
        else:
            self._refuse(
                replies,
                identity,
                "unexpected_type",
                f"the ground does not accept {msg.type.name} messages",
                of,
            )

    # ------------------------------------------------------------ flow control

    def _on_credit(self, msg: wire.Message, identity: bytes, replies: list) -> None:
        """An agent asks to send an update: grant, queue, or ACK a duplicate.

        Grants are bounded by ``max_inflight``, so the UPDATE frames that
        libzmq queues toward the daemon stay bounded whatever the number of
        agents; an agent holds its update in its outbox until then.  A grant
        ends when its UPDATE arrives or after ``credit_timeout_s``.
        """
        sender, rnd, seq = msg.body["of"]
        of = (sender, rnd, seq)
        if sender != msg.sender:
            self._refuse(
                replies,
                identity,
                wire.NackReason.IMPOSTOR,
                f"{msg.sender!r} asked for credit for an update of {sender!r}",
                (msg.sender, rnd, seq),
            )
            return
        if of in self._seen:
            # Already aggregated: spare the transfer, ACK it again.
            self.metrics.updates_duplicate.inc()
            self._reply(
                replies,
                identity,
                wire.ack(
                    self.config.id, self._next_seq(), self._now_s(), of=of,
                    duplicate=True,
                ),
            )  # fmt: skip
            return
        if identity in self._grants or len(self._grants) < self.config.max_inflight:
            self._grant(identity, of)
        else:
            self._credit_wait[identity] = of  # an agent waits in one place

    def _grant(self, identity: bytes, of: tuple[str, int, int]) -> None:
        self._grants[identity] = time.monotonic() + self.config.credit_timeout_s
        data = wire.encode(
            wire.credit(self.config.id, self._next_seq(), self._now_s(), of=of)
        )
        self._grants_out.append((identity, data))

    def _send_grants(self) -> None:
        """Send the grants made so far, all together.

        Before the batch's fsync, not after: a grant promises nothing
        durable, and the sooner it leaves the fuller the pipeline.  Together,
        because each send that finds libzmq's I/O thread idle wakes it, and
        on a busy machine a wake-up can cost this thread its core.
        """
        out, self._grants_out = self._grants_out, []
        for identity, data in out:
            if not self._send(identity, data):
                self._grants.pop(identity, None)

    def _grant_next(self) -> None:
        while self._credit_wait and len(self._grants) < self.config.max_inflight:
            identity = next(iter(self._credit_wait))
            self._grant(identity, self._credit_wait.pop(identity))

    def _expire_grants(self) -> None:
        now = time.monotonic()
        expired = [i for i, until in self._grants.items() if until <= now]
        for identity in expired:
            del self._grants[identity]
        if expired:
            self.metrics.credits_expired.inc(len(expired))
        if self._credit_wait:
            self._grant_next()
        if self._grants_out:
            self._send_grants()

    def _heartbeat(self) -> wire.Message:
        """A HEARTBEAT naming the model version the daemon holds."""
        return wire.heartbeat(
            self.config.id,
            self._next_seq(),
            self._now_s(),
            model_version=self.session.version,
        )

    def _on_hello(self, msg: wire.Message, identity: bytes, replies: list) -> None:
        held = msg.body["model_version"]
        self._frames.heard(identity, held, "model_patch" in msg.body["capabilities"])
        if msg.round == self._round and held == self.session.version:
            self._reply(
                replies,
                identity,
                self._heartbeat(),
            )
            return
        replies.append((identity, self._model_for(identity)))

    def _model_for(self, identity: bytes) -> bytes:
        return self._frames.for_peer(
            identity, self._round, self.session.version, self._deadline_s,
            self.session.model,
        )  # fmt: skip

    def _on_update(self, msg: wire.Message, identity: bytes, replies: list) -> None:
        of = (msg.sender, msg.round, msg.seq)
        if of in self._seen:
            self.metrics.updates_duplicate.inc()
            log.info("duplicate update %s: ACKed again, not aggregated", of)
            self._reply(
                replies,
                identity,
                wire.ack(
                    self.config.id,
                    self._next_seq(),
                    self._now_s(),
                    of=of,
                    duplicate=True,
                ),
            )
            return

        def refuse(reason: str, detail: str) -> None:
            self._refuse(replies, identity, reason, detail, of)

        if msg.round > self._round:
            return refuse(
                wire.NackReason.FUTURE_ROUND,
                f"update for round {msg.round} but round {self._round} is open",
            )
        if self.aggregator.is_async:
            staleness = self.session.version - msg.body["base_version"]
            if staleness < 0:
                return refuse(
                    wire.NackReason.FUTURE_ROUND,
                    f"update trained from model version {msg.body['base_version']} "
                    f"but the ground is at version {self.session.version}",
                )
        else:
            if msg.round < self._round:
                return refuse(
                    wire.NackReason.STALE_ROUND,
                    f"update for round {msg.round} but round {self._round} is open; "
                    f"{self.aggregator.strategy.name} takes only the open round",
                )
            if msg.sender in self._round_agents:
                return refuse(
                    "already_reported",
                    f"{msg.sender} already has an update in round {self._round}",
                )
            staleness = 0
        try:
            update = wire.decode_update(msg.body, self.config.limits)
        except ValueError as exc:
            return refuse(wire.NackReason.BAD_UPDATE, str(exc))

        num_samples = msg.body["num_samples"]
        try:
            self.session.submit(
                update,
                num_samples=num_samples,
                staleness=staleness,
                weight=self.weights.get(msg.sender),
            )
        except UpdateRejected as exc:
            return refuse(exc.reason, str(exc))

        self._seen.add(of)
        self._round_agents.add(msg.sender)
        self._round_count += 1
        self.metrics.updates_accepted.inc()
        self._journal.write(
            JournalRow(
                msg.sender, msg.round, msg.seq, num_samples, staleness, msg.body_bytes
            ),
            self._round,
        )
        self._reply(
            replies,
            identity,
            wire.ack(self.config.id, self._next_seq(), self._now_s(), of=of),
        )

    def _known_agents(self) -> set[str]:
        """Agent ids the ground knows: its allowlist's names and expected agents."""
        known = set(self.config.expected_agents)
        if self._auth is not None:
            known.update(self._auth.allowlist.names())
        return known

    def _on_relay(self, msg: wire.Message, identity: bytes, replies: list) -> None:
        """An authenticated agent hands in another agent's UPDATE (custody relay).

        The inner frame is decoded with the same limits as any frame and then
        taken exactly as its origin's UPDATE: the same dedupe on (origin,
        round, seq), journal and NACK reasons; the ACK or NACK goes to the
        relayer and names the origin's triple.  The origin must be a known
        agent (allowlisted, or expected): without CURVE and an empty
        ``expected_agents`` no origin is known and every relay is refused.
        """
        try:
            inner = wire.relayed_update(msg.body, self.config.limits)
        except wire.WireError as exc:
            of = (
                exc.sender or msg.sender,
                msg.round if exc.round is None else exc.round,
                msg.seq if exc.seq is None else exc.seq,
            )
            self._refuse(replies, identity, exc.reason, f"relayed: {exc}", of)
            return
        of = (inner.sender, inner.round, inner.seq)
        if inner.sender not in self._known_agents():
            self._refuse(
                replies,
                identity,
                "unknown_origin",
                f"{msg.sender!r} relayed an update of {inner.sender!r}, which is "
                "neither in the allowlist nor an expected agent",
                of,
            )
            return
        fresh = of not in self._seen
        self._on_update(inner, identity, replies)
        if fresh and of in self._seen:
            self.metrics.updates_relayed.inc()
            log.info("update %s relayed by %s accepted", of, msg.sender)

    # ------------------------------------------------------------------ rounds

    def _maybe_close_round(self) -> None:
        # KRUM cannot step on fewer than 2f + 3 updates: before the deadline
        # a round waits for them even when min_participants is lower.
        quorum = max(self.config.min_participants, self.aggregator.min_updates)
        enough = self._round_count >= quorum
        expected = set(self.config.expected_agents)
        if enough and expected <= self._round_agents:
            self._close_round("all expected agents reported" if expected else
                              "min_participants reached")  # fmt: skip
        elif self._now_s() >= self._deadline_s:
            self._close_round("deadline passed")

    def _close_round(self, why: str) -> None:
        """Close the open round; an ACKed update always ends up in the model.

        At the deadline a round aggregates whatever arrived, even below
        ``min_participants`` (outcome ``partial``), and KRUM / MULTI_KRUM with
        fewer than 2f + 3 updates fall back to their coordinate-wise median
        (outcome ``median_fallback``); only a round with no update at all
        carries the model over unchanged.  Discarding would lose updates the
        agents were told are safe and have deleted from their outboxes.
        """
        self._journal.sync()  # the checkpoint must not get ahead of the journal
        now = self._now_s()
        n = self._round_count
        participants = len(self._round_agents)
        quorum = self.config.min_participants
        if n == 0:
            self.session.close_round()  # nothing pending; keeps the model
            outcome = "carried_over"
        elif self.session.needs_fallback:
            self.session.close_round(median_fallback=True)
            outcome = "median_fallback"
        else:
            self.session.close_round()
            below = n < quorum and not self.aggregator.is_async
            outcome = "partial" if below else "aggregated"
        if outcome == "aggregated":
            log.info(
                "round %d closed (%s): aggregated %d update(s) from %d agent(s); "
                "model version %d",
                self._round, why, n, participants, self.session.version,
            )  # fmt: skip
        elif outcome == "partial":
            log.warning(
                "round %d closed (%s): aggregated %d update(s) from %d agent(s), "
                "below min_participants=%d; model version %d",
                self._round, why, n, participants, quorum, self.session.version,
            )  # fmt: skip
        elif outcome == "median_fallback":
            log.warning(
                "round %d closed (%s): aggregated %d update(s) from %d agent(s) "
                "by coordinate-wise median, since %s needs %d; model version %d",
                self._round, why, n, participants, self.aggregator.strategy.name,
                self.aggregator.min_updates, self.session.version,
            )  # fmt: skip
        else:
            log.warning(
                "round %d closed (%s) with no updates: model carried over unchanged",
                self._round, why,
            )  # fmt: skip

        closed = self._round
        duration_s = now - self._round_opened_s
        self._round += 1
        self._round_opened_s = now
        self._deadline_s = now + self.config.deadline_s
        checkpoint = Checkpoint(
            self._round,
            self.session.version,
            self._rounds_closed + 1,
            now,
            self.session.model,
            self.session.optimizer_state,
        )
        keys = self._journal.take_keys(closed)
        self.metrics.pending.set(0)
        self._round_agents = set()
        self._round_count = 0
        self._closed_info = (closed, outcome, duration_s, participants)

        # Written to the page cache here (a memory copy of the model); made
        # durable by fsync and rename in a second thread, while this one goes
        # on decoding, aggregating and journaling the next round's updates.
        # Their ACKs wait until the checkpoint is durable, so a restart from
        # the older checkpoint finds none of them ACKed (Journal.drop_after).
        # The second thread only makes system calls, which release the GIL:
        # Python work in it would make this thread wait for the GIL, for a
        # whole scheduler slice on a loaded machine.
        pending = [
            begin_checkpoint(self._checkpoint_path, checkpoint)[0],
            self._journal.begin_release(closed, keys),
        ]

        def save() -> None:
            try:
                for p in pending:
                    p.commit()
            except BaseException as exc:
                self._closing_error = exc

        self._closing = threading.Thread(target=save, name="ground-checkpoint")
        self._closing.start()

    def _finish_close(self) -> None:
        """Once the round's checkpoint is durable: count it, push, send replies."""
        thread, self._closing = self._closing, None
        if thread.ident is not None:
            thread.join()
        error, self._closing_error = self._closing_error, None
        if error is not None:
            raise error
        closed, outcome, duration_s, participants = self._closed_info
        self.metrics.rounds_closed.labels(outcome).inc()
        self.metrics.round_duration.observe(max(0.0, duration_s))
        self.metrics.participants.set(participants)
        self.metrics.round.set(self._round)
        self.metrics.model_version.set(self.session.version)
        self._rounds_closed += 1  # after the checkpoint: tests and callers poll this
        if self.on_round_closed is not None:
            self.on_round_closed(closed, outcome)

        held, self._held = self._held, []
        for identity, data in held:
            self._send(identity, data)
        # Push the new round's model to every agent seen; ROUTER_MANDATORY
        # turns a departed agent into EHOSTUNREACH, and it is forgotten.
        if self.config.push_model and not (
            self.config.max_rounds and self._rounds_closed >= self.config.max_rounds
        ):
            for identity in list(self._peers):
                self._send(identity, self._model_for(identity))
