"""The partition optimizer: the reference API, exactness against brute force."""

import itertools
import json
import math
import random

import pytest

from agent._mesh import MeshNode, SpaceMesh
from ground import (
    LayerProfile,
    ModelProfile,
    NodeConfig,
    NodeType,
    PartitionOptimizer,
)
from ground._partition import (
    DEFAULT_LINKS,
    InfeasiblePartitionError,
    Link,
    PartitionSearchLimitError,
)

REL_TOL = 1e-9


def reference_instance():
    profile = ModelProfile(
        [
            LayerProfile("embedding", 100.0, 1e9),
            LayerProfile("transformer_1", 200.0, 5e9),
            LayerProfile("transformer_2", 200.0, 5e9),
            LayerProfile("output", 50.0, 1e8),
        ]
    )
    nodes = [
        NodeConfig("sat-001", NodeType.SATELLITE, 8.0, 2.0),
        NodeConfig("sat-002", NodeType.SATELLITE, 8.0, 2.0),
        NodeConfig("ground-001", NodeType.GROUND, 32.0, 10.0),
    ]
    return profile, nodes


def test_reference_api_runs_verbatim():
    profile, nodes = reference_instance()
    plan = PartitionOptimizer().optimize(profile, nodes)
    # Everything fits on the ground node, the fastest: 11.1 GFLOP at 10 TFLOPS.
    assert plan.assignments == [
        ("embedding", "ground-001"),
        ("transformer_1", "ground-001"),
        ("transformer_2", "ground-001"),
        ("output", "ground-001"),
    ]
    assert plan.estimated_latency_ms == pytest.approx(1.11)
    assert f"{plan.estimated_latency_ms:.1f} ms" == "1.1 ms"
    json.dumps(plan.to_dict())


def test_memory_forces_a_multi_stage_plan_with_default_links():
    profile, nodes = reference_instance()
    small = [
        NodeConfig("sat-001", NodeType.SATELLITE, 0.35, 2.0),
        NodeConfig("sat-002", NodeType.SATELLITE, 0.35, 2.0),
        NodeConfig("ground-001", NodeType.GROUND, 0.30, 10.0),
    ]
    plan = PartitionOptimizer().optimize(profile, small)
    assert len(plan.stages) >= 2
    for stage in plan.stages:
        cap = next(n.memory_gb for n in small if n.name == stage.node) * 1000
        assert stage.memory_mb <= cap
    assert len({s.node for s in plan.stages}) == len(plan.stages)
    # transfers between stages use the documented default links
    for s, nxt in zip(plan.stages, plan.stages[1:], strict=False):
        kinds = {
            t for n in small if n.name in (s.node, nxt.node) for t in [n.node_type]
        }
        assert s.transfer_ms == DEFAULT_LINKS[frozenset(kinds)].latency_ms


def test_infeasible_layer_names_the_layer_and_the_largest_memory():
    profile, nodes = reference_instance()
    tiny = [
        NodeConfig("a", NodeType.SATELLITE, 0.15, 1.0),
        NodeConfig("b", NodeType.GROUND, 0.19, 1.0),
    ]
    with pytest.raises(InfeasiblePartitionError) as err:
        PartitionOptimizer().optimize(profile, tiny)
    msg = str(err.value)
    assert "'transformer_1'" in msg and "190 MB" in msg and "'b'" in msg


def test_infeasible_total_capacity_is_reported():
    profile, _ = reference_instance()
    nodes = [NodeConfig(f"n{i}", NodeType.SATELLITE, 0.25, 1.0) for i in range(2)]
    with pytest.raises(InfeasiblePartitionError, match="550 MB of weights"):
        PartitionOptimizer().optimize(profile, nodes)


def test_bad_inputs_raise_with_values():
    with pytest.raises(ValueError, match="params_mb=-1"):
        LayerProfile("x", -1, 1.0)
    with pytest.raises(ValueError, match="efficiency=1.5"):
        NodeConfig("n", NodeType.GROUND, 1.0, 1.0, efficiency=1.5)
    with pytest.raises(ValueError, match="objective='fast'"):
        PartitionOptimizer("fast")
    with pytest.raises(ValueError, match="'x' appears twice"):
        ModelProfile([LayerProfile("x", 1, 1), LayerProfile("x", 1, 1)])


# -- brute force ---------------------------------------------------------------


def compositions(n_layers, k):
    for cuts in itertools.combinations(range(1, n_layers), k - 1):
        bounds = (0, *cuts, n_layers)
        yield list(zip(bounds, bounds[1:], strict=False))


def link_of(table, a, b):
    if a == b:
        return Link(math.inf, 0.0)
    t = table.get((a, b)) or table.get((b, a))
    return None if t is None else Link(*t)


def brute_force(profile, nodes, table, batch, source, sink):
    """Every ordered choice of distinct nodes and every cut: (bottleneck, latency)."""
    layers = profile.layers
    n_layers = len(layers)
    best_latency = best_throughput = None
    for k in range(1, len(nodes) + 1):
        for seq in itertools.permutations(nodes, k):
            for ranges in compositions(n_layers, k):
                ok = True
                latency, busiest = 0.0, 0.0
                prev = source
                for node, (a, b) in zip(seq, ranges, strict=False):
                    stage = layers[a:b]
                    mem = sum(x.params_mb for x in stage) + batch * max(
                        x.activation_mb for x in stage
                    )
                    if mem > node.memory_gb * 1000 * (1 + REL_TOL):
                        ok = False
                        break
                    nbytes = batch * (
                        profile.input_bytes if a == 0 else layers[a - 1].output_bytes
                    )
                    if prev is not None:
                        link = link_of(table, prev.name, node.name)
                        if link is None:
                            ok = False
                            break
                        latency += link.transfer_ms(nbytes) if prev is not node else 0
                        busiest = max(
                            busiest, link.busy_ms(nbytes) if prev is not node else 0
                        )
                    comp = (
                        batch
                        * sum(x.flops for x in stage)
                        / (node.compute_tflops * node.efficiency * 1e9)
                    )
                    latency += comp
                    busiest = max(busiest, comp)
                    prev = node
                if not ok:
                    continue
                if sink is not None and sink is not prev:
                    link = link_of(table, prev.name, sink.name)
                    if link is None:
                        continue
                    nbytes = batch * layers[-1].output_bytes
                    latency += link.transfer_ms(nbytes)
                    busiest = max(busiest, link.busy_ms(nbytes))
                if best_latency is None or latency < best_latency:
                    best_latency = latency
                key = (busiest, latency)
                if best_throughput is None or _lex_less(key, best_throughput):
                    best_throughput = key
    return best_latency, best_throughput


def _lex_less(a, b):
    if a[0] < b[0] * (1 - 1e-12) - 1e-12:
        return True
    return math.isclose(a[0], b[0], rel_tol=1e-12, abs_tol=1e-12) and a[1] < b[1]


def random_instance(rng, n_layers, n_nodes, sparse_links):
    layers = [
        LayerProfile(
            f"l{i}",
            params_mb=rng.choice([0.0, rng.uniform(1, 100)]),
            flops=rng.uniform(0, 5e9),
            output_bytes=rng.choice([0.0, rng.uniform(1e3, 5e6)]),
            activation_mb=rng.uniform(0, 20),
        )
        for i in range(n_layers)
    ]
    profile = ModelProfile(layers, input_bytes=rng.uniform(0, 2e6))
    total = sum(x.params_mb for x in layers)
    nodes = [
        NodeConfig(
            f"n{j}",
            rng.choice(list(NodeType)),
            memory_gb=rng.uniform(0.2, 0.8) * (total + 40) / 1000,
            compute_tflops=rng.choice([1.0, 2.0, rng.uniform(0.5, 10)]),
            efficiency=rng.uniform(0.3, 1.0),
        )
        for j in range(n_nodes)
    ]
    table = {}
    for a, b in itertools.combinations(range(n_nodes), 2):
        if sparse_links and rng.random() < 0.3:
            continue
        table[(f"n{a}", f"n{b}")] = (rng.uniform(10, 1000), rng.uniform(0, 30))
    return profile, nodes, table


def check_plan_consistent(plan, profile, nodes, table, batch):
    by_name = {n.name: n for n in nodes}
    assert [a[0] for a in plan.assignments] == [x.name for x in profile.layers]
    assert len({s.node for s in plan.stages}) == len(plan.stages)
    for s in plan.stages:
        node = by_name[s.node]
        layers = profile.layers[s.first_layer : s.end_layer]
        mem = sum(x.params_mb for x in layers) + batch * max(
            x.activation_mb for x in layers
        )
        assert s.memory_mb == pytest.approx(mem)
        assert mem <= node.memory_gb * 1000 * (1 + REL_TOL)


@pytest.mark.parametrize("seed", range(60))
def test_optimal_against_brute_force(seed):
    rng = random.Random(seed)
    n_layers = rng.randint(1, 8)
    n_nodes = rng.randint(1, 4)
    batch = rng.choice([1, 4])
    profile, nodes, table = random_instance(rng, n_layers, n_nodes, seed % 3 == 0)
    source = rng.choice([None, *nodes]) if seed % 2 else None
    sink = rng.choice([None, *nodes]) if seed % 4 == 1 else None
    kwargs = {
        "source": source and source.name,
        "sink": sink and sink.name,
    }
    want_latency, want_throughput = brute_force(
        profile, nodes, table, batch, source, sink
    )

    for objective in ("latency", "throughput"):
        opt = PartitionOptimizer(objective, links=table, batch_size=batch)
        if want_latency is None:
            with pytest.raises(InfeasiblePartitionError):
                opt.optimize(profile, nodes, **kwargs)
            continue
        plan = opt.optimize(profile, nodes, **kwargs)
        check_plan_consistent(plan, profile, nodes, table, batch)
        if objective == "latency":
            assert plan.estimated_latency_ms == pytest.approx(want_latency, rel=1e-9)
        else:
            assert plan.bottleneck_ms == pytest.approx(want_throughput[0], rel=1e-9)
            assert plan.estimated_latency_ms == pytest.approx(
                want_throughput[1], rel=1e-9
            )


def test_interchangeable_nodes_do_not_change_the_optimum():
    # Eight equal satellites with equal links: symmetry breaking must keep
    # exactly the optimum the plain brute force finds.
    rng = random.Random(7)
    layers = [LayerProfile(f"l{i}", 60.0, rng.uniform(1e9, 3e9), 1e5) for i in range(8)]
    profile = ModelProfile(layers)
    nodes = [NodeConfig(f"s{j}", NodeType.SATELLITE, 0.13, 1.0) for j in range(4)]
    nodes.append(NodeConfig("g", NodeType.GROUND, 0.2, 4.0))
    table = {
        (a.name, b.name): (100.0, 5.0) for a, b in itertools.combinations(nodes, 2)
    }
    want_latency, want_tp = brute_force(profile, nodes, table, 1, None, None)
    plan = PartitionOptimizer(links=table).optimize(profile, nodes)
    assert plan.estimated_latency_ms == pytest.approx(want_latency)
    plan = PartitionOptimizer("throughput", links=table).optimize(profile, nodes)
    assert plan.bottleneck_ms == pytest.approx(want_tp[0])


def test_mesh_routes_are_used_as_links():
    mesh = SpaceMesh()
    for name in ("a", "b", "c"):
        mesh.add_node(MeshNode(name))
    mesh.add_link("a", "b", 100.0, 5.0)
    mesh.add_link("b", "c", 10.0, 7.0)
    layers = [LayerProfile(f"l{i}", 100.0, 1e9, output_bytes=1e5) for i in range(3)]
    nodes = [NodeConfig(n, NodeType.SATELLITE, 0.1, 1.0) for n in ("a", "b", "c")]
    plan = PartitionOptimizer(links=mesh).optimize(ModelProfile(layers), nodes)
    # Each node holds one layer.  0.8 Mbit crosses a-b in 5 + 8 ms and b-c in
    # 7 + 80 ms; a-c is routed through b (12 ms, 10 Mbit/s), so b sits between.
    order = [s.node for s in plan.stages]
    assert order in (["a", "b", "c"], ["c", "b", "a"])
    transfers = sorted(s.transfer_ms for s in plan.stages[:2])
    assert transfers == [pytest.approx(13.0), pytest.approx(87.0)]
    assert plan.estimated_latency_ms == pytest.approx(3 * 1.0 + 13.0 + 87.0)


def test_search_limit_raises_instead_of_running_forever():
    rng = random.Random(3)
    profile, nodes, table = random_instance(rng, 8, 4, False)
    with pytest.raises((PartitionSearchLimitError, InfeasiblePartitionError)):
        PartitionOptimizer(links=table, max_labels=0).optimize(profile, nodes)


@pytest.mark.parametrize("seed", range(40))
def test_lagrangian_path_is_exact_against_brute_force(seed):
    # One fast node with little memory tempts the relaxation to reuse it, so
    # the search runs with the Lagrangian bound.
    rng = random.Random(500 + seed)
    profile, nodes, table = random_instance(rng, rng.randint(3, 8), 4, seed % 5 == 0)
    fast = nodes[0]
    nodes[0] = NodeConfig(fast.name, fast.node_type, fast.memory_gb * 0.6, 40.0)
    want_latency, _ = brute_force(profile, nodes, table, 1, None, None)
    opt = PartitionOptimizer(links=table)
    if want_latency is None:
        with pytest.raises(InfeasiblePartitionError):
            opt.optimize(profile, nodes)
        return
    plan = opt.optimize(profile, nodes)
    check_plan_consistent(plan, profile, nodes, table, 1)
    assert plan.estimated_latency_ms == pytest.approx(want_latency, rel=1e-9)
