"""RELAY on real loopback sockets: a neighbour hands in another agent's update."""

import time

import numpy as np
import pytest
import zmq

from agent import _wire as w
from tests.test_daemon import Client, _delta, _wait, start_daemon

pytestmark = pytest.mark.timeout(60)

AGENTS = ["sat-a", "sat-b"]


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def _origin_frame(origin: str, rnd: int, seq: int, value: float, samples: int):
    return w.encode(
        w.update(
            origin, rnd, seq, time.time(), base_version=0, num_samples=samples,
            delta=_delta(value),
        )
    )  # fmt: skip


def _relay(client: Client, inner: bytes, rnd: int = 0) -> w.Message | None:
    client.seq += 1
    client.send(
        w.encode(w.relay(client.id, rnd, client.seq, time.time(), message=inner))
    )
    while (reply := client.recv()) is not None:
        if reply.type is not w.MessageType.MODEL:
            return reply
    return None


def test_relayed_update_is_taken_as_the_origins_and_aggregated_once(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={"min_participants": 2, "deadline_s": 3600.0, "expected_agents": AGENTS},
    )
    try:
        a, b = Client(ctx, d.endpoint, "sat-a"), Client(ctx, d.endpoint, "sat-b")
        ack = _relay(b, _origin_frame("sat-a", 0, 7, 1.0, 10))
        assert ack.type is w.MessageType.ACK
        assert ack.body == {"of": ["sat-a", 0, 7], "duplicate": False}
        assert d.metrics.value("orbitfl_updates_relayed_total") == 1
        # The origin sends the same update itself (it never got the ACK): a
        # duplicate, ACKed again and not aggregated; a second relay likewise.
        again = a.update(0, _delta(1.0), seq=7)
        assert again.type is w.MessageType.ACK and again.body["duplicate"] is True
        twice = _relay(b, _origin_frame("sat-a", 0, 7, 1.0, 10))
        assert twice.body == {"of": ["sat-a", 0, 7], "duplicate": True}
        assert d.metrics.value("orbitfl_updates_relayed_total") == 1
        assert d.metrics.value("orbitfl_updates_duplicate_total") == 2
        # sat-a counts as the round's participant: a direct update of its own
        # for the same round is refused, as after a direct upload.
        refused = a.update(0, _delta(5.0), seq=8)
        assert refused.body["reason"] == "already_reported"
        b.update(0, _delta(3.0), num_samples=30)
        _wait(lambda: d.rounds_closed == 1)
        # FedAvg of 1.0 (10 samples) and 3.0 (30 samples) = 2.5; once each.
        np.testing.assert_allclose(d.model()["w"], 2.5, rtol=1e-6)
    finally:
        d.stop()


def test_relay_of_an_unknown_origin_is_nacked(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={"min_participants": 1, "deadline_s": 3600.0, "expected_agents": AGENTS},
    )
    try:
        b = Client(ctx, d.endpoint, "sat-b")
        nack = _relay(b, _origin_frame("sat-x", 0, 3, 1.0, 10))
        assert nack.type is w.MessageType.NACK
        assert nack.body["reason"] == "unknown_origin"
        assert nack.body["of"] == ["sat-x", 0, 3]
        assert "sat-x" in nack.body["detail"] and "sat-b" in nack.body["detail"]
        assert d.metrics.value("orbitfl_updates_accepted_total") == 0
        assert d.metrics.value("orbitfl_rejected_total", reason="unknown_origin") == 1
    finally:
        d.stop()


def test_relay_without_any_known_agent_is_refused(ctx, tmp_path):
    # No CURVE allowlist and no expected_agents: no origin can be vouched for.
    d = start_daemon(tmp_path, rounds={"min_participants": 1, "deadline_s": 3600.0})
    try:
        b = Client(ctx, d.endpoint, "sat-b")
        nack = _relay(b, _origin_frame("sat-a", 0, 3, 1.0, 10))
        assert nack.body["reason"] == "unknown_origin"
    finally:
        d.stop()


def test_relay_of_a_bad_inner_frame_is_nacked_naming_the_origin(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={"min_participants": 5, "deadline_s": 3600.0, "expected_agents": AGENTS},
    )
    try:
        b = Client(ctx, d.endpoint, "sat-b")
        frame = _origin_frame("sat-a", 0, 4, 1.0, 10)
        # The origin cannot be read from a cut frame: the NACK names the relay.
        nack = _relay(b, frame[:-6])
        assert nack.body["reason"] == "truncated"
        assert nack.body["of"] == ["sat-b", 0, b.seq]
        hello = w.encode(w.hello("sat-a", 9, time.time()))
        nack = _relay(b, hello)
        assert nack.body["reason"] == "malformed"
        assert "must carry an UPDATE" in nack.body["detail"]
        # An inner UPDATE the ground refuses keeps its NACK reason.
        nack = _relay(b, _origin_frame("sat-a", 3, 5, 1.0, 10))
        assert nack.body["reason"] == "future_round"
        assert nack.body["of"] == ["sat-a", 3, 5]
        assert d.metrics.value("orbitfl_updates_accepted_total") == 0
        assert b.hello().type is w.MessageType.MODEL  # still serving
    finally:
        d.stop()
