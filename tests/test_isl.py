"""ISL topology from orbits: +Grid, nearest-visible, Earth blocking, ground links."""

import math
from datetime import UTC, datetime, timedelta

import networkx as nx
import numpy as np
import pytest

from agent import IslConfig, IslNetwork, Position
from agent._geo import SPEED_OF_LIGHT_KM_S, WGS84_A_KM
from agent._isl import LINK_GROUND, LINK_ISL, _clears_earth
from agent._orbit import datetime_to_jd, look_angles, station_frame, teme_to_ecef_km
from agent._walker import walker_tles
from ground import build_tables

EPOCH = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
STARLINK = dict(planes=72, sats_per_plane=22, phasing=1)


@pytest.fixture(scope="module")
def shell_snapshot():
    tles = walker_tles(72, 22, 1, 550.0, 53.0, EPOCH)
    network = IslNetwork(tles, IslConfig(topology="grid", **STARLINK))
    return network.snapshot(EPOCH + timedelta(minutes=7))


def test_every_satellite_of_the_72x22_shell_has_exactly_four_grid_links(
    shell_snapshot,
):
    snap = shell_snapshot
    assert len(snap.node_ids) == 1584
    assert np.all(snap.degree() == 4)
    assert snap.edges.shape == (1584 * 2, 2)
    assert np.all(snap.edges[:, 0] < snap.edges[:, 1])
    assert np.all(snap.kind == LINK_ISL)
    # in-plane and cross-plane neighbours of one satellite
    names = snap.link_names()
    for other in ("sat-00-04", "sat-00-06", "sat-01-05", "sat-71-04"):
        assert tuple(sorted(("sat-00-05", other))) in names
    # the delta seam closes plane 71 onto plane 0 shifted by the phasing F=1
    assert ("sat-00-06", "sat-71-05") in names


def test_link_latency_is_light_time_plus_processing(shell_snapshot):
    snap = shell_snapshot
    pos = snap.positions_km
    d = np.linalg.norm(pos[snap.edges[:, 0]] - pos[snap.edges[:, 1]], axis=1)
    assert np.allclose(snap.distance_km, d, rtol=0, atol=1e-9)
    expected_ms = d / SPEED_OF_LIGHT_KM_S * 1e3 + 0.1
    assert np.allclose(snap.latency_ms, expected_ms, rtol=0, atol=1e-12)
    # 22 satellites per plane at 550 km are about 1,970 km apart in-plane
    assert 1900 < snap.distance_km.max() < 2000


def test_following_the_tables_reaches_every_destination_at_shortest_cost(
    shell_snapshot,
):
    graph = shell_snapshot.link_graph()
    tables = build_tables(graph, expires=EPOCH + timedelta(minutes=8))
    n = graph.n_nodes
    assert np.all(tables.cost_us != np.iinfo(np.uint32).max)

    # outside truth: scipy's all-pairs Dijkstra
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    matrix = csr_matrix((graph.weight_us, graph.indices, graph.indptr), (n, n))
    assert np.array_equal(tables.cost_us, dijkstra(matrix).astype(np.uint32))

    # walk the tables from every node to every destination at once
    weight = np.full((n, n), np.inf)
    src = np.repeat(np.arange(n), np.diff(graph.indptr))
    weight[src, graph.indices] = graph.weight_us
    dest = np.broadcast_to(np.arange(n), (n, n))
    cur = np.broadcast_to(np.arange(n)[:, None], (n, n)).copy()
    walked = np.zeros((n, n))
    for _ in range(n):
        moving = cur != dest
        if not moving.any():
            break
        nxt = tables.next_hop[cur, dest].astype(np.int64)
        walked += np.where(moving, weight[cur, nxt], 0.0)
        cur = np.where(moving, nxt, cur)
    assert np.array_equal(cur, dest)
    assert np.array_equal(walked, tables.cost_us.astype(np.float64))

    # and networkx agrees from a few sources
    g = nx.Graph()
    g.add_weighted_edges_from(
        (int(u), int(v), w)
        for u, v, w in zip(src, graph.indices, graph.weight_us, strict=True)
    )
    for s in (0, 777, 1583):
        lengths = nx.single_source_dijkstra_path_length(g, s)
        assert all(tables.cost_us[s, v] == lengths[v] for v in range(n))
    path = tables.follow("sat-00-00", "sat-36-11")
    assert path[0] == "sat-00-00" and path[-1] == "sat-36-11"


def test_two_satellites_on_opposite_sides_of_the_earth_have_no_link():
    tles = walker_tles(1, 2, 0, 550.0, 53.0, EPOCH)
    far = IslConfig(topology="nearest", max_range_km=50_000.0)
    snap = IslNetwork(tles, far).snapshot(EPOCH)
    pos = snap.positions_km
    cos_angle = pos[0] @ pos[1] / np.linalg.norm(pos[0]) / np.linalg.norm(pos[1])
    assert cos_angle < np.cos(np.radians(179.0))  # opposite sides
    assert snap.edges.shape == (0, 2)
    grid = IslNetwork(tles, IslConfig(planes=1, sats_per_plane=2, max_range_km=5e4))
    assert grid.snapshot(EPOCH).edges.shape == (0, 2)
    # control: the same plane with 30 satellites links its neighbours
    near = IslNetwork(walker_tles(1, 30, 0, 550.0, 53.0, EPOCH), far).snapshot(EPOCH)
    assert len(near.edges) > 0


def test_line_of_sight_clears_the_earth_plus_the_atmosphere_margin():
    r = WGS84_A_KM + 550.0
    p = np.array([[r, 0.0, 0.0]])
    # a chord whose lowest point is at height h above the sphere
    for height_km, clear in ((79.0, False), (81.0, True)):
        half = np.arccos((WGS84_A_KM + height_km) / r)
        q = np.array([[r * np.cos(2 * half), r * np.sin(2 * half), 0.0]])
        assert _clears_earth(p, q, WGS84_A_KM + 80.0)[0] == clear


def test_star_pattern_has_no_links_across_the_seam():
    tles = walker_tles(6, 11, 0, 780.0, 86.4, EPOCH, pattern="star")
    cfg = IslConfig(planes=6, sats_per_plane=11, pattern="star")
    snap = IslNetwork(tles, cfg).snapshot(EPOCH)
    degree = snap.degree().reshape(6, 11)
    assert np.all(degree[1:5] == 4)
    assert np.all(degree[[0, 5]] == 3)
    for a, b in snap.link_names():
        planes = {int(a.split("-")[1]), int(b.split("-")[1])}
        assert planes != {0, 5}


def test_nearest_visible_respects_terminals_range_and_line_of_sight():
    tles = walker_tles(12, 12, 1, 550.0, 53.0, EPOCH)
    cfg = IslConfig(topology="nearest", max_terminals=3, max_range_km=2500.0)
    snap = IslNetwork(tles, cfg).snapshot(EPOCH)
    assert snap.degree().max() <= 3
    assert snap.distance_km.max() <= 2500.0
    pos = snap.positions_km
    assert np.all(
        _clears_earth(pos[snap.edges[:, 0]], pos[snap.edges[:, 1]], WGS84_A_KM + 80)
    )
    # greedy from the shortest: the globally shortest pair is always linked
    d = np.linalg.norm(pos[:, None] - pos[None, :], axis=2)
    np.fill_diagonal(d, np.inf)
    i, j = np.unravel_index(np.argmin(d), d.shape)
    assert (snap.node_ids[min(i, j)], snap.node_ids[max(i, j)]) in snap.link_names()


def test_ground_links_are_the_satellites_above_the_minimum_elevation():
    tles = walker_tles(10, 10, 1, 550.0, 53.0, EPOCH)
    site = Position(40.43, -3.95, 0.65)
    cfg = IslConfig(
        planes=10, sats_per_plane=10, phasing=1, ground_min_elevation_deg=10
    )
    network = IslNetwork(tles, cfg, stations=[("madrid", site)])
    series = network.series(EPOCH, 3 * 3600, 120)
    seen = 0
    for snap in series.snapshots:
        # independent check with the orbit module's look angles
        jd, fr = datetime_to_jd(snap.time)
        err, r, _v = network._satrecs.sgp4(np.array([jd]), np.array([fr]))
        ecef = teme_to_ecef_km(r, np.array([jd]), np.array([fr]))[:, 0]
        site_km = site.ecef_km()
        _az, el, rng = look_angles(ecef, site_km, station_frame(site_km, 40.43, -3.95))
        ground = snap.edges[snap.kind == LINK_GROUND]
        assert np.all(ground[:, 1] == 100)
        assert set(ground[:, 0].tolist()) == set(np.nonzero(el >= 10.0)[0].tolist())
        assert np.allclose(
            snap.distance_km[snap.kind == LINK_GROUND], rng[ground[:, 0]]
        )
        seen += len(ground)
    assert seen > 0


def test_events_turn_each_snapshot_into_the_next():
    tles = walker_tles(10, 10, 1, 550.0, 53.0, EPOCH)
    cfg = IslConfig(planes=10, sats_per_plane=10, phasing=1)
    network = IslNetwork(tles, cfg, stations=[("madrid", Position(40.43, -3.95))])
    series = network.series(EPOCH, 3600, 60)
    assert len(series.snapshots) == 61
    links = series.snapshots[0].link_names()
    for snap in series.snapshots[1:]:
        for event in (e for e in series.events if e.time == snap.time):
            key = (event.a, event.b)
            if event.up:
                assert key not in links
                links.add(key)
            else:
                links.remove(key)
        assert links == snap.link_names()
    assert any(e.up for e in series.events) and any(not e.up for e in series.events)
    # valid-until: a ground link stays up exactly until its down event
    until = series.edge_valid_until_s(0)
    ground = series.snapshots[0].kind == LINK_GROUND
    assert np.all(until[~ground] == series.snapshots[-1].time.timestamp())
    for (a, b), t in zip(series.snapshots[0].edges[ground], until[ground], strict=True):
        names = (series.snapshots[0].node_ids[a], series.snapshots[0].node_ids[b])
        downs = [e.time for e in series.events if (e.a, e.b) == names and not e.up]
        if downs:
            assert t == (min(downs) - timedelta(seconds=60)).timestamp()


def test_config_problems_are_reported_together():
    with pytest.raises(ValueError) as info:
        IslConfig(topology="mesh", max_range_km=-1, planes=None)
    message = str(info.value)
    assert "topology='mesh'" in message and "max_range_km=-1" in message
    with pytest.raises(ValueError, match="needs 6 TLEs in plane order, got 4"):
        IslNetwork(
            walker_tles(2, 2, 0, 550.0, 53.0, EPOCH),
            IslConfig(planes=2, sats_per_plane=3),
        )


def test_config_values_that_are_not_finite_are_named():
    with pytest.raises(ValueError) as info:
        IslConfig(
            planes=4, sats_per_plane=4, phasing=4, isl_rate_mbps=math.inf,
            processing_ms=math.nan, ground_terminals=0,
        )  # fmt: skip
    message = str(info.value)
    for part in ("phasing=4", "isl_rate_mbps=inf", "processing_ms=nan"):
        assert part in message
    assert "ground_terminals=0" in message
    network = IslNetwork(
        walker_tles(2, 2, 0, 550.0, 53.0, EPOCH), IslConfig(planes=2, sats_per_plane=2)
    )
    for horizon_s, step_s in ((math.inf, 60.0), (600.0, math.nan)):
        with pytest.raises(ValueError, match=f"step_s={step_s!r}, horizon_s="):
            network.series(EPOCH, horizon_s, step_s)


def test_repeated_names_are_listed():
    tles = walker_tles(1, 2, 0, 550.0, 53.0, EPOCH)
    nearest = IslConfig(topology="nearest")
    with pytest.raises(ValueError, match=r"repeated: \['sat-00-00'\]"):
        IslNetwork([tles[0], tles[0]], nearest)
    with pytest.raises(ValueError, match=r"repeated: \['gs', 'sat-00-01'\]"):
        IslNetwork(
            tles,
            nearest,
            [("gs", Position(0, 0, 0)), ("gs", Position(1, 1, 0)),
             ("sat-00-01", Position(2, 2, 0))],
        )  # fmt: skip


def test_a_decayed_satellite_gets_a_status_and_no_links_not_an_exception():
    from agent._tle import format_tle

    # perigee inside the Earth: SGP4 reports error 6 (decayed)
    line1, line2 = format_tle(
        catalog_number=99,
        epoch=EPOCH,
        inclination_deg=53.0,
        raan_deg=0.0,
        eccentricity=0.5,
        arg_perigee_deg=0.0,
        mean_anomaly_deg=0.0,
        mean_motion_rev_day=15.0,
    )
    tles = walker_tles(1, 30, 0, 550.0, 53.0, EPOCH) + [("decayed", line1, line2)]
    snap = IslNetwork(tles, IslConfig(topology="nearest")).snapshot(EPOCH)
    assert snap.status[-1] == 6 and np.all(snap.status[:-1] == 0)
    assert snap.degree()[-1] == 0 and np.all(snap.degree()[:-1] == 4)
    assert np.all(np.isnan(snap.positions_km[-1]))


def test_station_antennas_limit_ground_links_to_the_highest_satellites():
    from agent._stations import GroundStation

    tles = walker_tles(24, 24, 1, 550.0, 53.0, EPOCH)
    cfg = IslConfig(planes=24, sats_per_plane=24, phasing=1)
    site = Position(40.43, -3.95, 0.65)
    one = GroundStation("madrid", site, 50.0, 200.0, min_elevation_deg=10.0)
    two = GroundStation("madrid", site, 50.0, 200.0, min_elevation_deg=10.0, antennas=2)
    open_sky = IslNetwork(tles, cfg, [("madrid", site)])
    all_visible = open_sky.snapshot(EPOCH)
    limited = {
        k: IslNetwork(tles, cfg, [station]).snapshot(EPOCH)
        for k, station in ((1, one), (2, two))
    }
    assert (all_visible.kind == LINK_GROUND).sum() > 2
    for k, snap in limited.items():
        ground = snap.kind == LINK_GROUND
        assert ground.sum() == k
        # the chosen ones are the nearest, i.e. highest in the sky
        nearest = np.sort(all_visible.distance_km[all_visible.kind == LINK_GROUND])
        assert np.allclose(np.sort(snap.distance_km[ground]), nearest[:k])


def test_snapshot_as_a_mesh_routes_to_the_ground():
    tles = walker_tles(10, 10, 1, 550.0, 53.0, EPOCH)
    cfg = IslConfig(
        planes=10, sats_per_plane=10, phasing=1, ground_min_elevation_deg=10
    )
    snap = IslNetwork(tles, cfg, [("madrid", Position(40.43, -3.95))]).snapshot(EPOCH)
    mesh = snap.to_mesh()
    assert len(mesh) == 101 and mesh.node("madrid").is_ground
    route = mesh.find_route("sat-05-05", "madrid")
    g = snap.link_graph()
    tables = build_tables(g, expires=EPOCH)
    cost_ms = tables.cost_us[g.index_of("sat-05-05"), g.index_of("madrid")] / 1e3
    assert route.total_latency_ms == pytest.approx(cost_ms, abs=1e-3 * route.hop_count)
    assert route.bottleneck_mbps == cfg.ground_rate_mbps
    assert route.total_distance_km > 0


def test_ground_links_of_real_starlink_tles_agree_with_skyfield(tle_dir):
    # Outside truth: skyfield's topocentric elevation (IAU 2000 Earth
    # rotation, its own SGP4 wrapper) for real Starlink element sets.
    from skyfield.api import EarthSatellite, load, wgs84

    from agent._tle import load_elements

    entries = load_elements(tle_dir / "starlink_2023-07-18.txt").entries[:600]
    tles = [(f"{e.name.strip()}#{i}", e.line1, e.line2) for i, e in enumerate(entries)]
    when = datetime(2023, 7, 18, 6, 0, tzinfo=UTC)
    site = Position(47.6, -122.3, 0.05)
    cfg = IslConfig(topology="nearest", ground_min_elevation_deg=25.0)
    snap = IslNetwork(tles, cfg, [("seattle", site)]).snapshot(when)
    linked = set(snap.edges[snap.kind == LINK_GROUND][:, 0].tolist())

    ts = load.timescale(builtin=True)
    t = ts.from_datetime(when)
    observer = wgs84.latlon(site.lat_deg, site.lon_deg, site.alt_km * 1000.0)
    margin_deg = 0.05  # the two Earth rotation models differ by arcseconds
    checked = 0
    for i, (_name, line1, line2) in enumerate(tles):
        if snap.status[i] != 0:
            continue
        alt, _az, _dist = (EarthSatellite(line1, line2, ts=ts) - observer).at(t).altaz()
        if abs(alt.degrees - 25.0) < margin_deg:
            continue
        assert (i in linked) == (alt.degrees > 25.0), (i, alt.degrees)
        checked += 1
    assert checked > 500 and linked


def test_malformed_tles_are_all_reported_by_satellite_name():
    good = walker_tles(1, 2, 0, 550.0, 53.0, EPOCH)
    broken = [("bad-1", good[0][1][:-1] + "0", good[0][2]), ("bad-2", "1 x", "2 y")]
    with pytest.raises(ValueError) as info:
        IslNetwork(good + broken, IslConfig(topology="nearest"))
    message = str(info.value)
    assert "bad-1: TLE line 1 checksum is '0' but the line sums to 9" in message
    assert "bad-2: TLE line 1 has 3 characters" in message
    assert "sat-00-00" not in message


def test_a_station_horizon_mask_hides_satellites_behind_it():
    from agent._stations import GroundStation

    tles = walker_tles(24, 24, 1, 550.0, 53.0, EPOCH)
    cfg = IslConfig(planes=24, sats_per_plane=24, phasing=1)
    site = Position(40.43, -3.95, 0.65)
    # a ridge over the whole southern half of the sky, up to 60 deg
    ridge = ((0.0, 10.0), (89.0, 10.0), (90.0, 60.0), (270.0, 60.0), (271.0, 10.0))
    open_sky = GroundStation("madrid", site, 50.0, 200.0, 10.0, antennas=50)
    masked = GroundStation(
        "madrid", site, 50.0, 200.0, 10.0, horizon_mask=ridge, antennas=50
    )
    seen = {}
    for label, station in (("open", open_sky), ("masked", masked)):
        series = IslNetwork(tles, cfg, [station]).series(EPOCH, 1800, 300)
        seen[label] = [
            set(s.edges[s.kind == LINK_GROUND][:, 0].tolist()) for s in series.snapshots
        ]
    jd_fr = [datetime_to_jd(EPOCH + timedelta(seconds=300 * k)) for k in range(7)]
    net = IslNetwork(tles, cfg)
    hidden = 0
    for k, (jd, fr) in enumerate(jd_fr):
        _e, r, _v = net._satrecs.sgp4(np.array([jd]), np.array([fr]))
        ecef = teme_to_ecef_km(r, np.array([jd]), np.array([fr]))[:, 0]
        az, el, _rng = look_angles(ecef, site.ecef_km(), masked.enu_matrix())
        south = (az > 90.5) & (az < 269.5)
        expected = set(np.nonzero((el >= 10.0) & (~south | (el >= 60.0)))[0].tolist())
        assert seen["masked"][k] == expected
        assert seen["masked"][k] <= seen["open"][k]
        hidden += len(seen["open"][k] - seen["masked"][k])
    assert hidden > 0
