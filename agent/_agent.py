"""The agent loop: pull the model, train, compress, store, send, wait for the ACK.

One thread does everything, in this order each turn:

1. expire outbox entries past their expiry (simulated clock), logging each;
2. if the link is down, sleep ``link_poll_s`` and start over: updates wait in
   the outbox, nothing is sent;
3. for every outbox entry whose retry time has come (first at once, then
   exponential backoff with jitter, on the wall clock since it paces a
   physical link), ask the ground for credit (a small ``CREDIT`` message);
   the update itself, wrapped in a fresh envelope, goes when the ground
   grants it, so the ground bounds how many updates are in flight toward it;
4. with nothing in flight, say HELLO every ``hello_interval_s`` (the ground
   answers MODEL when a newer round or version exists, HEARTBEAT otherwise);
5. read replies: MODEL starts local training for a round not yet trained;
   CREDIT sends the granted update; ACK deletes the update from the outbox;
   NACK deletes it too and logs the reason (the ground will never take it).

An update is in the outbox (SQLite, fsync'd) before its first send, and the
round it was trained for is recorded in the same database, so an agent that
crashes or reboots resends what was not ACKed and never trains a round twice.
The compressor's error-feedback residual is saved after every compression so
a reboot keeps it.
"""

import logging
import threading
import time
from collections.abc import Callable
from importlib import import_module
from typing import Any

import numpy as np

from agent import _wire as wire
from agent._clock import SimClock
from agent._config import AgentConfig
from agent._keys import load_public, load_secret
from agent._model_patch import patched_model
from agent._outbox import Outbox, OutboxFull
from agent._trainer import Trainer
from agent._transport import CurveClientKeys, DealerTransport

log = logging.getLogger(__name__)

_RECV_CAP_S = 0.05  # longest wait for a reply before the loop looks around again


def make_trainer(section: dict[str, Any]) -> Trainer:
    """Build the trainer a ``[trainer]`` table names.

    ``kind = "mlp"``: :class:`agent._mlp.MLPTrainer` from the table.
    ``kind = "factory"``: ``factory = "module:callable"`` is imported and called
    with the rest of the table; it returns any object with ``initial_weights``
    and ``train`` (the :class:`agent._trainer.Trainer` protocol).
    """
    section = dict(section)
    kind = section.get("kind")
    if kind == "mlp":
        from agent._mlp import MLPTrainer

        return MLPTrainer.from_config(section)
    if kind == "factory":
        section.pop("kind")
        target = section.pop("factory", None)
        if not isinstance(target, str) or ":" not in target:
            raise ValueError(
                f'[trainer] factory = {target!r} must be "module:callable"'
            )
        module_name, attr = target.split(":", 1)
        return getattr(import_module(module_name), attr)(section)
    raise ValueError(f'[trainer] kind = {kind!r} must be "mlp" or "factory"')


def make_compressor(node_id: str, section: dict[str, Any]) -> Any | None:
    """A ``FederatedClient`` for ``[compression]``, or None to send dense deltas.

    The table holds ``CompressionConfig`` fields (``method``, ``sparsity``,
    ``error_feedback``, ``bits``, ``value_dtype``, ``chunk_size``,
    ``stochastic_rounding``, ``unbiased_scaling``); an absent or empty table
    sends every update as a dense delta.
    """
    if not section:
        return None
    from agent._compression import CompressionConfig, FederatedClient

    try:
        config = CompressionConfig.from_dict(dict(section))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"[compression]: {exc}") from None
    return FederatedClient(node_id, config)


def make_link_up(config: AgentConfig, clock: SimClock) -> Callable[[], bool]:
    """The link-state callable: predicted contacts from ``[orbit]``, else always up."""
    if config.orbit is None:
        return lambda: True
    from agent._contacts import ContactPredictor
    from agent._geo import Position
    from agent._stations import GroundStation

    stations = []
    for s in config.orbit["stations"]:
        s = dict(s)
        position = Position(
            float(s.pop("lat_deg")), float(s.pop("lon_deg")), float(s.pop("alt_km", 0))
        )
        stations.append(
            GroundStation(
                name=str(s.pop("name")),
                position=position,
                uplink_mbps=float(s.pop("uplink_mbps", 1.0)),
                downlink_mbps=float(s.pop("downlink_mbps", 1.0)),
                min_elevation_deg=float(s.pop("min_elevation_deg", 5.0)),
            )
        )
    predictor = ContactPredictor(
        config.orbit["tle_line1"], config.orbit["tle_line2"], stations
    )
    return lambda: predictor.link_up(clock.now())


class Agent:
    """One satellite's federated-learning agent; see the module docstring.

    ``trainer``, ``link_up`` and ``clock`` override what the config would
    build.  ``run()`` blocks until ``max_rounds`` updates are settled (ACKed
    or NACKed) or :meth:`stop`; ``start()`` runs it in a background thread.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        trainer: Trainer | None = None,
        link_up: Callable[[], bool] | None = None,
        clock: SimClock | None = None,
    ) -> None:
        self.config = config
        self.id = config.id
        self.clock = clock or config.clock or SimClock.realtime()
        self.trainer = trainer if trainer is not None else make_trainer(config.trainer)
        self.link_up = link_up or make_link_up(config, self.clock)
        self.compressor = make_compressor(config.id, config.compression)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self._client_state_path = config.state_dir / "compressor_state.npz"
        if self.compressor is not None and self._client_state_path.exists():
            self.compressor.load_state(self._client_state_path)
            log.info("%s: restored the error-feedback residual", self.id)
        self.outbox = Outbox(
            config.outbox_path,
            max_entries=config.outbox_max_entries,
            max_bytes=config.outbox_max_bytes,
            expiry_s=config.outbox_expiry_s,
        )
        self.backoff = config.backoff()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        self.held: tuple[int, int] | None = None  # (round, version) of the model
        self._weights: dict[str, np.ndarray] | None = None
        self._retry_at: dict[tuple[int, int], float] = {}
        # (kind, attempts) of each entry asked for credit, for its grant.
        self._asked: dict[tuple[int, int], tuple[int, int]] = {}
        self._next_hello = 0.0
        self._next_expiry = 0.0
        self._hellos_unanswered = 0
        self._last_heard = time.monotonic()
        self._transport: DealerTransport | None = None
        self.events: list[tuple[str, int, int]] = []  # (what, round, seq) for tests

    # ------------------------------------------------------------------ public

    @property
    def settled(self) -> int:
        """Updates ACKed or NACKed over the agent's whole life (durable)."""
        return self.outbox.get_meta("settled", 0)

    def start(self) -> "Agent":
        self._thread = threading.Thread(target=self._run_thread, name=self.id)
        self._thread.daemon = True
        self._thread.start()
        return self

    def _run_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:
            self.error = exc
            log.exception("%s: agent stopped on an error", self.id)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def join(self, timeout_s: float | None = None) -> bool:
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def run(self) -> None:
        """Serve until ``max_rounds`` updates are settled or :meth:`stop`."""
        cfg = self.config
        curve = None
        if cfg.curve:
            public, secret = load_secret(cfg.secret_key)
            curve = CurveClientKeys(public, secret, load_public(cfg.server_key))
        self._transport = DealerTransport(
            cfg.endpoint, cfg.id, options=cfg.transport, curve=curve
        )
        pending = len(self.outbox)
        log.info(
            "%s: connecting to %s (CURVE %s); %d un-ACKed update(s) in the outbox",
            cfg.id,
            cfg.endpoint,
            "on" if curve else "OFF",
            pending,
        )
        try:
            while not self._stop.is_set() and not self._done():
                self._turn()
        finally:
            self._transport.close()
            self.outbox.close()
        log.info("%s: stopped after %d settled update(s)", cfg.id, self._settled_cache)

    # -------------------------------------------------------------------- loop

    _settled_cache = 0

    def _done(self) -> bool:
        if not self.config.max_rounds:
            return False
        self._settled_cache = self.settled
        return self._settled_cache >= self.config.max_rounds and not len(self.outbox)

    def _now_s(self) -> float:
        return self.clock.now().timestamp()

    def _turn(self) -> None:
        if time.monotonic() >= self._next_expiry:
            self._next_expiry = time.monotonic() + 1.0
            for r, s in self.outbox.expire(self._now_s()):
                log.warning(
                    "%s: update (round %d, seq %d) expired unsent", self.id, r, s
                )
        if not self.link_up():
            self._stop.wait(self.config.link_poll_s)
            return
        self._send_due()
        in_flight = bool(self._retry_at) or bool(len(self.outbox))
        now = time.monotonic()
        if not in_flight and now >= self._next_hello:
            self._hello()
        if (
            now - self._last_heard > self.config.reconnect_after_s
            and self._transport is not None
        ):
            log.warning(
                "%s: nothing heard from the ground for %.0f s; reconnecting",
                self.id,
                now - self._last_heard,
            )
            self._transport.reconnect()
            self._last_heard = now
        data = self._transport.recv(self._recv_wait_s())
        while data is not None:
            self._last_heard = time.monotonic()
            self._on_frame(data)
            data = self._transport.recv(0)

    def _recv_wait_s(self) -> float:
        now = time.monotonic()
        soonest = min([self._next_hello, *self._retry_at.values()], default=now)
        return max(0.0, min(_RECV_CAP_S, soonest - now))

    def _send_due(self) -> None:
        now = time.monotonic()
        waiting = self.outbox.waiting()
        # Forget retry times of entries gone without an answer (expired, or
        # dropped from a full outbox), or the loop would wait on them.
        keys = {(r, s) for r, s, _, _ in waiting}
        for key in [k for k in self._retry_at if k not in keys]:
            del self._retry_at[key]
            self._asked.pop(key, None)
        for rnd, seq, kind, attempts in waiting:
            key = (rnd, seq)
            if self._retry_at.get(key, 0.0) > now:
                continue
            ask = wire.credit(
                self.id, self.outbox.next_seq(), self._now_s(), of=(self.id, rnd, seq)
            )
            self._transport.send(wire.encode(ask))
            self.outbox.mark_sent(rnd, seq, self._now_s())
            self._asked[key] = (kind, attempts)
            self._retry_at[key] = now + self.backoff.delay_s(attempts)

    def _on_credit(self, rnd: int, seq: int) -> None:
        """The ground grants an update: send it now, wait for its ACK."""
        key = (rnd, seq)
        body = self.outbox.body(rnd, seq) if key in self._asked else None
        if body is None:
            return  # settled or dropped meanwhile; the grant times out
        kind, attempts = self._asked[key]
        data = wire.encode_envelope(
            wire.MessageType(kind), self.id, rnd, seq, self._now_s(), body
        )
        sent = self._transport.send(data)
        # The ACK gets a full backoff period from now, however long the
        # grant took to come.
        self._retry_at[key] = time.monotonic() + self.backoff.delay_s(attempts)
        if sent:
            log.debug("%s: sent update %s (%d bytes)", self.id, key, len(data))

    def _hello(self) -> None:
        rnd, version = self.held if self.held is not None else (-1, -1)
        msg = wire.hello(
            self.id,
            self.outbox.next_seq(),
            self._now_s(),
            model_version=version,
            round=rnd,
            capabilities=["dense", "model_patch"]
            + (["compressed"] if self.compressor else []),
        )
        self._transport.send(wire.encode(msg))
        # Unanswered HELLOs back off; any reply resets the interval.
        self._next_hello = time.monotonic() + min(
            self.backoff.delay_s(self._hellos_unanswered),
            self.config.hello_interval_s,
        )
        self._hellos_unanswered += 1

    def _on_frame(self, data: bytes) -> None:
        try:
            msg = wire.decode(data, self.config.limits)
        except wire.WireError as exc:
            log.warning("%s: dropped a message from the ground: %s", self.id, exc)
            return
        self._hellos_unanswered = 0
        if msg.type is wire.MessageType.MODEL:
            self._on_model(msg)
        elif msg.type is wire.MessageType.CREDIT:
            _, rnd, seq = msg.body["of"]
            self._on_credit(rnd, seq)
        elif msg.type is wire.MessageType.ACK:
            _, rnd, seq = msg.body["of"]
            self._settle(rnd, seq, acked=True)
        elif msg.type is wire.MessageType.NACK:
            _, rnd, seq = msg.body["of"]
            log.warning(
                "%s: ground refused (round %d, seq %d): %s: %s",
                self.id,
                rnd,
                seq,
                msg.body["reason"],
                msg.body["detail"],
            )
            self._settle(rnd, seq, acked=False)
        elif msg.type is wire.MessageType.HEARTBEAT:
            self._next_hello = time.monotonic() + self.config.hello_interval_s

    def _settle(self, rnd: int, seq: int, *, acked: bool) -> None:
        removed = self.outbox.ack(rnd, seq) if acked else self.outbox.nack(rnd, seq)
        self._retry_at.pop((rnd, seq), None)
        self._asked.pop((rnd, seq), None)
        if removed:
            self.outbox.set_meta("settled", self.settled + 1)
            self.events.append(("ack" if acked else "nack", rnd, seq))
            log.info(
                "%s: update (round %d, seq %d) %s",
                self.id,
                rnd,
                seq,
                "ACKed" if acked else "NACKed",
            )
        # Ask for the next model soon.
        self._next_hello = time.monotonic()

    def _on_model(self, msg: wire.Message) -> None:
        rnd, version = msg.round, msg.body["version"]
        if "patch" in msg.body:
            weights = self._patched(msg)
            if weights is None:
                return
        else:
            weights = msg.body["weights"]
        self.held = (rnd, version)
        self._weights = weights
        trained = (
            self.outbox.get_meta("trained_round", -1),
            self.outbox.get_meta("trained_version", -1),
        )
        if (rnd, version) == trained:
            return
        if self.config.max_rounds and self.settled + len(self.outbox) >= (
            self.config.max_rounds
        ):
            return
        try:
            self._train(rnd, version, self._weights, msg.body["deadline_s"])
        except Exception:
            # A model the trainer cannot use (or a trainer bug) costs this
            # round, not the agent: log it and wait for the next model.
            log.exception("%s: training round %d failed; skipping it", self.id, rnd)
            self.outbox.set_meta("trained_round", rnd)
            self.outbox.set_meta("trained_version", version)

    def _patched(self, msg: wire.Message) -> dict[str, np.ndarray] | None:
        """The model a patch leads to, or None (and a HELLO for the full one)."""
        version = -1 if self.held is None else self.held[1]
        try:
            return patched_model(self._weights, version, msg.body)
        except ValueError as exc:
            log.warning("%s: model patch dropped (%s); HELLO for weights", self.id, exc)
            self.held = None
            self._next_hello = time.monotonic()
            return None

    def _train(
        self, rnd: int, version: int, weights: dict[str, np.ndarray], deadline_s: float
    ) -> None:
        started = time.monotonic()
        result = self.trainer.train({k: np.array(v) for k, v in weights.items()}, rnd)
        if self.compressor is not None:
            compressed = self.compressor.compress(result.delta, round_index=rnd)
            payload: dict[str, Any] = {"update": compressed.to_wire()}
        else:
            payload = {"delta": result.delta}
        body = wire.encode_body(
            wire.MessageType.UPDATE,
            wire.update_body(
                base_version=version,
                num_samples=result.num_samples,
                metrics=result.metrics,
                **payload,
            ),
        )
        try:
            seq, dropped = self.outbox.put(
                rnd,
                int(wire.MessageType.UPDATE),
                body,
                self._now_s(),
                meta={"trained_round": rnd, "trained_version": version},
            )
        except OutboxFull as exc:
            log.error("%s: round %d update not stored: %s", self.id, rnd, exc)
            return
        for r, s in dropped:
            log.warning(
                "%s: outbox full: dropped the update of round %d (seq %d)",
                self.id,
                r,
                s,
            )
        if self.compressor is not None:
            self.compressor.save_state(self._client_state_path)
        log.info(
            "%s: trained round %d from version %d in %.2f s: %d samples, %s; "
            "update seq %d, %d bytes, deadline in %.0f s",
            self.id,
            rnd,
            version,
            time.monotonic() - started,
            result.num_samples,
            ", ".join(f"{k}={v:.4g}" for k, v in result.metrics.items())
            or "no metrics",
            seq,
            len(body),
            deadline_s - self._now_s(),
        )
        if self.link_up():  # the pass may have ended while we trained
            self._send_due()
