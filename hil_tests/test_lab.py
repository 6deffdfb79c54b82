"""The bench itself: namespaces, shaped links, the link scheduler, kill -9.

These test the machinery the agent tests stand on, against the kernel's real
network stack: if a shaped link did not limit the rate, or a link marked down
still carried packets, the fault tests would prove nothing.
"""

import json
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from agent._clock import SimClock
from hil_tests._faults import Chaos, Proc
from hil_tests._ledger import Accounting, RunSummary, format_table
from hil_tests._links import LinkScheduler, merge_windows, schedule
from hil_tests._netns import LinkSpec

PORT = 47011
# tbf lets the first burst through at line rate, and TCP slow start plus
# Python's loop cost a little: the measured rate sits a bit under the set one.
RATE_TOLERANCE = (0.6, 1.15)


def _sink(lab, python, py_env, tmp_path):
    proc = Proc(
        "sink",
        lab.netns_argv(
            lab.ground_ns, [python, "-m", "hil_tests._probe", "sink", str(PORT)]
        ),
        tmp_path / "sink.log",
        env=py_env,
    ).start()
    deadline = time.time() + 20
    while "listening" not in proc.log_text():
        assert proc.running(), proc.log_text()
        assert time.time() < deadline, "sink did not start in 20 s"
        time.sleep(0.05)
    return proc


def _send(lab, i, nbytes, python, py_env, timeout_s=30.0):
    argv = lab.netns_argv(
        lab.agent_ns(i),
        [
            python,
            "-m",
            "hil_tests._probe",
            "send",
            lab.ground_addr(i),
            str(PORT),
            str(nbytes),
            str(timeout_s),
        ],
    )
    out = subprocess.run(
        argv, capture_output=True, text=True, env=py_env, timeout=timeout_s + 30
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.timeout(120)
def test_tbf_uplink_limits_the_rate_to_the_configured_kbit(
    netns_lab, python, py_env, tmp_path
):
    lab = netns_lab(2, LinkSpec(uplink_kbit=4000, downlink_kbit=8000))
    sink = _sink(lab, python, py_env, tmp_path)
    try:
        nbytes = 1_000_000  # 8 Mbit: 2 s at 4 Mbit/s
        result = _send(lab, 1, nbytes, python, py_env)
        assert "error" not in result, result
        rate_kbit = nbytes * 8 / 1000 / result["seconds"]
        lo, hi = RATE_TOLERANCE
        assert lo * 4000 <= rate_kbit <= hi * 4000, (
            f"measured {rate_kbit:.0f} kbit/s through a 4000 kbit/s tbf uplink; "
            f"expected {lo * 4000:.0f} to {hi * 4000:.0f}\n{lab.qdisc_stats(1)}"
        )
    finally:
        sink.stop()


@pytest.mark.timeout(120)
def test_a_link_that_is_down_carries_nothing_and_resumes_when_up(
    netns_lab, python, py_env, tmp_path
):
    lab = netns_lab(1, LinkSpec(uplink_kbit=8000))
    sink = _sink(lab, python, py_env, tmp_path)
    try:
        lab.set_link(0, False)
        result = _send(lab, 0, 10_000, python, py_env, timeout_s=3.0)
        assert "error" in result, f"sent over a link that is down: {result}"

        # A transfer that starts up, loses the link for 3 s, and finishes
        # on the same TCP connection once the link is back.
        nbytes = 3_000_000  # 3 s at 8 Mbit/s
        argv = lab.netns_argv(
            lab.agent_ns(0),
            [
                python,
                "-m",
                "hil_tests._probe",
                "send",
                lab.ground_addr(0),
                str(PORT),
                str(nbytes),
                "60",
            ],
        )
        lab.set_link(0, True)
        t0 = time.monotonic()
        sender = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=py_env)
        time.sleep(1.0)
        lab.set_link(0, False)
        time.sleep(3.0)
        assert sender.poll() is None, "the transfer finished while the link was down"
        lab.set_link(0, True)
        out, _ = sender.communicate(timeout=60)
        result = json.loads(out.strip().splitlines()[-1])
        assert "error" not in result, result
        elapsed = time.monotonic() - t0
        assert elapsed >= 3.0 + 3.0 * 0.9, f"{elapsed:.1f} s: the outage was skipped"
        received = [
            json.loads(x)
            for x in sink.log_text().splitlines()
            if x.startswith('{"bytes"')
        ]
        assert any(r["bytes"] == nbytes for r in received), received
    finally:
        sink.stop()


def test_windows_merge_and_map_to_wall_time_through_the_clock():
    epoch = datetime(2026, 3, 1, tzinfo=UTC)
    clock = SimClock(epoch, wall_start=1000.0, speedup=60.0)
    m = timedelta(minutes=1)
    windows = {
        0: [(epoch + 10 * m, epoch + 20 * m), (epoch + 15 * m, epoch + 25 * m)],
        1: [(epoch + 30 * m, epoch + 31 * m)],
    }
    assert merge_windows(windows[0]) == [(epoch + 10 * m, epoch + 25 * m)]
    assert schedule(clock, windows) == [
        (1010.0, 0, True),
        (1025.0, 0, False),
        (1030.0, 1, True),
        (1031.0, 1, False),
    ]
    with pytest.raises(ValueError, match="ends before it starts"):
        merge_windows([(epoch + m, epoch)])


@pytest.mark.timeout(120)
def test_scheduler_follows_contact_windows_on_the_accelerated_clock(netns_lab):
    lab = netns_lab(2)
    epoch = datetime(2026, 3, 1, tzinfo=UTC)
    # 600x: ten simulated minutes per wall second.
    clock = SimClock(epoch, wall_start=time.time() + 0.5, speedup=600.0)
    m = timedelta(minutes=1)
    windows = {
        0: [(epoch + 5 * m, epoch + 15 * m), (epoch + 30 * m, epoch + 40 * m)],
        1: [(epoch, epoch + 10 * m), (epoch + 20 * m, epoch + 35 * m)],
    }
    states = []
    with LinkScheduler(clock, windows, lab.set_link) as sched:
        for _ in range(20):
            states.append((clock.now(), lab.is_up(0), lab.is_up(1)))
            time.sleep(0.25)
    assert not sched.errors, sched.errors
    assert [(t.agent, t.up) for t in sched.transitions] == [
        (1, True),
        (0, True),
        (1, False),
        (0, False),
        (1, True),
        (0, True),
        (1, False),
        (0, False),
    ], sched.transitions
    late = max(t.late_s for t in sched.transitions)
    assert late < 0.25, f"a link changed {late:.3f} s after its predicted time"
    for now, *ups in states:
        for agent, up in enumerate(ups):
            ws = windows[agent]
            inside = any(a + 2 * m <= now < b - 2 * m for a, b in ws)
            outside = all(not (a - 2 * m <= now < b + 2 * m) for a, b in ws)
            assert up or not inside, f"agent {agent} down at {now} inside a window"
            assert not up or not outside, f"agent {agent} up at {now} outside"
    # The kernel agrees with the bookkeeping.
    out = subprocess.run(
        ["ip", "-n", lab.agent_ns(0), "-o", "link", "show", lab.agent_if(0)],
        capture_output=True,
        text=True,
    )
    assert "state DOWN" in out.stdout or "DOWN" in out.stdout, out.stdout


@pytest.mark.timeout(60)
def test_chaos_kills_and_restarts_the_process_the_seeded_number_of_times(
    tmp_path,
):
    argv = [sys.executable, "-c", "import time; time.sleep(600)"]
    proc = Proc("sleeper", argv, tmp_path / "sleeper.log").start()
    pids = []
    chaos = Chaos(
        proc,
        seed=7,
        n_kills=20,
        gap_s=(0.02, 0.08),
        on_kill=lambda k, t: pids.append(proc.pid),
    )
    chaos.start().join(30)
    try:
        assert chaos.done()
        assert proc.kills == 20 and proc.starts == 21
        assert len(set(pids)) == 20, "a kill hit the same process twice"
        assert proc.running()

        # The same seed draws the same instants, another seed others.
        def draws(seed):
            rng = Chaos(proc, seed=seed, n_kills=1, gap_s=(0, 1)).rng
            return [rng.uniform(0, 1) for _ in range(5)]

        assert draws(7) == draws(7) != draws(8)
    finally:
        proc.stop()


def test_accounting_finds_lost_duplicated_and_phantom_updates():
    acc = Accounting(produced={("a", 1, 1), ("a", 2, 2), ("b", 1, 1), ("b", 2, 2)})
    acc.add_aggregated([("a", 1, 1), ("b", 1, 1), ("b", 1, 1), ("x", 9, 9)])
    acc.expired.add(("a", 2, 2))
    assert acc.lost == {("b", 2, 2)}
    assert acc.duplicated == {("b", 1, 1): 2}
    assert acc.phantom == {("x", 9, 9)}
    problems = acc.problems()
    assert len(problems) == 3 and "('b', 2, 2)" in problems[0]

    clean = Accounting(produced={("a", 1, 1)}, aggregated=Counter({("a", 1, 1): 1}))
    assert clean.problems() == []

    run = RunSummary("demo", accounting=acc)
    run.fault("daemon_kill9", 20)
    table = format_table([run.to_json()])
    assert "daemon_kill9" in table and "20" in table
    row = next(line for line in table.splitlines() if line.strip().startswith("demo"))
    assert row.split()[1:] == ["20", "4", "2", "1", "0", "1", "1"]
