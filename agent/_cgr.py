"""Contact graph routing: store-and-forward routes over predicted contacts.

A contact plan lists time-bounded, one-way transmission opportunities: from
node A to node B, between START and END seconds after the plan's epoch, at a
rate in bytes per second, with a one-way light time (OWLT).  Satellite-ground
passes and inter-satellite links both become contacts.

``earliest_arrival`` finds, for a bundle of B bytes created at node s at time
t, the route that delivers it to any of a set of destinations soonest.  Data
waits at a node until a contact opens; a contact carries the bundle only if
the bundle fits after the traffic already booked on it (booked bytes are
queued first, from the contact's start).  Because a later arrival at a node
can never leave it earlier, a Dijkstra search over nodes labelled with their
earliest arrival time is exact (the FIFO property of time-dependent shortest
paths; see also the contact-graph Dijkstra of CCSDS 734.3-B-1, "Schedule-
Aware Bundle Routing").

Plans are read and written in ION's contact-plan text format (the
``ionadmin`` commands ``a contact +START +END FROM TO RATE`` and
``a range +START +END FROM TO OWLT``; rate in bytes/s, OWLT in seconds).
"""

from __future__ import annotations

import heapq
import math
import numbers
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from agent._geo import SPEED_OF_LIGHT_KM_S

# A conservative LEO slant range for pass contacts without range data:
# 550 km altitude seen at 10 deg elevation is about 1,800 km away.
DEFAULT_PASS_OWLT_S = 3_000.0 / SPEED_OF_LIGHT_KM_S


@dataclass(frozen=True, slots=True)
class Contact:
    """A one-way transmission opportunity from ``from_node`` to ``to_node``."""

    start_s: float
    end_s: float
    from_node: str
    to_node: str
    rate_bytes_s: float
    owlt_s: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        for name in ("start_s", "end_s", "rate_bytes_s", "owlt_s"):
            value = getattr(self, name)
            if not isinstance(value, numbers.Real) or not math.isfinite(value):
                problems.append(f"{name}={value!r} is not a finite number")
        if not problems:
            for name in ("start_s", "end_s", "rate_bytes_s", "owlt_s"):
                object.__setattr__(self, name, float(getattr(self, name)))
            if self.end_s <= self.start_s:
                problems.append(
                    f"end_s={self.end_s} must be after start_s={self.start_s}"
                )
            if self.rate_bytes_s <= 0:
                problems.append(f"rate_bytes_s={self.rate_bytes_s} must be > 0")
            if self.owlt_s < 0:
                problems.append(f"owlt_s={self.owlt_s} must be >= 0")
        if self.from_node == self.to_node:
            problems.append(f"from_node and to_node are both {self.from_node!r}")
        if problems:
            raise ValueError(
                f"invalid contact {self.from_node!r}->{self.to_node!r}: "
                + "; ".join(problems)
            )

    @property
    def volume_bytes(self) -> float:
        return self.rate_bytes_s * (self.end_s - self.start_s)


@dataclass(frozen=True, slots=True)
class CgrRoute:
    """A delivery plan: the contacts to use, in order, and when it arrives."""

    source: str
    destination: str
    bundle_bytes: int
    hops: tuple[str, ...]
    contact_ids: tuple[int, ...]
    contacts: tuple[Contact, ...]
    departures_s: tuple[float, ...]
    arrival_s: float

    @property
    def first_hop(self) -> str:
        """The node the source hands the bundle to (a neighbour or a station)."""
        return self.hops[1]

    @property
    def departure_s(self) -> float:
        """When the source starts transmitting."""
        return self.departures_s[0]

    @property
    def is_direct(self) -> bool:
        """True when the source delivers the bundle itself (one contact)."""
        return len(self.contacts) == 1


class ContactPlan:
    """Contacts with a booking ledger; times are seconds after ``epoch``."""

    def __init__(
        self, contacts: Iterable[Contact] = (), epoch: datetime | None = None
    ) -> None:
        if epoch is not None and epoch.tzinfo is None:
            raise ValueError(
                f"epoch {epoch.isoformat()} has no time zone; pass an aware UTC "
                "datetime"
            )
        self.epoch = epoch
        self.contacts: list[Contact] = []
        self.booked_bytes: list[float] = []
        self._outgoing: dict[str, list[int]] = {}
        for contact in contacts:
            self.add(contact)

    def __len__(self) -> int:
        return len(self.contacts)

    def add(self, contact: Contact) -> int:
        """Add a contact; return its id (its index in ``contacts``)."""
        cid = len(self.contacts)
        self.contacts.append(contact)
        self.booked_bytes.append(0.0)
        self._outgoing.setdefault(contact.from_node, []).append(cid)
        self._outgoing.setdefault(contact.to_node, [])
        return cid

    def nodes(self) -> list[str]:
        return sorted(self._outgoing)

    def seconds(self, when: datetime) -> float:
        """Seconds from the plan's epoch to ``when``."""
        if self.epoch is None:
            raise ValueError("this plan has no epoch; pass times in seconds")
        if when.tzinfo is None:
            raise ValueError(
                f"time {when.isoformat()} has no time zone; pass an aware UTC datetime"
            )
        return (when - self.epoch).total_seconds()

    def time(self, seconds: float) -> datetime:
        """The datetime ``seconds`` after the plan's epoch."""
        if self.epoch is None:
            raise ValueError("this plan has no epoch; its times are plain seconds")
        return self.epoch + timedelta(seconds=seconds)

    def residual_bytes(self, cid: int) -> float:
        """Volume of contact ``cid`` not yet booked."""
        return self.contacts[cid].volume_bytes - self.booked_bytes[cid]

    def book(self, route: CgrRoute) -> None:
        """Reserve the route's bundle on every contact it uses."""
        for cid in route.contact_ids:
            if self.residual_bytes(cid) < route.bundle_bytes:
                raise ValueError(
                    f"contact {cid} has {self.residual_bytes(cid):.0f} bytes left, "
                    f"fewer than the route's bundle of {route.bundle_bytes}; "
                    "recompute the route"
                )
        for cid in route.contact_ids:
            self.booked_bytes[cid] += route.bundle_bytes

    # -- ION text format -----------------------------------------------------

    def to_ion(self, *, strict: bool = True) -> str:
        """Write the plan as ION ``ionadmin`` contact and range commands.

        ION takes whole seconds and whole bytes per second; with ``strict`` a
        contact's start is rounded up, its end down, its rate down and its
        OWLT up, so the written plan promises no more than this one.  Node
        names that are not positive integers get numbers, listed in
        ``# node N NAME`` comments that ``from_ion`` reads back.  The epoch is
        written as ION's reference-time command ``@ yyyy/mm/dd-hh:mm:ss``
        (plus an ``# epoch`` comment when it has a fraction of a second).
        Every contact gets a range in its own direction, so ION's implied
        reverse ranges never apply.
        """
        names = self.nodes()
        if all(n.isdigit() and int(n) > 0 for n in names):
            number = {n: n for n in names}
            lines = []
        else:
            number = {n: str(i + 1) for i, n in enumerate(names)}
            lines = [f"# node {number[n]} {n}" for n in names]
        if self.epoch is not None:
            epoch = self.epoch.astimezone(UTC)
            if epoch.microsecond:
                lines.insert(0, f"# epoch {epoch.isoformat()}")
            else:
                lines.insert(0, f"@ {epoch:%Y/%m/%d-%H:%M:%S}")

        def fmt(value: float, rounding) -> str:
            if strict:
                return str(int(rounding(value)))
            return str(int(value)) if float(value).is_integer() else repr(value)

        ranges_seen = set()
        contact_lines, range_lines = [], []
        for c in self.contacts:
            start = fmt(c.start_s, math.ceil)
            end = fmt(c.end_s, math.floor)
            if strict and int(end) <= int(start):
                continue  # shorter than a whole second once rounded
            a, b = number[c.from_node], number[c.to_node]
            rate = fmt(c.rate_bytes_s, math.floor)
            contact_lines.append(f"a contact +{start} +{end} {a} {b} {rate}")
            key = (start, end, a, b, fmt(c.owlt_s, math.ceil))
            if key not in ranges_seen:
                ranges_seen.add(key)
                range_lines.append(f"a range +{start} +{end} {a} {b} {key[4]}")
        return "\n".join(lines + contact_lines + range_lines) + "\n"

    @classmethod
    def from_ion(cls, text: str, epoch: datetime | None = None) -> ContactPlan:
        """Read ``a contact`` and ``a range`` commands as ionrc(5) defines them.

        Times are ``+SECONDS`` after the reference time or absolute
        ``yyyy/mm/dd-hh:mm:ss`` (UTC).  The reference time is set by ION's
        ``@ TIME`` command; the plan's epoch is ``epoch``, else the first
        ``@`` time (or an ``# epoch ISO-TIME`` comment).  A contact's optional
        confidence field is accepted and not used; registration contacts
        (start -1) and hypothetical ones (stop 0) are not scheduled
        transmissions and are skipped, as are commands other than these.

        A contact from A to B takes the OWLT of a range A B that covers it,
        else of a range B A with B numerically below A (ION reads such a
        range as declaring both directions); with no covering range its OWLT
        is 0.  Every malformed line is reported, with its number, in one
        ValueError.
        """
        if epoch is not None and epoch.tzinfo is None:
            raise ValueError(
                f"epoch {epoch.isoformat()} has no time zone; pass an aware UTC "
                "datetime"
            )
        names: dict[str, str] = {}
        raw_contacts = []
        raw_ranges = []
        problems = []
        offset_s = 0.0  # reference time minus the plan epoch
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line:
                continue
            if line.startswith("#"):
                m = re.fullmatch(r"#\s*node\s+(\d+)\s+(\S+)", line)
                if m:
                    names[m.group(1)] = m.group(2)
                m = re.fullmatch(r"#\s*epoch\s+(\S+)", line)
                if m and epoch is None:
                    try:
                        parsed = datetime.fromisoformat(m.group(1))
                    except ValueError:
                        problems.append(f"line {lineno}: bad epoch {m.group(1)!r}")
                        continue
                    if parsed.tzinfo is None:
                        problems.append(
                            f"line {lineno}: epoch {m.group(1)!r} has no time zone; "
                            "write it as UTC, e.g. 2026-03-01T12:00:00+00:00"
                        )
                        continue
                    epoch = parsed
                continue
            fields = line.split()
            if fields[0] == "@" and len(fields) == 2:
                try:
                    reference = _ion_absolute(fields[1])
                except ValueError as exc:
                    problems.append(f"line {lineno}: {exc}")
                    continue
                epoch = epoch or reference
                offset_s = (reference - epoch).total_seconds()
                continue
            if fields[:2] not in (["a", "contact"], ["a", "range"]):
                continue
            kind = fields[1]
            if not (len(fields) == 7 or (kind == "contact" and len(fields) == 8)):
                problems.append(
                    f"line {lineno}: {line!r} has {len(fields)} fields; expected "
                    + (
                        "'a contact START STOP FROM TO RATE [CONFIDENCE]'"
                        if kind == "contact"
                        else "'a range START STOP FROM TO OWLT'"
                    )
                )
                continue
            if kind == "contact" and (fields[2] == "-1" or fields[3] == "0"):
                continue  # registration or hypothetical contact
            try:
                start = _ion_time(fields[2], epoch, offset_s)
                end = _ion_time(fields[3], epoch, offset_s)
                value = _ion_number(fields[6], "RATE" if kind == "contact" else "OWLT")
                if kind == "range" and not 0.0 <= value < math.inf:
                    raise ValueError(f"OWLT {fields[6]!r} must be a finite number >= 0")
                if (
                    len(fields) == 8
                    and not 0.0 < _ion_number(fields[7], "CONFIDENCE") <= 1.0
                ):
                    raise ValueError(f"CONFIDENCE {fields[7]!r} is not in (0, 1]")
            except ValueError as exc:
                problems.append(f"line {lineno}: {line!r}: {exc}")
                continue
            entry = (start, end, fields[4], fields[5], value, lineno)
            (raw_contacts if kind == "contact" else raw_ranges).append(entry)
        if problems:
            raise ValueError("invalid ION contact plan: " + "; ".join(problems))

        plan = cls(epoch=epoch)
        for start, end, a, b, rate, lineno in raw_contacts:
            owlt = _covering_range(raw_ranges, start, end, a, b)
            try:
                plan.add(
                    Contact(start, end, names.get(a, a), names.get(b, b), rate, owlt)
                )
            except ValueError as exc:
                problems.append(f"line {lineno}: {exc}")
        if problems:
            raise ValueError("invalid ION contact plan: " + "; ".join(problems))
        return plan


def earliest_arrival(
    plan: ContactPlan,
    source: str,
    t_s: float | datetime,
    bundle_bytes: int,
    destinations: Iterable[str] | str,
    *,
    max_hops: int | None = None,
) -> CgrRoute | None:
    """Route a bundle created at ``source`` at ``t_s`` to the soonest destination.

    ``t_s`` is seconds after the plan's epoch, or an aware datetime (then the
    plan needs an epoch).  Route times are seconds after the epoch;
    ``plan.time(route.arrival_s)`` gives a datetime.

    Return None when no destination can be reached within the plan.  A
    contact is usable if the bundle, queued after what is already booked on
    it, finishes transmission before the contact ends.  KeyError names a
    source unknown to the plan.

    ``max_hops`` limits the number of contacts: ``max_hops=1`` answers "when
    does my own next pass deliver it?", to set against the unlimited route.
    """
    if source not in plan._outgoing:
        raise KeyError(f"unknown node {source!r}: it appears in no contact")
    if not (
        isinstance(bundle_bytes, numbers.Integral)
        and not isinstance(bundle_bytes, bool)
        and bundle_bytes > 0
    ):
        raise ValueError(f"bundle_bytes={bundle_bytes!r} must be a positive int")
    bundle_bytes = int(bundle_bytes)
    if isinstance(t_s, datetime):
        t_s = plan.seconds(t_s)
    if not (isinstance(t_s, numbers.Real) and math.isfinite(t_s)):
        raise ValueError(
            f"t_s={t_s!r} must be a finite number of seconds after the plan's "
            "epoch, or an aware datetime"
        )
    if isinstance(destinations, str):
        # one name, not the characters of a name
        destinations = [destinations]
    targets = set(destinations) - {source}
    if not targets:
        raise ValueError(
            f"destinations {sorted(set(destinations))!r} name no node other than "
            f"the source {source!r}"
        )
    if max_hops is not None:
        if not (isinstance(max_hops, int) and max_hops >= 1):
            raise ValueError(f"max_hops={max_hops!r} must be an int >= 1 or None")
        return _earliest_within_hops(
            plan, source, float(t_s), bundle_bytes, targets, max_hops
        )

    arrival = {source: float(t_s)}
    hops = {source: 0}
    via: dict[str, tuple[str, int, float]] = {}
    done: set[str] = set()
    heap = [(float(t_s), 0, source)]
    contacts = plan.contacts
    booked = plan.booked_bytes
    while heap:
        t_u, n_hops, u = heapq.heappop(heap)
        if u in done:
            continue
        done.add(u)
        if u in targets:
            return _route(plan, source, u, bundle_bytes, via, t_u)
        for cid in plan._outgoing[u]:
            c = contacts[cid]
            if c.end_s <= t_u or c.to_node in done:
                continue
            timing = _transmit(c, booked[cid], t_u, bundle_bytes)
            if timing is None:
                continue
            tx_start, t_v = timing
            v = c.to_node
            best = arrival.get(v, math.inf)
            if t_v < best or (t_v == best and n_hops + 1 < hops[v]):
                arrival[v] = t_v
                hops[v] = n_hops + 1
                via[v] = (u, cid, tx_start)
                heapq.heappush(heap, (t_v, n_hops + 1, v))
    return None


def _transmit(
    c: Contact, booked_bytes: float, ready_s: float, bundle_bytes: int
) -> tuple[float, float] | None:
    """(transmission start, arrival) over contact c, or None if it won't fit."""
    if c.end_s <= ready_s:
        return None
    # the booked bytes go first, from the contact's start
    tx_start = max(ready_s, c.start_s + booked_bytes / c.rate_bytes_s)
    tx_end = tx_start + bundle_bytes / c.rate_bytes_s
    if tx_end > c.end_s:
        return None
    return tx_start, tx_end + c.owlt_s


def _earliest_within_hops(
    plan: ContactPlan,
    source: str,
    t_s: float,
    bundle_bytes: int,
    targets: set[str],
    max_hops: int,
) -> CgrRoute | None:
    # Bellman-Ford in rounds: after round h every node holds its earliest
    # arrival over at most h contacts.  Only nodes improved in the last round
    # need relaxing again, since a contact's timing depends only on the
    # arrival at its sender (FIFO).
    label = {source: (t_s, 0)}
    via: dict[tuple[str, int], tuple[str, int, float]] = {}
    frontier = [source]
    for h in range(1, max_hops + 1):
        updates: dict[str, tuple[float, str, int, float]] = {}
        for u in frontier:
            if u in targets:
                continue  # delivered; a ground station does not relay
            t_u = label[u][0]
            for cid in plan._outgoing[u]:
                c = plan.contacts[cid]
                timing = _transmit(c, plan.booked_bytes[cid], t_u, bundle_bytes)
                if timing is None:
                    continue
                v = c.to_node
                best = min(
                    label.get(v, (math.inf, 0))[0], updates.get(v, (math.inf,))[0]
                )
                if timing[1] < best:
                    updates[v] = (timing[1], u, cid, timing[0])
        if not updates:
            break
        for v, (t_v, u, cid, tx_start) in updates.items():
            label[v] = (t_v, h)
            via[(v, h)] = (u, cid, tx_start)
        frontier = sorted(updates)

    reached = [(label[d][0], label[d][1], d) for d in targets if d in label]
    if not reached:
        return None
    arrival_s, hops, destination = min(reached)
    chain = {}
    node, h = destination, hops
    while h > 0:
        u, cid, tx_start = via[(node, h)]
        chain[node] = (u, cid, tx_start)
        node, h = u, h - 1
    return _route(plan, source, destination, bundle_bytes, chain, arrival_s)


def _route(plan, source, destination, bundle_bytes, via, arrival_s) -> CgrRoute:
    nodes = [destination]
    cids, departures = [], []
    while nodes[-1] != source:
        u, cid, tx_start = via[nodes[-1]]
        nodes.append(u)
        cids.append(cid)
        departures.append(tx_start)
    nodes.reverse()
    cids.reverse()
    departures.reverse()
    return CgrRoute(
        source,
        destination,
        bundle_bytes,
        tuple(nodes),
        tuple(cids),
        tuple(plan.contacts[c] for c in cids),
        tuple(departures),
        arrival_s,
    )


# -- building plans ------------------------------------------------------------


def contacts_from_series(series, *, epoch: datetime | None = None) -> list[Contact]:
    """Contacts (both directions) from the links of an ISL snapshot series.

    A link seen up in consecutive snapshots k..m becomes one contact from the
    time of k to the time of m (conservative: it may open up to a step before
    and close up to a step after), at the snapshot's rate (Mbit/s ->
    bytes/s), with the OWLT of the longest distance seen.  A link seen in one
    snapshot only gives no contact.  Times are seconds after ``epoch``
    (default: the first snapshot's time).
    """
    _require_aware(epoch, "epoch")
    snaps = series.snapshots
    if not snaps:
        return []
    epoch = epoch or snaps[0].time
    ids = snaps[0].node_ids
    n = len(ids)
    open_runs: dict[int, list[float]] = {}  # key -> [start_s, last_s, max_km, rate]
    contacts: list[Contact] = []

    def close(key: int, run: list[float]) -> None:
        start, last, dist_km, rate_mbps = run
        if last > start:
            a, b = ids[key // n], ids[key % n]
            rate = rate_mbps * 1e6 / 8.0
            owlt = dist_km / SPEED_OF_LIGHT_KM_S
            contacts.append(Contact(start, last, a, b, rate, owlt))
            contacts.append(Contact(start, last, b, a, rate, owlt))

    for snap in snaps:
        t = (snap.time - epoch).total_seconds()
        keys = snap.link_keys().tolist()
        present = set(keys)
        for key in [k for k in open_runs if k not in present]:
            close(key, open_runs.pop(key))
        for key, d, rate in zip(
            keys, snap.distance_km.tolist(), snap.rate_mbps.tolist(), strict=True
        ):
            run = open_runs.get(key)
            if run is None:
                open_runs[key] = [t, t, d, rate]
            else:
                run[1] = t
                run[2] = max(run[2], d)
    for key, run in sorted(open_runs.items()):
        close(key, run)
    contacts.sort(key=lambda c: (c.start_s, c.from_node, c.to_node))
    return contacts


def contacts_from_windows(
    satellite: str,
    windows: Sequence[object],
    epoch: datetime,
    *,
    owlt_s: float | None = None,
) -> list[Contact]:
    """Downlink contacts (satellite -> station) from predicted pass windows.

    Each window needs ``station`` (a name or an object with ``.name``),
    ``start_time`` and ``end_time`` (aware datetimes) and
    ``data_capacity_mb`` (megabytes, 10**6 bytes, over the whole pass); the
    contact's rate is that capacity spread evenly over the pass.  The OWLT is
    ``owlt_s`` or, by default, the light time over 3,000 km, a conservative
    LEO slant range.
    """
    if epoch is None:
        raise ValueError("contacts_from_windows needs the plan's epoch, got None")
    _require_aware(epoch, "epoch")
    contacts = []
    for w in windows:
        station = getattr(w.station, "name", w.station)
        start = (w.start_time - epoch).total_seconds()
        end = (w.end_time - epoch).total_seconds()
        if end <= start or w.data_capacity_mb <= 0:
            continue
        rate = w.data_capacity_mb * 1e6 / (end - start)
        owlt = DEFAULT_PASS_OWLT_S if owlt_s is None else owlt_s
        contacts.append(Contact(start, end, satellite, str(station), rate, owlt))
    return contacts


def _require_aware(when: datetime | None, label: str) -> None:
    if when is not None and when.tzinfo is None:
        raise ValueError(
            f"{label} {when.isoformat()} has no time zone; pass an aware UTC datetime"
        )


def _ion_absolute(token: str) -> datetime:
    try:
        return datetime.strptime(token, "%Y/%m/%d-%H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        raise ValueError(f"time {token!r} is not yyyy/mm/dd-hh:mm:ss") from None


def _ion_time(token: str, epoch: datetime | None, offset_s: float = 0.0) -> float:
    """Seconds after the plan epoch of an ION time (+SECONDS or absolute)."""
    if token.startswith("+"):
        try:
            return offset_s + float(token[1:])
        except ValueError:
            raise ValueError(f"time {token!r} is not +SECONDS") from None
    if not re.fullmatch(r"\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d", token):
        raise ValueError(f"time {token!r} is neither +SECONDS nor yyyy/mm/dd-hh:mm:ss")
    when = _ion_absolute(token)
    if epoch is None:
        raise ValueError(
            f"absolute time {token!r} needs an epoch; pass epoch= or put an "
            "'@ yyyy/mm/dd-hh:mm:ss' reference time before it"
        )
    return (when - epoch) / timedelta(seconds=1)


def _ion_number(token: str, label: str) -> float:
    try:
        return float(token)
    except ValueError:
        raise ValueError(f"{label} {token!r} is not a number") from None


def _covering_range(ranges, start, end, a, b) -> float:
    """OWLT for a contact a->b over [start, end] from ION's directional ranges."""
    reverse_ok = a.isdigit() and b.isdigit() and int(b) < int(a)
    implied = None
    for r_start, r_end, r_a, r_b, owlt, _lineno in ranges:
        if r_start > start or r_end < end:
            continue
        if (r_a, r_b) == (a, b):
            return owlt
        if reverse_ok and (r_a, r_b) == (b, a) and implied is None:
            implied = owlt
    return implied if implied is not None else 0.0
