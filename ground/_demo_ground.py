"""The demo's ground aggregator, as its own process.

``python -m ground._demo_ground CONFIG.json`` binds a ZeroMQ ROUTER (CURVE
server, agents authenticated against an allowlist directory through a ZAP
handler), holds the global model in an ``AggregationSession`` of
``ground._aggregate``, and answers agents:

- HELLO with an older model version: the current global model (MODEL);
- UPDATE: validated and aggregated, then ACKed; a duplicate (same sender,
  round and seq) is ACKed again and not aggregated twice; an update the
  strategy refuses (too stale, malformed) is NACKed with the reason.

Asynchronous strategies (FEDBUFF, FEDASYNC) step the model as updates arrive.
FEDAVG runs synchronous rounds: round r hands out model version r and closes
when every satellite has reported or when the round's deadline (simulated
seconds) has passed with at least one update; with none it waits for one.
A satellite that died therefore slows rounds to the deadline but never
stops them.

After every model step the ground scores the model on its test split and
appends a line to its event log (JSON lines) that the launcher reads for the
progress bar and the report.
"""

import json
import logging
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from agent import _wire as W
from agent._clock import SimClock
from agent._demo_agent import EventLog
from agent._keys import load_allowlist, load_secret
from agent._mlp import evaluate, init_weights
from agent._transport import TransportOptions, apply_options
from ground._aggregate import GradientAggregator
from ground._aggregate_updates import UpdateRejected

logger = logging.getLogger(__name__)

ZAP_DOMAIN = "orbitfl"


class DemoGround:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.clock = SimClock.from_dict(config["clock"])
        self.events = EventLog(config["events"], self.clock)
        m = config["model"]
        weights = init_weights(m["input_dim"], m["hidden"], m["num_classes"], m["seed"])
        self.num_params = int(sum(a.size for a in weights.values()))
        self.aggregator = GradientAggregator(
            config["strategy"], **config.get("aggregator", {})
        )
        self.sync = not self.aggregator.is_async
        self.session = self.aggregator.start(weights)
        self.satellites = list(config["satellites"])
        self.round_deadline_s = float(config.get("round_deadline_s", 6 * 3600.0))
        self.round_open_s = 0.0
        self.reported: set[str] = set()
        test = np.load(config["test_data"])
        self.X_test, self.y_test = test["X"], test["y"]
        self.seen: set[tuple[str, int, int]] = set()
        self.seq = 0
        self.bytes_since_step = 0
        self.updates_since_step = 0
        self.stopping = False

        self.context = zmq.Context.instance()
        self.auth = None
        self.key_ids: dict[bytes, str] = {}
        self.socket = self.context.socket(zmq.ROUTER)
        apply_options(self.socket, TransportOptions())
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        curve = config.get("curve")
        if curve:
            self.auth = ThreadAuthenticator(self.context, log=logger)
            self.auth.start()
            self.auth.configure_curve(domain=ZAP_DOMAIN, location=curve["allow_dir"])
            self.key_ids = load_allowlist(curve["allow_dir"])
            public, secret = load_secret(curve["secret"])
            self.socket.curve_server = True
            self.socket.curve_publickey = public
            self.socket.curve_secretkey = secret
            self.socket.zap_domain = ZAP_DOMAIN.encode()
        self.socket.bind(config["bind"])
        self._score("start")

    # -- helpers -----------------------------------------------------------

    def _reply(self, routing_id: bytes, message: W.Message) -> int:
        data = W.encode(message)
        try:
            self.socket.send_multipart([routing_id, data], zmq.NOBLOCK)
        except (zmq.Again, zmq.ZMQError) as exc:
            # The agent went away (ROUTER_MANDATORY): it will ask again.
            logger.info("reply to %r not delivered: %s", routing_id, exc)
            return 0
        return len(data)

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _score(self, why: str) -> None:
        accuracy = evaluate(self.session.model, self.X_test, self.y_test)
        self.events.write(
            "model",
            version=self.session.version,
            accuracy=accuracy,
            why=why,
            round_bytes=self.bytes_since_step,
            round_updates=self.updates_since_step,
        )
        self.bytes_since_step = 0
        self.updates_since_step = 0

    def _send_model(self, routing_id: bytes, sender: str) -> None:
        weights = {k: np.asarray(v, np.float32) for k, v in self.session.model.items()}
        n = self._reply(
            routing_id,
            W.model(
                W.GROUND_ID,
                self.session.version,
                self._next_seq(),
                self.clock.elapsed_s(),
                version=self.session.version,
                deadline_s=self.round_open_s + self.round_deadline_s,
                weights=weights,
            ),
        )
        if n:
            self.events.write(
                "model_sent", to=sender, version=self.session.version, bytes=n
            )

    # -- message handling --------------------------------------------------

    def _on_hello(self, routing_id: bytes, message: W.Message) -> None:
        held = int(message.body["model_version"])
        if held < self.session.version or held < 0:
            self._send_model(routing_id, message.sender)

    def _on_update(self, routing_id: bytes, message: W.Message, nbytes: int) -> None:
        key = (message.sender, message.round, message.seq)
        of = key
        if key in self.seen:
            self._reply(
                routing_id,
                W.ack(W.GROUND_ID, self._next_seq(), self.clock.elapsed_s(), of=of,
                      duplicate=True),
            )  # fmt: skip
            return
        base = int(message.body["base_version"])
        staleness = self.session.version - base
        reason, detail = None, ""
        if staleness < 0:
            reason = W.NackReason.FUTURE_ROUND
            detail = f"base_version {base} is ahead of the model {self.session.version}"
        else:
            try:
                update = W.decode_update(message.body)
                if not isinstance(update, dict):
                    # The session's validator reads a compressed update's
                    # tensor table in a form agent._compression does not
                    # produce (shape objects, not (shape, dtype) pairs), so
                    # hand it the dense delta: one model-sized array per
                    # update, which this small model affords.
                    update = update.decompress()
                changed = self.session.submit(
                    update,
                    num_samples=int(message.body["num_samples"]),
                    staleness=staleness,
                )
            except UpdateRejected as exc:
                reason = (
                    W.NackReason.STALE_ROUND
                    if getattr(exc, "reason", "") == "stale"
                    else W.NackReason.REJECTED
                )
                detail = str(exc)
            except ValueError as exc:
                reason, detail = W.NackReason.BAD_UPDATE, str(exc)
        self.events.write(
            "update",
            sender=message.sender,
            round=message.round,
            seq=message.seq,
            bytes=nbytes,
            base_version=base,
            staleness=staleness,
            accepted=reason is None,
            reason=None if reason is None else str(reason),
        )
        if reason is not None:
            self._reply(
                routing_id,
                W.nack(W.GROUND_ID, self._next_seq(), self.clock.elapsed_s(), of=of,
                       reason=reason, detail=detail),
            )  # fmt: skip
            return
        self.seen.add(key)
        self.bytes_since_step += nbytes
        self.updates_since_step += 1
        self._reply(
            routing_id,
            W.ack(W.GROUND_ID, self._next_seq(), self.clock.elapsed_s(), of=of),
        )
        if self.sync:
            self.reported.add(message.sender)
            if self.reported >= set(self.satellites):
                self._close_round("all satellites reported")
        elif changed:
            self._score("step")

    def _close_round(self, why: str) -> None:
        self.session.close_round()
        self.reported.clear()
        self.round_open_s = self.clock.elapsed_s()
        self._score(why)

    def _check_deadline(self) -> None:
        if not self.sync:
            return
        if self.clock.elapsed_s() - self.round_open_s < self.round_deadline_s:
            return
        if self.session.pending:
            logger.info(
                "round %d deadline: closing with %d of %d satellites",
                self.session.version,
                len(self.reported),
                len(self.satellites),
            )
            self._close_round(f"deadline with {len(self.reported)} satellites")

    def _check_sender(self, frame: zmq.Frame, message: W.Message) -> bool:
        """With CURVE, the sender id must be the one the key was issued to."""
        if not self.key_ids:
            return True
        user = frame.get("User-Id")
        owner = self.key_ids.get(user.encode() if isinstance(user, str) else user)
        return owner == message.sender

    def run(self) -> int:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        try:
            while not self.stopping:
                self._check_deadline()
                if not poller.poll(100):
                    continue
                routing_id, frame = self.socket.recv_multipart(copy=False)
                data = frame.bytes
                try:
                    message = W.decode(data)
                except W.WireError as exc:
                    self.events.write("dropped", reason=str(exc.reason))
                    continue
                if not self._check_sender(frame, message):
                    self.events.write("impostor", sender=message.sender)
                    continue
                if message.type is W.MessageType.HELLO:
                    self._on_hello(routing_id.bytes, message)
                elif message.type is W.MessageType.UPDATE:
                    self._on_update(routing_id.bytes, message, len(data))
        finally:
            self.events.write(
                "stop",
                version=self.session.version,
                pending=self.session.pending,
            )
            self.events.close()
            self.socket.close(linger=0)
            if self.auth is not None:
                self.auth.stop()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m ground._demo_ground CONFIG.json", file=sys.stderr)
        return 2
    config = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(
        level=config.get("log_level", "WARNING"),
        format="%(asctime)s %(levelname)s ground: %(message)s",
    )
    ground = DemoGround(config)

    def stop(signum, frame) -> None:
        ground.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    ready = config.get("ready_file")
    if ready:
        Path(ready).write_text(str(time.time()))
    return ground.run()


if __name__ == "__main__":
    sys.exit(main())
