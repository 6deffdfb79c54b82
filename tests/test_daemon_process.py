"""The daemon and agents as real processes: CLI, CURVE, 3 rounds, kill -9."""

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from agent import _wire as w
from agent._keys import load_public, load_secret, make_keypair
from agent._transport import CurveClientKeys, DealerTransport
from ground import AggregationStrategy, GradientAggregator
from ground._config import parse_ground_config
from ground._daemon import GroundDaemon
from ground._journal import read_checkpoint
from tests.fl_support import (
    DIM,
    T_WAIT_S,
    LeastSquaresTrainer,
    agent_config,
    ground_config,
    write_toml,
)

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.timeout(180)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _spawn(package: str, *args: str, log_path: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", package, *args],
        cwd=REPO,
        env=_env(),
        stdout=open(log_path, "ab"),
        stderr=subprocess.STDOUT,
    )


def _wait_file(path: Path, proc: subprocess.Popen, timeout_s: float = 30) -> str:
    end = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear")
        time.sleep(0.05)
    return path.read_text().strip()


def _keygen(package: str, directory: Path, name: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", package, "keygen", str(directory), name],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert (directory / f"{name}.key").exists()
    assert (directory / f"{name}.key_secret").stat().st_mode & 0o077 == 0


def _log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.mark.parametrize("compression", ["dense", "topk"])
def test_three_fedavg_rounds_with_agent_processes_equal_in_process(
    tmp_path, compression
):
    names = ["sat-0", "sat-1", "sat-2"]
    keys = tmp_path / "keys"
    allow = tmp_path / "allowed"
    allow.mkdir()
    _keygen("ground", keys, "ground")
    for name in names:
        _keygen("agent", keys / name, name)
        (allow / f"{name}.key").write_bytes((keys / name / f"{name}.key").read_bytes())

    endpoint_file = tmp_path / "endpoint"
    graw = ground_config(
        tmp_path,
        ground={"max_rounds": 3, "endpoint_file": str(endpoint_file)},
        security={
            "curve": True,
            "secret_key": str(keys / "ground.key_secret"),
            "allowlist_dir": str(allow),
        },
        rounds={"min_participants": 3, "expected_agents": names, "deadline_s": 120},
    )
    write_toml(tmp_path / "ground.toml", graw)
    glog = tmp_path / "ground.log"
    ground = _spawn("ground", "serve", "--config", str(tmp_path / "ground.toml"),
                    log_path=glog)  # fmt: skip
    agents = []
    try:
        endpoint = _wait_file(endpoint_file, ground)
        comp = {"method": "topk", "sparsity": 0.5} if compression == "topk" else {}
        for name in names:
            araw = agent_config(
                tmp_path,
                name,
                endpoint,
                agent={"max_rounds": 3},
                security={
                    "curve": True,
                    "secret_key": str(keys / name / f"{name}.key_secret"),
                    "server_key": str(keys / "ground.key"),
                },
            )
            if comp:
                araw["compression"] = comp
            write_toml(tmp_path / f"{name}.toml", araw)
            agents.append(
                _spawn(
                    "agent",
                    "run",
                    "--config",
                    str(tmp_path / f"{name}.toml"),
                    log_path=tmp_path / f"{name}.log",
                )  # fmt: skip
            )
        for name, proc in zip(names, agents, strict=True):
            assert proc.wait(90) == 0, _log_tail(tmp_path / f"{name}.log")
        assert ground.wait(60) == 0, _log_tail(glog)
    finally:
        for proc in [ground, *agents]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    got = read_checkpoint(tmp_path / "ground" / "checkpoint.msgpack")
    assert (got.round, got.rounds_closed, got.version) == (3, 3, 3)

    # The same three rounds, in process: same trainers, same compressors.
    trainers = [LeastSquaresTrainer(n) for n in names]
    clients = [None] * 3
    if comp:
        from agent._compression import CompressionConfig, FederatedClient

        clients = [FederatedClient(n, CompressionConfig.from_dict(comp)) for n in names]
    model = trainers[0].initial_weights()
    aggregator = GradientAggregator(AggregationStrategy.FEDAVG)
    for r in range(3):
        results = [t.train(model, r) for t in trainers]
        updates = [
            res.delta if c is None else c.compress(res.delta, round_index=r)
            for res, c in zip(results, clients, strict=True)
        ]
        step = aggregator.aggregate(updates, [res.num_samples for res in results])
        model = {k: model[k] + step[k] for k in model}
    for k in model:
        # Sums arrive in a different order than here: equal to float32 rounding.
        np.testing.assert_allclose(got.model[k], model[k], rtol=1e-5, atol=1e-6)
    assert "refused" not in _log_tail(glog)


def _update_bytes(i: int, seq: int) -> bytes:
    delta = {
        "w": np.full(DIM, float(i + 1), np.float32),
        "b": np.full(1, float(i + 1), np.float32),
    }
    msg = w.update(f"a{i}", 0, seq, 0.0, base_version=0, num_samples=i + 1, delta=delta)
    return w.encode(msg)


def test_kill_9_mid_round_loses_no_acked_update_and_counts_none_twice(tmp_path):
    n = 12
    endpoint_file = tmp_path / "endpoint"
    write_toml(
        tmp_path / "ground.toml",
        ground_config(
            tmp_path,
            ground={"max_rounds": 1, "endpoint_file": str(endpoint_file)},
            rounds={"min_participants": n, "deadline_s": 3600},
        ),
    )
    glog = tmp_path / "ground.log"
    ctx = zmq.Context()
    acked: set[int] = set()
    try:
        for kill_after in (1, 4, None):  # two kill -9 mid-round, then finish
            endpoint_file.unlink(missing_ok=True)
            ground = _spawn("ground", "serve", "--config",
                            str(tmp_path / "ground.toml"), log_path=glog)  # fmt: skip
            endpoint = _wait_file(endpoint_file, ground)
            socks = []
            for i in range(n):
                s = ctx.socket(zmq.DEALER)
                s.setsockopt(zmq.ROUTING_ID, f"a{i}".encode())
                s.setsockopt(zmq.LINGER, 0)
                s.connect(endpoint)
                socks.append(s)
            time.sleep(0.2)
            # Send in order, three in flight, so the kill lands mid-stream: some
            # updates ACKed, some journaled but not yet ACKed, some not read.
            new_acks = 0
            in_flight: list[int] = []
            to_send = list(range(n))
            end = time.monotonic() + T_WAIT_S
            while (to_send or in_flight) and time.monotonic() < end:
                while to_send and len(in_flight) < 3:
                    i = to_send.pop(0)
                    socks[i].send(_update_bytes(i, seq=1000 + i))
                    in_flight.append(i)
                i = in_flight[0]
                if not socks[i].poll(100):
                    continue
                reply = w.decode(socks[i].recv())
                if reply.type is not w.MessageType.ACK:
                    continue  # a round-open MODEL push
                in_flight.pop(0)
                if i in acked:
                    # ACKed before a kill: it must have survived, as a duplicate.
                    assert reply.body["duplicate"] is True, (i, kill_after)
                else:
                    # Not ACKed before: it may or may not have been journaled
                    # when the kill came, so either answer is right here.
                    acked.add(i)
                    new_acks += 1
                if kill_after is not None and new_acks >= kill_after:
                    ground.send_signal(signal.SIGKILL)
                    break
            # Drain what was already on its way before the kill.
            time.sleep(0.1)
            for i, s in enumerate(socks):
                while s.poll(0):
                    reply = w.decode(s.recv())
                    if reply.type is w.MessageType.ACK and not reply.body["duplicate"]:
                        acked.add(i)
                s.close()
            if kill_after is not None:
                assert ground.wait(10) == -signal.SIGKILL
        assert ground.wait(30) == 0, _log_tail(glog)
    finally:
        if ground.poll() is None:
            ground.kill()
        ctx.destroy(linger=0)

    assert acked == set(range(n))
    cp = read_checkpoint(tmp_path / "ground" / "checkpoint.msgpack")
    # Each update i is (i+1) everywhere with weight i+1: FedAvg = sum i^2 / sum i.
    k = np.arange(1, n + 1, dtype=np.float64)
    expected = float((k * k).sum() / k.sum())
    np.testing.assert_allclose(cp.model["w"], expected, rtol=1e-6)
    np.testing.assert_allclose(cp.model["b"], expected, rtol=1e-6)


@pytest.fixture
def curve_daemon(tmp_path):
    keys = tmp_path / "keys"
    allow = tmp_path / "allowed"
    make_keypair(keys, "ground")
    make_keypair(keys, "sat-1")
    make_keypair(keys, "sat-2")
    allow.mkdir()
    (allow / "sat-1.key").write_bytes((keys / "sat-1.key").read_bytes())
    raw = ground_config(
        tmp_path,
        security={
            "curve": True,
            "secret_key": str(keys / "ground.key_secret"),
            "allowlist_dir": str(allow),
        },
        rounds={"min_participants": 5, "deadline_s": 3600},
    )
    d = GroundDaemon(parse_ground_config(raw, tmp_path)).start()
    yield d, keys
    d.stop()


def _curve_transport(d, keys, key_name, identity):
    public, secret = load_secret(keys / f"{key_name}.key_secret")
    curve = CurveClientKeys(public, secret, load_public(keys / "ground.key"))
    return DealerTransport(d.endpoint, identity, curve=curve)


def _send_update(t: DealerTransport, sender: str) -> w.Message | None:
    delta = {"w": np.ones(DIM, np.float32), "b": np.ones(1, np.float32)}
    msg = w.update(sender, 0, 1, 0.0, base_version=0, num_samples=3, delta=delta)
    end = time.monotonic() + 1.5
    while time.monotonic() < end and not t.send(w.encode(msg)):
        time.sleep(0.05)  # IMMEDIATE: no connection until the handshake passes
    data = t.recv(1.5)
    return None if data is None else w.decode(data)


def test_agent_with_a_key_outside_the_allowlist_cannot_deliver(curve_daemon, caplog):
    d, keys = curve_daemon
    caplog.set_level(logging.WARNING, logger="ground._daemon")
    with _curve_transport(d, keys, "sat-2", "sat-2") as t:
        assert _send_update(t, "sat-2") is None
    assert d.metrics.value("orbitfl_updates_accepted_total") == 0
    assert d.metrics.value("orbitfl_auth_refused_total") >= 1
    assert any("refused CURVE client key" in r.getMessage() for r in caplog.records)
    # ... while the allowed agent is served on the same daemon.
    with _curve_transport(d, keys, "sat-1", "sat-1") as t:
        reply = _send_update(t, "sat-1")
    assert reply is not None and reply.type is w.MessageType.ACK
    assert d.metrics.value("orbitfl_updates_accepted_total") == 1


def test_allowed_key_cannot_speak_for_another_agent(curve_daemon):
    d, keys = curve_daemon
    with _curve_transport(d, keys, "sat-1", "sat-2") as t:
        reply = _send_update(t, "sat-2")
    assert reply is not None and reply.body["reason"] == "impostor"
    assert "authenticated as 'sat-1'" in reply.body["detail"]
    assert d.metrics.value("orbitfl_updates_accepted_total") == 0


def test_keygen_refuses_to_overwrite(tmp_path):
    _keygen("ground", tmp_path, "ground")
    out = subprocess.run(
        [sys.executable, "-m", "ground", "keygen", str(tmp_path), "ground"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "already exists" in out.stderr


def test_serve_with_a_bad_config_exits_2_naming_every_problem(tmp_path):
    (tmp_path / "ground.toml").write_text(
        "[ground]\nbind = 5\n[rounds]\nmin_participants = 0\n[bogus]\n"
    )
    out = subprocess.run(
        [sys.executable, "-m", "ground", "serve", "--config",
         str(tmp_path / "ground.toml")],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2
    for text in ("bind = 5", "min_participants = 0", "[bogus]", "[model]", "curve"):
        assert text in out.stderr, out.stderr
