"""Transport pieces: backoff, socket options, non-blocking sends, configs, keys."""

import time

import numpy as np
import pytest
import zmq

from agent import _wire as w
from agent._config import ConfigError, parse_agent_config
from agent._keys import KeyFileError, load_allowlist, load_public, make_keypair
from agent._transport import Backoff, DealerTransport, TransportOptions
from ground._config import parse_ground_config
from ground._daemon import GroundDaemon
from tests.fl_support import T_WAIT_S, agent_config, ground_config

pytestmark = pytest.mark.timeout(60)


def test_backoff_grows_by_the_factor_and_stops_at_the_cap():
    b = Backoff(initial_s=0.5, max_s=4.0, factor=2.0, jitter=0.0)
    assert [b.delay_s(i) for i in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.delay_s(10_000) == 4.0  # no overflow for a very long outage


def test_backoff_jitter_stays_in_bounds_and_is_reproducible():
    a = [Backoff(1.0, 8.0, 2.0, 0.25, seed="sat-1").delay_s(2) for _ in range(3)]
    assert len(set(a)) == 1  # same seed, same first draw
    b = Backoff(1.0, 8.0, 2.0, 0.25, seed="sat-1")
    delays = [b.delay_s(2) for _ in range(200)]
    assert all(3.0 <= d <= 5.0 for d in delays)
    assert max(delays) - min(delays) > 1.0  # it does spread


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"initial_s": 0.0}, "initial_s=0.0"),
        ({"initial_s": 2.0, "max_s": 1.0}, "max_s=1.0 must be >= initial_s=2.0"),
        ({"factor": 0.5}, "factor=0.5"),
        ({"jitter": 1.0}, "jitter=1.0"),
    ],
)
def test_backoff_names_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Backoff(**kwargs)


def test_dealer_sets_heartbeats_cap_linger_and_immediate():
    options = TransportOptions(
        heartbeat_ivl_ms=250, heartbeat_timeout_ms=900, linger_ms=7,
        max_message_bytes=12345,
    )  # fmt: skip
    t = DealerTransport("tcp://127.0.0.1:1", "sat-1", options=options)
    try:
        s = t._sock
        assert s.getsockopt(zmq.HEARTBEAT_IVL) == 250
        assert s.getsockopt(zmq.HEARTBEAT_TIMEOUT) == 900
        assert s.getsockopt(zmq.LINGER) == 7
        assert s.getsockopt(zmq.MAXMSGSIZE) == 12345
        assert s.getsockopt(zmq.IMMEDIATE) == 1
        assert s.getsockopt(zmq.ROUTING_ID) == b"sat-1"
    finally:
        t.close()


def test_send_without_a_connection_fails_at_once_and_close_never_hangs():
    t = DealerTransport("tcp://127.0.0.1:9", "sat-1")  # nothing listens there
    t0 = time.monotonic()
    assert t.send(b"x" * 1000) is False
    assert t.recv(0.05) is None
    t.reconnect()
    assert t.reconnects == 1
    t.close()
    assert time.monotonic() - t0 < 2.0


def test_router_mandatory_counts_a_departed_agent_as_unreachable(tmp_path):
    raw = ground_config(tmp_path, rounds={"min_participants": 1, "deadline_s": 3600})
    d = GroundDaemon(parse_ground_config(raw, tmp_path)).start()
    ctx = zmq.Context()
    try:
        gone = ctx.socket(zmq.DEALER)
        gone.setsockopt(zmq.ROUTING_ID, b"gone")
        gone.setsockopt(zmq.LINGER, 0)
        gone.connect(d.endpoint)
        gone.send(w.encode(w.hello("gone", 1, 0.0)))
        assert gone.poll(int(T_WAIT_S * 1000))  # the MODEL reply: now a known peer
        gone.close()
        time.sleep(0.3)
        t = DealerTransport(d.endpoint, "sat-1")
        delta = {"w": np.ones(8, np.float32), "b": np.ones(1, np.float32)}
        msg = w.update("sat-1", 0, 1, 0.0, base_version=0, num_samples=1, delta=delta)
        end = time.monotonic() + T_WAIT_S
        while not t.send(w.encode(msg)) and time.monotonic() < end:
            time.sleep(0.05)
        end = time.monotonic() + T_WAIT_S
        while d.rounds_closed < 1 and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(0.2)
        # The round-open MODEL push to "gone" failed with EHOSTUNREACH.
        assert d.metrics.value("orbitfl_send_failures_total", reason="unreachable") == 1
        t.close()
    finally:
        ctx.destroy(linger=0)
        d.stop()


def test_agent_config_reports_every_problem_at_once(tmp_path):
    raw = {
        "agent": {"id": "bad id!", "max_rounds": -1, "typo": 1},
        "ground": {},
        "security": {"curve": True},
        "retry": {"initial_s": "fast"},
        "trainer": {},
        "unknown_section": {},
    }
    with pytest.raises(ConfigError) as info:
        parse_agent_config(raw, tmp_path, "agent.toml")
    text = str(info.value)
    for needle in (
        "'bad id!'",
        "max_rounds = -1",
        "unknown key 'typo'",
        "endpoint is required",
        "secret_key",
        "initial_s = 'fast'",
        "kind is required",
        "[unknown_section]",
    ):
        assert needle in text, (needle, text)


def test_agent_config_resolves_paths_against_its_directory(tmp_path):
    raw = agent_config(
        tmp_path,
        "sat-1",
        "tcp://127.0.0.1:5555",
        security={"curve": True, "secret_key": "k/s.key_secret", "server_key": "g.key"},
        outbox={"max_mb": 2, "expiry_s": 60},
        transport={"max_message_mb": 1},
    )
    raw["agent"]["state_dir"] = "state"
    c = parse_agent_config(raw, tmp_path)
    assert c.secret_key == tmp_path / "k" / "s.key_secret"
    assert c.state_dir == tmp_path / "state"
    assert c.outbox_path == tmp_path / "state" / "outbox.sqlite"
    assert c.outbox_max_bytes == 2 * 1024 * 1024
    assert c.limits.max_message_bytes == 1024 * 1024


def test_ground_config_needs_exactly_one_initial_model(tmp_path):
    raw = ground_config(tmp_path)
    raw["model"]["npz"] = "init.npz"
    with pytest.raises(ConfigError, match="exactly one of"):
        parse_ground_config(raw, tmp_path)


def test_keys_round_trip_and_allowlist_maps_keys_to_names(tmp_path):
    pub, sec = make_keypair(tmp_path / "allow", "sat-7")
    assert sec.stat().st_mode & 0o777 == 0o600
    names = load_allowlist(tmp_path / "allow")
    assert names == {load_public(pub): "sat-7"}
    with pytest.raises(KeyFileError, match="already exists"):
        make_keypair(tmp_path / "allow", "sat-7")
    with pytest.raises(KeyFileError, match="cannot read"):
        load_public(tmp_path / "missing.key")
