"""Pipeline stages reaching each other through the mesh routing tables.

The stage nodes of a 3-stage plan are placed on a small mesh where the first
two are not ISL neighbours, so every batch between them is passed on by a
relay process that runs no layers.  Each process knows only its own routing
row (computed by the ground's table builder) and its neighbours' endpoints.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

from agent._mesh import MeshNode, SpaceMesh
from agent._nn import example_cnn, example_mlp, load_model, save_model
from agent._pipeline import PipelineError, Stage, decode_message, encode_batch
from agent._pipeline_mesh import (
    MAX_HEADER_BYTES,
    MeshPipelineClient,
    MeshPort,
    MeshStageWorker,
    RouteHeader,
)
from ground._partition import ModelProfile, NodeConfig, NodeType, PartitionOptimizer
from ground._tables import build_tables

REPO = Path(__file__).resolve().parent.parent
RECV_TIMEOUT_S = 20.0
SEND_TIMEOUT_S = 0.5  # a neighbour silent this long has its link marked down
GROUND, RELAY, ISOLATED = "ground", "sat-relay", "sat-isolated"


def links_around(stage_nodes: list[str]) -> list[tuple[str, str, float]]:
    """ground - S0 - relay - S1 - S2 - ground, and a slow S0 - S2 shortcut.

    S0 and S1 are not neighbours: S0's row sends S1's traffic through the
    relay (4 ms) rather than through S2 (20 ms + 2 ms).  The nodes file also
    lists a satellite with no link at all, so nothing reaches it.
    """
    s0, s1, s2 = stage_nodes
    return [
        (GROUND, s0, 5.0),
        (s0, RELAY, 2.0),
        (RELAY, s1, 2.0),
        (s1, s2, 2.0),
        (s2, GROUND, 5.0),
        (s0, s2, 20.0),
    ]


def write_routes(links, directory: Path) -> dict[str, Path]:
    """Rows made by ``python -m ground routes`` from a nodes file."""
    from ground.__main__ import main as ground_main

    toml = [f'[[node]]\nname = "{GROUND}"\ntype = "ground"\n'
            'memory_gb = 1.0\ncompute_tflops = 1.0\n',
            f'[[node]]\nname = "{ISOLATED}"\nmemory_gb = 1.0\n'
            'compute_tflops = 1.0\n']  # fmt: skip
    for a, b, latency_ms in links:
        toml.append(
            f'[[link]]\na = "{a}"\nb = "{b}"\nbandwidth_mbps = 1000.0\n'
            f"latency_ms = {latency_ms}\n"
        )
    nodes = directory / "nodes.toml"
    nodes.write_text("\n".join(toml))
    out = directory / "rows"
    assert ground_main(["routes", "--nodes", str(nodes), "--out", str(out)]) == 0
    return {p.stem: p for p in out.glob("*.row")}


def write_rows(mesh: SpaceMesh, directory: Path) -> dict[str, Path]:
    tables = build_tables(mesh.routing_graph(), expires=time.time() + 3600.0)
    paths = {}
    for node in tables.graph.node_ids:
        paths[node] = directory / f"{node}.row"
        paths[node].write_bytes(tables.row(node).to_bytes())
    return paths


def plan_three_stages(spec_path: Path) -> dict:
    profile = ModelProfile.from_spec(spec_path)
    nodes = [NodeConfig(f"sat-{i}", NodeType.SATELLITE, 1.0, 0.001) for i in range(3)]
    table = {
        (a.name, b.name): (10_000.0, 0.05)
        for a in nodes
        for b in nodes
        if a.name < b.name
    }
    plan = PartitionOptimizer("throughput", table).optimize(profile, nodes)
    assert len(plan.stages) == 3, plan.to_dict()
    return plan.to_dict()


def start_node(args: list[str]) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--log-level", "INFO", "stage",
         "--neighbours", "-", "--idle-timeout-s", "60", "--send-timeout-s",
         str(SEND_TIMEOUT_S), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )  # fmt: skip
    line = proc.stdout.readline()
    if not line.startswith("READY tcp://127.0.0.1:"):
        proc.kill()
        raise AssertionError(f"node did not start: {line!r} {proc.stderr.read()}")
    return proc, line.split()[1]


def end_nodes(procs: dict[str, subprocess.Popen]) -> dict[str, str]:
    """SIGTERM the nodes; each must log its counts and exit 0.  Their stderr."""
    for proc in procs.values():
        proc.send_signal(signal.SIGTERM)
    logs = {}
    for node, proc in procs.items():
        _out, logs[node] = proc.communicate(timeout=RECV_TIMEOUT_S)
        assert proc.returncode == 0, logs[node]
    return logs


@pytest.fixture
def mesh_pipeline(tmp_path, request):
    """4 node processes (3 stages, 1 relay) and the ground's mesh client."""
    spec, weights = request.param()
    spec_path = save_model(tmp_path / f"{spec['name']}.json", spec, weights)
    plan = plan_three_stages(spec_path)
    plan_path = tmp_path / "plan.json"
    plan_path.write_text(json.dumps(plan))
    stage_nodes = [s["node"] for s in plan["stages"]]
    rows = write_routes(links_around(stage_nodes), tmp_path)
    assert sorted(rows) == sorted([GROUND, ISOLATED, RELAY, *stage_nodes])

    procs: dict[str, subprocess.Popen] = {}
    endpoints: dict[str, str] = {}
    client = None
    try:
        for node in stage_nodes:
            procs[node], endpoints[node] = start_node(
                ["--model", str(spec_path), "--plan", str(plan_path),
                 "--node", node, "--routes", str(rows[node]), "--sink", GROUND]
            )  # fmt: skip
        procs[RELAY], endpoints[RELAY] = start_node(
            ["--relay", "--routes", str(rows[RELAY])]
        )
        ground_port = MeshPort(load_row(rows[GROUND]))
        endpoints[GROUND] = ground_port.endpoint
        client = MeshPipelineClient(ground_port, stage_nodes[0])
        # every node is told its neighbours' endpoints once all of them listen
        for node in [*procs, GROUND]:
            graph = load_row(rows[node]).graph
            i = graph.index_of(node)
            links = graph.indices[graph.indptr[i] : graph.indptr[i + 1]]
            directory = {graph.node_ids[j]: endpoints[graph.node_ids[j]] for j in links}
            if node == GROUND:
                ground_port.connect(directory)
            else:
                procs[node].stdin.write(json.dumps(directory) + "\n")
                procs[node].stdin.flush()
        yield load_model(spec_path), client, procs, endpoints, stage_nodes
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if client is not None:
            client.close()


def load_row(path: Path):
    from agent._routing import RoutingTable

    return RoutingTable.from_bytes(path.read_bytes())


def summary_counts(stderr: str, node: str) -> str:
    lines = [x for x in stderr.splitlines() if f"{node} done:" in x]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mesh_pipeline", [example_mlp, example_cnn], indirect=True)
def test_relayed_pipeline_equals_the_whole_model(mesh_pipeline):
    model, client, procs, _, stage_nodes = mesh_pipeline
    rng = np.random.default_rng(5)
    batches = [
        rng.normal(size=(n, *model.input_shape)).astype(np.float32) for n in (1, 4, 7)
    ] * 3
    outputs = client.run(batches, timeout_s=RECV_TIMEOUT_S, window=4)
    for x, y in zip(batches, outputs, strict=True):
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, model.forward(x), rtol=1e-6, atol=1e-7)

    client.stop()
    assert client.wait_stopped(RECV_TIMEOUT_S)
    logs = end_nodes(procs)
    # every batch and the stop crossed the relay, which computed nothing
    relay = summary_counts(logs[RELAY], RELAY)
    assert f"relayed {len(batches) + 1}," in relay and "dropped 0" in relay
    assert "batches computed" not in relay
    for node in stage_nodes:
        line = summary_counts(logs[node], node)
        assert f"; {len(batches)} batches computed, 0 refused" in line, line
        assert "dropped 0" in line
    # S2 and S1 are neighbours, S0's output needed the relay: nothing else relays
    assert "relayed 0," in summary_counts(logs[stage_nodes[2]], stage_nodes[2])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mesh_pipeline", [example_mlp], indirect=True)
def test_relay_drops_undeliverable_batches_counts_them_and_goes_on(mesh_pipeline):
    model, client, procs, endpoints, stage_nodes = mesh_pipeline
    payload = encode_batch(0, np.zeros((1, *model.input_shape), np.float32))
    ctx = zmq.Context.instance()
    raw = ctx.socket(zmq.PUSH)
    raw.setsockopt(zmq.LINGER, 1000)
    raw.connect(endpoints[RELAY])
    for header in (
        RouteHeader(ISOLATED, GROUND, 1, 8),  # no path to it
        RouteHeader(stage_nodes[1], GROUND, 2, 0),  # ttl spent
        RouteHeader("sat-nowhere", GROUND, 3, 8),  # not in the row
    ):
        raw.send_multipart([header.encode(), payload])
    raw.send_multipart([b"\xc1", payload])  # not msgpack
    raw.send_multipart([msgpack.packb({"v": 1, "kind": "route", "ttl": -1}), b""])
    raw.send_multipart([RouteHeader(GROUND, GROUND, 4, 8).encode(), b"", b""])
    raw.send(b"one frame")
    # the relay handles its inbox in order: once this marker reaches the
    # ground, every frame above has been dealt with
    marker = np.full((1, 3), 9.0, np.float32)
    raw.send_multipart(
        [RouteHeader(GROUND, GROUND, 99, 8).encode(), encode_batch(99, marker)]
    )
    raw.close()
    seq, echoed = client.receive(RECV_TIMEOUT_S)
    assert seq == 99
    np.testing.assert_array_equal(echoed, marker)

    x = np.ones((2, *model.input_shape), np.float32)
    (y,) = client.run([x], timeout_s=RECV_TIMEOUT_S)
    np.testing.assert_allclose(y, model.forward(x), rtol=1e-6, atol=1e-7)
    client.stop()
    assert client.wait_stopped(RECV_TIMEOUT_S)

    err = end_nodes(procs)[RELAY]
    line = summary_counts(err, RELAY)
    assert (
        "relayed 3, sent 0, dropped 7 (4 bad-header, 1 ttl-expired, "
        "1 unknown-destination, 1 unreachable)" in line
    ), line
    assert f"batch 1 from {GROUND} to {ISOLATED} (ttl 8): unreachable" in err
    assert f"batch 2 from {GROUND} to {stage_nodes[1]} (ttl 0): ttl-expired" in err
    assert "unknown-destination: not in the routing row" in err
    assert "ttl=-1 is not an int in [0, 255]" in err
    assert "message of 3+ frames, not 2" in err
    assert "Traceback" not in err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mesh_pipeline", [example_mlp], indirect=True)
def test_stage_routes_around_a_relay_that_died(mesh_pipeline):
    model, client, procs, _, stage_nodes = mesh_pipeline
    rng = np.random.default_rng(9)
    batches = [rng.normal(size=(3, *model.input_shape)).astype(np.float32)] * 6
    before = client.run(batches[:3], timeout_s=RECV_TIMEOUT_S)
    relay = procs.pop(RELAY)
    relay.kill()
    relay.wait()
    time.sleep(0.2)  # let the first stage's socket see the connection close
    after = client.run(batches[3:], timeout_s=RECV_TIMEOUT_S)
    for x, y in zip(batches, before + after, strict=True):
        np.testing.assert_allclose(y, model.forward(x), rtol=1e-6, atol=1e-7)
    client.stop()
    assert client.wait_stopped(RECV_TIMEOUT_S)

    logs = end_nodes(procs)
    s0, s1, s2 = stage_nodes
    first = summary_counts(logs[s0], s0)
    assert "dropped 0" in first and "links down to sat-relay" in first, first
    assert (
        f"{s0} marked its link to {RELAY} down after {SEND_TIMEOUT_S} s" in (logs[s0])
    )
    # the slow way round: S0 - S2 - S1, so S2 relays the later batches and stop
    assert "relayed 4," in summary_counts(logs[s2], s2)
    assert "6 batches computed" in summary_counts(logs[s1], s1)


# -- in process ---------------------------------------------------------------


@pytest.fixture
def zctx():
    """A ZeroMQ context whose sockets are closed even when a test fails."""
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def line_mesh(*names: str) -> SpaceMesh:
    mesh = SpaceMesh()
    for name in names:
        mesh.add_node(MeshNode(name))
    for a, b in zip(names, names[1:], strict=False):
        mesh.add_link(a, b, 1000.0, 1.0)
    return mesh


def rows_of(mesh: SpaceMesh, expires_s: float):
    tables = build_tables(mesh.routing_graph(), expires=expires_s)
    return {n: tables.row(n) for n in tables.graph.node_ids}


def pump(workers, client, timeout_s=RECV_TIMEOUT_S):
    """Step every in-process worker until the client has a frame."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for w in workers:
            w.step(0.001)
        frame = client._recv_frame(0.001)
        if frame is not None:
            return frame
    raise AssertionError("nothing reached the client")


def step_until(workers, done, timeout_s=RECV_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while not done() and time.monotonic() < deadline:
        for w in workers:
            w.step(0.001)


def test_in_process_chain_with_two_relays_matches_the_model(tmp_path, zctx):
    spec, weights = example_mlp()
    model = load_model(save_model(tmp_path / "m.json", spec, weights))
    rows = rows_of(line_mesh("g", "a", "r1", "r2", "b"), time.time() + 60)
    ports = {n: MeshPort(rows[n], context=zctx) for n in rows}
    for port in ports.values():
        port.connect({m: ports[m].endpoint for m in port.neighbour_ids()})
    half = len(model) // 2
    workers = [
        MeshStageWorker(ports["a"], Stage(model, 0, half), "b"),
        MeshStageWorker(ports["r1"], None, None),
        MeshStageWorker(ports["r2"], None, None),
        MeshStageWorker(ports["b"], Stage(model, half, len(model)), "g"),
    ]
    client = MeshPipelineClient(ports["g"], "a")
    x = np.random.default_rng(1).normal(size=(3, 64)).astype(np.float32)
    client.submit(7, x)
    frame = pump(workers, client)
    msg = decode_message(frame, max_message_bytes=1 << 24, max_elements=1 << 20)
    assert msg["seq"] == 7
    np.testing.assert_allclose(msg["x"], model.forward(x), rtol=1e-6, atol=1e-7)
    # a -> b crossed both relays, the result b -> g crossed them back
    assert ports["r1"].stats.relayed == ports["r2"].stats.relayed == 2
    assert ports["a"].stats.relayed == 1 and ports["b"].stats.relayed == 0

    # with a ttl of 1 the batch a -> b dies at the second relay, not earlier
    workers[0].ttl = 1
    client.submit(8, x)
    step_until(workers, lambda: ports["r2"].stats.dropped)
    assert ports["r2"].stats.dropped == {"ttl-expired": 1}
    assert ports["r1"].stats.dropped == {}

    # a batch addressed to a relay has no layers to run there
    assert ports["g"].send("r1", 9, encode_batch(9, x)) is None
    step_until(workers, lambda: ports["r1"].stats.dropped)
    assert ports["r1"].stats.dropped == {"no-stage": 1}


def test_a_dead_neighbour_is_marked_down_and_the_batch_rerouted(caplog, zctx):
    # g - a - r - b (1 ms links) and a - c - b (5 ms): r is a's next hop to b
    mesh = line_mesh("g", "a", "r", "b")
    mesh.add_node(MeshNode("c"))
    mesh.add_link("a", "c", 1000.0, 5.0)
    mesh.add_link("c", "b", 1000.0, 5.0)
    rows = rows_of(mesh, time.time() + 60)
    assert rows["a"].next_hop_for("b") == "r"
    ports = {n: MeshPort(rows[n], context=zctx, send_timeout_s=0.2) for n in "gacb"}
    r_inbox = zctx.socket(zmq.PULL)  # r: alive for one message, then gone
    r_inbox.bind("tcp://127.0.0.1:*")
    r_endpoint = r_inbox.getsockopt_string(zmq.LAST_ENDPOINT)
    for port in ports.values():
        port.connect(
            {m: r_endpoint if m == "r" else ports[m].endpoint
             for m in port.neighbour_ids()}
        )  # fmt: skip
    assert ports["a"].send("b", 1, b"first") is None
    assert r_inbox.poll(int(RECV_TIMEOUT_S * 1000))
    assert r_inbox.recv_multipart()[1] == b"first"
    r_inbox.close(linger=0)
    time.sleep(0.2)  # let a's socket see the connection close

    relays = [MeshStageWorker(ports[n], None, None) for n in "ac"]
    with caplog.at_level(logging.WARNING, logger="agent._pipeline_mesh"):
        assert ports["g"].send("b", 2, b"second") is None
        deadline = time.monotonic() + RECV_TIMEOUT_S
        item = None
        while item is None and time.monotonic() < deadline:
            for w in relays:
                w.step(0.001)
            if ports["b"].poll(0.001):
                item = ports["b"].handle_one()
    assert item is not None, [p.stats for p in ports.values()]
    header, payload = item
    assert (header.src, header.seq, payload) == ("g", 2, b"second")
    assert header.ttl == 16 - 2  # relayed by a and c
    assert ports["a"].stats.links_down == ["r"]
    assert ports["a"].stats.relayed == 1 and not ports["a"].stats.dropped
    assert rows["a"].next_hop_for("b") == "c"
    assert "a marked its link to r down after 0.2 s" in caplog.text
    assert "links down to r" in ports["a"].stats.summary()


def test_expired_route_missing_endpoint_and_stranger_neighbours(caplog, zctx):
    now = [1000.0]
    rows = rows_of(line_mesh("g", "a", "b"), expires_s=2000.0)
    port = MeshPort(rows["g"], context=zctx, clock_s=lambda: now[0])
    with pytest.raises(ValueError, match=r"\['b'\] are not ISL neighbours of 'g'"):
        port.connect({"b": "tcp://127.0.0.1:1"})
    with pytest.raises(ValueError, match="endpoint 'nowhere' of neighbour 'a'"):
        port.connect({"a": "nowhere"})
    client = MeshPipelineClient(port, "b")
    x = np.zeros((1, 4), np.float32)
    with caplog.at_level(logging.WARNING, logger="agent._pipeline_mesh"):
        with pytest.raises(PipelineError, match="to 'b': no-endpoint") as err:
            client.submit(3, x)
    assert err.value.seq == 3
    assert "next hop 'a' is not in the neighbour directory" in caplog.text

    port.connect({"a": "tcp://127.0.0.1:1"})
    now[0] = 2500.0
    with pytest.raises(PipelineError, match="route-expired"):
        client.submit(4, x)
    assert port.send("nowhere", 5, b"") == "unknown-destination"
    assert dict(port.stats.dropped) == {
        "no-endpoint": 1,
        "route-expired": 1,
        "unknown-destination": 1,
    }
    assert port.stats.sent == 0


def test_route_header_refuses_oversized_and_malformed_frames():
    header = RouteHeader("sat-1", "ground", 12, 16)
    assert RouteHeader.decode(header.encode()) == header
    with pytest.raises(PipelineError, match=f"exceeds {MAX_HEADER_BYTES}"):
        RouteHeader.decode(b"\x00" * (MAX_HEADER_BYTES + 1))
    with pytest.raises(PipelineError, match="not valid msgpack"):
        RouteHeader.decode(msgpack.packb({"v": 1, "dst": "x" * 300}))
    with pytest.raises(PipelineError, match="kind='route'"):
        RouteHeader.decode(msgpack.packb({"v": 1, "kind": "batch"}))
    bad = {"v": 1, "kind": "route", "dst": "", "src": 3, "seq": -1, "ttl": 256}
    with pytest.raises(PipelineError) as err:
        RouteHeader.decode(msgpack.packb(bad))
    text = str(err.value)
    for part in ("dst=''", "src=3", "seq=-1", "ttl=256"):
        assert part in text


# -- the stage command's mesh options, in process ----------------------------


@pytest.fixture
def cli_files(tmp_path):
    spec, weights = example_mlp()
    spec_path = save_model(tmp_path / "m.json", spec, weights)
    rows = write_rows(line_mesh("g", "a", "b"), tmp_path)
    neighbours = tmp_path / "near.json"
    neighbours.write_text(json.dumps({"a": "tcp://127.0.0.1:1"}))
    return str(spec_path), {n: str(p) for n, p in rows.items()}, str(neighbours)


@pytest.mark.timeout(30)
def test_stage_command_refuses_incomplete_mesh_options(cli_files, capsys):
    from agent.__main__ import main

    spec, rows, near = cli_files
    garbage = Path(near).with_name("garbage.row")
    garbage.write_bytes(b"\x93\x01\x02")
    plan = Path(near).with_name("plan.json")
    plan.write_text(
        json.dumps(
            {"stages": [{"node": "a", "first_layer": 0, "end_layer": 1,
                         "layers": [load_model(spec).layers[0].name]}]}
        )
    )  # fmt: skip
    far = Path(near).with_name("far.json")
    far.write_text(json.dumps({"b": "tcp://127.0.0.1:1"}))
    layers = ["--model", spec, "--layers", "0:2"]
    cases = [
        (["--relay", "--next", "tcp://127.0.0.1:1"], "--relay runs on the mesh"),
        ([*layers, "--routes", rows["a"]], "--routes needs --neighbours"),
        ([*layers, "--routes", rows["a"], "--neighbours", near], "--to NODE"),
        (
            [*layers, "--routes", rows["a"], "--neighbours", near, "--to", "x"],
            "results go to 'x', which is not in the routing row (3 nodes)",
        ),
        (
            [
                "--model",
                spec,
                "--plan",
                str(plan),
                "--node",
                "a",
                "--routes",
                rows["b"],
                "--neighbours",
                near,
                "--sink",
                "g",
            ],
            "--node 'a' but the routing row belongs to 'b'",
        ),  # fmt: skip
        (["--relay", "--routes", str(garbage), "--neighbours", near], "garbage.row"),
        (["--layers", "0:1", "--routes", rows["a"], "--neighbours", near], "--model"),
        (
            ["--relay", "--routes", rows["g"], "--neighbours", str(far)],
            "['b'] are not ISL neighbours of 'g'",
        ),
        (
            ["--relay", "--routes", rows["a"], "--neighbours", near, "--ttl", "300"],
            "--ttl 300 is not in [0, 255]",
        ),  # fmt: skip
    ]
    for argv, expected in cases:
        assert main(["--log-level", "ERROR", "stage", *argv]) == 2, argv
        err = capsys.readouterr().err
        assert "agent stage: error:" in err and expected in err, (argv, err)


def test_routes_command_refuses_a_nodes_file_without_usable_links(tmp_path, capsys):
    from ground.__main__ import main as ground_main

    nodes = tmp_path / "nodes.toml"
    out = str(tmp_path / "rows")
    nodes.write_text('[[node]]\nname = "g"\nmemory_gb = 1.0\ncompute_tflops = 1.0\n')
    assert ground_main(["routes", "--nodes", str(nodes), "--out", out]) == 2
    assert "no [[link]] tables" in capsys.readouterr().err
    nodes.write_text('[[link]]\na = "g"\nb = "s"\nbandwidth_mbps = 10.0\n')
    assert ground_main(["routes", "--nodes", str(nodes), "--out", out]) == 2
    assert "[[link]] 1 has no latency_ms" in capsys.readouterr().err
    nodes.write_text(
        '[[link]]\na = "g"\nb = "s"\nbandwidth_mbps = 10.0\nlatency_ms = 3.0\n'
    )
    assert ground_main(["routes", "--nodes", str(nodes), "--out", out]) == 0
    row = load_row(tmp_path / "rows" / "g.row")
    assert row.lookup("s").next_hop == "s" and row.lookup("s").cost_ms == 3.0
