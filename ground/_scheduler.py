"""Contact-aware sync scheduling: when each satellite can talk, and what it sends.

``SyncScheduler`` keeps the constellation's element sets and the ground
stations, predicts contact windows (:mod:`agent._contacts`) and places
transfers into them.

Transfer placement
------------------
Transfers are taken in a fixed order -- priority (high first), then deadline
(earliest first, none last), then satellite name, then transfer id -- and each
is placed greedily into the earliest usable time of its satellite's windows:

- a station serves at most ``antennas`` satellites at once;
- a satellite talks to one station at a time (one radio), and an uplink and a
  downlink are separate allocations (half duplex);
- a transfer larger than what is left of one window continues in the next
  windows (it is split across passes);
- the amount that fits in a slice of a pass is the integral of the
  elevation-dependent rate over that slice (:func:`agent._contacts.rate_profile`).

A transfer that cannot be completed before its deadline (or the end of the
planning horizon) is not placed at all, so it holds no antenna time, and is
reported with the reason.  The same inputs always give the same plan.
"""

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from sgp4.api import Satrec

from agent._contacts import (
    ContactWindow,
    PassSearch,
    SatelliteStatus,
    find_windows,
    rate_profile,
)
from agent._stations import GroundStation
from agent._tle import TLELoad, load_elements, parse_tle_lines

_EPS_S = 1e-6


@dataclass(frozen=True)
class Transfer:
    """Data to move between one satellite and the ground.

    ``direction`` is ``"down"`` (satellite to ground: model updates) or
    ``"up"`` (ground to satellite: the global model).  Higher ``priority`` is
    placed first.  ``deadline`` is a timezone-aware datetime or None.
    """

    satellite: str
    size_mb: float
    priority: int = 0
    deadline: datetime | None = None
    direction: str = "down"
    transfer_id: str = ""

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.size_mb, int | float) and math.isfinite(self.size_mb)):
            problems.append(f"size_mb={self.size_mb!r} is not a finite number")
        elif self.size_mb <= 0:
            problems.append(f"size_mb={self.size_mb} must be positive")
        if self.direction not in ("down", "up"):
            problems.append(f"direction={self.direction!r} must be 'down' or 'up'")
        if self.deadline is not None and self.deadline.tzinfo is None:
            problems.append(
                f"deadline={self.deadline.isoformat()} has no time zone; pass an "
                "aware UTC datetime"
            )
        if problems:
            raise ValueError(
                f"invalid Transfer for {self.satellite!r}: " + "; ".join(problems)
            )


@dataclass(frozen=True)
class Allocation:
    """A slice of one pass given to (part of) one transfer."""

    transfer_id: str
    satellite: str
    station: str
    direction: str
    start_time: datetime
    end_time: datetime
    size_mb: float


@dataclass
class TransferOutcome:
    transfer: Transfer
    allocations: list[Allocation] = field(default_factory=list)
    reason: str | None = None

    @property
    def scheduled(self) -> bool:
        return self.reason is None

    @property
    def completion_time(self) -> datetime | None:
        return self.allocations[-1].end_time if self.allocations else None

    @property
    def split(self) -> bool:
        return len(self.allocations) > 1


@dataclass
class TransferPlan:
    """The outcome of every transfer, in placement order."""

    outcomes: list[TransferOutcome]
    start: datetime
    end: datetime

    @property
    def allocations(self) -> list[Allocation]:
        out = [a for o in self.outcomes for a in o.allocations]
        return sorted(out, key=lambda a: (a.start_time, a.station, a.satellite))

    def for_station(self, name: str) -> list[Allocation]:
        return [a for a in self.allocations if a.station == name]

    def for_satellite(self, name: str) -> list[Allocation]:
        return [a for a in self.allocations if a.satellite == name]

    @property
    def unscheduled(self) -> list[TransferOutcome]:
        return [o for o in self.outcomes if not o.scheduled]


class SyncScheduler:
    """Predict contact windows for a constellation and schedule transfers."""

    def __init__(self, stations: Sequence[GroundStation]) -> None:
        stations = list(stations)
        if not stations:
            raise ValueError("SyncScheduler needs at least one GroundStation")
        names = [s.name for s in stations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"ground station names must be unique; repeated: {dupes}")
        self.stations = stations
        self._sats: dict[str, Satrec] = {}

    @property
    def satellites(self) -> list[str]:
        return list(self._sats)

    def add_satellite(self, name: str, line1: str, line2: str) -> None:
        """Add (or replace) a satellite's element set; raises TLEError if invalid."""
        self._sats[name] = parse_tle_lines(line1, line2, name)

    def add_tle_file(self, path: str | Path) -> TLELoad:
        """Add every good entry of a TLE or OMM file; return what was read.

        Bad entries are skipped and listed in the returned ``problems``.  A name
        that several entries of the file share (CelesTrak's "FALCON 9 DEB")
        becomes ``"NAME (CATALOG)"`` for each of them, so none replaces
        another; the returned entries carry the names used.
        """
        load = load_elements(path)
        counts = Counter(entry.name for entry in load.entries)
        for k, entry in enumerate(load.entries):
            if counts[entry.name] > 1:
                entry = replace(entry, name=f"{entry.name} ({entry.satrec.satnum})")
                load.entries[k] = entry
            self._sats[entry.name] = entry.satrec
        return load

    def search(
        self,
        hours: float,
        start: datetime | None = None,
        satellites: Sequence[str] | None = None,
    ) -> PassSearch:
        """Windows of many satellites at once, and the ones SGP4 could not fly."""
        names = self.satellites if satellites is None else list(satellites)
        unknown = [n for n in names if n not in self._sats]
        if unknown:
            raise KeyError(
                f"unknown satellite(s) {unknown[:5]}; add them with add_satellite "
                "or add_tle_file first"
            )
        start = datetime.now(UTC) if start is None else start
        return find_windows(
            [(n, self._sats[n]) for n in names], self.stations, start, hours
        )

    def get_sync_windows(
        self, satellite: str, hours: float, start: datetime | None = None
    ) -> list[ContactWindow]:
        """Windows of one satellite over ``hours`` from ``start`` (None: now, UTC)."""
        return self.search(hours, start, [satellite]).windows

    def status(self, satellite: str, hours: float, start: datetime | None = None):
        """The SGP4 failure of a satellite over the interval, or None if it flies."""
        failed = self.search(hours, start, [satellite]).failed
        return failed[0] if failed else None

    def plan_transfers(
        self,
        transfers: Sequence[Transfer],
        hours: float,
        start: datetime | None = None,
    ) -> TransferPlan:
        """Place transfers into the windows of the next ``hours`` (see module doc)."""
        if start is not None and start.tzinfo is None:
            # astimezone() would read a naive time as the host's local time
            raise ValueError(
                f"start={start.isoformat()} has no time zone; pass an aware UTC "
                "datetime"
            )
        if not (isinstance(hours, int | float) and math.isfinite(hours) and hours > 0):
            raise ValueError(f"hours={hours!r} must be a positive number of hours")
        start = (datetime.now(UTC) if start is None else start).astimezone(UTC)
        end = start + timedelta(hours=hours)
        ids = _transfer_ids(transfers)
        known = sorted({t.satellite for t in transfers if t.satellite in self._sats})
        search = self.search(hours, start, known) if known else PassSearch()
        failed: dict[str, SatelliteStatus] = {s.satellite: s for s in search.failed}
        by_sat: dict[str, list[ContactWindow]] = {}
        for w in search.windows:
            by_sat.setdefault(w.satellite, []).append(w)

        order = sorted(
            range(len(transfers)),
            key=lambda i: (
                -transfers[i].priority,
                transfers[i].deadline or datetime.max.replace(tzinfo=UTC),
                transfers[i].satellite,
                ids[i],
            ),
        )
        state = _Occupancy(self.stations, self._sats, start)
        outcomes = []
        for i in order:
            transfer = transfers[i]
            outcome = TransferOutcome(transfer)
            outcomes.append(outcome)
            if transfer.satellite not in self._sats:
                outcome.reason = f"unknown satellite {transfer.satellite!r}"
                continue
            if transfer.satellite in failed:
                status = failed[transfer.satellite]
                outcome.reason = (
                    f"satellite cannot be propagated (SGP4 error "
                    f"{status.error_code}: {status.reason})"
                )
                continue
            limit = min(end, transfer.deadline or end)
            windows = [
                w for w in by_sat.get(transfer.satellite, ()) if w.start_time < limit
            ]
            state.place(outcome, ids[i], windows, limit)
        return TransferPlan(outcomes, start, end)


def _transfer_ids(transfers: Sequence[Transfer]) -> list[str]:
    ids = []
    counters: dict[str, itertools.count] = {}
    for t in transfers:
        if t.transfer_id:
            ids.append(t.transfer_id)
        else:
            n = next(counters.setdefault(t.satellite, itertools.count(1)))
            ids.append(f"{t.satellite}#{n}")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ValueError(f"transfer ids must be unique; repeated: {dupes}")
    return ids


class _Occupancy:
    """Who is busy when: antennas per station, the radio of each satellite."""

    def __init__(self, stations, satrecs, start):
        self.stations = {s.name: s for s in stations}
        self.satrecs = satrecs
        self.start = start
        self.station_busy: dict[str, list[tuple[float, float]]] = {}
        self.sat_busy: dict[str, list[tuple[float, float]]] = {}
        self._profiles: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}

    def _s(self, t: datetime) -> float:
        return (t - self.start).total_seconds()

    def _t(self, s: float) -> datetime:
        return self.start + timedelta(microseconds=round(s * 1e6))

    def _profile(self, w: ContactWindow):
        key = (w.satellite, w.station.name, w.start_time)
        if key not in self._profiles:
            offset, cum = rate_profile(
                self.satrecs[w.satellite], w.station, w.start_time, w.end_time
            )
            self._profiles[key] = (offset + self._s(w.start_time), cum)
        return self._profiles[key]

    def _free(self, station: GroundStation, sat: str, lo: float, hi: float):
        """Sub-intervals of [lo, hi] with a free antenna and an idle satellite."""
        busy = self.station_busy.get(station.name, [])
        edges = sorted({lo, hi, *(x for a, b in busy for x in (a, b) if lo < x < hi)})
        free = []
        for a, b in itertools.pairwise(edges):
            mid = 0.5 * (a + b)
            in_use = sum(1 for s, e in busy if s <= mid < e)
            if in_use < station.antennas:
                free.append((a, b))
        for s, e in self.sat_busy.get(sat, []):
            free = [piece for a, b in free for piece in _subtract(a, b, s, e)]
        return _merge(free)

    def place(self, outcome, transfer_id, windows, limit) -> None:
        transfer = outcome.transfer
        remaining = float(transfer.size_mb)
        limit_s = self._s(limit)
        fit_ignoring_others = 0.0
        # The free slices of all windows, earliest first: when two stations
        # see the satellite at once, a later pass at one can be free before
        # the rest of an earlier, longer pass at the other.
        slices = []
        for k, w in enumerate(windows):
            rate = (
                w.station.downlink_mbps
                if transfer.direction == "down"
                else w.station.uplink_mbps
            )
            lo, hi = self._s(w.start_time), min(self._s(w.end_time), limit_s)
            if rate <= 0 or hi <= lo:
                continue
            offset, cum = self._profile(w)
            cum_mb = cum * rate / 8.0
            fit_ignoring_others += float(np.interp(hi, offset, cum_mb)) - float(
                np.interp(lo, offset, cum_mb)
            )
            for a, b in self._free(w.station, transfer.satellite, lo, hi):
                slices.append((a, w.station.name, k, b, hi, w, offset, cum_mb))
        slices.sort(key=lambda x: x[:3])

        pieces = []
        for a0, _name, _k, b0, hi, w, offset, cum_mb in slices:
            if remaining <= 1e-9:
                break

            def mb_at(s, offset=offset, cum_mb=cum_mb):
                return float(np.interp(s, offset, cum_mb))

            free = [(a0, b0)]
            for _, s, e, _ in pieces:  # the radio is busy with our own slices
                free = [p for a, b in free for p in _subtract(a, b, s, e)]
            for a, b in _merge(free):
                if remaining <= 1e-9:
                    break
                available = mb_at(b) - mb_at(a)
                if available <= 1e-9:
                    continue
                if available >= remaining:
                    # invert the cumulative capacity for the end time
                    target = mb_at(a) + remaining
                    b = float(np.interp(target, cum_mb, offset))
                    b = min(max(b, a), hi)
                    take = remaining
                else:
                    take = available
                pieces.append((w, a, b, take))
                remaining -= take

        if remaining > 1e-9:
            outcome.reason = self._reason(
                transfer, remaining, fit_ignoring_others, limit, windows
            )
            return
        for w, a, b, take in pieces:
            self.station_busy.setdefault(w.station.name, []).append((a, b))
            self.sat_busy.setdefault(transfer.satellite, []).append((a, b))
            outcome.allocations.append(
                Allocation(
                    transfer_id, transfer.satellite, w.station.name,
                    transfer.direction, self._t(a), self._t(b), take,
                )
            )  # fmt: skip

    def _reason(self, transfer, remaining, fit_alone, limit, windows) -> str:
        what = (
            "its deadline"
            if transfer.deadline and transfer.deadline <= limit
            else ("the end of the planning horizon")
        )
        when = f"{what} {limit.isoformat()}"
        placed = transfer.size_mb - remaining
        if not windows:
            return f"no contact window before {when}"
        if fit_alone + 1e-9 < transfer.size_mb:
            return (
                f"needs {transfer.size_mb:.1f} MB but the {len(windows)} pass(es) "
                f"before {when} hold only {fit_alone:.1f} MB even with every "
                "antenna free"
            )
        return (
            f"only {placed:.1f} of {transfer.size_mb:.1f} MB fit before {when}: "
            "the passes are taken by higher-priority or earlier transfers"
        )


def _subtract(a, b, s, e):
    if e <= a or s >= b:
        return [(a, b)]
    out = []
    if s > a:
        out.append((a, s))
    if e < b:
        out.append((e, b))
    return out


def _merge(pieces):
    out = []
    for a, b in sorted(pieces):
        if b - a <= _EPS_S:
            continue
        if out and a <= out[-1][1] + _EPS_S:
            out[-1] = (out[-1][0], max(out[-1][1], b))
        else:
            out.append((a, b))
    return out
