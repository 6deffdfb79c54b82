"""SyncScheduler: the reference API, transfer placement, and the passes CLI."""

import itertools
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent import Position
from agent._contacts import find_windows
from agent._walker import walker_tles
from ground import GroundStation, SyncScheduler, Transfer

REPO = Path(__file__).resolve().parent.parent
EPOCH = datetime(2025, 3, 20, 0, 0, tzinfo=UTC)

STATIONS = [
    GroundStation("KSC", Position(28.5729, -80.6490, 0.0), 100.0, 200.0),
    GroundStation("Svalbard", Position(78.2297, 15.3975, 0.0), 150.0, 300.0),
]


def _train(n_sats=3, spacing_deg=2.0):
    """Satellites close behind each other in one polar plane: shared passes."""
    tles = walker_tles(1, 180, 0, 600.0, 97.8, EPOCH, name_prefix="train")
    step = round(spacing_deg / 2.0)
    return [tles[i * step] for i in range(n_sats)]


def _scheduler(stations=STATIONS, n_sats=3):
    scheduler = SyncScheduler(stations)
    for name, l1, l2 in _train(n_sats):
        scheduler.add_satellite(name, l1, l2)
    return scheduler


def test_reference_api(tle_dir):
    scheduler = SyncScheduler(STATIONS)
    lines = (tle_dir / "stations_2024-11.txt").read_text().splitlines()
    line1, line2 = lines[1].strip(), lines[2].strip()
    scheduler.add_satellite("sat-001", line1, line2)
    start = datetime(2024, 11, 10, tzinfo=UTC)
    windows = scheduler.get_sync_windows("sat-001", 24, start=start)
    assert windows
    for window in windows:
        assert window.station in STATIONS
        assert window.start_time.tzinfo is not None
        assert window.start_time <= window.tca_time <= window.end_time
        assert window.duration_seconds > 0 and window.data_capacity_mb > 0
        assert window.uplink_capacity_mb == pytest.approx(
            window.data_capacity_mb
            * window.station.uplink_mbps
            / window.station.downlink_mbps
        )
    direct = find_windows(
        [("sat-001", scheduler._sats["sat-001"])], STATIONS, start, 24
    )
    assert windows == direct.windows


def test_start_none_means_now():
    scheduler = SyncScheduler(STATIONS)
    name, l1, l2 = walker_tles(1, 1, 0, 550.0, 97.0, datetime.now(UTC))[0]
    scheduler.add_satellite(name, l1, l2)
    before = datetime.now(UTC)
    windows = scheduler.get_sync_windows(name, 12)
    assert windows and all(w.end_time >= before for w in windows)
    assert min(w.start_time for w in windows) < before + timedelta(hours=12)


def test_add_tle_file_keeps_the_good_entries(tle_dir, tmp_path):
    lines = (tle_dir / "goes_2022-02.txt").read_text().splitlines()
    lines[1] = lines[1][:68] + str((int(lines[1][68]) + 1) % 10)
    path = tmp_path / "goes.txt"
    path.write_text("\n".join(lines))
    scheduler = SyncScheduler(STATIONS)
    load = scheduler.add_tle_file(path)
    assert len(scheduler.satellites) == 16
    assert len(load.problems) == 1 and "checksum" in load.problems[0].message


def _overlaps(allocations):
    return [
        (a, b)
        for a, b in itertools.combinations(allocations, 2)
        if a.start_time < b.end_time and b.start_time < a.end_time
    ]


def _max_concurrent(allocations):
    events = sorted(
        [(a.start_time, 1) for a in allocations]
        + [(a.end_time, -1) for a in allocations]
    )
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("antennas", [1, 2])
def test_a_station_serves_at_most_its_antennas(antennas):
    station = GroundStation(
        "Svalbard", Position(78.2297, 15.3975, 0.0), 150.0, 300.0, antennas=antennas
    )
    scheduler = _scheduler([station], n_sats=3)
    transfers = [Transfer(name, 4000.0) for name in scheduler.satellites]
    plan = scheduler.plan_transfers(transfers, 6, start=EPOCH)
    assert not plan.unscheduled
    allocations = plan.for_station("Svalbard")
    assert _max_concurrent(allocations) == antennas


def test_transfers_larger_than_a_pass_are_split_across_passes():
    scheduler = _scheduler([STATIONS[1]], n_sats=1)
    name = scheduler.satellites[0]
    windows = scheduler.get_sync_windows(name, 12, start=EPOCH)
    biggest = max(w.data_capacity_mb for w in windows)
    plan = scheduler.plan_transfers([Transfer(name, 2.5 * biggest)], 12, start=EPOCH)
    (outcome,) = plan.outcomes
    assert outcome.scheduled and outcome.split and len(outcome.allocations) >= 3
    assert sum(a.size_mb for a in outcome.allocations) == pytest.approx(2.5 * biggest)
    for a in outcome.allocations:
        w = next(w for w in windows if w.start_time <= a.start_time <= w.end_time)
        assert a.end_time <= w.end_time + timedelta(microseconds=1)
        assert a.size_mb <= w.data_capacity_mb * 1.01


def test_a_satellite_uses_one_station_at_a_time():
    near = GroundStation("Longyear", Position(78.0, 16.0, 0.0), 150.0, 300.0)
    scheduler = _scheduler([STATIONS[1], near], n_sats=1)
    name = scheduler.satellites[0]
    plan = scheduler.plan_transfers(
        [Transfer(name, 3000.0), Transfer(name, 3000.0, direction="up")], 4, start=EPOCH
    )
    assert not plan.unscheduled
    assert _overlaps(plan.for_satellite(name)) == []


def test_deadline_that_cannot_be_met_is_reported_with_the_reason():
    scheduler = _scheduler([STATIONS[1]], n_sats=1)
    name = scheduler.satellites[0]
    first = scheduler.get_sync_windows(name, 12, start=EPOCH)[0]
    deadline = first.end_time + timedelta(minutes=5)
    plan = scheduler.plan_transfers(
        [Transfer(name, first.data_capacity_mb * 3, deadline=deadline)], 12, start=EPOCH
    )
    (outcome,) = plan.outcomes
    assert not outcome.scheduled and outcome.allocations == []
    assert "its deadline" in outcome.reason and "hold only" in outcome.reason
    # no window at all before a deadline at the start
    plan = scheduler.plan_transfers(
        [Transfer(name, 1.0, deadline=EPOCH + timedelta(seconds=1))], 12, start=EPOCH
    )
    assert plan.outcomes[0].reason.startswith("no contact window before its deadline")


def test_priority_wins_contention_and_the_loser_is_told_why():
    station = GroundStation("Svalbard", Position(78.2297, 15.3975, 0.0), 150.0, 300.0)
    scheduler = _scheduler([station], n_sats=2)
    a, b = scheduler.satellites
    first = scheduler.get_sync_windows(a, 3, start=EPOCH)[0]
    deadline = first.end_time + timedelta(minutes=10)
    size = 0.8 * first.data_capacity_mb
    plan = scheduler.plan_transfers(
        [
            Transfer(a, size, priority=0, deadline=deadline),
            Transfer(b, size, priority=5, deadline=deadline),
        ],
        3,
        start=EPOCH,
    )
    by_sat = {o.transfer.satellite: o for o in plan.outcomes}
    assert by_sat[b].scheduled
    assert not by_sat[a].scheduled
    assert "taken by higher-priority or earlier transfers" in by_sat[a].reason
    assert plan.outcomes[0].transfer.satellite == b  # placement order


def test_a_free_pass_at_another_station_beats_waiting_for_a_busy_one():
    # Svalbard and Tromso see the same pass of a polar train; the leader fills
    # Svalbard, so the follower must start at Tromso's AOS, not wait for
    # Svalbard to free up although its Svalbard pass began first.
    stations = [
        STATIONS[1],
        GroundStation("Tromso", Position(69.65, 18.96, 0.0), 150.0, 300.0),
    ]
    scheduler = SyncScheduler(stations)
    for name, l1, l2 in _train(2, spacing_deg=6.0):
        scheduler.add_satellite(name, l1, l2)
    follower, leader = scheduler.satellites  # train-00-03 passes first
    lead = scheduler.get_sync_windows(leader, 3, start=EPOCH)[0]
    own = scheduler.get_sync_windows(follower, 3, start=EPOCH)
    svalbard = next(w for w in own if w.station.name == "Svalbard")
    tromso = next(w for w in own if w.station.name == "Tromso")
    assert lead.station.name == "Svalbard"
    assert svalbard.start_time < tromso.start_time < lead.end_time
    plan = scheduler.plan_transfers(
        [
            Transfer(leader, 0.9 * lead.data_capacity_mb, priority=5),
            Transfer(follower, 10.0),
        ],
        3,
        start=EPOCH,
    )
    busy_until = plan.for_satellite(leader)[-1].end_time
    assert busy_until > tromso.start_time
    (small,) = plan.for_satellite(follower)
    assert small.station == "Tromso" and small.start_time == tromso.start_time


def test_the_plan_is_deterministic():
    scheduler = _scheduler(STATIONS, n_sats=3)
    transfers = [
        Transfer(name, 1500.0 + 500 * i, priority=i % 2, transfer_id=f"t{i}")
        for i, name in enumerate(scheduler.satellites * 2)
    ]
    plan_a = scheduler.plan_transfers(transfers, 12, start=EPOCH)
    plan_b = scheduler.plan_transfers(list(reversed(transfers)), 12, start=EPOCH)
    assert plan_a.allocations == plan_b.allocations
    assert len(plan_a.allocations) >= len(transfers)


def test_entries_sharing_a_name_are_all_kept_under_their_catalog_numbers(tle_dir):
    scheduler = SyncScheduler(STATIONS)
    load = scheduler.add_tle_file(tle_dir / "starlink_2023-07-18.txt")
    assert len(scheduler.satellites) == len(load.entries) == 4428
    debris = sorted(n for n in scheduler.satellites if n.startswith("FALCON 9 DEB"))
    assert len(debris) == 16 and debris[0] == "FALCON 9 DEB (48607)"
    assert "FALCON 9 DEB" not in scheduler.satellites
    assert {e.name for e in load.entries} == set(scheduler.satellites)


def test_unknown_and_failed_satellites_are_reported(tle_dir):
    scheduler = SyncScheduler(STATIONS)
    scheduler.add_tle_file(tle_dir / "starlink_2023-07-18.txt")
    start = datetime(2023, 7, 21, tzinfo=UTC)
    plan = scheduler.plan_transfers(
        [
            Transfer("STARLINK-5139", 10.0),
            Transfer("NO-SUCH-SAT", 10.0),
            Transfer("STARLINK-1007", 10.0),
        ],
        6,
        start=start,
    )
    reasons = {o.transfer.satellite: o.reason for o in plan.outcomes}
    assert "SGP4 error" in reasons["STARLINK-5139"]
    assert reasons["NO-SUCH-SAT"] == "unknown satellite 'NO-SUCH-SAT'"
    assert reasons["STARLINK-1007"] is None
    assert scheduler.status("STARLINK-5139", 6, start).error_code != 0


def test_invalid_transfer_names_every_problem():
    with pytest.raises(ValueError) as info:
        Transfer("x", -1.0, direction="sideways", deadline=datetime(2025, 1, 1))
    message = str(info.value)
    assert "size_mb=-1.0" in message and "direction='sideways'" in message
    assert "has no time zone" in message


def test_plan_transfers_rejects_a_naive_start_and_a_bad_horizon():
    scheduler = _scheduler([STATIONS[1]], n_sats=1)
    name = scheduler.satellites[0]
    naive = EPOCH.replace(tzinfo=None)
    with pytest.raises(ValueError, match=f"start={naive.isoformat()} has no time"):
        scheduler.plan_transfers([Transfer(name, 1.0)], 12, start=naive)
    for hours in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=f"hours={hours!r}"):
            scheduler.plan_transfers([], hours, start=EPOCH)


def _run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "ground", "passes", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_passes_cli_json_matches_the_library(tle_dir):
    path = tle_dir / "noaa_2022-02.txt"
    out = _run_cli(
        "--tle", str(path), "--station", "Svalbard,78.2297,15.3975,0.0,5",
        "--station", "KSC,28.5729,-80.6490,0.0", "--start", "2022-02-03T00:00:00Z",
        "--hours", "6", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    scheduler = SyncScheduler(
        [
            GroundStation("Svalbard", Position(78.2297, 15.3975, 0.0), 20.0, 100.0),
            GroundStation("KSC", Position(28.5729, -80.6490, 0.0), 20.0, 100.0),
        ]
    )
    scheduler.add_tle_file(path)
    expected = scheduler.search(6, datetime(2022, 2, 3, tzinfo=UTC)).windows
    assert [w["start_time"] for w in doc["windows"]] == [
        w.start_time.isoformat() for w in expected
    ]
    assert doc["windows"][0]["data_capacity_mb"] == pytest.approx(
        expected[0].data_capacity_mb, abs=1e-3
    )

    table = _run_cli(
        "--tle", str(path), "--station", "Svalbard,78.2297,15.3975,0.0",
        "--start", "2022-02-03T00:00:00", "--hours", "6",
    )  # fmt: skip
    assert table.returncode == 0
    assert table.stdout.startswith("satellite")
    assert table.stdout.count("\n") >= 10


def test_passes_cli_table_marks_times_on_later_days(tle_dir):
    out = _run_cli(
        "--tle", str(tle_dir / "goes_2022-02.txt"), "--station", "KSC,28.57,-80.65,0",
        "--start", "2022-02-03T00:00:00Z", "--hours", "48",
        "--satellite", "GOES 16 [+]",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    row = out.stdout.splitlines()[1]
    assert "2022-02-03 00:00:00" in row and "00:00:00+2d" in row
    assert "ALWAYS_VISIBLE" in row


def test_passes_cli_reports_bad_input_in_one_line(tle_dir):
    path = tle_dir / "noaa_2022-02.txt"
    bad = _run_cli("--tle", str(path), "--station", "X,100,0,0", "--start",
                   "2022-02-03", "--hours", "1")  # fmt: skip
    assert bad.returncode == 2
    assert "lat_deg=100.0 is outside [-90, 90]" in bad.stderr
    missing = _run_cli("--tle", "/no/such/file.txt", "--station", "X,1,2,0",
                       "--start", "2022-02-03", "--hours", "1")  # fmt: skip
    assert missing.returncode == 2 and "/no/such/file.txt" in missing.stderr


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"--station": "X,1,2"}, "'X,1,2' has 3 fields"),
        ({"--station": "X,nan,2,0"}, "lat_deg=nan"),
        ({"--station": "X,a,2,0"}, "'X,a,2,0'"),
        ({"--station": "X,1,2,0,95"}, "min_elevation_deg=95.0"),
        ({"--start": "yesterday"}, "--start 'yesterday' is not ISO 8601"),
        ({"--hours": "nan"}, "--hours nan"),
        ({"--hours": "-3"}, "--hours -3.0"),
        ({"--satellite": "NOAA 99"}, "['NOAA 99'] not found"),
        ({"--tle": "/dev/null"}, "/dev/null holds no usable element set"),
        ({"--tle": "."}, "Is a directory"),
    ],
)
def test_passes_cli_bad_input_is_one_line_naming_the_value(
    tle_dir, capsys, change, named
):
    from ground.__main__ import main

    args = {
        "--tle": str(tle_dir / "noaa_2022-02.txt"),
        "--station": "X,1,2,0",
        "--start": "2022-02-03T00:00:00Z",
        "--hours": "1",
        **change,
    }
    # in process (an exception would fail the test); _run_cli covers the real
    # process boundary in the test above
    code = main(["passes", *itertools.chain.from_iterable(args.items())])
    err = capsys.readouterr().err
    assert code == 2, err
    (line,) = err.strip().splitlines()[-1:]
    assert line.startswith("ground passes: error: ") and named in line


def test_passes_cli_stops_quietly_when_the_reader_goes_away(tle_dir):
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "ground", "passes",
            "--tle", str(tle_dir / "noaa_2022-02.txt"),
            "--station", "Svalbard,78.2297,15.3975,0.0", "--start",
            "2022-02-03T00:00:00Z", "--hours", "48",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )  # fmt: skip
    assert proc.stdout.readline().startswith(b"satellite")
    proc.stdout.close()  # like `| head -1`
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, stderr
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_passes_cli_refraction_matches_the_library(tle_dir):
    path = tle_dir / "noaa_2022-02.txt"
    args = (
        "--tle", str(path), "--station", "KSC,28.5729,-80.6490,0.0,0",
        "--start", "2022-02-03T00:00:00Z", "--hours", "6", "--json",
    )  # fmt: skip
    plain = json.loads(_run_cli(*args).stdout)
    out = _run_cli(*args, "--refraction")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["refraction"] is True and plain["refraction"] is False
    station = GroundStation(
        "KSC", Position(28.5729, -80.6490, 0.0), 20.0, 100.0,
        min_elevation_deg=0.0, refraction=True,
    )  # fmt: skip
    scheduler = SyncScheduler([station])
    scheduler.add_tle_file(path)
    expected = scheduler.search(6, datetime(2022, 2, 3, tzinfo=UTC)).windows
    assert [w["start_time"] for w in doc["windows"]] == [
        w.start_time.isoformat() for w in expected
    ]
    # refraction lifts every satellite: each geometric window lies inside a
    # refracted one, which opens earlier unless both open at the search start
    assert len(doc["windows"]) >= len(plain["windows"]) > 0
    opened_earlier = 0
    for w in plain["windows"]:
        outer = [
            r for r in doc["windows"]
            if r["satellite"] == w["satellite"]
            and r["start_time"] <= w["start_time"] <= w["end_time"] <= r["end_time"]
        ]  # fmt: skip
        assert len(outer) == 1, w
        opened_earlier += outer[0]["start_time"] < w["start_time"]
    assert opened_earlier > 0
