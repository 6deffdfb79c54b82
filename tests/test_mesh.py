"""SpaceMesh routes against networkx, and the mesh API's edges."""

import math

import networkx as nx
import numpy as np
import pytest

from agent import MeshNode, Position, Route, SpaceMesh
from agent._geo import SPEED_OF_LIGHT_KM_S


def example_mesh() -> SpaceMesh:
    mesh = SpaceMesh()
    mesh.add_node(MeshNode("sat-001", Position(45.0, -122.0, 550.0)))
    mesh.add_node(MeshNode("sat-002", Position(46.0, -120.0, 550.0)))
    mesh.add_node(MeshNode("sat-003", Position(44.0, -118.0, 550.0)))
    mesh.add_link("sat-001", "sat-002", 1000.0, 2.0)
    mesh.add_link("sat-002", "sat-003", 1000.0, 2.5)
    return mesh


def random_mesh(rng, n, p):
    mesh = SpaceMesh()
    graph = nx.Graph()
    for i in range(n):
        mesh.add_node(MeshNode(f"n{i}"))
        graph.add_node(f"n{i}")
    for i in range(n):
        for j in range(i + 1, n):
            if rng.random() < p:
                bw = float(rng.choice([10.0, 50.0, 100.0, 1000.0]))
                lat = float(rng.uniform(0.5, 20.0))
                mesh.add_link(f"n{i}", f"n{j}", bw, lat)
                graph.add_edge(f"n{i}", f"n{j}", latency=lat, bandwidth=bw)
    return mesh, graph


def assert_valid_path(mesh, route, source, destination):
    assert route.hops[0] == source and route.hops[-1] == destination
    assert len(set(route.hops)) == len(route.hops)
    for a, b in zip(route.hops, route.hops[1:], strict=False):
        assert mesh.link(a, b).up


def test_the_issue_example_routes_through_the_middle_satellite():
    route = example_mesh().find_route("sat-001", "sat-003")
    assert " -> ".join(route.hops) == "sat-001 -> sat-002 -> sat-003"
    assert f"{route.total_latency_ms:.1f} ms" == "4.5 ms"
    assert route.bottleneck_mbps == 1000.0
    p = [Position(45.0, -122.0, 550.0), Position(46.0, -120.0, 550.0)]
    p.append(Position(44.0, -118.0, 550.0))
    expected_km = p[0].distance_km(p[1]) + p[1].distance_km(p[2])
    assert route.total_distance_km == pytest.approx(expected_km, rel=1e-12)
    assert route.hop_count == 2


@pytest.mark.parametrize("seed", range(12))
def test_latency_and_hop_routes_agree_with_networkx(seed):
    rng = np.random.default_rng(seed)
    mesh, graph = random_mesh(rng, int(rng.integers(5, 40)), 0.15)
    names = list(graph.nodes)
    lengths = dict(nx.all_pairs_dijkstra_path_length(graph, weight="latency"))
    hop_lengths = dict(nx.all_pairs_shortest_path_length(graph))
    for _ in range(30):
        s, t = (str(x) for x in rng.choice(names, 2))
        route = mesh.find_route(s, t)
        hops = mesh.find_route(s, t, metric="hops")
        if t not in lengths[s]:
            assert route is None and hops is None
            continue
        assert_valid_path(mesh, route, s, t)
        assert route.total_latency_ms == pytest.approx(lengths[s][t], rel=1e-12)
        assert_valid_path(mesh, hops, s, t)
        assert hops.hop_count == hop_lengths[s][t]


@pytest.mark.parametrize("seed", range(12))
def test_widest_path_has_the_maximum_spanning_tree_bottleneck(seed):
    # The widest s-t bottleneck equals the smallest bandwidth on the s-t path
    # of a maximum spanning tree (Hu, "The maximum capacity route problem",
    # Operations Research 9, 1961).
    rng = np.random.default_rng(100 + seed)
    mesh, graph = random_mesh(rng, int(rng.integers(5, 30)), 0.2)
    tree = nx.maximum_spanning_tree(graph, weight="bandwidth")
    names = list(graph.nodes)
    for _ in range(30):
        s, t = (str(x) for x in rng.choice(names, 2))
        route = mesh.find_route(s, t, metric="bandwidth")
        if not nx.has_path(graph, s, t):
            assert route is None
            continue
        assert_valid_path(mesh, route, s, t)
        if s == t:
            assert route.hops == (s,) and route.bottleneck_mbps == math.inf
            continue
        tree_path = nx.shortest_path(tree, s, t)
        widest = min(
            tree[a][b]["bandwidth"]
            for a, b in zip(tree_path, tree_path[1:], strict=False)
        )
        assert route.bottleneck_mbps == widest
        # among the widest paths, the one of least latency
        wide = graph.edge_subgraph(
            (a, b) for a, b, d in graph.edges(data=True) if d["bandwidth"] >= widest
        )
        best = nx.dijkstra_path_length(wide, s, t, weight="latency")
        assert route.total_latency_ms == pytest.approx(best, rel=1e-12)


def test_widest_path_prefers_a_long_wide_route_over_a_short_narrow_one():
    mesh = SpaceMesh()
    for name in "abcd":
        mesh.add_node(MeshNode(name))
    mesh.add_link("a", "d", 10.0, 1.0)
    mesh.add_link("a", "b", 1000.0, 5.0)
    mesh.add_link("b", "c", 500.0, 5.0)
    mesh.add_link("c", "d", 1000.0, 5.0)
    assert mesh.find_route("a", "d").hops == ("a", "d")
    wide = mesh.find_route("a", "d", metric="bandwidth")
    assert wide.hops == ("a", "b", "c", "d")
    assert wide.bottleneck_mbps == 500.0
    assert wide.total_latency_ms == 15.0


def test_unreachable_destination_gives_none_and_down_links_are_not_used():
    mesh = example_mesh()
    mesh.add_node(MeshNode("sat-004"))
    for metric in ("latency", "hops", "bandwidth"):
        assert mesh.find_route("sat-001", "sat-004", metric=metric) is None
    mesh.set_link_up("sat-002", "sat-003", False)
    assert mesh.find_route("sat-001", "sat-003") is None
    assert mesh.neighbours("sat-002") == ["sat-001"]
    mesh.set_link_up("sat-002", "sat-003", True)
    assert mesh.find_route("sat-001", "sat-003").hop_count == 2
    mesh.remove_link("sat-001", "sat-002")
    assert mesh.find_route("sat-001", "sat-003") is None


def test_remove_node_drops_its_links():
    mesh = example_mesh()
    mesh.add_link("sat-001", "sat-003", 100.0, 9.0)
    mesh.remove_node("sat-002")
    route = mesh.find_route("sat-001", "sat-003")
    assert route.hops == ("sat-001", "sat-003") and route.total_latency_ms == 9.0
    assert "sat-002" not in mesh and len(mesh) == 2
    with pytest.raises(KeyError, match="sat-002"):
        mesh.neighbours("sat-002")


def test_unknown_node_ids_raise_key_error_naming_them():
    mesh = example_mesh()
    with pytest.raises(KeyError, match="sat-999"):
        mesh.find_route("sat-001", "sat-999")
    with pytest.raises(KeyError, match="ghost"):
        mesh.find_route("ghost", "sat-001")
    with pytest.raises(KeyError, match="sat-777"):
        mesh.add_link("sat-001", "sat-777", 10.0, 1.0)
    with pytest.raises(KeyError, match="sat-555"):
        mesh.remove_node("sat-555")
    with pytest.raises(KeyError, match="no link between 'sat-001' and 'sat-003'"):
        mesh.set_link_up("sat-001", "sat-003", False)


def test_bad_link_values_and_metrics_are_rejected_with_the_value():
    mesh = example_mesh()
    with pytest.raises(ValueError, match="bandwidth_mbps=0"):
        mesh.add_link("sat-001", "sat-003", 0, 1.0)
    for bandwidth in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match=f"bandwidth_mbps={bandwidth}"):
            mesh.add_link("sat-001", "sat-003", bandwidth, 1.0)
    with pytest.raises(ValueError, match="latency_ms=-1.0"):
        mesh.add_link("sat-001", "sat-003", 10.0, -1.0)
    with pytest.raises(ValueError, match="metric='cost'"):
        mesh.find_route("sat-001", "sat-003", metric="cost")
    mesh.add_node(MeshNode("nowhere"))
    with pytest.raises(ValueError, match="positions"):
        mesh.add_link("sat-001", "nowhere", 10.0)


def test_link_latency_defaults_to_light_time_over_the_distance():
    mesh = example_mesh()
    link = mesh.add_link("sat-001", "sat-003", 100.0)
    km = Position(45.0, -122.0, 550.0).distance_km(Position(44.0, -118.0, 550.0))
    assert link.latency_ms == pytest.approx(km / SPEED_OF_LIGHT_KM_S * 1e3)
    assert isinstance(mesh.find_route("sat-001", "sat-003"), Route)


def test_routing_graph_of_a_mesh_quantises_latency_to_microseconds():
    graph = example_mesh().routing_graph()
    assert graph.node_ids == ("sat-001", "sat-002", "sat-003")
    assert sorted(graph.weight_us.tolist()) == [2000.0, 2000.0, 2500.0, 2500.0]
