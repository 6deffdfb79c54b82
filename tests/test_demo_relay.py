"""Relaying over ISLs in the demo: the planner, custody transfer, end to end."""

import json
import os
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import _wire as W
from agent._cgr import Contact, ContactPlan
from agent._demo_relay import (
    CustodyServer,
    RelayLedger,
    RelayPlanner,
    hand_over,
)
from agent._outbox import Outbox
from agent._transport import DealerTransport
from agent._walker import walker_tles

REPO = Path(__file__).resolve().parent.parent
EPOCH = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
RATE_B_S = 1e6


def _plan() -> ContactPlan:
    # A sees the station only at 10,000 s; B at 2,000 s; A-B linked 0-1,000 s.
    return ContactPlan(
        [
            Contact(10_000, 10_600, "A", "S", RATE_B_S),
            Contact(2_000, 2_600, "B", "S", RATE_B_S),
            Contact(0, 1_000, "A", "B", RATE_B_S),
            Contact(0, 1_000, "B", "A", RATE_B_S),
        ],
        epoch=EPOCH,
    )


def test_planner_relays_while_the_link_is_up_to_a_neighbour_that_lands_sooner():
    planner = RelayPlanner("A", _plan(), ["S"], min_gain_s=600)
    choice = planner.choose(500.0, 2_000)
    assert choice is not None
    assert (choice.neighbour, choice.station) == ("B", "S")
    assert choice.arrival_s == pytest.approx(2_000 + 2_000 / RATE_B_S)
    assert choice.direct_arrival_s == pytest.approx(10_000 + 2_000 / RATE_B_S)
    # The link is down after 1,000 s: hold (its own pass is the only route).
    assert planner.choose(1_500.0, 2_000) is None
    # Booked: B's pass (600 s at 1 MB/s, 600 MB) carries one 400 MB bundle,
    # not two; A then holds the second for its own pass.
    big = planner.choose(500.0, 400_000_000)
    planner.book(big)
    assert planner.choose(500.0, 400_000_000) is None
    assert planner.choose(500.0, 100_000_000).neighbour == "B"


def test_planner_holds_when_the_gain_is_small_or_its_own_pass_is_first():
    assert RelayPlanner("A", _plan(), ["S"], min_gain_s=9_000).choose(500.0, 10) is None
    # B's own pass (2,000 s) comes before anything A could do for it.
    assert RelayPlanner("B", _plan(), ["S"]).choose(500.0, 10) is None
    # A node absent from the plan never relays.
    assert RelayPlanner("Z", _plan(), ["S"]).choose(500.0, 10) is None


def _update_frame(origin: str, rnd: int, seq: int) -> bytes:
    import numpy as np

    return W.encode(
        W.update(
            origin, rnd, seq, 1e9, base_version=0, num_samples=5,
            delta={"w": np.ones(3, np.float32)},
        )
    )  # fmt: skip


def _free_endpoint() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def _connect(endpoint: str, node_id: str) -> DealerTransport:
    link = DealerTransport(endpoint, node_id)
    deadline = time.time() + 5
    # IMMEDIATE: sends fail until the connection is up.
    while not link._sock.poll(10, 2) and time.time() < deadline:  # zmq.POLLOUT
        pass
    return link


@pytest.mark.timeout(30)
def test_custody_is_durable_before_the_ack_and_a_second_handoff_is_a_duplicate(
    tmp_path,
):
    box = Outbox(tmp_path / "relayer.sqlite")
    custody = []
    endpoint = _free_endpoint()
    server = CustodyServer(
        "sat-b",
        endpoint,
        RelayLedger(box),
        lambda: 1e9,
        lambda of, seq, n, dup: custody.append((of, seq, dup)),
    )
    link = _connect(endpoint, "sat-a")
    try:
        frame = _update_frame("sat-a", 2, 7)
        assert hand_over(link, "sat-a", 2, 7, frame, 1e9) == "ack"
        # Durable before the ACK: a fresh connection to the file sees it.
        with Outbox(tmp_path / "relayer.sqlite") as other:
            (entry,) = other.pending()
        assert entry.kind == int(W.MessageType.RELAY) and entry.body == frame
        assert entry.round == 2
        assert hand_over(link, "sat-a", 2, 7, frame, 1e9) == "ack"
        assert [dup for _, _, dup in custody] == [False, True]
        assert len(box) == 1
        # Custody only of the sender's own update: sat-a cannot hand sat-c's.
        forged = _update_frame("sat-c", 2, 1)
        assert hand_over(link, "sat-a", 2, 8, forged, 1e9) == "nack"
        assert len(box) == 1
    finally:
        link.close()
        server.close()

    # A reboot rebuilds the origin -> entry map from the outbox, so the
    # ground's ACK naming the origin still settles the custody copy.
    ledger = RelayLedger(box)
    assert ledger.origin(2, entry.seq) == ("sat-a", 2, 7)
    assert ledger.settle(("sat-a", 2, 7), True)
    assert len(box) == 0 and not ledger.settle(("sat-a", 2, 7), True)
    box.close()


def _demo(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "ground", "demo", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


def _events(run_dir: Path) -> dict[str, list[dict]]:
    return {
        p.stem: [json.loads(line) for line in p.read_text().splitlines()]
        for p in sorted((run_dir / "events").glob("*.jsonl"))
    }


@pytest.mark.timeout(180)
def test_updates_relay_over_isls_and_are_aggregated_exactly_once(tmp_path):
    # Two mid-latitude stations: a satellite of this near-polar Walker shell
    # may see neither for hours while a neighbour in another plane passes
    # one.  At 3000x a local training step outlasts a pass, so updates wait
    # in outboxes, where relaying can beat the satellite's own next pass.
    tle = tmp_path / "walker.tle"
    tles = walker_tles(4, 2, 1, 550.0, 97.6, EPOCH)
    tle.write_text("".join(f"{n}\n{a}\n{b}\n" for n, a, b in tles))
    stations = tmp_path / "stations.csv"
    stations.write_text(
        "Wallops,37.9402,-75.4664,0.0,150,5\nPerth,-31.8023,115.8856,0.0,100,2\n"
    )
    out = tmp_path / "out"
    done = _demo(
        ["--out", str(out), "--agents", "8", "--hours", "10", "--speedup", "3000",
         "--tle", str(tle), "--stations", str(stations)]
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "report.json").read_text())["run"]
    figures = {k: v for k, v in run.items() if k.startswith("updates")}
    figures.update(run["extra"])
    assert run["updates_relayed"] >= 1, figures
    assert run["updates_lost"] == 0 and run["lost_satellites"] == [], figures
    # An update sent as the run ends may still wait, un-ACKed, in an outbox.
    assert run["updates_aggregated"] > 0, figures
    assert (
        run["updates_sent"] - run["updates_aggregated"]
        <= run["extra"]["updates_held_in_outboxes"] + run["extra"]["updates_nacked"]
    ), figures
    assert "updates relayed over ISLs" in done.stdout

    run_dir = out / "run-orbitfl"
    events = _events(run_dir)
    plan = json.loads((run_dir / "config" / "contact_plan.json").read_text())
    isl = [c for c in plan["contacts"] if c[3] in events]  # satellite -> satellite
    handed = {}
    for sat, log in events.items():
        for e in log:
            if e["event"] == "handed":
                handed[(sat, e["round"], e["seq"])] = e["to"]
                # Handed over while the plan had the ISL up.
                assert any(
                    c[2] == sat and c[3] == e["to"]
                    and c[0] <= e["decided_s"] < c[1]
                    for c in isl
                ), (sat, e)  # fmt: skip
                assert e["decided_s"] <= e["t_sim_s"]
    assert len(handed) == run["updates_relayed"]
    # Each relayed update reached the relayer's custody, and the ground took
    # every update at most once: one ACK without the duplicate flag per id,
    # whoever carried it.
    custody = {
        (e["origin"], e["round"], e["seq"]): sat
        for sat, log in events.items()
        for e in log
        if e["event"] == "custody"
    }
    for uid, to in handed.items():
        assert custody[uid] == to
    first_acks = Counter(
        (e.get("origin", sat), e["round"], e["seq"])
        for sat, log in events.items()
        for e in log
        if e["event"] == "ack" and not e["duplicate"]
    )
    assert first_acks and max(first_acks.values()) == 1
    assert len(first_acks) <= run["updates_aggregated"]
    relayed_done = [u for u in handed if u in first_acks]
    assert run["extra"]["relayed_aggregated"] + run["extra"]["relayed_held"] >= len(
        relayed_done
    )


def test_demo_contact_plan_has_isls_both_ways_and_every_pass():
    from agent._demo_orbit import (
        contact_windows,
        demo_contact_plan,
        isl_neighbours,
        plan_from_dict,
        plan_to_dict,
    )
    from ground._demo_inputs import DEFAULT_STATIONS

    tles = walker_tles(4, 2, 1, 550.0, 97.6, EPOCH)
    names = [n for n, _, _ in tles]
    plan = demo_contact_plan(tles, DEFAULT_STATIONS, EPOCH, 3 * 3600.0)
    isl = [c for c in plan.contacts if c.to_node in names]
    passes = [c for c in plan.contacts if c.to_node not in names]
    assert isl and {(c.to_node, c.from_node, c.start_s) for c in isl} == {
        (c.from_node, c.to_node, c.start_s) for c in isl
    }
    # The same passes the launcher draws on the timeline, one contact each.
    windows = contact_windows(tles, DEFAULT_STATIONS, EPOCH, 3 * 3600.0)
    assert len(passes) == len(windows)
    neighbours = isl_neighbours(plan, names)
    assert all(a in neighbours[b] for a in names for b in neighbours[a])
    again = plan_from_dict(json.loads(json.dumps(plan_to_dict(plan))))
    assert again.contacts == plan.contacts and again.epoch == plan.epoch


@pytest.mark.timeout(30)
def test_curve_isl_takes_custody_only_from_allowlisted_keys_of_the_origin(tmp_path):
    from agent._keys import load_allowlist_checked, load_secret, make_keypair
    from agent._transport import CurveClientKeys

    allow, other = tmp_path / "allow", tmp_path / "other"
    allow.mkdir()
    keys = {}
    for name, where in (("sat-b", allow), ("sat-a", allow), ("rogue", other)):
        public, secret = make_keypair(tmp_path / "keys", name)
        keys[name] = load_secret(secret)
        if where is allow:
            (allow / public.name).write_bytes(public.read_bytes())
        else:
            where.mkdir(exist_ok=True)
    names, problems = load_allowlist_checked(allow)
    assert not problems
    box = Outbox(tmp_path / "relayer.sqlite")
    endpoint = _free_endpoint()
    server = CustodyServer(
        "sat-b", endpoint, RelayLedger(box), lambda: 1e9, lambda *a: None,
        curve=keys["sat-b"], allowlist=names,
    )  # fmt: skip

    def client(key_name: str, claim: str) -> DealerTransport:
        curve = CurveClientKeys(*keys[key_name], keys["sat-b"][0])
        return DealerTransport(endpoint, claim, curve=curve)

    links = []
    try:
        links.append(good := client("sat-a", "sat-a"))
        time.sleep(0.3)  # CURVE handshake and ZAP
        assert hand_over(good, "sat-a", 0, 1, _update_frame("sat-a", 0, 1), 1e9) == (
            "ack"
        )
        # A key outside the allowlist never gets a connection.
        links.append(rogue := client("rogue", "sat-c"))
        time.sleep(0.3)
        assert hand_over(rogue, "sat-c", 0, 1, _update_frame("sat-c", 0, 1), 1e9) == (
            "none"
        )
        # sat-a's key claiming to be sat-c, with sat-c's update: refused.
        links.append(liar := client("sat-a", "sat-c"))
        time.sleep(0.3)
        assert hand_over(liar, "sat-c", 0, 2, _update_frame("sat-c", 0, 2), 1e9) == (
            "nack"
        )
        assert [origin_entry.round for origin_entry in box.pending()] == [0]
    finally:
        for link in links:
            link.close()
        server.close()
        box.close()
