"""Propagation delay on the emulated links, added in user space.

``tc netem`` is missing on these machines, so ``hil_tests._delay`` (a TCP
proxy in the ground namespace that holds every chunk for a one-way delay)
stands between the agent and the daemon.  First the bench is measured: the
round trip through the proxy must exceed the direct one by twice the
one-way delay.  Then the agent completes rounds through it, behind the tbf
rate limit, while its link goes down and up.
"""

import json
import subprocess
import threading
import time

import pytest

from hil_tests._faults import Proc
from hil_tests._ledger import RunSummary
from hil_tests._netns import LinkSpec
from hil_tests._scenario import Keys, account, one_agent_configs

ECHO_PORT = 47021
PROXY_PORT = 47022
DAEMON_PORT = 47023
# A LEO pass: 550 km overhead is about 4 ms each way, 2000 km at low
# elevation about 7 ms, plus ground network and processing; 15 ms each way
# is a 30 ms round trip, inside the 20 to 40 ms the link budget assumes.
ONE_WAY_MS = 15.0
# asyncio.sleep never wakes early but can wake late on a busy 2-core machine.
ADDED_RTT_TOLERANCE_MS = (-2.0, 8.0)
PINGS = 40


def _wait_listening(proc: Proc, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.time() + timeout_s
    while "listening" not in proc.log_text():
        assert proc.running(), f"{what} exited:\n{proc.log_text()}"
        assert time.time() < deadline, f"{what} did not listen in {timeout_s} s"
        time.sleep(0.05)


def _proxy(lab, python, py_env, tmp_path, target_port: int) -> Proc:
    argv = [python, "-m", "hil_tests._delay", lab.ground_addr(0), str(PROXY_PORT),
            "127.0.0.1", str(target_port), str(ONE_WAY_MS)]  # fmt: skip
    proc = Proc(
        "delay", lab.netns_argv(lab.ground_ns, argv), tmp_path / "delay.log", py_env
    ).start()
    _wait_listening(proc, "the delay proxy")
    return proc


def _median_rtt_ms(lab, port: int, python, py_env) -> float:
    argv = [python, "-m", "hil_tests._probe", "rtt", lab.ground_addr(0), str(port),
            str(PINGS)]  # fmt: skip
    out = subprocess.run(
        lab.netns_argv(lab.agent_ns(0), argv),
        capture_output=True,
        text=True,
        env=py_env,
        timeout=60,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert "error" not in result, result
    return result["median_ms"]


@pytest.mark.timeout(120)
def test_delay_proxy_adds_twice_the_one_way_delay_to_the_round_trip(
    netns_lab, python, py_env, tmp_path
):
    lab = netns_lab(1, LinkSpec(uplink_kbit=8000, downlink_kbit=8000))
    echo_argv = [python, "-m", "hil_tests._probe", "echo", str(ECHO_PORT)]
    echo = Proc(
        "echo",
        lab.netns_argv(lab.ground_ns, echo_argv),
        tmp_path / "echo.log",
        py_env,
    ).start()
    proxy = None
    try:
        _wait_listening(echo, "the echo server")
        proxy = _proxy(lab, python, py_env, tmp_path, ECHO_PORT)
        direct_ms = _median_rtt_ms(lab, ECHO_PORT, python, py_env)
        delayed_ms = _median_rtt_ms(lab, PROXY_PORT, python, py_env)
    finally:
        echo.stop()
        if proxy:
            proxy.stop()
    added_ms = delayed_ms - direct_ms
    lo, hi = ADDED_RTT_TOLERANCE_MS
    expected_ms = 2 * ONE_WAY_MS
    summary = RunSummary("delay proxy round trip")
    summary.notes = {
        "one_way_ms": ONE_WAY_MS,
        "direct_rtt_ms": round(direct_ms, 2),
        "proxied_rtt_ms": round(delayed_ms, 2),
        "added_rtt_ms": round(added_ms, 2),
    }
    summary.record()
    print(
        f"\nround trip: direct {direct_ms:.2f} ms, through the proxy "
        f"{delayed_ms:.2f} ms, added {added_ms:.2f} ms (expected {expected_ms} ms)"
    )
    assert expected_ms + lo <= added_ms <= expected_ms + hi, (
        f"the proxy added {added_ms:.2f} ms to the median round trip "
        f"({direct_ms:.2f} -> {delayed_ms:.2f} ms); expected {expected_ms} ms "
        f"{lo:+} / {hi:+} ms"
    )


class _Outages(threading.Thread):
    """Take agent 0's link down for ``down_s`` after every ``up_s``."""

    def __init__(self, lab, up_s: float, down_s: float) -> None:
        super().__init__(name="outages", daemon=True)
        self.lab, self.up_s, self.down_s = lab, up_s, down_s
        self.stop_event = threading.Event()
        self.outages = 0

    def run(self) -> None:
        while not self.stop_event.wait(self.up_s):
            self.lab.set_link(0, False)
            self.outages += 1
            self.stop_event.wait(self.down_s)
            self.lab.set_link(0, True)


@pytest.mark.timeout(300)
def test_agent_completes_rounds_through_delay_rate_limit_and_outages(
    netns_lab, python, py_env, tmp_path
):
    rounds = 6
    extra = 20_000  # an 80 kB update: 0.3 s at 2 Mbit/s
    lab = netns_lab(1, LinkSpec(uplink_kbit=2000, downlink_kbit=8000))
    keys = Keys(tmp_path / "keys", ["sat-0"])
    state = tmp_path / "ground-state"
    one_agent_configs(
        tmp_path / "ground.toml",
        tmp_path / "sat-0.toml",
        agent_id="sat-0",
        bind=f"tcp://127.0.0.1:{DAEMON_PORT}",
        endpoint=f"tcp://{lab.ground_addr(0)}:{PROXY_PORT}",
        ground_state=state,
        agent_state=tmp_path / "sat-0",
        keys=keys,
        rounds=rounds,
        extra=extra,
    )
    serve = [python, "-m", "ground", "serve", "--config", str(tmp_path / "ground.toml")]
    daemon = Proc(
        "ground", lab.netns_argv(lab.ground_ns, serve), tmp_path / "ground.log", py_env
    ).start()
    proxy = _proxy(lab, python, py_env, tmp_path, DAEMON_PORT)
    run = [python, "-m", "agent", "run", "--config", str(tmp_path / "sat-0.toml")]
    outages = _Outages(lab, up_s=1.0, down_s=1.5)
    t0 = time.monotonic()
    agent = Proc(
        "sat-0", lab.netns_argv(lab.agent_ns(0), run), tmp_path / "sat-0.log", py_env
    ).start()
    outages.start()
    try:
        while agent.running() and time.monotonic() - t0 < 240:
            time.sleep(0.2)
        wall_s = time.monotonic() - t0
        assert not agent.running(), "the agent did not finish in 240 s"
    finally:
        outages.stop_event.set()
        outages.join(10)
        agent.stop()
        proxy.stop()
        daemon.stop()
    log = agent.log_text()
    assert agent.popen.returncode == 0, log[-3000:]
    outcome = account(
        {"sat-0": log}, {"sat-0": tmp_path / "sat-0" / "outbox.sqlite"}, state,
        {"sat-0": (0, rounds + 1)}, daemon_log=daemon.log_text(),
    )  # fmt: skip
    acc = outcome.accounting
    assert len(acc.produced) == rounds, sorted(acc.produced)
    assert acc.problems() == [] and outcome.model_problems == []
    assert outages.outages >= 2, (
        f"only {outages.outages} outages while the agent ran ({wall_s:.1f} s); "
        "the run did not exercise resuming after an outage"
    )
    summary = RunSummary("agent via delay proxy + tbf + outages", accounting=acc)
    summary.fault("link_outage", outages.outages)
    summary.notes = {"one_way_ms": ONE_WAY_MS, "wall_s": round(wall_s, 1)}
    summary.record()
    print(
        f"\nagent through a {2 * ONE_WAY_MS:.0f} ms RTT proxy: {rounds} rounds in "
        f"{wall_s:.1f} s with {outages.outages} outages"
    )
