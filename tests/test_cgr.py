"""Contact graph routing: hand-made plans, brute force, ION text, real passes."""

import itertools
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from agent import (
    Contact,
    ContactPlan,
    IslConfig,
    IslNetwork,
    Position,
    contacts_from_series,
    contacts_from_windows,
    earliest_arrival,
)
from agent._walker import walker_tles

EPOCH = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_waiting_for_a_later_direct_contact_beats_an_earlier_slower_relay():
    plan = ContactPlan(
        [
            Contact(0, 1000, "sat", "relay", rate_bytes_s=100),  # open now, slow
            Contact(0, 1000, "relay", "gs", rate_bytes_s=1e6),
            Contact(100, 200, "sat", "gs", rate_bytes_s=1e6),  # later, fast
        ]
    )
    route = earliest_arrival(plan, "sat", 0.0, 50_000, ["gs"])
    assert route.hops == ("sat", "gs") and route.is_direct
    assert earliest_arrival(plan, "sat", 0.0, 50_000, ["gs"], max_hops=1) == route
    assert route.departure_s == 100.0
    assert route.arrival_s == pytest.approx(100.05)
    # with a faster relay link, relaying now wins
    plan.add(Contact(0, 1000, "sat", "relay", rate_bytes_s=10_000))
    relay = earliest_arrival(plan, "sat", 0.0, 50_000, ["gs"])
    assert relay.hops == ("sat", "relay", "gs") and relay.first_hop == "relay"
    assert relay.contact_ids == (3, 1)
    assert relay.arrival_s == pytest.approx(5.05)


def test_a_booked_contact_pushes_the_bundle_to_a_later_one():
    plan = ContactPlan(
        [
            Contact(0, 10, "sat", "gs", rate_bytes_s=1000, owlt_s=0.5),
            Contact(100, 200, "sat", "gs", rate_bytes_s=1000, owlt_s=0.5),
        ]
    )
    free = earliest_arrival(plan, "sat", 0.0, 4000, ["gs"])
    assert free.contact_ids == (0,) and free.arrival_s == 4.5
    # 5,000 bytes booked first: the bundle queues behind them and still fits
    plan.booked_bytes[0] = 5000.0
    queued = earliest_arrival(plan, "sat", 0.0, 4000, ["gs"])
    assert queued.contact_ids == (0,) and queued.departure_s == 5.0
    assert queued.arrival_s == 9.5
    plan.book(queued)
    assert plan.residual_bytes(0) == 1000.0
    # now the first contact has too little left: wait for the second
    later = earliest_arrival(plan, "sat", 0.0, 4000, ["gs"])
    assert later.contact_ids == (1,) and later.arrival_s == 104.5
    with pytest.raises(ValueError, match="contact 0 has 1000 bytes left"):
        plan.book(queued)


def test_multi_hop_route_waits_at_each_node_and_adds_light_time():
    plan = ContactPlan(
        [
            Contact(0, 100, "s", "a", 1000, owlt_s=1.0),
            Contact(10, 100, "a", "b", 1000, owlt_s=2.0),
            Contact(50, 60, "b", "gs-1", 1000, owlt_s=0.25),
            Contact(0, 1000, "s", "gs-2", 1, owlt_s=0.0),  # far too slow
        ]
    )
    route = earliest_arrival(plan, "s", 0.0, 1000, ["gs-1", "gs-2"])
    assert route.hops == ("s", "a", "b", "gs-1")
    assert route.departures_s == (0.0, 10.0, 50.0)
    assert route.arrival_s == 51.25
    assert route.destination == "gs-1"
    # created after the last hop's contact closed: only the slow link is left
    assert earliest_arrival(plan, "s", 59.5, 1000, ["gs-1"]) is None


def test_unroutable_and_bad_requests():
    plan = ContactPlan([Contact(0, 1, "s", "gs", 100)])
    assert earliest_arrival(plan, "s", 0.0, 101, ["gs"]) is None
    assert earliest_arrival(plan, "s", 0.0, 100, ["gs"]).arrival_s == 1.0
    with pytest.raises(KeyError, match="'x'"):
        earliest_arrival(plan, "x", 0.0, 1, ["gs"])
    with pytest.raises(ValueError, match="bundle_bytes=0"):
        earliest_arrival(plan, "s", 0.0, 0, ["gs"])
    with pytest.raises(ValueError, match="no node other than the source 's'"):
        earliest_arrival(plan, "s", 0.0, 1, ["s"])
    with pytest.raises(ValueError, match="max_hops=0"):
        earliest_arrival(plan, "s", 0.0, 1, ["gs"], max_hops=0)
    with pytest.raises(ValueError, match="end_s=5.0 must be after start_s=5.0"):
        Contact(5, 5, "a", "b", 1)


@pytest.mark.parametrize("t_s", [math.nan, math.inf, -math.inf])
def test_a_creation_time_that_is_not_finite_is_rejected_not_routed(t_s):
    plan = ContactPlan([Contact(0, 100, "s", "gs", 100)])
    with pytest.raises(ValueError, match=f"t_s={t_s}"):
        earliest_arrival(plan, "s", t_s, 1, ["gs"])


def test_naive_creation_time_is_rejected_naming_it():
    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    plan = ContactPlan([Contact(0, 100, "s", "gs", 100)], epoch=epoch)
    with pytest.raises(ValueError, match="2026-01-01T00:00:10 has no time zone"):
        earliest_arrival(plan, "s", datetime(2026, 1, 1, 0, 0, 10), 1, ["gs"])
    route = earliest_arrival(plan, "s", epoch + timedelta(seconds=10), 1, ["gs"])
    assert route.departure_s == 10.0


def test_one_destination_name_is_not_read_as_its_characters():
    plan = ContactPlan([Contact(0, 100, "s", "gs-madrid", 100)])
    route = earliest_arrival(plan, "s", 0.0, np.int64(50), "gs-madrid")
    assert route.destination == "gs-madrid"
    assert route.bundle_bytes == 50 and type(route.bundle_bytes) is int


def brute_force(plan, source, t, size, targets, max_hops=99):
    """Earliest arrival by trying every simple sequence of contacts."""
    best = math.inf

    def walk(node, t_node, visited):
        nonlocal best
        if node in targets:
            best = min(best, t_node)
            return
        if len(visited) > max_hops:
            return
        for cid, c in enumerate(plan.contacts):
            if c.from_node != node or c.to_node in visited:
                continue
            tx = max(t_node, c.start_s + plan.booked_bytes[cid] / c.rate_bytes_s)
            done = tx + size / c.rate_bytes_s
            if done <= c.end_s:
                walk(c.to_node, done + c.owlt_s, visited | {c.to_node})

    walk(source, t, {source})
    return best


@pytest.mark.parametrize("seed", range(30))
def test_earliest_arrival_matches_brute_force_on_random_plans(seed):
    rng = np.random.default_rng(seed)
    nodes = ["s", "a", "b", "c", "gs1", "gs2"]
    plan = ContactPlan()
    for _ in range(int(rng.integers(4, 14))):
        a, b = rng.choice(len(nodes), 2, replace=False)
        start = float(rng.integers(0, 100))
        plan.add(
            Contact(
                start,
                start + float(rng.integers(1, 60)),
                nodes[a],
                nodes[b],
                float(rng.choice([10, 100, 1000])),
                float(rng.integers(0, 3)),
            )
        )
        plan.booked_bytes[-1] = float(rng.choice([0, 0, 200]))
    if "s" not in plan.nodes():
        plan.add(Contact(0, 1, "s", "a", 1))
    size = int(rng.choice([10, 100, 500]))
    for max_hops in (None, 1, 2, 3):
        route = earliest_arrival(
            plan, "s", 5.0, size, {"gs1", "gs2"}, max_hops=max_hops
        )
        want = brute_force(plan, "s", 5.0, size, {"gs1", "gs2"}, max_hops or 99)
        if want == math.inf:
            assert route is None
            continue
        assert route.arrival_s == want
        assert route.hops[0] == "s" and route.destination in ("gs1", "gs2")
        assert len(route.contacts) <= (max_hops or 99)
        # the route's own timeline is consistent with its contacts
        t = 5.0
        for k, (c, dep) in enumerate(
            zip(route.contacts, route.departures_s, strict=True)
        ):
            assert (c.from_node, c.to_node) == route.hops[k : k + 2]
            assert dep >= max(t, c.start_s)
            t = dep + size / c.rate_bytes_s
            assert t <= c.end_s
            t += c.owlt_s
        assert t == route.arrival_s


ION_PLAN = """\
# a two-satellite plan, in ionrc(5) syntax
@ 2026/03/01-12:00:00
a contact +0 +600 1 2 125000
a contact +0 +600 2 1 125000 0.9
a contact +1200 +1500 2 3 1000000
a contact +1200 +1500 3 2 1000000
a contact -1 -1 4 4 0
a contact +0 0 1 4 0
a range +0 +600 1 2 1
a range +1000 +2000 3 2 2
m production 1000000
"""


def test_ion_plan_is_read_with_ions_directional_ranges():
    plan = ContactPlan.from_ion(ION_PLAN)
    assert plan.epoch == EPOCH
    # registration (start -1) and hypothetical (stop 0) contacts are skipped
    assert [(c.from_node, c.to_node) for c in plan.contacts] == [
        ("1", "2"),
        ("2", "1"),
        ("2", "3"),
        ("3", "2"),
    ]
    # "1 2" also declares 2 -> 1; "3 2" declares nothing about 2 -> 3
    assert [c.owlt_s for c in plan.contacts] == [1.0, 1.0, 0.0, 2.0]
    assert plan.contacts[2].rate_bytes_s == 1e6
    route = earliest_arrival(plan, "1", 0.0, 125_000, ["3"])
    assert route.hops == ("1", "2", "3")
    assert route.arrival_s == 1200.125
    text = plan.to_ion()
    assert text.startswith("@ 2026/03/01-12:00:00\n")
    again = ContactPlan.from_ion(text)
    assert again.contacts == plan.contacts and again.epoch == EPOCH


def test_ion_reference_time_shifts_relative_times():
    text = "@ 2026/03/01-12:10:00\na contact +0 +60 1 2 10\n"
    plan = ContactPlan.from_ion(text, epoch=EPOCH)
    assert (plan.contacts[0].start_s, plan.contacts[0].end_s) == (600.0, 660.0)


def test_ion_export_maps_names_to_numbers_and_rounds_conservatively():
    plan = ContactPlan(
        [Contact(0.4, 99.6, "sat-a", "gs-b", 1000.7, owlt_s=0.004)], epoch=EPOCH
    )
    text = plan.to_ion()
    assert "a contact +1 +99 2 1 1000" in text
    assert "a range +1 +99 2 1 1" in text
    assert "# node 1 gs-b" in text and "# node 2 sat-a" in text
    back = ContactPlan.from_ion(text)
    assert back.epoch == EPOCH
    assert back.contacts == [Contact(1, 99, "sat-a", "gs-b", 1000, owlt_s=1)]
    loose = ContactPlan.from_ion(plan.to_ion(strict=False))
    assert loose.contacts == plan.contacts


def test_ion_absolute_times_and_malformed_lines():
    text = "a contact 2026/03/01-12:10:00 2026/03/01-12:20:00 1 2 100\n"
    plan = ContactPlan.from_ion(text, epoch=EPOCH)
    assert (plan.contacts[0].start_s, plan.contacts[0].end_s) == (600.0, 1200.0)
    assert plan.contacts[0].owlt_s == 0.0  # no range covers it
    with pytest.raises(ValueError) as info:
        ContactPlan.from_ion("a contact +0 +10 1 2\na range +x +5 1 2 1\n")
    message = str(info.value)
    assert "line 1" in message and "has 6 fields" in message
    assert "line 2" in message and "'+x'" in message
    with pytest.raises(ValueError, match=r"CONFIDENCE '1.5' is not in \(0, 1\]"):
        ContactPlan.from_ion("a contact +0 +10 1 2 5 1.5\n")
    with pytest.raises(ValueError, match="needs an epoch"):
        ContactPlan.from_ion(text)
    with pytest.raises(ValueError, match="neither"):
        ContactPlan.from_ion("a contact 12:00 +5 1 2 100\n", epoch=EPOCH)
    with pytest.raises(ValueError, match="line 1: invalid contact"):
        ContactPlan.from_ion("a contact +10 +5 1 2 100\n")


def test_ion_plans_with_naive_epochs_or_negative_light_times_are_named():
    with pytest.raises(ValueError, match="line 1: epoch '2026-03-01T12:00:00' has no"):
        ContactPlan.from_ion(
            "# epoch 2026-03-01T12:00:00\n@ 2026/03/01-12:00:10\n"
            "a contact +0 +10 1 2 100\n"
        )
    with pytest.raises(ValueError, match="epoch 2026-03-01T12:00:00 has no time"):
        ContactPlan.from_ion(
            "a contact +0 +10 1 2 100\n", epoch=datetime(2026, 3, 1, 12)
        )
    for owlt in ("-1", "nan", "inf"):
        with pytest.raises(ValueError, match=f"line 2: .*OWLT '{owlt}' must be"):
            ContactPlan.from_ion(f"a contact +0 +10 1 2 100\na range +0 +10 1 2 {owlt}")


def test_contacts_from_an_isl_series_follow_the_links():
    tles = walker_tles(8, 12, 1, 550.0, 53.0, EPOCH)
    cfg = IslConfig(
        planes=8,
        sats_per_plane=12,
        phasing=1,
        max_range_km=6000.0,
        ground_min_elevation_deg=10,
    )
    network = IslNetwork(tles, cfg, [("madrid", Position(40.43, -3.95))])
    series = network.series(EPOCH, 6 * 3600, 60)
    contacts = contacts_from_series(series)
    ground = [c for c in contacts if c.to_node == "madrid"]
    assert ground, "some satellite must pass over Madrid in six hours"
    for c in ground:
        assert c.rate_bytes_s == 200e6 / 8
        # every snapshot inside the contact shows the link
        for snap in series.snapshots:
            t = (snap.time - EPOCH).total_seconds()
            if c.start_s <= t <= c.end_s:
                assert (c.from_node, "madrid") in snap.link_names()
    reverse = {(c.start_s, c.to_node, c.from_node) for c in contacts}
    assert all((c.start_s, c.from_node, c.to_node) in reverse for c in contacts)
    plan = ContactPlan(contacts, epoch=EPOCH)
    for sat in ("sat-00-00", "sat-03-04"):
        route = earliest_arrival(plan, sat, 0.0, 1_000_000, ["madrid"])
        assert route is not None and route.destination == "madrid"


def test_contacts_from_predicted_passes_carry_the_pass_capacity():
    from agent._contacts import ContactPredictor
    from agent._stations import GroundStation

    name, line1, line2 = walker_tles(1, 1, 0, 550.0, 53.0, EPOCH)[0]
    station = GroundStation("madrid", Position(40.43, -3.95, 0.65), 50.0, 200.0)
    windows = ContactPredictor(line1, line2, [station]).windows(EPOCH, 24)
    contacts = contacts_from_windows(name, windows, EPOCH)
    assert len(contacts) == len(windows) > 0
    for c, w in zip(contacts, windows, strict=True):
        assert c.from_node == name and c.to_node == "madrid"
        assert c.start_s == (w.start_time - EPOCH).total_seconds()
        assert c.volume_bytes == pytest.approx(w.data_capacity_mb * 1e6, rel=1e-9)
    plan = ContactPlan(contacts, epoch=EPOCH)
    route = earliest_arrival(plan, name, EPOCH, 10_000_000, ["madrid"])
    first = next(c for c in contacts if c.volume_bytes >= 10_000_000)
    assert route.departure_s == first.start_s
    # the bundle leaves within the pass and lands before the pass ends
    window = windows[contacts.index(first)]
    assert window.contains(plan.time(route.departure_s))
    assert plan.time(route.arrival_s) <= window.end_time + timedelta(seconds=0.02)


def test_plan_builders_reject_a_naive_epoch():
    naive = EPOCH.replace(tzinfo=None)
    with pytest.raises(ValueError, match="epoch 2026-03-01T12:00:00 has no time"):
        contacts_from_windows("sat", [], naive)
    series = IslNetwork(
        walker_tles(1, 2, 0, 550.0, 53.0, EPOCH), IslConfig(topology="nearest")
    ).series(EPOCH, 60.0, 60.0)
    with pytest.raises(ValueError, match="epoch 2026-03-01T12:00:00 has no time"):
        contacts_from_series(series, epoch=naive)


@pytest.mark.parametrize("t_s", [0.0, 3600.0])
def test_earliest_arrival_is_monotone_in_creation_time(t_s):
    # FIFO: a bundle created later never arrives earlier
    plan = ContactPlan(
        [Contact(s, s + 50, "s", "gs", 100) for s in range(0, 7200, 300)]
    )
    arrivals = [
        earliest_arrival(plan, "s", t_s + dt, 1000, ["gs"]).arrival_s
        for dt in range(0, 600, 37)
    ]
    assert all(a <= b for a, b in itertools.pairwise(arrivals))
    assert arrivals[0] == pytest.approx(t_s + 10.0)


def test_hold_for_own_pass_or_relay_to_a_neighbour_that_sees_the_ground_sooner():
    plan = ContactPlan(
        [
            Contact(5000, 5400, "sat-a", "gs", 1e6, owlt_s=0.005),  # own pass
            Contact(0, 86400, "sat-a", "sat-b", 1e6, owlt_s=0.003),  # ISL
            Contact(1000, 1400, "sat-b", "gs", 1e6, owlt_s=0.005),  # b's pass
        ]
    )
    hold = earliest_arrival(plan, "sat-a", 0.0, 20_000_000, ["gs"], max_hops=1)
    relay = earliest_arrival(plan, "sat-a", 0.0, 20_000_000, ["gs"])
    assert hold.is_direct and hold.arrival_s == pytest.approx(5020.005)
    assert relay.first_hop == "sat-b" and relay.departure_s == 0.0
    assert relay.arrival_s == pytest.approx(1020.005)
    # once b's pass is booked full, holding is best again
    plan.booked_bytes[2] = plan.contacts[2].volume_bytes - 1_000_000
    assert earliest_arrival(plan, "sat-a", 0.0, 20_000_000, ["gs"]).is_direct
