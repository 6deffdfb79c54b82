"""One satellite of the demo, as its own process: train, hold, upload in contact.

``python -m agent._demo_agent CONFIG.json`` runs it.  The agent

- predicts its own contact windows from its TLE and the station list
  (``agent._demo_orbit``), on the simulated clock all demo processes share;
- stays silent outside those windows: the update waits in the durable SQLite
  outbox (``agent._outbox``) until a window opens;
- inside a window it says HELLO with the model version it holds, sends every
  un-ACKed update, takes the new global model if the ground has one, trains
  on its own ``.npz`` shard (``agent._mlp``), compresses the change with
  error feedback when compression is configured, stores it durably and sends
  it if the window is still open;
- deletes an update from the outbox only when its ACK arrives;
- out of contact, when the run's contact plan says a neighbour reaches the
  ground sooner than its own next pass, hands the update over an ISL to that
  neighbour while their link is up (``agent._demo_relay``: custody transfer,
  contact graph routing); it deletes its copy only on the neighbour's
  custody ACK, and uploads in its own passes, inside RELAY messages, what
  neighbours handed to it.

It composes the project's pieces (wire format, DEALER transport with CURVE,
outbox, trainer, pass predictor) rather than running ``python -m agent run``
for two reasons: that loop trains once per ground *round*, which under
FEDBUFF/FEDASYNC is the daemon's checkpoint period (hours), whereas this one
trains once per new model *version*; and the report needs an event log of
what was sent when, over which station, and which ACKs came back (JSON
lines, read by the launcher).  It never imports scikit-learn.
"""

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from agent import _wire as W
from agent._clock import SimClock
from agent._demo_orbit import Window, own_windows, plan_from_dict, station_from_dict
from agent._demo_relay import (
    DEFAULT_MIN_GAIN_S,
    CustodyServer,
    RelayLedger,
    RelayPlanner,
    hand_over,
)
from agent._keys import load_allowlist_checked, load_public, load_secret
from agent._mlp import MLPTrainer
from agent._model_patch import patched_model
from agent._outbox import Outbox
from agent._transport import CurveClientKeys, DealerTransport

logger = logging.getLogger(__name__)

# How long to wait for the ground's answer to one message, in wall seconds.
# A window lasts about a second of wall time at 600x, so keep this short.
REPLY_WAIT_S = 0.05
# Wall seconds to wait for any answer to a HELLO before saying it again.
HELLO_RETRY_S = 1.0


class EventLog:
    """Append-only JSON lines, flushed per line so a killed process keeps them."""

    def __init__(self, path: str | Path, clock: SimClock) -> None:
        self._file = open(path, "a", buffering=1)
        self._clock = clock
        self._lock = threading.Lock()  # the ISL endpoint's thread writes too

    def write(self, event: str, **fields: Any) -> None:
        record = {"t_sim_s": round(self._clock.elapsed_s(), 3), "event": event}
        record.update(fields)
        with self._lock:
            self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


class _Compressor:
    """Top-k/quantised compression with error feedback, when configured."""

    def __init__(self, node_id: str, config: dict[str, Any] | None) -> None:
        self.client = None
        if config:
            from agent._compression import CompressionConfig, FederatedClient

            self.client = FederatedClient(node_id, CompressionConfig(**config))

    def encode(self, delta: dict[str, np.ndarray], round_index: int) -> dict[str, Any]:
        if self.client is None:
            return {"delta": delta}
        update = self.client.compress(delta, round_index=round_index)
        return {"update": update.to_wire()}


class DemoAgent:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.id = config["id"]
        self.clock = SimClock.from_dict(config["clock"])
        self.end_s = float(config["end_sim_s"])
        self.events = EventLog(config["events"], self.clock)
        self.trainer = MLPTrainer.from_config(config["trainer"])
        self.compressor = _Compressor(self.id, config.get("compression"))
        self.outbox = Outbox(config["outbox"])
        self.model: dict[str, np.ndarray] | None = None
        self.model_version = -1
        # The ground's round the held model was handed out in; an UPDATE is
        # filed under it (the daemon refuses updates for a round not yet open).
        self.model_round = -1
        self.seq = 0
        self.stopping = False
        self.trained_version = -1
        self.heard = False
        self.hello_wall = 0.0
        curve = None
        if config.get("curve"):
            public, secret = load_secret(config["curve"]["secret"])
            curve = CurveClientKeys(
                public, secret, load_public(config["curve"]["server_public"])
            )
        self.transport = DealerTransport(config["endpoint"], self.id, curve=curve)
        name, line1, line2 = config["tle"]
        self.windows = own_windows(
            self.id,
            line1,
            line2,
            [station_from_dict(s) for s in config["stations"]],
            self.clock.sim_epoch,
            self.end_s,
        )
        self.ledger = RelayLedger(self.outbox)
        self.isl: dict[str, DealerTransport] = {}
        self.planner: RelayPlanner | None = None
        self.custody: CustodyServer | None = None
        self.next_relay_wall = 0.0
        relay = config.get("relay")
        if relay:
            self._start_relay(relay)
        self.events.write("start", windows=len(self.windows))

    def _start_relay(self, relay: dict[str, Any]) -> None:
        plan = plan_from_dict(json.loads(Path(relay["plan"]).read_text()))
        self.planner = RelayPlanner(
            self.id,
            plan,
            [s["name"] for s in self.config["stations"]],
            min_gain_s=float(relay.get("min_gain_s", DEFAULT_MIN_GAIN_S)),
        )
        curve = self.config.get("curve")
        own_keys = None
        if curve:
            public, secret = load_secret(curve["secret"])
            own_keys = (public, secret)
        allowlist = None
        if own_keys is not None and relay.get("allowlist"):
            allowlist, problems = load_allowlist_checked(relay["allowlist"])
            for problem in problems:
                logger.warning("%s: ISL allowlist: %s", self.id, problem)
        self.custody = CustodyServer(
            self.id,
            relay["bind"],
            self.ledger,
            self._now_s,
            self._on_custody,
            curve=own_keys,
            allowlist=allowlist,
        )
        for name, peer in relay["neighbours"].items():
            keys = None
            if own_keys is not None:
                keys = CurveClientKeys(*own_keys, load_public(peer["public"]))
            self.isl[name] = DealerTransport(peer["endpoint"], self.id, curve=keys)

    def _on_custody(self, of, seq: int, nbytes: int, duplicate: bool) -> None:
        self.events.write(
            "custody",
            origin=of[0],
            round=of[1],
            seq=of[2],
            local_seq=seq,
            bytes=nbytes,
            duplicate=duplicate,
        )

    # -- messages --------------------------------------------------------

    def _now_s(self) -> float:
        """Unix seconds on the simulated clock, as the wire's send times are."""
        return self.clock.now().timestamp()

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _send(self, message: W.Message) -> int:
        data = W.encode(message)
        self.transport.send(data)
        return len(data)

    def _send_pending(self, window: Window) -> None:
        for entry in self.outbox.pending():
            now_s = self._now_s()
            ids: dict[str, Any] = {"round": entry.round, "seq": entry.seq}
            if entry.kind == int(W.MessageType.RELAY):
                origin = self.ledger.origin(entry.round, entry.seq)
                if origin is not None:
                    ids = {"origin": origin[0], "round": origin[1], "seq": origin[2]}
                    ids["local_seq"] = entry.seq
                body = W.encode_body(W.MessageType.RELAY, {"message": entry.body})
                data = W.encode_envelope(
                    W.MessageType.RELAY, self.id, entry.round, entry.seq, now_s, body
                )
            else:
                data = W.encode_envelope(
                    W.MessageType.UPDATE, self.id, entry.round, entry.seq, now_s,
                    entry.body,
                )  # fmt: skip
            if not self.transport.send(data):
                return
            self.outbox.mark_sent(entry.round, entry.seq, now_s)
            self.events.write(
                "sent",
                **ids,
                bytes=len(data),
                station=window.station,
                attempt=entry.attempts + 1,
            )

    def _maybe_relay(self) -> None:
        """Out of contact: hand updates to a neighbour that reaches ground sooner."""
        if self.planner is None or time.time() < self.next_relay_wall:
            return
        self.next_relay_wall = time.time() + 0.25
        for entry in self.outbox.pending():
            if entry.kind != int(W.MessageType.UPDATE):
                continue  # what neighbours handed over goes down, never on
            now_s = self._now_s()
            frame = W.encode_envelope(
                W.MessageType.UPDATE, self.id, entry.round, entry.seq, now_s,
                entry.body,
            )  # fmt: skip
            t_s = self.clock.elapsed_s()  # seconds after the plan's epoch
            choice = self.planner.choose(t_s, len(frame))
            if choice is None or choice.neighbour not in self.isl:
                continue
            answer = hand_over(
                self.isl[choice.neighbour], self.id, entry.round, entry.seq, frame,
                now_s,
            )  # fmt: skip
            if answer != "ack":
                # No answer (the neighbour is down or slow): keep it, try later.
                self.next_relay_wall = time.time() + 1.0
                return
            # The neighbour holds it durably now: only then drop our copy (the
            # outbox counts it as acked; the event log says by whom).
            self.outbox.ack(entry.round, entry.seq)
            self.planner.book(choice)
            self.events.write(
                "handed",
                round=entry.round,
                seq=entry.seq,
                to=choice.neighbour,
                bytes=len(frame),
                decided_s=round(t_s, 3),
                via_station=choice.station,
                arrival_s=round(choice.arrival_s, 1),
                own_arrival_s=None
                if choice.direct_arrival_s is None
                else round(choice.direct_arrival_s, 1),
            )

    def _handle(self, data: bytes) -> None:
        try:
            message = W.decode(data)
        except W.WireError as exc:
            logger.warning(
                "%s: dropped a bad message from the ground: %s", self.id, exc
            )
            return
        self.heard = True
        if message.type is W.MessageType.MODEL:
            version = int(message.body["version"])
            if version >= self.model_version:
                self.model_round = max(self.model_round, message.round)
            if version > self.model_version:
                model = self._model_from(message)
                if model is None:
                    return
                self.model = model
                self.model_version = version
                self.events.write(
                    "model",
                    version=version,
                    bytes=len(data),
                    patch="patch" in message.body,
                )
        elif message.type is W.MessageType.ACK:
            sender, rnd, seq = message.body["of"]
            if sender != self.id:
                # An update relayed for its origin: the ACK names the origin.
                if self.ledger.settle((sender, rnd, seq), True):
                    self.events.write(
                        "ack", origin=sender, round=rnd, seq=seq,
                        duplicate=message.body["duplicate"],
                    )  # fmt: skip
            elif self.outbox.ack(rnd, seq):
                self.events.write(
                    "ack", round=rnd, seq=seq, duplicate=message.body["duplicate"]
                )
        elif message.type is W.MessageType.NACK:
            sender, rnd, seq = message.body["of"]
            reason = message.body["reason"]
            # A refused update is dropped for good: the ground NACKs an update
            # it will never take (too stale, a closed round, malformed).
            if sender != self.id:
                if self.ledger.settle((sender, rnd, seq), False):
                    self.events.write(
                        "nack", origin=sender, round=rnd, seq=seq, reason=reason
                    )
            elif self.outbox.nack(rnd, seq):
                self.events.write("nack", round=rnd, seq=seq, reason=reason)
            logger.info("%s: update %d/%d refused: %s", self.id, rnd, seq, reason)

    def _pump(self, until_wall: float) -> None:
        """Handle replies until ``until_wall`` (Unix seconds) or nothing comes."""
        while not self.stopping:
            remaining = until_wall - time.time()
            if remaining <= 0:
                return
            data = self.transport.recv(min(remaining, REPLY_WAIT_S))
            if data is None:
                return
            self._handle(data)

    def _train_and_store(self) -> None:
        result = self.trainer.train(self.model, self.model_version)
        body = W.update_body(
            base_version=self.model_version,
            num_samples=result.num_samples,
            metrics=result.metrics,
            **self.compressor.encode(result.delta, self.model_version),
        )
        seq, dropped = self.outbox.put(
            self.model_round,
            int(W.MessageType.UPDATE),
            W.encode_body(W.MessageType.UPDATE, body),
            self._now_s(),
        )
        self.trained_version = self.model_version
        self.events.write(
            "trained",
            round=self.model_round,
            version=self.model_version,
            seq=seq,
            loss=result.metrics.get("loss"),
            dropped=len(dropped),
        )

    # -- the loop ----------------------------------------------------------

    def _window_wall_end(self, window: Window) -> float:
        return self.clock.wall_start + self.clock.wall_seconds(
            (window.end - self.clock.sim_epoch).total_seconds()
        )

    def _model_from(self, message: W.Message) -> dict[str, np.ndarray] | None:
        """The model a MODEL gives: its weights, or the held model patched."""
        body = message.body
        if "patch" not in body:
            weights = body["weights"]
            return {k: np.array(v, dtype=np.float32) for k, v in weights.items()}
        try:
            return patched_model(self.model, self.model_version, body)
        except ValueError as exc:
            logger.warning("%s: model patch dropped: %s", self.id, exc)
            # Ask for the full weights at once.
            self.model, self.model_version = None, -1
            self._hello()
            return None

    def _hello(self) -> None:
        self._send(
            W.hello(
                self.id,
                self._next_seq(),
                self._now_s(),
                model_version=self.model_version,
                round=self.model_round,
                capabilities=["model_patch"],
            )
        )
        self.hello_wall = time.time()

    def _in_contact(self, window: Window) -> None:
        end_wall = self._window_wall_end(window)
        self.events.write(
            "contact", station=window.station, duration_s=round(window.duration_s, 1)
        )
        self.heard = False
        self._hello()
        self._send_pending(window)
        trained_for = self.trained_version
        while not self.stopping and time.time() < end_wall:
            self._pump(end_wall)
            if self.model is not None and self.model_version > trained_for:
                self._train_and_store()
                trained_for = self.model_version
                if time.time() < end_wall:
                    self._send_pending(window)
                continue
            if len(self.outbox) and time.time() < end_wall:
                # Wait a little for ACKs, then resend what is still un-ACKed.
                self._pump(min(end_wall, time.time() + 0.2))
                if len(self.outbox):
                    self._send_pending(window)
                continue
            if not self.heard and time.time() - self.hello_wall > HELLO_RETRY_S:
                # The link came up before the ground answered (a connection
                # still being set up, a reply lost): ask again.
                self._hello()
            self._pump(min(end_wall, time.time() + 0.1))

    def run(self) -> int:
        index = 0
        try:
            while not self.stopping:
                now = self.clock.now()
                if self.clock.elapsed_s() >= self.end_s:
                    break
                while index < len(self.windows) and self.windows[index].end <= now:
                    index += 1
                if index >= len(self.windows):
                    self._maybe_relay()
                    time.sleep(0.1)
                    continue
                window = self.windows[index]
                if window.start > now:
                    wait_s = self.clock.wall_seconds(
                        (window.start - now).total_seconds()
                    )
                    # Drain stray replies while waiting; never transmit to the
                    # ground (a neighbour over an ISL, when the plan says so).
                    self._maybe_relay()
                    self._pump(time.time() + min(wait_s, 0.2))
                    time.sleep(min(wait_s, 0.2))
                    continue
                self._in_contact(window)
                index += 1
        finally:
            self.events.write(
                "stop", outbox=len(self.outbox), model_version=self.model_version
            )
            if self.custody is not None:
                self.custody.close()
            for link in self.isl.values():
                link.close()
            self.events.close()
            self.transport.close()
            self.outbox.close()
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) != 1:
        print("usage: python -m agent._demo_agent CONFIG.json", file=sys.stderr)
        return 2
    config = json.loads(Path(argv[0]).read_text())
    logging.basicConfig(
        level=config.get("log_level", "WARNING"),
        format=f"%(asctime)s %(levelname)s {config['id']}: %(message)s",
    )
    agent = DemoAgent(config)

    def stop(signum, frame) -> None:
        agent.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return agent.run()


if __name__ == "__main__":
    sys.exit(main())
