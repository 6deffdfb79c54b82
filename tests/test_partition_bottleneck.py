"""The least-bottleneck search (ground/_partition_bottleneck.py) against outside truth.

Brute force on small instances with groups of identical nodes (the threshold
symmetry), and the best-first max search of ground/_partition_search.py on
larger ones.
"""

import itertools
import random

import pytest
from test_partition import brute_force, check_plan_consistent, random_instance

from ground import LayerProfile, ModelProfile, NodeConfig, NodeType
from ground._partition import (
    InfeasiblePartitionError,
    PartitionOptimizer,
    as_link_model,
)
from ground._partition_bottleneck import _Question, least_bottleneck
from ground._partition_search import _MAX, _Instance, _relaxed_cost_to_go, _search


def twin_nodes_instance(rng, n_layers):
    """Two groups of identical nodes whose pairwise links differ in cost."""
    profile, _, _ = random_instance(rng, n_layers, 1, False)
    total_gb = (sum(x.params_mb for x in profile.layers) + 40) / 1000
    kinds = [
        (rng.uniform(0.25, 0.6) * total_gb, rng.choice([1.0, 3.0])),
        (rng.uniform(0.25, 0.6) * total_gb, rng.choice([0.5, 2.0])),
    ]
    nodes = []
    for j in range(5):
        memory_gb, tflops = kinds[0 if j < 3 else 1]
        nodes.append(NodeConfig(f"n{j}", NodeType.SATELLITE, memory_gb, tflops))
    table = {}
    for a, b in itertools.combinations(nodes, 2):
        # few bandwidths, so that some pairs tie and others do not
        table[(a.name, b.name)] = (rng.choice([20.0, 200.0, 2000.0]), 1.0)
    return profile, nodes, table


@pytest.mark.parametrize("seed", range(30))
def test_identical_nodes_with_unequal_links_against_brute_force(seed):
    rng = random.Random(900 + seed)
    profile, nodes, table = twin_nodes_instance(rng, rng.randint(2, 7))
    source = nodes[rng.randrange(5)] if seed % 2 else None
    want_latency, want_tp = brute_force(profile, nodes, table, 1, source, source)
    opt = PartitionOptimizer("throughput", links=table)
    kwargs = {"source": source and source.name, "sink": source and source.name}
    if want_latency is None:
        with pytest.raises(InfeasiblePartitionError):
            opt.optimize(profile, nodes, **kwargs)
        return
    plan = opt.optimize(profile, nodes, **kwargs)
    check_plan_consistent(plan, profile, nodes, table, 1)
    assert plan.bottleneck_ms == pytest.approx(want_tp[0], rel=1e-9)
    assert plan.estimated_latency_ms == pytest.approx(want_tp[1], rel=1e-9)


def satellites_instance(seed, n_blocks, n_sats):
    """A small copy of bench/partition.py's "satellites carry most" family."""
    rng = random.Random(seed)
    kinds = [(30.0, 4e9, 2e6), (0.01, 1e7, 2e6), (60.0, 8e9, 8e6), (0.0, 2e7, 2e6)]
    layers = [
        LayerProfile(f"l{i}", *kinds[i % 4][:2], kinds[i % 4][2], 4.0)
        for i in range(4 * n_blocks)
    ]
    profile = ModelProfile(layers, input_bytes=1e6)
    total_gb = sum(x.params_mb for x in layers) / 1000
    nodes = [
        NodeConfig(f"g{j}", NodeType.GROUND, total_gb / 6, rng.uniform(20, 80), 0.5)
        for j in range(2)
    ]
    for j in range(n_sats):
        memory_gb, tflops, eff = (0.2, 1.3, 0.5) if j % 2 else (0.4, 0.5, 0.4)
        nodes.append(NodeConfig(f"s{j}", NodeType.SATELLITE, memory_gb, tflops, eff))
    table = {}
    for a, b in itertools.combinations(nodes, 2):
        if a.node_type == b.node_type == NodeType.SATELLITE:
            table[(a.name, b.name)] = (rng.uniform(500, 2000), rng.uniform(2, 15))
        elif a.node_type == b.node_type:
            table[(a.name, b.name)] = (rng.uniform(1000, 10000), rng.uniform(5, 40))
        else:
            table[(a.name, b.name)] = (rng.uniform(50, 300), rng.uniform(5, 25))
    return profile, nodes, table


@pytest.mark.parametrize("seed", range(8))
def test_least_bottleneck_equals_the_best_first_max_search(seed):
    profile, nodes, table = satellites_instance(seed, 6, 6)
    inst = _Instance(profile, nodes, as_link_model(table), 1, 0, 0)
    lower = _relaxed_cost_to_go(inst, _MAX).start
    found = least_bottleneck(inst, lower, 200_000)
    labels, goal, _ = _search(inst, _MAX, 200_000)
    if goal < 0:
        assert found is None
        return
    end = labels[goal]
    want = max(end.cost, float(inst.sink_busy[end.node]))
    assert found is not None
    assert found[0] == pytest.approx(want, rel=1e-9)
    assert found[0] >= lower * (1 - 1e-9)


@pytest.mark.parametrize("seed", range(30))
def test_pooled_kind_table_keeps_the_optimum(seed, monkeypatch):
    # The table is built lazily for hard questions only; build it for every
    # question here so its pruning is checked against brute force.
    monkeypatch.setattr(_Question, "KIND_TABLE_AFTER", 0)
    rng = random.Random(1300 + seed)
    profile, nodes, table = twin_nodes_instance(rng, rng.randint(2, 7))
    source = nodes[rng.randrange(5)] if seed % 2 else None
    want_latency, want_tp = brute_force(profile, nodes, table, 1, source, source)
    inst = _Instance(
        profile,
        nodes,
        as_link_model(table),
        1,
        None if source is None else nodes.index(source),
        None if source is None else nodes.index(source),
    )
    found = least_bottleneck(inst, 0.0, 100_000)
    if want_latency is None:
        assert found is None
        return
    assert found is not None
    assert found[0] == pytest.approx(want_tp[0], rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_pooled_kind_table_on_the_satellite_family(seed, monkeypatch):
    monkeypatch.setattr(_Question, "KIND_TABLE_AFTER", 0)
    profile, nodes, table = satellites_instance(100 + seed, 5, 6)
    inst = _Instance(profile, nodes, as_link_model(table), 1, 0, 0)
    found = least_bottleneck(inst, 0.0, 200_000)
    labels, goal, _ = _search(inst, _MAX, 200_000)
    assert (found is None) == (goal < 0)
    if found is not None:
        end = labels[goal]
        want = max(end.cost, float(inst.sink_busy[end.node]))
        assert found[0] == pytest.approx(want, rel=1e-9)
