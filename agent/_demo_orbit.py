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

from agent._contacts import ContactPredictor, ContactWindow, find_windows
from agent._geo import Position
from agent._stations import GroundStation
from agent._tle import parse_tle_lines

DEFAULT_MIN_ELEVATION_DEG = 10.0


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
