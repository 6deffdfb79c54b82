"""Onboard routing rows: wire format, forwarding, local repair; ground tables."""

import math
from datetime import UTC, datetime, timedelta

import msgpack
import networkx as nx
import numpy as np
import pytest

import agent._routing as routing
from agent import IslConfig, IslNetwork, LinkGraph, Position, RoutingTable
from agent._routing import ROW_FORMAT_VERSION, UNREACHABLE_US, RoutingTableError
from agent._walker import walker_tles
from agent.kernels import _sssp_twin
from agent.kernels._select import load_compiled
from ground import build_tables

EPOCH = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BACKENDS = ["twin"] + (["compiled"] if load_compiled("_sssp") else [])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Run a test once per SSSP backend."""
    module = _sssp_twin if request.param == "twin" else load_compiled("_sssp")
    monkeypatch.setattr(routing, "_backend", module)
    return request.param


@pytest.fixture(scope="module")
def series():
    tles = walker_tles(12, 12, 1, 550.0, 53.0, EPOCH)
    cfg = IslConfig(planes=12, sats_per_plane=12, phasing=1)
    stations = [("madrid", Position(40.43, -3.95)), ("perth", Position(-31.8, 115.9))]
    return IslNetwork(tles, cfg, stations).series(EPOCH, 1800, 60)


def line_graph() -> LinkGraph:
    #  a - b - c - d, and a slower a - d
    return LinkGraph.from_edges(
        ["a", "b", "c", "d"],
        np.array([0, 1, 2, 0]),
        np.array([1, 2, 3, 3]),
        np.array([1000.0, 1000.0, 1000.0, 5000.0]),
        np.array([100.0, 50.0, 200.0, 300.0]),
    )


def as_networkx(graph: LinkGraph, down=()) -> nx.Graph:
    g = nx.Graph()
    g.add_nodes_from(range(graph.n_nodes))
    src = np.repeat(np.arange(graph.n_nodes), np.diff(graph.indptr))
    for u, v, w in zip(src, graph.indices, graph.weight_us, strict=True):
        if (min(u, v), max(u, v)) not in down:
            g.add_edge(int(u), int(v), weight=float(w))
    return g


def test_row_lookup_gives_next_hop_cost_and_valid_until(backend):
    table = RoutingTable.compute(line_graph(), "a", expires=250.0)
    entry = table.lookup("d")
    assert entry.next_hop == "b" and entry.cost_ms == 3.0
    # the path a-b-c-d is valid until its earliest link (b-c, 50 s)
    assert entry.valid_until == datetime.fromtimestamp(50.0, UTC)
    assert table.lookup("a").next_hop == "a" and table.lookup("a").cost_ms == 0.0
    assert table.next_hop_for("c") == "b"
    assert table.next_hop_for("c", now=datetime.fromtimestamp(49.0, UTC)) == "b"
    assert table.next_hop_for("c", now=datetime.fromtimestamp(51.0, UTC)) is None


def test_marking_a_link_down_recomputes_the_own_row(backend):
    table = RoutingTable.compute(line_graph(), "a", expires=250.0)
    changed = table.mark_link_down("b", "c")
    assert changed == 2  # c and d now go straight to d
    assert table.lookup("d").next_hop == "d" and table.lookup("d").cost_ms == 5.0
    assert table.lookup("c").next_hop == "d" and table.lookup("c").cost_ms == 6.0
    # capped at the row's expiry: the a-d link is good until 300 s
    assert table.valid_until_s[3] == 250.0
    table.mark_link_down("a", "d")
    assert table.lookup("d").next_hop is None and table.lookup("d").cost_ms == math.inf
    assert table.cost_us[3] == UNREACHABLE_US
    assert table.mark_link_up("b", "c") == 2
    assert table.lookup("d").next_hop == "b"
    with pytest.raises(KeyError, match="no link 'a' - 'c'"):
        table.mark_link_down("a", "c")
    with pytest.raises(KeyError, match="'zz'"):
        table.lookup("zz")


def test_local_repair_on_a_shell_matches_networkx(series, backend):
    snap = series.snapshots[0]
    graph = snap.link_graph(series.edge_valid_until_s(0))
    table = RoutingTable.compute(
        graph, "sat-03-04", expires=EPOCH + timedelta(minutes=1)
    )
    neighbour = table.lookup("sat-07-07").next_hop
    table.mark_link_down("sat-03-04", neighbour)
    own, other = graph.index_of("sat-03-04"), graph.index_of(neighbour)
    want = nx.single_source_dijkstra_path_length(
        as_networkx(graph, {(min(own, other), max(own, other))}), own
    )
    for v in range(graph.n_nodes):
        assert table.cost_us[v] == want[v]
    assert table.lookup("sat-07-07").next_hop != neighbour


def test_ground_rows_match_the_onboard_kernel(series, backend):
    snap = series.snapshots[3]
    graph = snap.link_graph(series.edge_valid_until_s(3))
    expires = series.snapshots[4].time
    kernel = build_tables(graph, expires=expires)
    scipy = build_tables(graph, expires=expires, method="scipy")
    assert np.array_equal(kernel.cost_us, scipy.cost_us)
    assert kernel.next_hop.dtype == np.int16
    for name in ("sat-00-00", "sat-11-11", "madrid"):
        row = kernel.row(name)
        onboard = RoutingTable.compute(graph, name, expires=expires)
        assert np.array_equal(row.cost_us, onboard.cost_us)
        # the paths may differ where costs tie, but each hop must be a
        # neighbour on a shortest path
        for d in range(graph.n_nodes):
            hop = int(row.next_hop[d])
            if d == row.own_index:
                assert hop == d
                continue
            step = int(graph.weight_us[graph.edge_slots(row.own_index, hop)[0]])
            assert kernel.cost_us[hop, d] + step == row.cost_us[d]
        # valid-until times agree wherever both took the same path
        same = row.next_hop == onboard.next_hop
        assert np.array_equal(row.valid_until_s[same], onboard.valid_until_s[same])


def test_valid_until_is_the_earliest_link_expiry_on_the_path(series):
    graph = series.snapshots[0].link_graph(series.edge_valid_until_s(0))
    tables = build_tables(graph, expires=1e12)
    row = tables.row("sat-05-05")
    for dest in ("madrid", "perth", "sat-00-00"):
        path = tables.follow("sat-05-05", dest)
        if path is None:
            continue
        idx = [graph.index_of(x) for x in path]
        expiry = min(
            graph.valid_until_s[graph.edge_slots(u, v)[0]]
            for u, v in zip(idx, idx[1:], strict=False)
        )
        assert row.valid_until_s[graph.index_of(dest)] == expiry


def test_row_round_trips_through_the_wire_format(series):
    graph = series.snapshots[0].link_graph(series.edge_valid_until_s(0))
    table = build_tables(graph, expires=EPOCH + timedelta(minutes=1)).row("sat-01-02")
    data = table.to_bytes()
    back = RoutingTable.from_bytes(data)
    assert back.own_id == "sat-01-02" and back.node_ids == graph.node_ids
    for name in ("next_hop", "cost_us", "valid_until_s"):
        assert np.array_equal(getattr(back, name), getattr(table, name))
    assert np.array_equal(back.graph.weight_us, graph.weight_us)
    assert back.expires_s == table.expires_s
    # after the trip the satellite can still repair its row
    neighbour = back.lookup("madrid").next_hop
    back.mark_link_down("sat-01-02", neighbour)
    assert back.lookup("madrid").next_hop != neighbour
    msg = msgpack.unpackb(data)
    assert msg["version"] == ROW_FORMAT_VERSION and msg["next_hop"][0] == "<i2"


def test_row_golden_bytes_of_a_tiny_graph():
    table = RoutingTable.compute(line_graph(), "a", expires=250.0)
    data = table.to_bytes()
    msg = msgpack.unpackb(data)
    assert msg["kind"] == "orbitfl-routing-row"
    assert msg["nodes"] == ["a", "b", "c", "d"] and msg["own"] == 0
    assert msg["next_hop"] == ["<i2", [4], bytes.fromhex("0000010001000100")]
    assert msg["cost_us"] == [
        "<u4",
        [4],
        (0).to_bytes(4, "little")
        + (1000).to_bytes(4, "little")
        + (2000).to_bytes(4, "little")
        + (3000).to_bytes(4, "little"),
    ]
    assert RoutingTable.from_bytes(data).to_bytes() == data


def test_malformed_rows_are_rejected_with_what_is_wrong():
    good = msgpack.unpackb(RoutingTable.compute(line_graph(), "a", 250.0).to_bytes())

    def bad(**changes):
        msg = dict(good)
        msg.update(changes)
        return msgpack.packb(msg, use_bin_type=True)

    with pytest.raises(RoutingTableError, match="version 2 is not supported"):
        RoutingTable.from_bytes(bad(version=2))
    with pytest.raises(RoutingTableError, match="kind 'other'"):
        RoutingTable.from_bytes(bad(kind="other"))
    with pytest.raises(RoutingTableError, match="own=9"):
        RoutingTable.from_bytes(bad(own=9))
    with pytest.raises(
        RoutingTableError, match=r"next_hop values must lie in \[-1, 4\)"
    ):
        RoutingTable.from_bytes(bad(next_hop=["<i2", [4], b"\x09\x00" * 4]))
    with pytest.raises(RoutingTableError, match="needs 8 bytes but 6 arrived"):
        RoutingTable.from_bytes(bad(next_hop=["<i2", [4], b"\x00" * 6]))
    with pytest.raises(RoutingTableError, match="indices must lie in"):
        RoutingTable.from_bytes(bad(indices=["<i2", [8], b"\x07\x00" * 8]))
    with pytest.raises(RoutingTableError, match="exceeds the limit of 10"):
        RoutingTable.from_bytes(bad(), max_bytes=10)
    with pytest.raises(RoutingTableError, match="not valid msgpack"):
        RoutingTable.from_bytes(bad()[:-3])


def test_tables_need_symmetric_links():
    g = line_graph()
    lopsided = LinkGraph(
        g.node_ids, g.indptr, g.indices, g.weight_us + np.arange(8), g.valid_until_s
    )
    with pytest.raises(ValueError, match="symmetric"):
        build_tables(lopsided, expires=0.0)
    with pytest.raises(ValueError, match="method='fast'"):
        build_tables(g, expires=0.0, method="fast")


def test_rows_with_the_wrong_array_types_are_rejected():
    good = msgpack.unpackb(RoutingTable.compute(line_graph(), "a", 250.0).to_bytes())
    msg = dict(good)
    msg["cost_us"] = ["<f8", [4], np.zeros(4).tobytes()]
    with pytest.raises(RoutingTableError, match="cost_us has dtype float64"):
        RoutingTable.from_bytes(msgpack.packb(msg, use_bin_type=True))


def test_the_agent_mesh_modules_need_neither_scipy_nor_networkx():
    import subprocess
    import sys

    code = (
        "import sys, agent\n"
        "from agent import SpaceMesh, IslNetwork, RoutingTable, earliest_arrival\n"
        "import agent._mesh, agent._isl, agent._routing, agent._cgr\n"
        "agent._routing.sssp_backend()\n"
        "bad = [m for m in ('scipy', 'networkx') if m in sys.modules]\n"
        "sys.exit(f'imported {bad}' if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr + result.stdout


def test_tables_for_a_series_snapshot_expire_at_the_next_snapshot(series):
    from ground import tables_for_snapshot

    tables = tables_for_snapshot(series, 2)
    assert tables.expires_s == series.snapshots[3].time.timestamp()
    row = tables.row("sat-04-04")
    assert np.all(row.valid_until_s[row.next_hop >= 0] <= tables.expires_s)
    # satellites keep their +Grid links all horizon: capped at the expiry
    assert row.valid_until_s[row.graph.index_of("sat-04-05")] == tables.expires_s
    with pytest.raises(IndexError, match="snapshot 99 is outside"):
        tables_for_snapshot(series, 99)


def test_link_graph_rejects_bad_edges_naming_them():
    ids = ["x", "y"]
    with pytest.raises(ValueError, match=r"\[0, 2\), got 0..5"):
        LinkGraph.from_edges(ids, np.array([0]), np.array([5]), np.array([1.0]))
    with pytest.raises(ValueError, match="edge 0 joins node 1 to itself"):
        LinkGraph.from_edges(ids, np.array([1]), np.array([1]), np.array([1.0]))
    with pytest.raises(ValueError, match="edge 0 has weight -3.0 us"):
        LinkGraph.from_edges(ids, np.array([0]), np.array([1]), np.array([-3.0]))


@pytest.mark.parametrize("method", ["kernel", "scipy"])
def test_a_path_cost_past_uint32_is_an_error_not_a_wrapped_cost(method):
    # two links of 3e9 us: each fits a row, their sum (6e9 us) does not
    big = float(UNREACHABLE_US // 2 + 10**8)
    graph = LinkGraph.from_edges(
        ["a", "b", "c"], np.array([0, 1]), np.array([1, 2]), np.array([big, big])
    )
    with pytest.raises(ValueError, match="more than the 4294967294 us"):
        build_tables(graph, expires=0.0, method=method)
    with pytest.raises(ValueError, match="more than the 4294967294 us"):
        RoutingTable.compute(graph, "a", expires=0.0)
    assert RoutingTable.compute(graph, "b", expires=0.0).lookup("c").cost_ms == (
        big / 1000.0
    )
