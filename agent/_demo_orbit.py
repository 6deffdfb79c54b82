"""Orbits and contact windows for the demo: what each satellite predicts onboard.

An agent in the demo knows its own TLE and the list of ground stations, and
from them predicts when it will be in contact.  This module does that with the
``sgp4`` package (vectorised over time with ``SatrecArray``): positions in the
TEME frame are rotated into the Earth-fixed frame by Greenwich mean sidereal
time, and a window is a span where the geometric elevation above a station is
over its mask.  Crossing times are found by bisection on the sampled
elevation, to within ``tolerance_s``.

Known shortcoming: the TEME to Earth-fixed rotation ignores polar motion and
the equation of the equinoxes (a few hundred metres at LEO); elevation
sampling every ``step_s`` (20 s by default) can miss a grazing pass shorter
than one step.  The full pass predictor of the project (``agent._contacts``)
refines maxima and has neither limit; this one stays light enough for the
demo's eight agents to run at start-up in well under a second.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from sgp4.api import Satrec, SatrecArray, jday

from agent._geo import Position

_SECONDS_PER_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Station:
    """A ground station: where it is, its mask and its rates."""

    name: str
    position: Position
    downlink_mbps: float
    uplink_mbps: float
    min_elevation_deg: float = 10.0

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "lat_deg": self.position.lat_deg,
            "lon_deg": self.position.lon_deg,
            "alt_km": self.position.alt_km,
            "downlink_mbps": self.downlink_mbps,
            "uplink_mbps": self.uplink_mbps,
            "min_elevation_deg": self.min_elevation_deg,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Station":
        return cls(
            str(d["name"]),
            Position(float(d["lat_deg"]), float(d["lon_deg"]), float(d["alt_km"])),
            float(d["downlink_mbps"]),
            float(d["uplink_mbps"]),
            float(d.get("min_elevation_deg", 10.0)),
        )


@dataclass(frozen=True, slots=True)
class Window:
    """One contact: a satellite above one station's mask from start to end."""

    satellite: str
    station: str
    start: datetime
    end: datetime
    max_elevation_deg: float
    downlink_mbps: float

    @property
    def duration_s(self) -> float:
        return (self.end - self.start).total_seconds()

    @property
    def capacity_bytes(self) -> int:
        """Bytes the downlink carries in the window at the station's rate."""
        return int(self.duration_s * self.downlink_mbps * 1e6 / 8.0)


def tle_epoch(line1: str, line2: str) -> datetime:
    """The epoch of a TLE as a timezone-aware UTC datetime."""
    sat = Satrec.twoline2rv(line1, line2)
    jd = sat.jdsatepoch + sat.jdsatepochF
    return datetime(2000, 1, 1, 12, tzinfo=UTC) + timedelta(days=jd - 2451545.0)


def _gmst_rad(jd_ut1: np.ndarray) -> np.ndarray:
    """Greenwich mean sidereal angle (IAU 1982 linear term), radians."""
    deg = 280.46061837 + 360.98564736629 * (jd_ut1 - 2451545.0)
    return np.radians(np.mod(deg, 360.0))


def _station_frame(position: Position) -> tuple[np.ndarray, np.ndarray]:
    lat = math.radians(position.lat_deg)
    lon = math.radians(position.lon_deg)
    up = np.array(
        [math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)]
    )
    return position.ecef_km(), up


def _elevation_deg(
    r_ecef_km: np.ndarray, site_km: np.ndarray, up: np.ndarray
) -> np.ndarray:
    rho = r_ecef_km - site_km
    dist = np.linalg.norm(rho, axis=-1)
    return np.degrees(np.arcsin(np.clip((rho @ up) / dist, -1.0, 1.0)))


def _ecef_positions(
    satrecs: Sequence[Satrec], times: Sequence[datetime]
) -> tuple[np.ndarray, np.ndarray]:
    """Earth-fixed positions (sats x times x 3, km) and SGP4 error codes."""
    jd = np.empty(len(times))
    fr = np.empty(len(times))
    for i, t in enumerate(times):
        jd[i], fr[i] = jday(
            t.year, t.month, t.day, t.hour, t.minute, t.second + t.microsecond / 1e6
        )
    errors, r_teme, _ = SatrecArray(list(satrecs)).sgp4(jd, fr)
    theta = _gmst_rad(jd + fr)
    c, s = np.cos(theta), np.sin(theta)
    x = c * r_teme[..., 0] + s * r_teme[..., 1]
    y = -s * r_teme[..., 0] + c * r_teme[..., 1]
    return np.stack([x, y, r_teme[..., 2]], axis=-1), errors


def contact_windows(
    tles: Sequence[tuple[str, str, str]],
    stations: Sequence[Station],
    start: datetime,
    duration_s: float,
    *,
    step_s: float = 20.0,
    tolerance_s: float = 1.0,
) -> list[Window]:
    """Every window of every (satellite, station) in [start, start + duration].

    ``tles`` are ``(name, line1, line2)``.  A satellite whose propagation fails
    (SGP4 error code) has no windows after the failure.  Windows under way at
    ``start`` or at the end are clipped to the span.  Sorted by start time.
    """
    if start.tzinfo is None:
        raise ValueError(f"start={start.isoformat()} must be timezone-aware UTC")
    if not duration_s > 0:
        raise ValueError(f"duration_s={duration_s} must be positive")
    n = int(math.ceil(duration_s / step_s)) + 1
    offsets = np.minimum(np.arange(n) * step_s, duration_s)
    times = [start + timedelta(seconds=float(o)) for o in offsets]
    satrecs = [Satrec.twoline2rv(l1, l2) for _, l1, l2 in tles]
    r, errors = _ecef_positions(satrecs, times)
    windows = []
    for si, (name, _, _) in enumerate(tles):
        ok = errors[si] == 0
        for station in stations:
            site, up = _station_frame(station.position)
            elev = np.where(ok, _elevation_deg(r[si], site, up), -90.0)
            above = elev > station.min_elevation_deg
            if not above.any():
                continue
            edges = np.flatnonzero(np.diff(above.astype(np.int8)))
            spans = []
            begin = 0 if above[0] else None
            for e in edges:
                if above[e + 1]:
                    begin = e + 1
                elif begin is not None:
                    spans.append((begin, e))
                    begin = None
            if begin is not None:
                spans.append((begin, n - 1))
            for i0, i1 in spans:
                t0 = offsets[i0]
                if i0 > 0:
                    t0 = _crossing_s(
                        satrecs[si], start, offsets[i0 - 1], offsets[i0], site, up,
                        station.min_elevation_deg, tolerance_s,
                    )  # fmt: skip
                t1 = offsets[i1]
                if i1 < n - 1:
                    t1 = _crossing_s(
                        satrecs[si], start, offsets[i1], offsets[i1 + 1], site, up,
                        station.min_elevation_deg, tolerance_s,
                    )  # fmt: skip
                windows.append(
                    Window(
                        name,
                        station.name,
                        start + timedelta(seconds=float(t0)),
                        start + timedelta(seconds=float(t1)),
                        float(elev[i0 : i1 + 1].max()),
                        station.downlink_mbps,
                    )
                )
    windows.sort(key=lambda w: (w.start, w.satellite, w.station))
    return windows


def _crossing_s(
    satrec: Satrec,
    start: datetime,
    lo_s: float,
    hi_s: float,
    site: np.ndarray,
    up: np.ndarray,
    mask_deg: float,
    tolerance_s: float,
) -> float:
    """Bisect for the mask crossing between two samples on either side of it."""

    def above(t_s: float) -> bool:
        r, err = _ecef_positions([satrec], [start + timedelta(seconds=t_s)])
        return bool(err[0, 0] == 0 and _elevation_deg(r[0, 0], site, up) > mask_deg)

    lo_above = above(lo_s)
    while hi_s - lo_s > tolerance_s:
        mid = 0.5 * (lo_s + hi_s)
        if above(mid) == lo_above:
            lo_s = mid
        else:
            hi_s = mid
    return 0.5 * (lo_s + hi_s)
