"""Inter-satellite link topology from orbits, one snapshot at a time.

Satellites are propagated with SGP4 (agent/_orbit.py) and rotated to the
Earth-fixed frame, so that ground stations sit still; distances and Earth
occlusion do not depend on the frame.  Two topologies:

- ``grid`` (+Grid): each satellite links to its two neighbours in its plane
  and to the satellites of the same slot in the two adjacent planes.  The
  satellites must be ordered plane by plane, as ``walker_tles`` writes them.
  In a delta pattern the last plane closes onto the first, whose slots are
  shifted by the phasing F (the first plane is plane P of the pattern seen
  one turn later).  In a star pattern the first and last planes move in
  opposite directions across the seam, so no link crosses it and the
  satellites of the two seam planes keep three links.
- ``nearest``: every satellite links to the nearest visible satellites within
  ``max_range_km``, up to ``max_terminals`` links per satellite, pairs taken
  greedily from the shortest.

Every link must also clear the Earth plus ``atmosphere_km``: the segment
between the two satellites may not pass below that height (grazing rays
through the lower atmosphere suffer refraction and absorption).  Link latency
is distance / c plus ``processing_ms`` per hop.  Ground stations link to every
satellite above their minimum elevation (optionally only the highest few).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from sgp4.api import Satrec, SatrecArray

from agent._geo import SPEED_OF_LIGHT_KM_S, WGS84_A_KM, WGS84_E2, Position
from agent._mesh import MeshNode, SpaceMesh
from agent._orbit import datetime_to_jd, look_angles, station_frame, teme_to_ecef_km
from agent._routing import LinkGraph
from agent._tle import validate_tle

TOPOLOGIES = ("grid", "nearest")
PATTERNS = ("delta", "star")
LINK_ISL = 0
LINK_GROUND = 1


@dataclass(frozen=True)
class IslConfig:
    """How links are formed.  ``planes``/``sats_per_plane`` are for ``grid``."""

    topology: str = "grid"
    planes: int | None = None
    sats_per_plane: int | None = None
    phasing: int = 0
    pattern: str = "delta"
    max_terminals: int = 4
    max_range_km: float = 5_000.0
    atmosphere_km: float = 80.0
    processing_ms: float = 0.1
    isl_rate_mbps: float = 1_000.0
    ground_min_elevation_deg: float = 25.0
    ground_rate_mbps: float = 200.0
    ground_terminals: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.topology not in TOPOLOGIES:
            problems.append(f"topology={self.topology!r} is not one of {TOPOLOGIES}")
        if self.pattern not in PATTERNS:
            problems.append(f"pattern={self.pattern!r} is not one of {PATTERNS}")
        if self.topology == "grid":
            for name in ("planes", "sats_per_plane"):
                value = getattr(self, name)
                if not isinstance(value, int) or value < 1:
                    problems.append(f"grid topology needs {name} >= 1, got {value!r}")
        for name in ("max_range_km", "isl_rate_mbps", "ground_rate_mbps"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 < value < math.inf):
                problems.append(f"{name}={value!r} must be a finite number > 0")
        for name in ("atmosphere_km", "processing_ms"):
            value = getattr(self, name)
            if not (_is_real(value) and 0 <= value < math.inf):
                problems.append(f"{name}={value!r} must be a finite number >= 0")
        if self.topology == "grid" and isinstance(self.planes, int):
            if not (isinstance(self.phasing, int) and 0 <= self.phasing < self.planes):
                problems.append(
                    f"phasing={self.phasing!r} must be an int in [0, planes-1]"
                )
        if not (isinstance(self.max_terminals, int) and self.max_terminals >= 1):
            problems.append(f"max_terminals={self.max_terminals!r} must be an int >= 1")
        if self.ground_terminals is not None and not (
            isinstance(self.ground_terminals, int) and self.ground_terminals >= 1
        ):
            problems.append(
                f"ground_terminals={self.ground_terminals!r} must be an int >= 1 "
                "or None"
            )
        if not -90.0 <= self.ground_min_elevation_deg <= 90.0:
            problems.append(
                f"ground_min_elevation_deg={self.ground_min_elevation_deg!r} "
                "must be in [-90, 90]"
            )
        if problems:
            raise ValueError("invalid IslConfig: " + "; ".join(problems))


@dataclass(frozen=True, eq=False)
class IslSnapshot:
    """The links at one instant.

    Nodes are the satellites (in input order) followed by the ground stations.
    ``edges`` is ``(m, 2)`` with ``a < b``; ``kind`` is LINK_ISL or
    LINK_GROUND per edge.  ``status`` holds each satellite's SGP4 error code
    (0 when it propagated); a failed satellite has NaN position and no links.
    """

    time: datetime
    node_ids: tuple[str, ...]
    n_satellites: int
    positions_km: np.ndarray
    status: np.ndarray
    edges: np.ndarray
    distance_km: np.ndarray
    latency_ms: np.ndarray
    rate_mbps: np.ndarray
    kind: np.ndarray

    def degree(self) -> np.ndarray:
        """Number of links per node."""
        return np.bincount(self.edges.ravel(), minlength=len(self.node_ids))

    def link_keys(self) -> np.ndarray:
        """One sortable int64 key per edge: ``a * n + b``."""
        n = len(self.node_ids)
        return self.edges[:, 0].astype(np.int64) * n + self.edges[:, 1]

    def link_names(self) -> set[tuple[str, str]]:
        ids = self.node_ids
        return {(ids[a], ids[b]) for a, b in self.edges.tolist()}

    def link_graph(self, valid_until_s: np.ndarray | None = None) -> LinkGraph:
        """The links as a routing graph, latency in whole microseconds."""
        return LinkGraph.from_edges(
            self.node_ids,
            self.edges[:, 0],
            self.edges[:, 1],
            self.latency_ms * 1000.0,
            valid_until_s,
        )

    def to_mesh(self) -> SpaceMesh:
        """The snapshot as a SpaceMesh with geodetic node positions."""
        mesh = SpaceMesh()
        for i, name in enumerate(self.node_ids):
            mesh.add_node(
                MeshNode(
                    name,
                    _geodetic(self.positions_km[i]) if self.status_ok(i) else None,
                    is_ground=i >= self.n_satellites,
                )
            )
        for (a, b), lat, rate in zip(
            self.edges.tolist(), self.latency_ms, self.rate_mbps, strict=True
        ):
            mesh.add_link(self.node_ids[a], self.node_ids[b], float(rate), float(lat))
        return mesh

    def status_ok(self, i: int) -> bool:
        return i >= self.n_satellites or self.status[i] == 0


@dataclass(frozen=True, slots=True)
class LinkEvent:
    """A link that came up or went down, seen at the first snapshot showing it."""

    time: datetime
    a: str
    b: str
    up: bool


@dataclass(frozen=True, eq=False)
class IslSeries:
    """Snapshots at a fixed step and the link events between them."""

    snapshots: tuple[IslSnapshot, ...]
    events: tuple[LinkEvent, ...]
    step_s: float

    def edge_valid_until_s(self, k: int) -> np.ndarray:
        """Per edge of snapshot k: Unix time of the last snapshot it is still up.

        A link up through the end of the horizon gets the last snapshot's time.
        This is conservative by up to one step: the link may stay up a little
        past the last snapshot that saw it.
        """
        cache = self.__dict__.get("_valid_until_cache")
        if cache is None:
            cache = self._valid_until_all()
            object.__setattr__(self, "_valid_until_cache", cache)
        return cache[k].copy()

    def _valid_until_all(self) -> list[np.ndarray]:
        # one backward pass: a link present in snapshot j+1 inherits its
        # valid-until from there, otherwise it ends at snapshot j.  Edge keys
        # are sorted because edges are sorted by (a, b).
        result: list[np.ndarray] = [np.empty(0)] * len(self.snapshots)
        next_keys = np.empty(0, dtype=np.int64)
        next_until = np.empty(0)
        for j in range(len(self.snapshots) - 1, -1, -1):
            snap = self.snapshots[j]
            keys = snap.link_keys()
            until = np.full(keys.shape, snap.time.timestamp())
            if next_keys.size and keys.size:
                pos = np.searchsorted(next_keys, keys)
                slot = np.minimum(pos, next_keys.size - 1)
                present = (pos < next_keys.size) & (next_keys[slot] == keys)
                until[present] = next_until[slot[present]]
            result[j] = until
            next_keys, next_until = keys, until
        return result


class IslNetwork:
    """Satellites from TLEs (and optional ground stations) forming links."""

    def __init__(
        self,
        tles: Sequence[tuple[str, str, str]],
        config: IslConfig,
        stations: Iterable[object] = (),
    ) -> None:
        self.config = config
        self.names = tuple(name for name, _l1, _l2 in tles)
        repeated = sorted({n for n in self.names if self.names.count(n) > 1})
        if repeated:
            raise ValueError(f"satellite names must be unique; repeated: {repeated}")
        problems = [
            f"{name}: {problem}"
            for name, l1, l2 in tles
            for problem in validate_tle(l1, l2)
        ]
        if problems:
            raise ValueError(
                f"{len(problems)} problem(s) in the TLEs: " + "; ".join(problems)
            )
        self._satrecs = SatrecArray(
            [Satrec.twoline2rv(l1, l2) for _name, l1, l2 in tles]
        )
        n = len(self.names)
        if config.topology == "grid" and config.planes * config.sats_per_plane != n:
            raise ValueError(
                f"grid topology of {config.planes} planes x {config.sats_per_plane} "
                f"satellites needs {config.planes * config.sats_per_plane} TLEs in "
                f"plane order, got {n}"
            )
        self.stations = tuple(_station_site(s, config) for s in stations)
        station_names = [s.name for s in self.stations]
        clash = sorted(
            {n for n in station_names if station_names.count(n) > 1}
            | (set(station_names) & set(self.names))
        )
        if clash:
            raise ValueError(
                "station names must be unique and differ from satellite names; "
                f"repeated: {clash}"
            )
        self.node_ids = self.names + tuple(station_names)
        self._grid = _grid_pairs(config) if config.topology == "grid" else None

    def snapshot(self, time: datetime) -> IslSnapshot:
        """Links at ``time`` (a timezone-aware datetime)."""
        return self.series(time, 0.0, 1.0).snapshots[0]

    def series(self, start: datetime, horizon_s: float, step_s: float) -> IslSeries:
        """Snapshots every ``step_s`` from ``start`` over ``horizon_s`` inclusive."""
        if not (0 < step_s < math.inf and 0 <= horizon_s < math.inf):
            raise ValueError(
                "need a finite step_s > 0 and horizon_s >= 0, got "
                f"step_s={step_s!r}, horizon_s={horizon_s!r}"
            )
        count = int(math.floor(horizon_s / step_s + 1e-9)) + 1
        times = [start + timedelta(seconds=k * step_s) for k in range(count)]
        jd_fr = np.array([datetime_to_jd(t) for t in times])
        jd = np.ascontiguousarray(jd_fr[:, 0])
        fr = np.ascontiguousarray(jd_fr[:, 1])
        # per-time error codes (a satellite may decay inside the horizon)
        err, r_teme, _v = self._satrecs.sgp4(jd, fr)
        r_teme[err != 0] = np.nan
        r_ecef = teme_to_ecef_km(r_teme, jd, fr)  # (S, T, 3)

        snaps = [
            self._snapshot(times[k], r_ecef[:, k, :], err[:, k].astype(np.int8))
            for k in range(count)
        ]
        return IslSeries(tuple(snaps), tuple(_events(snaps)), float(step_s))

    # -- one instant ---------------------------------------------------------

    def _snapshot(self, time: datetime, r_km: np.ndarray, status: np.ndarray):
        cfg = self.config
        ok = status == 0
        if self._grid is not None:
            pairs = self._grid[ok[self._grid[:, 0]] & ok[self._grid[:, 1]]]
            d = np.linalg.norm(r_km[pairs[:, 0]] - r_km[pairs[:, 1]], axis=1)
            clear = _clears_earth(
                r_km[pairs[:, 0]], r_km[pairs[:, 1]], WGS84_A_KM + cfg.atmosphere_km
            )
            keep = clear & (d <= cfg.max_range_km)
            pairs, d = pairs[keep], d[keep]
        else:
            pairs, d = _nearest_pairs(r_km, ok, cfg)

        n_sat = len(self.names)
        edges = [pairs]
        dists = [d]
        kinds = [np.full(len(d), LINK_ISL, dtype=np.int8)]
        positions = [r_km]
        for k, site in enumerate(self.stations):
            positions.append(site.ecef_km[None, :])
            limits = [x for x in (site.antennas, cfg.ground_terminals) if x is not None]
            sats, rng = _visible_from(site, r_km, ok, min(limits) if limits else None)
            edges.append(np.stack([sats, np.full(len(sats), n_sat + k)], axis=1))
            dists.append(rng)
            kinds.append(np.full(len(sats), LINK_GROUND, dtype=np.int8))

        edges_a = np.concatenate(edges).astype(np.int32).reshape(-1, 2)
        dist_a = np.concatenate(dists)
        kind_a = np.concatenate(kinds)
        order = np.lexsort((edges_a[:, 1], edges_a[:, 0]))
        edges_a, dist_a, kind_a = edges_a[order], dist_a[order], kind_a[order]
        latency = dist_a / SPEED_OF_LIGHT_KM_S * 1000.0 + cfg.processing_ms
        rate = np.where(kind_a == LINK_ISL, cfg.isl_rate_mbps, cfg.ground_rate_mbps)
        return IslSnapshot(
            time,
            self.node_ids,
            n_sat,
            np.concatenate(positions),
            status,
            edges_a,
            dist_a,
            latency,
            rate.astype(np.float64),
            kind_a,
        )


def _is_real(value: object) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not (
        isinstance(value, bool)
    )


def _grid_pairs(cfg: IslConfig) -> np.ndarray:
    """Candidate +Grid links (a < b) for satellites ordered plane by plane."""
    planes, per_plane = cfg.planes, cfg.sats_per_plane
    pairs = set()

    def add(p1: int, s1: int, p2: int, s2: int) -> None:
        a, b = p1 * per_plane + s1, p2 * per_plane + s2
        if a != b:
            pairs.add((min(a, b), max(a, b)))

    for p in range(planes):
        for s in range(per_plane):
            if per_plane > 1:
                add(p, s, p, (s + 1) % per_plane)
            if p + 1 < planes:
                add(p, s, p + 1, s)
            elif cfg.pattern == "delta" and planes > 1:
                add(p, s, 0, (s + cfg.phasing) % per_plane)
    return np.array(sorted(pairs), dtype=np.int32).reshape(-1, 2)


def _clears_earth(p: np.ndarray, q: np.ndarray, radius_km: float) -> np.ndarray:
    """True where the segment p-q stays above a sphere of ``radius_km``."""
    d = q - p
    dd = np.einsum("ij,ij->i", d, d)
    t = np.clip(-np.einsum("ij,ij->i", p, d) / np.where(dd > 0, dd, 1.0), 0.0, 1.0)
    closest = p + t[:, None] * d
    return np.einsum("ij,ij->i", closest, closest) > radius_km * radius_km


def _nearest_pairs(
    r_km: np.ndarray, ok: np.ndarray, cfg: IslConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Greedy nearest-visible links under a per-satellite terminal limit."""
    idx = np.nonzero(ok)[0]
    pts = r_km[idx]
    a_list, b_list, d_list = [], [], []
    # rows in blocks, so memory stays O(block * n) for large shells
    block = 256
    for start in range(0, len(idx), block):
        rows = pts[start : start + block]
        d = np.linalg.norm(rows[:, None, :] - pts[None, :, :], axis=2)
        i, j = np.nonzero(d <= cfg.max_range_km)
        i = i + start
        upper = j > i
        a_list.append(i[upper])
        b_list.append(j[upper])
        d_list.append(d[i[upper] - start, j[upper]])
    a = np.concatenate(a_list) if a_list else np.empty(0, np.int64)
    b = np.concatenate(b_list) if b_list else np.empty(0, np.int64)
    dist = np.concatenate(d_list) if d_list else np.empty(0)
    clear = _clears_earth(pts[a], pts[b], WGS84_A_KM + cfg.atmosphere_km)
    a, b, dist = a[clear], b[clear], dist[clear]

    order = np.lexsort((b, a, dist))
    free = np.full(len(idx), cfg.max_terminals, dtype=np.int64)
    chosen = []
    for k in order.tolist():
        i, j = int(a[k]), int(b[k])
        if free[i] > 0 and free[j] > 0:
            free[i] -= 1
            free[j] -= 1
            chosen.append(k)
    chosen_a = np.array(chosen, dtype=np.int64)
    pairs = np.stack([idx[a[chosen_a]], idx[b[chosen_a]]], axis=1)
    return pairs.astype(np.int32).reshape(-1, 2), dist[chosen_a]


def _visible_from(
    site: _Site, r_km: np.ndarray, ok: np.ndarray, terminals: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Satellites above the station's mask, and their slant ranges.

    The mask is the station's ``mask_deg(azimuth)`` (a GroundStation's
    horizon mask) or its minimum elevation.  With ``terminals`` set, only
    that many satellites are kept, the highest first.
    """
    with np.errstate(invalid="ignore"):
        az, el, rng = look_angles(r_km, site.ecef_km, site.enu)
        floor = site.mask_deg(az) if site.mask_deg is not None else site.min_el_deg
        visible = ok & (el >= floor)
    sats = np.nonzero(visible)[0]
    if terminals is not None and len(sats) > terminals:
        best = np.argsort(-el[sats], kind="stable")[:terminals]
        sats = np.sort(sats[best])
    return sats, rng[sats]


def _events(snaps: list[IslSnapshot]) -> list[LinkEvent]:
    events = []
    for prev, cur in zip(snaps, snaps[1:], strict=False):
        before, after = set(prev.link_keys().tolist()), set(cur.link_keys().tolist())
        n = len(cur.node_ids)
        ids = cur.node_ids
        for key, up in [(k, False) for k in sorted(before - after)] + [
            (k, True) for k in sorted(after - before)
        ]:
            events.append(LinkEvent(cur.time, ids[key // n], ids[key % n], up))
    return events


@dataclass(frozen=True, eq=False)
class _Site:
    name: str
    position: Position
    min_el_deg: float
    antennas: int | None
    mask_deg: Callable[[np.ndarray], np.ndarray] | None
    ecef_km: np.ndarray
    enu: np.ndarray


def _station_site(station: object, cfg: IslConfig) -> _Site:
    """A station in any common shape, with its frame precomputed.

    Takes a ``(name, Position)`` pair, or an object with ``name`` and either a
    ``position`` or ``lat_deg``/``lon_deg``/``alt_km`` (or ``altitude_km``),
    such as agent._stations.GroundStation, whose ``min_elevation_deg``,
    horizon mask (``mask_deg``) and ``antennas`` (how many satellites it
    serves at once) are used.  Otherwise the config's minimum elevation holds.
    """
    antennas = mask = min_el = None
    if isinstance(station, tuple) and len(station) == 2:
        name, position = station
    else:
        antennas = getattr(station, "antennas", None)
        mask = getattr(station, "mask_deg", None)
        name = getattr(station, "name", None)
        position = getattr(station, "position", None)
        if position is None and hasattr(station, "lat_deg"):
            alt = getattr(station, "alt_km", getattr(station, "altitude_km", 0.0))
            position = Position(station.lat_deg, station.lon_deg, alt)
        min_el = getattr(station, "min_elevation_deg", None)
    if not isinstance(name, str) or not isinstance(position, Position):
        raise TypeError(
            f"ground station {station!r} needs a name and a Position; pass "
            "(name, Position) or an object with .name and .position"
        )
    site_km = position.ecef_km()
    return _Site(
        name,
        position,
        cfg.ground_min_elevation_deg if min_el is None else float(min_el),
        antennas,
        mask if callable(mask) else None,
        site_km,
        station_frame(site_km, position.lat_deg, position.lon_deg),
    )


def _geodetic(r_km: np.ndarray) -> Position:
    """Geodetic Position of an Earth-fixed point (Bowring's method, one step)."""
    x, y, z = (float(c) for c in r_km)
    lon = math.degrees(math.atan2(y, x))
    p = math.hypot(x, y)
    lat = math.atan2(z, p * (1.0 - WGS84_E2))
    for _ in range(5):
        s = math.sin(lat)
        n = WGS84_A_KM / math.sqrt(1.0 - WGS84_E2 * s * s)
        lat = math.atan2(z + WGS84_E2 * n * s, p)
    s = math.sin(lat)
    n = WGS84_A_KM / math.sqrt(1.0 - WGS84_E2 * s * s)
    alt = (
        p / math.cos(lat) - n
        if abs(lat) < math.radians(89)
        else abs(z) - n * (1.0 - WGS84_E2)
    )
    return Position(math.degrees(lat), lon, max(alt, -0.5))
