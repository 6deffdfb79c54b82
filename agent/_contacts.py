"""Contact windows between satellites and ground stations, and onboard prediction.

:func:`find_windows` finds every window of many (satellite, station) pairs at
once (the search itself, and how it guarantees no pass is missed, is in
:mod:`agent._passfinder`); :class:`ContactPredictor` is the flight computer's
view of its own next contacts; :func:`rate_profile` integrates the rate model
over part of a pass for the scheduler.  Only numpy and sgp4 are imported.
"""

import bisect
import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntFlag

import numpy as np
from sgp4.api import Satrec

from agent._geo import DAY_S
from agent._orbit import datetime_to_jd, teme_to_ecef_state_km
from agent._stations import GroundStation, rate_fraction

# Largest (satellites x coarse grid steps) searched in one piece; 1,000
# Starlink satellites over 24 h (425 steps) still fit in one.
MAX_SATELLITE_STEPS = 500_000


class WindowFlag(IntFlag):
    """How a window relates to the search interval and to its own shape."""

    NONE = 0
    START_CLIPPED = 1  # in view when the search starts: AOS is the start time
    END_CLIPPED = 2  # still in view when the search ends: LOS is the end time
    ALWAYS_VISIBLE = 4  # in view over the whole search interval
    MULTI_PEAK = 8  # several elevation maxima inside one window (e.g. Molniya)


@dataclass(frozen=True, slots=True)
class ContactWindow:
    """One pass of a satellite over a station, AOS to LOS above the mask."""

    satellite: str
    station: GroundStation
    start_time: datetime
    end_time: datetime
    tca_time: datetime
    max_elevation_deg: float
    data_capacity_mb: float
    uplink_capacity_mb: float
    flags: WindowFlag = WindowFlag.NONE

    @property
    def duration_seconds(self) -> float:
        return (self.end_time - self.start_time).total_seconds()

    @property
    def start_clipped(self) -> bool:
        return bool(self.flags & WindowFlag.START_CLIPPED)

    @property
    def end_clipped(self) -> bool:
        return bool(self.flags & WindowFlag.END_CLIPPED)

    def contains(self, t: datetime) -> bool:
        return self.start_time <= t <= self.end_time

    def to_dict(self) -> dict:
        return {
            "satellite": self.satellite,
            "station": self.station.name,
            "start_time": self.start_time.isoformat(),
            "end_time": self.end_time.isoformat(),
            "tca_time": self.tca_time.isoformat(),
            "duration_seconds": round(self.duration_seconds, 3),
            "max_elevation_deg": round(self.max_elevation_deg, 4),
            "data_capacity_mb": round(self.data_capacity_mb, 3),
            "uplink_capacity_mb": round(self.uplink_capacity_mb, 3),
            "flags": [f.name for f in WindowFlag if f and f in self.flags],
        }


@dataclass(frozen=True, slots=True)
class SatelliteStatus:
    """Why a satellite has no windows: an SGP4 error over the search interval."""

    satellite: str
    error_code: int
    reason: str


@dataclass(slots=True)
class PassSearch:
    """The windows of a search, sorted by start time, and the failed satellites."""

    windows: list[ContactWindow] = field(default_factory=list)
    failed: list[SatelliteStatus] = field(default_factory=list)
    step_s: float = 0.0


def find_windows(
    satellites: Sequence[tuple[str, Satrec]],
    stations: Sequence[GroundStation],
    start: datetime,
    hours: float,
) -> PassSearch:
    """Find every contact window of every (satellite, station) pair.

    ``satellites`` are ``(name, Satrec)`` pairs; ``start`` is a timezone-aware
    datetime and ``hours`` the length of the search.  A satellite SGP4 cannot
    propagate over the interval gets a :class:`SatelliteStatus` and no windows.
    """
    if start.tzinfo is None:
        raise ValueError(
            f"start={start.isoformat()} has no time zone; pass an aware UTC datetime"
        )
    if not (isinstance(hours, numbers.Real) and math.isfinite(hours) and hours > 0):
        raise ValueError(f"hours={hours!r} must be a positive number of hours")
    hours = float(hours)
    start = start.astimezone(UTC)
    result = PassSearch()
    if not satellites or not stations:
        return result
    from agent._passfinder import _Finder, coarse_step_s

    # The search holds every (satellite, grid time) state at once, ~250 bytes
    # each: 4,428 Starlink satellites over 72 h took 1.7 GB in one piece.  In
    # batches of at most MAX_SATELLITE_STEPS the memory stays bounded whatever
    # the constellation (one satellite over a very long horizon still grows).
    span_s = hours * 3600.0
    batches: list[list] = []
    finest_s = math.inf
    for pair in satellites:
        step_s = coarse_step_s(pair[1])
        n_steps = math.ceil(span_s / min(finest_s, step_s))
        if batches and (len(batches[-1]) + 1) * n_steps <= MAX_SATELLITE_STEPS:
            batches[-1].append(pair)
            finest_s = min(finest_s, step_s)
        else:
            batches.append([pair])
            finest_s = step_s
    stations = list(stations)
    for batch in batches:
        part = _Finder(batch, stations, start, span_s).run()
        result.windows.extend(part.windows)
        result.failed.extend(part.failed)
        result.step_s = max(result.step_s, part.step_s)
    if len(batches) > 1:
        result.windows.sort(key=lambda c: (c.start_time, c.satellite, c.station.name))
    return result


class ContactPredictor:
    """Onboard prediction of one satellite's own contacts with the ground.

    Windows are predicted ``horizon_hours`` ahead and cached; a query past the
    middle of the cached span recomputes from ``lookback_minutes`` before the
    query time, so :meth:`link_up` costs one binary search almost always.
    """

    def __init__(
        self,
        line1: str,
        line2: str,
        stations: Sequence[GroundStation],
        horizon_hours: float = 24.0,
        name: str = "self",
        lookback_minutes: float = 30.0,
    ) -> None:
        from agent._tle import parse_tle_lines

        self.satrec = parse_tle_lines(line1, line2)
        self.stations = list(stations)
        if not self.stations:
            raise ValueError("ContactPredictor needs at least one GroundStation")
        if not (isinstance(horizon_hours, numbers.Real) and 0 < horizon_hours < 1e4):
            raise ValueError(
                f"horizon_hours={horizon_hours!r} must be a positive number of "
                "hours below 10,000"
            )
        if not (
            isinstance(lookback_minutes, numbers.Real)
            and 0 <= lookback_minutes <= 24 * 60
        ):
            raise ValueError(
                f"lookback_minutes={lookback_minutes!r} must be in [0, 1440]"
            )
        self.name = name
        self.horizon_hours = float(horizon_hours)
        self.lookback = timedelta(minutes=lookback_minutes)
        self._from: datetime | None = None
        self._until: datetime | None = None
        self._windows: list[ContactWindow] = []
        self._starts: list[datetime] = []
        self._reach: list[datetime] = []
        self.status: SatelliteStatus | None = None

    def windows(self, start: datetime, hours: float) -> list[ContactWindow]:
        """All windows to any station over ``hours`` from ``start``."""
        search = find_windows([(self.name, self.satrec)], self.stations, start, hours)
        self.status = search.failed[0] if search.failed else None
        return search.windows

    def _ensure(self, t: datetime) -> None:
        if t.tzinfo is None:
            raise ValueError(f"time {t.isoformat()} has no time zone; pass aware UTC")
        half = timedelta(hours=self.horizon_hours / 2)
        if self._from is not None and self._from <= t <= self._until - half:
            return
        self._from = t - self.lookback
        self._until = t + timedelta(hours=self.horizon_hours)
        span_h = (self._until - self._from) / timedelta(hours=1)
        self._windows = sorted(
            self.windows(self._from, span_h), key=lambda w: w.start_time
        )
        self._starts = [w.start_time for w in self._windows]
        # latest end among the windows that start at or before each one, so
        # "is any window open at t" is one bisection
        self._reach = []
        for w in self._windows:
            prev = self._reach[-1] if self._reach else w.end_time
            self._reach.append(max(prev, w.end_time))

    def link_up(self, t: datetime) -> bool:
        """Whether any station has the satellite above its mask at ``t``."""
        self._ensure(t)
        i = bisect.bisect_right(self._starts, t)
        return i > 0 and self._reach[i - 1] >= t

    def next_window(self, t: datetime) -> ContactWindow | None:
        """The window open at ``t`` (the one ending first), else the next to open.

        None when no window opens within ``horizon_hours`` of ``t``.
        """
        self._ensure(t)
        found = self._next_cached(t)
        if found is None and self._until < t + timedelta(hours=self.horizon_hours):
            # the cache may end as little as half a horizon after t: look the
            # whole horizon ahead before answering "none"
            self._from = None
            self._ensure(t)
            found = self._next_cached(t)
        return found

    def _next_cached(self, t: datetime) -> ContactWindow | None:
        i = bisect.bisect_right(self._starts, t)
        if i > 0 and self._reach[i - 1] >= t:
            open_now = [w for w in self._windows[:i] if w.end_time >= t]
            return min(open_now, key=lambda w: w.end_time)
        return self._windows[i] if i < len(self._windows) else None


def rate_profile(
    satrec: Satrec,
    station: GroundStation,
    start: datetime,
    end: datetime,
    step_s: float = 5.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative effective seconds over ``[start, end]`` for one pass.

    Returns ``(offset_s, cumulative_s)``: times from ``start`` and the integral
    of the rate fraction (:func:`agent._stations.rate_fraction`) up to each, by
    the trapezoid rule on SGP4 positions ``step_s`` apart.  Multiply by a rate
    in Mbps and divide by 8 for MB; differences give the capacity of a slice.
    """
    span_s = max((end - start).total_seconds(), 0.0)
    n = max(2, math.ceil(span_s / step_s) + 1)
    offset_s = np.linspace(0.0, span_s, n)
    jd0, fr0 = datetime_to_jd(start)
    jd = np.full(n, jd0)
    fr = fr0 + offset_s / DAY_S
    err, r, v = satrec.sgp4_array(jd, fr)
    r_ecef, _ = teme_to_ecef_state_km(r, v, jd, fr)
    site = station.ecef_km()
    range_km = np.linalg.norm(r_ecef - site, axis=1)
    zenith_km = np.linalg.norm(r_ecef, axis=1) - np.linalg.norm(site)
    frac = np.where(err == 0, rate_fraction(range_km, zenith_km), 0.0)
    steps = 0.5 * (frac[1:] + frac[:-1]) * np.diff(offset_s)
    return offset_s, np.concatenate([[0.0], np.cumsum(steps)])
