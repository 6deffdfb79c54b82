"""Hostile peers against the ground daemon, until a deadline.

    python -m hil_tests._hostile CONFIG.json

CONFIG: ``endpoint``, ``host``/``port`` (raw TCP), ``server_key``,
``valid_secret`` and ``valid_id`` (a key in the allowlist), ``stranger_secret``
(a key that is not), ``slot`` (the model slot of the valid peer's honest
updates), ``model_size``, ``max_message_bytes``, ``duration_s``, ``seed``.

Each cycle, the peer with a valid key fetches the model (HELLO), sends one
well-formed update for the open round and then attacks: replays of that
update, an update for a future round, one claiming another agent's id,
random bytes, a truncated frame and a frame one byte over the cap.  A peer
with an unknown key tries to talk, and a raw TCP client sends garbage.
Every attempt and the reply it got (or none: the daemon may be dead at that
moment, killed by the bench) is printed as a JSON line; the last line is a
summary.
"""

import json
import random
import socket
import sys
import time
from pathlib import Path

import numpy as np
import zmq

from agent import _wire as wire
from agent._keys import load_public, load_secret

REPLY_TIMEOUT_S = 1.5


def emit(**fields) -> None:
    print(json.dumps(fields, sort_keys=True), flush=True)


class Peer:
    def __init__(self, cfg: dict, secret: str, ident: str) -> None:
        self.cfg = cfg
        self.ident = ident
        public, sec = load_secret(secret)
        self.ctx = zmq.Context.instance()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTING_ID, ident.encode())
        self.sock.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sock.curve_publickey = public
        self.sock.curve_secretkey = sec
        self.sock.curve_serverkey = load_public(cfg["server_key"])
        self.sock.connect(cfg["endpoint"])
        self.seq = random.Random(ident).randrange(1 << 40)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def ask(
        self,
        data: bytes,
        timeout_s: float = REPLY_TIMEOUT_S,
        model: bool = False,
        of: tuple | None = None,
    ):
        """Send one frame; return its reply decoded, or None.

        Heartbeats, and MODEL pushes unless ``model``, are not replies.  A
        reply to an earlier message (queued while the daemon was down and
        answered late) is told apart by its ``of``: an ACK or NACK must name
        ``of``, or, for bytes the daemon cannot attribute, a seq of -1."""
        while self.sock.poll(0):
            self.sock.recv()
        try:
            self.sock.send(data, zmq.NOBLOCK)
        except zmq.Again:
            return None
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000)):
                return None
            msg = wire.decode(self.sock.recv())
            if msg.type is wire.MessageType.HEARTBEAT:
                continue
            if msg.type is wire.MessageType.MODEL and not model:
                continue
            if msg.type in (wire.MessageType.ACK, wire.MessageType.NACK):
                named = tuple(msg.body["of"])
                if named != of and named[2] != -1:
                    continue
            return msg
        return None

    def close(self) -> None:
        self.sock.close(0)


def reply_kind(msg) -> str:
    if msg is None:
        return "none"
    if msg.type is wire.MessageType.NACK:
        return f"nack:{msg.body['reason']}"
    if msg.type is wire.MessageType.ACK:
        return "ack:dup" if msg.body["duplicate"] else "ack"
    return msg.type.name.lower()


def update_bytes(ident, rnd, seq, version, size, slot) -> bytes:
    delta = np.zeros(size, np.float32)
    delta[slot] = 1.0
    body = wire.encode_body(
        wire.MessageType.UPDATE,
        wire.update_body(base_version=version, num_samples=1, delta={"w": delta}),
    )
    return wire.encode_envelope(
        wire.MessageType.UPDATE, ident, rnd, seq, time.time(), body
    )


def valid_cycle(peer: Peer, cfg: dict, rng: random.Random, sent: dict) -> None:
    hello = wire.encode(wire.hello(peer.ident, peer.next_seq(), time.time()))
    model = peer.ask(hello, model=True)
    if model is None or model.type is not wire.MessageType.MODEL:
        emit(peer="valid", attack="hello", reply=reply_kind(model))
        return
    rnd, version = model.round, model.body["version"]
    size, slot = cfg["model_size"], cfg["slot_base"] + rnd

    if rnd not in sent:
        seq = peer.next_seq()
        data = update_bytes(peer.ident, rnd, seq, version, size, slot)
        reply = peer.ask(data, of=(peer.ident, rnd, seq))
        emit(peer="valid", attack="honest_update", round=rnd, seq=seq,
             reply=reply_kind(reply))  # fmt: skip
        sent[rnd] = (seq, data)
        if reply is None:
            return
    seq, data = sent[rnd]
    for _ in range(2):
        emit(
            peer="valid",
            attack="replay",
            round=rnd,
            seq=seq,
            reply=reply_kind(peer.ask(data, of=(peer.ident, rnd, seq))),
        )
    fseq = peer.next_seq()
    future = update_bytes(peer.ident, rnd + 5, fseq, version, size, slot)
    reply = peer.ask(future, of=(peer.ident, rnd + 5, fseq))
    emit(peer="valid", attack="future_round", reply=reply_kind(reply))
    iseq = peer.next_seq()
    impostor = update_bytes(cfg["victim_id"], rnd, iseq, version, size, slot)
    reply = peer.ask(impostor, of=(cfg["victim_id"], rnd, iseq))
    emit(peer="valid", attack="impostor", reply=reply_kind(reply))
    noise = rng.randbytes(rng.randrange(1, 512))
    emit(peer="valid", attack="random_bytes", reply=reply_kind(peer.ask(noise)))
    # 9 bytes that claim a huge array: msgpack array32 of 2**32-1 items
    huge = b"\xdd\xff\xff\xff\xff" + rng.randbytes(4)
    emit(peer="valid", attack="huge_claim", reply=reply_kind(peer.ask(huge)))
    cut = data[: rng.randrange(1, len(data) - 1)]
    reply = peer.ask(cut, of=(peer.ident, rnd, seq))
    emit(peer="valid", attack="truncated", reply=reply_kind(reply))
    over = b"\x00" * (cfg["max_message_bytes"] + 1)
    emit(peer="valid", attack="oversized", reply=reply_kind(peer.ask(over)))


def stranger_cycle(peer: Peer, rng: random.Random) -> None:
    hello = wire.encode(wire.hello(peer.ident, peer.next_seq(), time.time()))
    emit(peer="stranger", attack="hello", reply=reply_kind(peer.ask(hello, 0.5)))
    noise = rng.randbytes(64)
    emit(peer="stranger", attack="random_bytes", reply=reply_kind(peer.ask(noise, 0.5)))


def raw_tcp(cfg: dict, rng: random.Random) -> None:
    try:
        with socket.create_connection((cfg["host"], cfg["port"]), timeout=1.0) as s:
            s.sendall(rng.randbytes(rng.randrange(1, 2048)))
            s.settimeout(0.3)
            try:
                s.recv(64)
            except OSError:
                pass
        emit(peer="raw_tcp", attack="garbage", reply="sent")
    except OSError as exc:
        emit(peer="raw_tcp", attack="garbage", reply=f"error:{type(exc).__name__}")


def main(argv: list[str]) -> int:
    cfg = json.loads(Path(argv[0]).read_text())
    rng = random.Random(cfg["seed"])
    valid = Peer(cfg, cfg["valid_secret"], cfg["valid_id"])
    stranger = Peer(cfg, cfg["stranger_secret"], cfg["stranger_id"])
    sent: dict = {}
    end = time.monotonic() + cfg["duration_s"]
    while time.monotonic() < end:
        valid_cycle(valid, cfg, rng, sent)
        stranger_cycle(stranger, rng)
        raw_tcp(cfg, rng)
        time.sleep(rng.uniform(0.2, 1.0))
    valid.close()
    stranger.close()
    emit(done=True, honest_updates={str(r): s for r, (s, _) in sent.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
