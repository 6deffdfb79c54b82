"""Agents behind links that follow predicted contacts, under faults.

One run, on the real network stack: the ground daemon in its namespace, each
agent in its own behind a veth with a tbf-shaped uplink and downlink, links
brought down and up on the contact windows the agent's own predictor
(``agent._contacts.ContactPredictor``) gives for its TLE and the station
list, on a shared accelerated clock.  Meanwhile:

- the daemon is killed with SIGKILL at seeded random instants (>= 20 times)
  and restarted;
- agents are killed with SIGKILL, sometimes with an update in flight, and
  restarted on the same outbox;
- two agents run with their clocks 5 s ahead and 5 s behind the ground's;
- hostile peers (one with a valid key, one without, one raw TCP client) send
  random bytes, truncated and oversized frames, replays, impostor updates and
  updates for future rounds.

At the end, every update an agent produced must be aggregated exactly once,
expired by the outbox policy, or refused by the ground with a reason; none
lost, none aggregated twice (checked in the final model itself).
"""

import json
import os
import sqlite3
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent._clock import SimClock
from agent._contacts import ContactPredictor
from agent._geo import Position
from agent._outbox import Outbox
from agent._stations import GroundStation
from agent._walker import walker_tles
from hil_tests._faults import Chaos, Proc
from hil_tests._ledger import RunSummary
from hil_tests._links import LinkScheduler
from hil_tests._netns import LinkSpec
from hil_tests._scenario import (
    PORT,
    Keys,
    account,
    agent_config,
    ground_config,
)

SEED = int(os.environ.get("HIL_SEED", "20261203"))
N_AGENTS = 3
SPEEDUP = 120.0  # a 10 min pass lasts 5 s of wall time
RUN_S = 80.0  # wall seconds of contacts and faults; then the drain
DRAIN_S = 120.0
DAEMON_KILLS = 22
AGENT_KILLS = 3  # per agent
ROUNDS_PER_AGENT = 4  # updates each agent settles before it stops
SLOTS = 200  # model slots per agent (rounds the daemon may reach)
EXTRA = 40_000  # float32 padding: a 160 kB update takes 0.6 s at 2 Mbit/s
DEADLINE_S = 1800.0  # simulated seconds a round stays open (15 s wall)
SKEW_S = {0: +5.0, 1: -5.0, 2: 0.0}
SHORT_EXPIRY = {2: 1500.0}  # simulated seconds; exercises the expiry policy
EPOCH = datetime(2026, 3, 1, 6, 0, tzinfo=UTC)

# Twelve stations around the globe, so that a LEO satellite sees one every
# 20 to 40 minutes.
STATIONS = [
    ("svalbard", 78.2, 15.4), ("fairbanks", 64.8, -147.7), ("wallops", 37.9, -75.5),
    ("hartebeesthoek", -25.9, 27.7), ("santiago", -33.1, -70.7),
    ("perth", -31.8, 115.9), ("tokyo", 35.7, 139.7), ("kourou", 5.2, -52.8),
    ("bangalore", 13.0, 77.5), ("hawaii", 19.8, -155.5), ("madrid", 40.4, -4.2),
    ("dongara", -29.0, 114.9),
]  # fmt: skip


def _stations() -> list[GroundStation]:
    return [
        GroundStation(name=n, position=Position(la, lo, 0.0), uplink_mbps=2.0,
                      downlink_mbps=8.0, min_elevation_deg=5.0)
        for n, la, lo in STATIONS
    ]  # fmt: skip


def _orbit_section(line1: str, line2: str) -> dict:
    return {
        "tle_line1": line1,
        "tle_line2": line2,
        "stations": [
            {"name": n, "lat_deg": la, "lon_deg": lo, "alt_km": 0.0,
             "uplink_mbps": 2.0, "downlink_mbps": 8.0, "min_elevation_deg": 5.0}
            for n, la, lo in STATIONS
        ],
    }  # fmt: skip


def _in_flight(outbox_path: Path) -> bool:
    """Whether the agent has sent an update that is not ACKed yet."""
    if not outbox_path.exists():
        return False
    db = sqlite3.connect(f"file:{outbox_path}?mode=ro", uri=True, timeout=0.1)
    try:
        (n,) = db.execute("SELECT COUNT(*) FROM entries WHERE attempts > 0").fetchone()
    finally:
        db.close()
    return n > 0


def _agent_kill_kind(outbox_path: Path) -> str:
    """Classify an agent kill by what its outbox held at that instant."""
    if not outbox_path.exists():
        return "agent_kill9_idle"
    with Outbox(outbox_path) as box:
        pending = box.pending()
    if any(e.attempts > 0 for e in pending):
        return "agent_kill9_mid_send"
    if pending:
        return "agent_kill9_update_unsent"
    return "agent_kill9_idle"


@pytest.mark.timeout(600)
def test_links_contacts_and_faults_lose_and_duplicate_no_update(
    netns_lab, tmp_path, py_env, python
):
    ids = [f"sat-{i}" for i in range(N_AGENTS)]
    hostile_index = N_AGENTS
    lab = netns_lab(N_AGENTS + 1, LinkSpec(uplink_kbit=2000, downlink_kbit=8000))
    # The hostile peers sit on the ground network, on a fast line.
    lab.set_rates(hostile_index, 200_000, 200_000)
    keys = Keys(tmp_path / "keys", [*ids, "mallory"])
    stranger_secret = keys.stranger("stranger")
    n_slot_owners = N_AGENTS + 1
    model_size = n_slot_owners * SLOTS + EXTRA

    # The shared clock starts a little in the future so every process is up.
    wall_start = time.time() + 3.0
    clock = SimClock(EPOCH, wall_start, SPEEDUP)
    ground_clock = {"sim_epoch": EPOCH.isoformat(), "wall_start": wall_start,
                    "speedup": SPEEDUP}  # fmt: skip
    state = tmp_path / "ground-state"
    ground_config(
        tmp_path / "ground.toml",
        bind=f"tcp://0.0.0.0:{PORT}",
        state_dir=state,
        keys=keys,
        expected_agents=ids,
        n_slots=model_size,
        deadline_s=DEADLINE_S,
        clock=ground_clock,
    )
    daemon = Proc(
        "ground",
        lab.netns_argv(lab.ground_ns, [python, "-m", "ground", "serve",
                                       "--config", str(tmp_path / "ground.toml")]),
        tmp_path / "ground.log",
        env=py_env,
    ).start()  # fmt: skip

    tles = walker_tles(N_AGENTS, 1, 1, 550.0, 53.0, EPOCH - timedelta(hours=6))
    stations = _stations()
    windows = {}
    agents = []
    summary = RunSummary(f"netns contacts + faults (seed {SEED})")
    for i, agent_id in enumerate(ids):
        _, line1, line2 = tles[i]
        predictor = ContactPredictor(line1, line2, stations)
        hours = (RUN_S + DRAIN_S) * SPEEDUP / 3600 + 1
        windows[i] = [
            (w.start_time, w.end_time) for w in predictor.windows(EPOCH, hours)
        ]
        skew = SKEW_S.get(i, 0.0)
        agent_clock = {
            "sim_epoch": (EPOCH + timedelta(seconds=skew)).isoformat(),
            "wall_start": wall_start,
            "speedup": SPEEDUP,
        }
        if skew:
            summary.fault(f"clock_skew_{skew:+.0f}s")
        cfg = agent_config(
            tmp_path / f"{agent_id}.toml",
            agent_id=agent_id,
            agent_index=i,
            n_agents=n_slot_owners,
            rounds_per_agent=SLOTS,
            endpoint=f"tcp://{lab.ground_addr(i)}:{PORT}",
            state_dir=tmp_path / agent_id,
            keys=keys,
            max_rounds=ROUNDS_PER_AGENT,
            clock=agent_clock,
            orbit=_orbit_section(line1, line2),
            extra=EXTRA,
            outbox_expiry_s=SHORT_EXPIRY.get(i, 7 * 86400.0),
        )
        agents.append(
            Proc(
                agent_id,
                lab.netns_argv(lab.agent_ns(i), [python, "-m", "agent", "run",
                                                 "--config", str(cfg)]),
                tmp_path / f"{agent_id}.log",
                env=py_env,
            ).start()
        )  # fmt: skip

    hostile_cfg = tmp_path / "hostile.json"
    hostile_cfg.write_text(
        json.dumps(
            {
                "endpoint": f"tcp://{lab.ground_addr(hostile_index)}:{PORT}",
                "host": lab.ground_addr(hostile_index),
                "port": PORT,
                "server_key": str(keys.ground_public),
                "valid_secret": str(keys.agent_secret("mallory")),
                "valid_id": "mallory",
                "stranger_secret": str(stranger_secret),
                "stranger_id": "stranger",
                "victim_id": ids[0],
                "slot_base": N_AGENTS * SLOTS,
                "model_size": model_size,
                "max_message_bytes": 4 * 1024 * 1024,
                "duration_s": RUN_S,
                "seed": SEED,
            }
        )
    )
    hostile = Proc(
        "hostile",
        lab.netns_argv(lab.agent_ns(hostile_index),
                       [python, "-m", "hil_tests._hostile", str(hostile_cfg)]),
        tmp_path / "hostile.log",
        env=py_env,
    )  # fmt: skip

    agent_kill_kinds: Counter = Counter()

    def on_agent_kill(i):
        def hook(_k, _t):
            agent_kill_kinds[_agent_kill_kind(tmp_path / ids[i] / "outbox.sqlite")] += 1

        return hook

    # The hostile peers' link is always up; the agents' follow their windows.
    sched = LinkScheduler(clock, windows, lab.set_link)
    t_start = time.monotonic()
    sched.start()
    while time.time() < wall_start:
        time.sleep(0.05)
    hostile.start()
    daemon_chaos = Chaos(
        daemon, SEED, DAEMON_KILLS, gap_s=(1.0, 2 * RUN_S / DAEMON_KILLS - 1.0),
        down_s=(0.05, 1.0),
    ).start()  # fmt: skip
    agent_chaos = [
        # Two kills of three wait for an update in flight (sent, not ACKed).
        Chaos(p, SEED + 1 + i, AGENT_KILLS, gap_s=(3.0, RUN_S / AGENT_KILLS - 8),
              down_s=(0.1, 1.0), on_kill=on_agent_kill(i),
              aim=lambda k, i=i: k % 3 == 2 or _in_flight(
                  tmp_path / ids[i] / "outbox.sqlite"),
              aim_max_s=8.0).start()
        for i, p in enumerate(agents)
    ]  # fmt: skip
    try:
        daemon_chaos.join(RUN_S + 60)
        for c in agent_chaos:
            c.join(max(1.0, RUN_S + 30 - (time.monotonic() - t_start)))
        while time.monotonic() - t_start < RUN_S:
            time.sleep(0.2)
        # Drain: the satellites all come into view for good.
        sched.stop()
        for c in agent_chaos:
            c.stop()
        for i in range(N_AGENTS):
            lab.set_link(i, True)
        if not daemon.running():
            daemon.start()
        t_drain = time.monotonic()
        while any(p.running() for p in agents) and time.monotonic() - t_drain < DRAIN_S:
            for p in agents:
                if not p.running() and p.popen.returncode != 0:
                    p.start()  # died by itself: that shows in its log
            time.sleep(0.5)
        drain_s = time.monotonic() - t_drain
        still_running = [p.name for p in agents if p.running()]
        # Let the daemon close the round that holds the last updates.
        time.sleep(clock.wall_seconds(DEADLINE_S) + 2.0)
    finally:
        sched.stop()
        for c in [daemon_chaos, *agent_chaos]:
            c.stop()
        for p in [*agents, hostile]:
            p.stop()
        daemon.stop()

    logs = {p.name: p.log_text() for p in agents}
    # The hostile peers' record.
    events = [json.loads(x) for x in hostile.log_text().splitlines()
              if x.startswith("{")]  # fmt: skip
    attacks = Counter(
        (e["peer"], e["attack"], e["reply"]) for e in events if "attack" in e
    )
    mallory_sent = {
        ("mallory", e["round"], e["seq"])
        for e in events
        if e.get("attack") == "honest_update"
    }
    mallory_acked = {
        ("mallory", e["round"], e["seq"])
        for e in events
        if e.get("attack") == "honest_update" and e["reply"] == "ack"
    }
    outcome = account(
        logs,
        {a: tmp_path / a / "outbox.sqlite" for a in ids},
        state,
        {a: (i, SLOTS) for i, a in enumerate([*ids, "mallory"])},
        daemon_log=daemon.log_text(),
        extra_produced=mallory_acked,
        candidates=mallory_sent,
    )
    acc = outcome.accounting

    # Faults by kind.
    summary.fault("daemon_kill9", daemon.kills)
    summary.faults.update(agent_kill_kinds)
    summary.fault("link_outage", sum(1 for t in sched.transitions if not t.up))
    for (peer, attack, _reply), n in attacks.items():
        if attack != "hello" and attack != "honest_update":
            summary.fault(f"hostile_{peer}_{attack}", n)
    summary.accounting = acc
    summary.notes = {
        "refused": dict(Counter(outcome.refused.values())),
        "still_in_outbox": len(outcome.pending_in_outbox),
        "drain_s": round(drain_s, 1),
        "rounds_closed": outcome.open_round,
    }
    summary.record()
    report = (
        f"\nnetns run: {daemon.kills} daemon kills, "
        f"agent kills {dict(agent_kill_kinds)}, "
        f"{summary.faults['link_outage']} link outages, produced {len(acc.produced)}, "
        f"aggregated {len(set(acc.aggregated) & acc.produced)}, expired "
        f"{len(acc.expired)}, refused {len(outcome.refused)}, pending "
        f"{len(outcome.pending_in_outbox)}, rounds closed {outcome.open_round}\n"
        f"hostile: {dict(attacks)}"
    )
    print(report)

    # --- the faults really happened
    assert daemon.kills >= 20, f"only {daemon.kills} daemon kills"
    assert sum(agent_kill_kinds.values()) == N_AGENTS * AGENT_KILLS
    assert summary.faults["link_outage"] >= 2 * N_AGENTS, sched.transitions
    assert not sched.errors, sched.errors
    late = max(t.late_s for t in sched.transitions)
    assert late < 0.5, f"a link changed {late:.2f} s after its predicted time"

    # --- every agent finished: resumed after every outage and kill
    assert not still_running, (
        f"{still_running} did not finish {DRAIN_S} s into the drain"
    )
    for p in agents:
        assert "Traceback" not in logs[p.name], logs[p.name][-3000:]

    # --- the invariant
    accounted = set(acc.aggregated) | acc.expired | set(outcome.refused)
    lost = acc.produced - accounted - outcome.pending_in_outbox
    assert not lost, f"updates lost: {sorted(lost)}\n{report}"
    assert not outcome.pending_in_outbox, (
        f"updates still in an outbox after every agent finished: "
        f"{sorted(outcome.pending_in_outbox)}"
    )
    assert not acc.duplicated, acc.duplicated
    assert not acc.phantom, f"aggregated but produced by nobody: {acc.phantom}"
    assert not (set(acc.aggregated) & set(outcome.refused)), "refused yet aggregated"
    assert outcome.model_problems == [], "\n".join(outcome.model_problems)
    refused_reasons = set(outcome.refused.values())
    assert refused_reasons <= {"stale_round"}, (
        f"honest updates refused for {refused_reasons}; only a missed round "
        "(stale_round) is a legitimate refusal"
    )
    assert len(set(acc.aggregated) & acc.produced) >= N_AGENTS, report
    # Every ACKed update of the peer with a valid key is aggregated.
    assert mallory_acked <= set(acc.aggregated), mallory_acked - set(acc.aggregated)

    # --- the hostile peers were refused, and counted, while honest agents got on
    for attack, expected in (
        ("future_round", {"nack:future_round"}),
        ("impostor", {"nack:impostor"}),
        ("random_bytes", {"nack:malformed", "nack:truncated", "nack:bad_version",
                          "nack:unknown_type"}),
        ("huge_claim", {"nack:malformed", "nack:truncated", "nack:too_large"}),
        ("truncated", {"nack:malformed", "nack:truncated"}),
        ("oversized", {"nack:too_large"}),
        ("replay", {"ack:dup"}),
    ):  # fmt: skip
        replies = {r: n for (p, a, r), n in attacks.items()
                   if p == "valid" and a == attack}  # fmt: skip
        wrong = {r: n for r, n in replies.items() if r not in expected | {"none"}}
        assert not wrong, f"{attack}: unexpected replies {wrong} (expected {expected})"
        assert sum(n for r, n in replies.items() if r != "none") >= 1, (
            f"{attack}: never answered while the daemon was up: {replies}"
        )
    stranger = {r: n for (p, _a, r), n in attacks.items() if p == "stranger"}
    assert set(stranger) == {"none"}, f"a peer with an unknown key got {stranger}"
    ground_log = daemon.log_text()
    assert "stranger" not in {a for a, *_ in outcome.journal}
    assert ground_log.count("Traceback") == 0, ground_log[-3000:]


def test_scenario_constants_give_enough_contacts_for_the_run():
    """The accelerated clock and the stations give each agent several passes
    inside the run (a guard against a TLE or station change that would make
    the link test vacuous)."""
    tles = walker_tles(N_AGENTS, 1, 1, 550.0, 53.0, EPOCH - timedelta(hours=6))
    hours = RUN_S * SPEEDUP / 3600
    for _, line1, line2 in tles:
        ws = ContactPredictor(line1, line2, _stations()).windows(EPOCH, hours)
        assert len(ws) >= 3, f"only {len(ws)} passes in {hours:.1f} h"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-s"]))
