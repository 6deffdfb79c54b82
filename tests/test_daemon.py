"""The ground daemon on real loopback sockets: rounds, bad input, durability."""

import time

import numpy as np
import pytest
import zmq

from agent import _wire as w
from ground._config import parse_ground_config
from ground._daemon import GroundDaemon
from tests.fl_support import DIM, T_WAIT_S, ground_config

pytestmark = pytest.mark.timeout(120)


class Client:
    """A bare DEALER speaking the wire protocol, to send whatever a test needs."""

    def __init__(self, ctx: zmq.Context, endpoint: str, node_id: str) -> None:
        self.id = node_id
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.ROUTING_ID, node_id.encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.seq = 100

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv(self, timeout_s: float = T_WAIT_S) -> w.Message | None:
        if not self.sock.poll(int(timeout_s * 1000)):
            return None
        return w.decode(self.sock.recv())

    def hello(self) -> w.Message | None:
        self.seq += 1
        self.send(w.encode(w.hello(self.id, self.seq, time.time())))
        return self.recv()

    def update(self, rnd: int, delta=None, *, seq=None, num_samples=10, base=0):
        if seq is None:
            self.seq += 1
            seq = self.seq
        delta = delta if delta is not None else _delta(1.0)
        msg = w.update(
            self.id,
            rnd,
            seq,
            time.time(),
            base_version=base,
            num_samples=num_samples,
            delta=delta,
        )
        self.send(w.encode(msg))
        # Round-open MODEL pushes may come first; the answer is an ACK or NACK.
        while (reply := self.recv()) is not None:
            if reply.type is not w.MessageType.MODEL:
                return reply
        return None


def _delta(value: float) -> dict[str, np.ndarray]:
    return {
        "w": np.full(DIM, value, np.float32),
        "b": np.full(1, value, np.float32),
    }


@pytest.fixture
def ctx():
    c = zmq.Context()
    yield c
    c.destroy(linger=0)


def start_daemon(tmp_path, **sections) -> GroundDaemon:
    config = parse_ground_config(ground_config(tmp_path, **sections), tmp_path)
    return GroundDaemon(config).start()


@pytest.fixture
def daemon(tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={"min_participants": 50, "deadline_s": 3600.0},
        transport={"max_message_mb": 0.01},  # 10485 bytes
    )
    yield d
    d.stop()


def assert_still_serves(ctx, daemon) -> None:
    probe = Client(ctx, daemon.endpoint, f"probe-{time.monotonic_ns()}")
    reply = probe.hello()
    assert reply is not None, "the daemon stopped answering"
    assert reply.type is w.MessageType.MODEL
    assert reply.body["weights"]["w"].shape == (DIM,)
    probe.sock.close()


def rejected(daemon, reason: str) -> float:
    return daemon.metrics.value("orbitfl_rejected_total", reason=reason)


def test_hello_gets_the_model_and_an_update_gets_an_ack(ctx, daemon):
    c = Client(ctx, daemon.endpoint, "sat-1")
    model = c.hello()
    assert model.type is w.MessageType.MODEL
    assert (model.round, model.body["version"]) == (0, 0)
    ack = c.update(0)
    assert ack.type is w.MessageType.ACK
    assert ack.body == {"of": ["sat-1", 0, c.seq], "duplicate": False}
    assert daemon.metrics.value("orbitfl_updates_accepted_total") == 1


def test_nine_random_bytes_claiming_a_huge_array(ctx, daemon):
    c = Client(ctx, daemon.endpoint, "sat-1")
    c.send(b"\xdd\x7f\xff\xff\xff\x01\x02\x03\x04")
    nack = c.recv()
    assert nack.type is w.MessageType.NACK and nack.body["reason"] == "malformed"
    assert nack.body["of"] == ["sat-1", -1, -1]  # the routing id names the sender
    assert rejected(daemon, "malformed") == 1
    assert_still_serves(ctx, daemon)


def test_truncated_message(ctx, daemon):
    c = Client(ctx, daemon.endpoint, "sat-1")
    data = w.encode(
        w.update("sat-1", 0, 5, 0.0, base_version=0, num_samples=3, delta=_delta(1))
    )
    c.send(data[: len(data) - 7])
    nack = c.recv()
    assert nack.body["reason"] == "truncated"
    assert rejected(daemon, "truncated") == 1
    assert_still_serves(ctx, daemon)


def test_message_one_byte_over_the_cap(ctx, daemon):
    cap = daemon.config.limits.max_message_bytes
    c = Client(ctx, daemon.endpoint, "sat-1")
    c.send(b"\x00" * (cap + 1))
    nack = c.recv()
    assert nack.body["reason"] == "too_large"
    assert str(cap + 1) in nack.body["detail"]
    assert rejected(daemon, "too_large") == 1
    assert_still_serves(ctx, daemon)


def test_message_far_over_the_cap_is_cut_by_libzmq(ctx, daemon):
    cap = daemon.config.limits.max_message_bytes
    c = Client(ctx, daemon.endpoint, "sat-1")
    c.send(b"\x00" * (cap * 10))
    assert c.recv(timeout_s=0.5) is None  # ZMQ_MAXMSGSIZE: dropped with the link
    assert_still_serves(ctx, daemon)


def test_unknown_protocol_version(ctx, daemon):
    c = Client(ctx, daemon.endpoint, "sat-1")
    msg = w.update("sat-1", 0, 9, 0.0, base_version=0, num_samples=3, delta=_delta(1))
    msg.version = 2
    c.send(w.encode(msg))
    nack = c.recv()
    assert nack.body["reason"] == "bad_version"
    assert nack.body["of"] == ["sat-1", 0, 9]
    assert_still_serves(ctx, daemon)


def test_replayed_update_is_acked_again_and_aggregated_once(ctx, tmp_path):
    d = start_daemon(tmp_path, rounds={"min_participants": 2, "deadline_s": 3600.0})
    try:
        a, b = Client(ctx, d.endpoint, "sat-a"), Client(ctx, d.endpoint, "sat-b")
        assert a.update(0, _delta(1.0), seq=7).body["duplicate"] is False
        again = a.update(0, _delta(1.0), seq=7)
        assert again.type is w.MessageType.ACK and again.body["duplicate"] is True
        assert d.metrics.value("orbitfl_updates_duplicate_total") == 1
        b.update(0, _delta(3.0), num_samples=30)
        _wait(lambda: d.rounds_closed == 1)
        # FedAvg of 1.0 (10 samples) and 3.0 (30 samples) = 2.5; once each.
        np.testing.assert_allclose(d.model()["w"], 2.5, rtol=1e-6)
        # A replay of a closed round's update is still a duplicate, not stale.
        assert a.update(0, _delta(1.0), seq=7).body["duplicate"] is True
        assert_still_serves(ctx, d)
    finally:
        d.stop()


def test_update_for_a_future_round_is_nacked(ctx, daemon):
    nack = Client(ctx, daemon.endpoint, "sat-1").update(3)
    assert nack.type is w.MessageType.NACK
    assert nack.body["reason"] == "future_round"
    assert "round 3" in nack.body["detail"] and "round 0" in nack.body["detail"]
    assert_still_serves(ctx, daemon)


@pytest.mark.parametrize(
    "delta, num_samples, reason",
    [
        ({"w": np.full(DIM, np.nan, np.float32), "b": np.zeros(1, np.float32)}, 5,
         "nonfinite"),
        ({"w": np.zeros(DIM + 1, np.float32), "b": np.zeros(1, np.float32)}, 5,
         "shape"),
        ({"w": np.zeros(DIM, np.float32)}, 5, "names"),
        (_delta(1.0), 0, "samples"),
        (_delta(1.0), -4, "samples"),
    ],
)  # fmt: skip
def test_invalid_update_is_nacked_with_the_reason(
    ctx, daemon, delta, num_samples, reason
):
    nack = Client(ctx, daemon.endpoint, "sat-1").update(
        0, delta, num_samples=num_samples
    )
    assert nack.type is w.MessageType.NACK
    assert nack.body["reason"] == reason, nack.body
    assert rejected(daemon, reason) == 1
    assert daemon.metrics.value("orbitfl_updates_accepted_total") == 0
    assert_still_serves(ctx, daemon)


def test_sender_claiming_another_id_is_refused(ctx, daemon):
    c = Client(ctx, daemon.endpoint, "sat-1")
    msg = w.update("sat-2", 0, 1, 0.0, base_version=0, num_samples=3, delta=_delta(1))
    c.send(w.encode(msg))
    nack = c.recv()
    assert nack.body["reason"] == "impostor"
    assert_still_serves(ctx, daemon)


def test_all_participants_failing_carries_the_model_over(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={
            "min_participants": 1,
            "deadline_s": 0.5,
            "expected_agents": ["a", "b"],
        },
    )
    try:
        bad = {"w": np.full(DIM, np.inf, np.float32), "b": np.zeros(1, np.float32)}
        for name in ("a", "b"):
            nack = Client(ctx, d.endpoint, name).update(0, bad)
            assert nack.body["reason"] == "nonfinite"
        _wait(lambda: d.rounds_closed >= 1)
        assert (
            d.metrics.value("orbitfl_rounds_closed_total", outcome="carried_over") >= 1
        )
        np.testing.assert_array_equal(d.model()["w"], 0.0)
        assert d.version == 0
        assert_still_serves(ctx, d)
    finally:
        d.stop()


def test_round_closes_at_the_deadline_when_one_of_two_agents_is_dead(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={
            "min_participants": 1,
            "deadline_s": 1.5,
            "expected_agents": ["a", "b"],
        },
    )
    try:
        t0 = time.monotonic()
        assert Client(ctx, d.endpoint, "a").update(0, _delta(2.0)).type is (
            w.MessageType.ACK
        )
        time.sleep(0.3)
        assert d.rounds_closed == 0  # still waiting for "b"
        _wait(lambda: d.rounds_closed == 1)
        assert time.monotonic() - t0 >= 1.0
        assert d.metrics.value("orbitfl_rounds_closed_total", outcome="aggregated") == 1
        np.testing.assert_allclose(d.model()["w"], 2.0)
        assert_still_serves(ctx, d)
    finally:
        d.stop()


def test_acked_update_below_quorum_is_in_the_next_model_after_the_deadline(
    ctx, tmp_path
):
    d = start_daemon(tmp_path, rounds={"min_participants": 2, "deadline_s": 0.5})
    try:
        assert Client(ctx, d.endpoint, "a").update(0, _delta(2.0)).type is (
            w.MessageType.ACK
        )
        _wait(lambda: d.rounds_closed == 1)
        assert d.metrics.value("orbitfl_rounds_closed_total", outcome="partial") == 1
        assert d.version == 1
        np.testing.assert_allclose(d.model()["w"], 2.0)
        np.testing.assert_allclose(d.model()["b"], 2.0)
    finally:
        d.stop()

    # The checkpoint holds it too: a restart starts round 1 from that model.
    d = start_daemon(tmp_path, rounds={"min_participants": 2, "deadline_s": 3600.0})
    try:
        assert (d.round, d.version) == (1, 1)
        np.testing.assert_allclose(d.model()["w"], 2.0)
    finally:
        d.stop()


def test_krum_short_of_2f_plus_3_at_the_deadline_aggregates_by_median(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={"min_participants": 1, "deadline_s": 1.0},
        aggregation={"strategy": "krum", "byzantine_f": 1},
    )
    try:
        for name, value in (("a", 1.0), ("b", 2.0), ("c", 9.0)):
            ack = Client(ctx, d.endpoint, name).update(0, _delta(value))
            assert ack.type is w.MessageType.ACK
        # min_participants=1 is reached, but KRUM needs 5: the round waits.
        time.sleep(0.2)
        assert d.rounds_closed == 0
        _wait(lambda: d.rounds_closed == 1)
        assert (
            d.metrics.value("orbitfl_rounds_closed_total", outcome="median_fallback")
            == 1
        )
        assert d.version == 1
        np.testing.assert_allclose(d.model()["w"], 2.0)
    finally:
        d.stop()


def _ask(client: Client, rnd: int, seq: int) -> None:
    client.send(w.encode(w.credit(client.id, 1, time.time(), of=(client.id, rnd, seq))))


def test_credit_grants_are_bounded_and_pass_on_when_an_update_arrives(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        ground={"max_inflight": 1, "credit_timeout_s": 3600.0},
        rounds={"min_participants": 5, "deadline_s": 3600.0},
    )
    try:
        a, b = Client(ctx, d.endpoint, "a"), Client(ctx, d.endpoint, "b")
        _ask(a, 0, 7)
        grant = a.recv()
        assert grant.type is w.MessageType.CREDIT
        assert grant.body == {"of": ["a", 0, 7]}
        _ask(b, 0, 9)
        assert b.recv(timeout_s=0.3) is None  # the one credit is out
        assert a.update(0, seq=7).type is w.MessageType.ACK
        grant = b.recv()
        assert grant.type is w.MessageType.CREDIT and grant.body["of"] == ["b", 0, 9]
        # Asking again for an update already aggregated: ACKed, no transfer.
        _ask(a, 0, 7)
        ack = a.recv()
        assert ack.type is w.MessageType.ACK and ack.body["duplicate"] is True
    finally:
        d.stop()


def test_an_unused_credit_expires_and_goes_to_the_next_agent(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        ground={"max_inflight": 1, "credit_timeout_s": 0.3},
        rounds={"min_participants": 5, "deadline_s": 3600.0},
    )
    try:
        a, b = Client(ctx, d.endpoint, "a"), Client(ctx, d.endpoint, "b")
        _ask(a, 0, 1)
        assert a.recv().type is w.MessageType.CREDIT
        _ask(b, 0, 2)
        grant = b.recv()  # after a's grant ran out
        assert grant.type is w.MessageType.CREDIT and grant.body["of"] == ["b", 0, 2]
        assert d.metrics.value("orbitfl_credits_expired_total") == 1
    finally:
        d.stop()


def test_stale_round_is_nacked_for_sync_strategies(ctx, tmp_path):
    d = start_daemon(tmp_path, rounds={"min_participants": 1, "deadline_s": 3600.0})
    try:
        Client(ctx, d.endpoint, "a").update(0)
        _wait(lambda: d.rounds_closed == 1)
        nack = Client(ctx, d.endpoint, "b").update(0)
        assert nack.body["reason"] == "stale_round"
    finally:
        d.stop()


def test_second_update_of_one_agent_in_a_round_is_refused(ctx, daemon):
    c = Client(ctx, daemon.endpoint, "a")
    assert c.update(0).type is w.MessageType.ACK
    assert c.update(0).body["reason"] == "already_reported"


def test_fedasync_applies_on_arrival_and_nacks_too_stale(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={"min_participants": 100, "deadline_s": 3600.0},
        aggregation={"strategy": "fedasync", "mixing": 0.5, "max_staleness": 1},
    )
    try:
        c = Client(ctx, d.endpoint, "a")
        assert c.update(0, _delta(2.0), base=0).type is w.MessageType.ACK
        np.testing.assert_allclose(d.model()["w"], 1.0)  # 0 + 0.5 * 2
        assert c.update(0, _delta(2.0), base=0).type is w.MessageType.ACK
        assert d.version == 2
        nack = c.update(0, _delta(2.0), base=0)  # two versions behind
        assert nack.body["reason"] == "stale", nack.body
    finally:
        d.stop()


def test_restart_replays_the_journal_of_the_open_round(ctx, tmp_path):
    sections = {"rounds": {"min_participants": 3, "deadline_s": 3600.0}}
    d = start_daemon(tmp_path, **sections)
    Client(ctx, d.endpoint, "a").update(0, _delta(1.0), num_samples=1)
    Client(ctx, d.endpoint, "b").update(0, _delta(2.0), num_samples=1)
    d.stop()
    d = start_daemon(tmp_path, **sections)
    try:
        assert d.session.pending == 2
        ack = Client(ctx, d.endpoint, "a").update(0, _delta(1.0), seq=101)
        assert ack.body["duplicate"] is True
        Client(ctx, d.endpoint, "c").update(0, _delta(6.0), num_samples=1)
        _wait(lambda: d.rounds_closed == 1)
        np.testing.assert_allclose(d.model()["w"], 3.0)
    finally:
        d.stop()


def test_metrics_are_served_over_http(ctx, tmp_path):
    import urllib.request

    d = start_daemon(tmp_path, metrics={"enabled": True, "port": 0})
    try:
        Client(ctx, d.endpoint, "a").update(0)
        text = (
            urllib.request.urlopen(
                f"http://127.0.0.1:{d.metrics_port}/metrics", timeout=5
            )
            .read()
            .decode()
        )
        assert "orbitfl_updates_accepted_total 1.0" in text
        assert "orbitfl_bytes_received_total" in text
        assert "orbitfl_round_duration_seconds" in text
    finally:
        d.stop()


def _wait(condition, timeout_s: float = T_WAIT_S) -> None:
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def test_weighted_takes_the_weights_from_the_config(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={"min_participants": 2, "deadline_s": 3600.0},
        aggregation={"strategy": "weighted", "weights": {"a": 3.0, "b": 1.0}},
    )
    try:
        Client(ctx, d.endpoint, "a").update(0, _delta(1.0), num_samples=1000)
        Client(ctx, d.endpoint, "b").update(0, _delta(5.0), num_samples=1)
        _wait(lambda: d.rounds_closed == 1)
        np.testing.assert_allclose(d.model()["w"], (3 * 1 + 1 * 5) / 4, rtol=1e-6)
        # An agent without a configured weight is refused by WEIGHTED.
        nack = Client(ctx, d.endpoint, "c").update(1)
        assert nack.body["reason"] == "weight"
    finally:
        d.stop()


def test_fedbuff_steps_every_k_and_a_round_close_flushes_the_rest(ctx, tmp_path):
    d = start_daemon(
        tmp_path,
        rounds={"min_participants": 3, "deadline_s": 3600.0},
        aggregation={"strategy": "fedbuff", "buffer_size": 2},
    )
    try:
        Client(ctx, d.endpoint, "a").update(0, _delta(2.0))
        assert d.version == 0
        Client(ctx, d.endpoint, "b").update(0, _delta(4.0))
        assert d.version == 1  # K = 2 updates: one model step
        np.testing.assert_allclose(d.model()["w"], 3.0, rtol=1e-6)
        Client(ctx, d.endpoint, "c").update(0, _delta(6.0), base=1)
        _wait(lambda: d.rounds_closed == 1)  # 3 arrived: the close flushes "c"
        np.testing.assert_allclose(d.model()["w"], 9.0, rtol=1e-6)
    finally:
        d.stop()


def _compressed_wire(seed: int = 0) -> dict:
    from agent._compression import CompressionConfig, FederatedClient

    client = FederatedClient(
        "sat-1", CompressionConfig.from_dict({"method": "topk", "sparsity": 0.5})
    )
    grad = {
        "w": np.arange(1, DIM + 1, dtype=np.float32),
        "b": np.ones(1, np.float32),
    }
    wire_form = client.compress(grad, round_index=0).to_wire()
    # Make every memoryview plain bytes, so a test can edit them.
    for t in wire_form["tensors"]:
        for key, value in t.items():
            if isinstance(value, list) and len(value) == 3:
                t[key] = [value[0], value[1], bytes(value[2])]
    return wire_form


def _send_compressed(client: Client, wire_form: dict) -> w.Message:
    client.seq += 1
    msg = w.update(
        client.id, 0, client.seq, 0.0, base_version=0, num_samples=5, update=wire_form
    )
    client.send(w.encode(msg))
    return client.recv()


def test_compressed_update_is_accepted_and_scatter_added(ctx, tmp_path):
    d = start_daemon(tmp_path, rounds={"min_participants": 1, "deadline_s": 3600.0})
    try:
        reply = _send_compressed(Client(ctx, d.endpoint, "sat-1"), _compressed_wire())
        assert reply.type is w.MessageType.ACK
        _wait(lambda: d.rounds_closed == 1)
        # top 50% of 1..8 is 5..8; b's single element is kept.
        expected = np.where(np.arange(1, DIM + 1) > DIM // 2, np.arange(1, DIM + 1), 0)
        np.testing.assert_array_equal(d.model()["w"], expected.astype(np.float32))
        np.testing.assert_array_equal(d.model()["b"], [1.0])
    finally:
        d.stop()


def test_compressed_update_with_indices_beyond_its_shape_is_nacked(ctx, daemon):
    bad = _compressed_wire()
    bad["tensors"][0]["shape"] = [3]  # the kept indices reach 7
    reply = _send_compressed(Client(ctx, daemon.endpoint, "sat-1"), bad)
    assert reply.type is w.MessageType.NACK
    assert reply.body["reason"] in ("bad_update", "index_range"), reply.body
    assert_still_serves(ctx, daemon)


def test_compressed_update_with_nan_values_is_nacked(ctx, daemon):
    bad = _compressed_wire()
    values = bad["tensors"][0]["values"]
    values[2] = np.full(values[1][0], np.nan, np.float32).tobytes()
    reply = _send_compressed(Client(ctx, daemon.endpoint, "sat-1"), bad)
    assert reply.type is w.MessageType.NACK
    assert reply.body["reason"] in ("bad_update", "nonfinite"), reply.body
    assert daemon.metrics.value("orbitfl_updates_accepted_total") == 0
    assert_still_serves(ctx, daemon)


def test_compressed_update_for_a_different_model_shape_is_nacked(ctx, daemon):
    from agent._compression import CompressionConfig, FederatedClient

    client = FederatedClient(
        "sat-1", CompressionConfig.from_dict({"method": "topk", "sparsity": 0.5})
    )
    other = client.compress(
        {"w": np.ones(DIM * 2, np.float32), "b": np.ones(1, np.float32)}
    ).to_wire()
    reply = _send_compressed(Client(ctx, daemon.endpoint, "sat-1"), other)
    assert reply.body["reason"] == "shape", reply.body
    assert_still_serves(ctx, daemon)
