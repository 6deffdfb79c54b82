"""Contact windows for the demo, from the project's pass predictor.

The demo's agents and its launcher both need the same windows: an agent to
know when it may transmit (predicted onboard from its own TLE and the station
list, with ``agent._contacts.ContactPredictor``), the launcher to draw the
contact timeline and count the contacts used.  This module converts between
the demo's JSON station records and ``GroundStation``, and reduces a
``ContactWindow`` to the few fields the demo reads, with times as offsets
the processes can share.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sgp4.api import Satrec

from agent._cgr import Contact, ContactPlan, contacts_from_series, contacts_from_windows
from agent._contacts import ContactPredictor, ContactWindow, find_windows
from agent._geo import Position
from agent._isl import IslConfig, IslNetwork
from agent._stations import GroundStation
from agent._tle import parse_tle_lines

DEFAULT_MIN_ELEVATION_DEG = 10.0
# Inter-satellite links for relaying: each satellite links to its nearest
# visible neighbours (at most 4 terminals) within 5,000 km, line of sight
# clear of the Earth plus 80 km of atmosphere.  Nearest-visible rather than
# +Grid, because it works for any set of orbits (a --tle file, any count).
DEMO_ISL = IslConfig(topology="nearest", max_terminals=4, max_range_km=5_000.0)
# Link snapshots every minute: a link must be seen in two snapshots to count
# as a contact, and it is trusted only between them (agent._cgr).
ISL_STEP_S = 60.0


@dataclass(frozen=True, slots=True)
class Window:
    """One contact: a satellite above one station's mask from start to end."""

    satellite: str
    station: str
    start: datetime
    end: datetime
    max_elevation_deg: float
    data_capacity_mb: float

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()

    @classmethod
    def of(cls, w: ContactWindow) -> "Window":
        return cls(
            w.satellite,
            w.station.name,
            w.start_time,
            w.end_time,
            float(w.max_elevation_deg),
            float(w.data_capacity_mb),
        )


def station_to_dict(s: GroundStation) -> dict:
    return {
        "name": s.name,
        "lat_deg": s.position.lat_deg,
        "lon_deg": s.position.lon_deg,
        "alt_km": s.position.alt_km,
        "downlink_mbps": s.downlink_mbps,
        "uplink_mbps": s.uplink_mbps,
        "min_elevation_deg": s.min_elevation_deg,
    }


def station_from_dict(d: dict) -> GroundStation:
    return GroundStation(
        str(d["name"]),
        Position(float(d["lat_deg"]), float(d["lon_deg"]), float(d["alt_km"])),
        uplink_mbps=float(d["uplink_mbps"]),
        downlink_mbps=float(d["downlink_mbps"]),
        min_elevation_deg=float(d.get("min_elevation_deg", DEFAULT_MIN_ELEVATION_DEG)),
    )


def tle_epoch(line1: str, line2: str) -> datetime:
    """The epoch of a TLE as a timezone-aware UTC datetime."""
    sat = Satrec.twoline2rv(line1, line2)
    jd = sat.jdsatepoch + sat.jdsatepochF
    return datetime(2000, 1, 1, 12, tzinfo=UTC) + timedelta(days=jd - 2451545.0)


def contact_windows(
    tles: Sequence[tuple[str, str, str]],
    stations: Sequence[GroundStation],
    start: datetime,
    duration_s: float,
) -> list[Window]:
    """Every window of every (satellite, station) over the run, by start time."""
    satellites = [(name, parse_tle_lines(l1, l2, name)) for name, l1, l2 in tles]
    search = find_windows(satellites, stations, start, duration_s / 3600.0)
    return sorted(
        (Window.of(w) for w in search.windows),
        key=lambda w: (w.start, w.satellite, w.station),
    )


def own_windows(
    name: str,
    line1: str,
    line2: str,
    stations: Sequence[GroundStation],
    start: datetime,
    duration_s: float,
) -> list[Window]:
    """One satellite's own windows, as its flight computer predicts them."""
    predictor = ContactPredictor(line1, line2, stations, name=name)
    windows = predictor.windows(start, duration_s / 3600.0)
    return sorted((Window.of(w) for w in windows), key=lambda w: w.start)


def demo_contact_plan(
    tles: Sequence[tuple[str, str, str]],
    stations: Sequence[GroundStation],
    start: datetime,
    duration_s: float,
) -> ContactPlan:
    """The run's contact plan: ISL contacts both ways and every ground pass."""
    plan = ContactPlan(epoch=start)
    if len(tles) > 1:
        series = IslNetwork(list(tles), DEMO_ISL).series(start, duration_s, ISL_STEP_S)
        for contact in contacts_from_series(series, epoch=start):
            plan.add(contact)
    satellites = [(name, parse_tle_lines(l1, l2, name)) for name, l1, l2 in tles]
    search = find_windows(satellites, stations, start, duration_s / 3600.0)
    for name, _, _ in tles:
        mine = [w for w in search.windows if w.satellite == name]
        for contact in contacts_from_windows(name, mine, start):
            plan.add(contact)
    return plan


def plan_to_dict(plan: ContactPlan) -> dict:
    """JSON-ready: the epoch and ``[start_s, end_s, from, to, rate_B_s, owlt_s]``."""
    return {
        "epoch": plan.epoch.isoformat(),
        "contacts": [
            [c.start_s, c.end_s, c.from_node, c.to_node, c.rate_bytes_s, c.owlt_s]
            for c in plan.contacts
        ],
    }


def plan_from_dict(d: dict) -> ContactPlan:
    epoch = datetime.fromisoformat(d["epoch"])
    return ContactPlan((Contact(*row) for row in d["contacts"]), epoch=epoch)


def isl_neighbours(
    plan: ContactPlan, satellites: Sequence[str]
) -> dict[str, list[str]]:
    """Per satellite, the satellites it has at least one ISL contact with."""
    names = set(satellites)
    out: dict[str, set[str]] = {s: set() for s in satellites}
    for c in plan.contacts:
        if c.from_node in names and c.to_node in names:
            out[c.from_node].add(c.to_node)
    return {s: sorted(n) for s, n in out.items()}
