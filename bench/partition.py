"""Partition optimizer speed, and a 3-process pipeline against its plan.

1. The exact optimizer on 200-layer transformer-like chains and 20 nodes, for
   both objectives, against one pass of the relaxed (prefix, node) DP that
   ignores "a node takes at most one stage" (the in-run baseline: the
   cheapest possible pass over the same instance).  Target: < 0.5 s.
   Families:
   - ``ground+orbit``: 4 ground stations (20-80 TFLOPS at 50 %, each about a
     third of the model) and 16 satellites of two kinds, a per-pair link
     table (fibre, optical ISL, downlink figures drawn per pair), the ground
     station 0 sends inputs and collects outputs;
   - ``ground+orbit default``: the same nodes on the default link model;
   - ``satellites carry most``: 2 small ground stations and 18 satellites
     with per-pair links, so 6 to 9 stages run in orbit.  This is the hard
     family for the exact search (see ground/_partition.py).
2. A real pipeline: an MLP measured layer by layer on this machine
   (``agent profile``), planned with the throughput objective on three
   nodes declared at the measured rate, linked by the loopback figures
   measured here; three ``python -m agent stage`` processes on loopback run
   it.  Reports measured latency (one batch in flight) and throughput (8 in
   flight) next to the plan's estimates.  Then the same stages run as mesh
   nodes (``--routes``) with a relay process between the first two, against
   the direct run: the cost of forwarding through routing rows.

    PYTHONPATH=. python bench/partition.py [--quick]
"""

import argparse
import itertools
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from agent._cmd_profile import profile_model  # noqa: E402
from agent._mesh import MeshNode, SpaceMesh  # noqa: E402
from agent._nn import example_mlp, load_model, save_model  # noqa: E402
from agent._pipeline import PipelineClient  # noqa: E402
from agent._pipeline_mesh import MeshPipelineClient, MeshPort  # noqa: E402
from ground._partition import (  # noqa: E402
    LayerProfile,
    ModelProfile,
    NodeConfig,
    NodeType,
    PartitionOptimizer,
    PartitionSearchLimitError,
    as_link_model,
)
from ground._partition_search import _Instance, _relaxed_cost_to_go  # noqa: E402
from ground._tables import build_tables  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 0.5
LABEL_LIMIT = 10_000  # the solved instances need at most about 6,000 expansions


# -- 1. optimizer ------------------------------------------------------------


def transformer(n_layers: int = 200) -> ModelProfile:
    """Attention, norm, MLP, activation blocks; weights MB, flops, bytes."""
    kinds = [
        ("attn", 30.0, 4e9, 2e6, 20.0),
        ("ln", 0.01, 1e7, 2e6, 4.0),
        ("mlp", 60.0, 8e9, 8e6, 30.0),
        ("act", 0.0, 2e7, 2e6, 8.0),
    ]
    layers = []
    for i in range(n_layers):
        name, params_mb, flops, out_bytes, act_mb = kinds[i % 4]
        layers.append(LayerProfile(f"{name}{i}", params_mb, flops, out_bytes, act_mb))
    return ModelProfile(layers, input_bytes=1e6)


def family(name: str, seed: int, profile: ModelProfile):
    rng = random.Random(seed)
    total_gb = sum(x.params_mb for x in profile.layers) / 1000
    if name == "satellites carry most":
        n_ground, n_a, n_b, ground_gb = 2, 9, 9, total_gb / 6
    else:
        n_ground, n_a, n_b, ground_gb = 4, 8, 8, total_gb / 3
    nodes = [
        NodeConfig(
            f"ground-{j}",
            NodeType.GROUND,
            ground_gb * rng.uniform(0.8, 1.2),
            rng.uniform(20, 80),
            0.5,
        )
        for j in range(n_ground)
    ]
    nodes += [
        NodeConfig(f"sat-a{j}", NodeType.SATELLITE, 0.5, 1.3, 0.5) for j in range(n_a)
    ]
    nodes += [
        NodeConfig(f"sat-b{j}", NodeType.SATELLITE, 1.0, 0.5, 0.4) for j in range(n_b)
    ]
    if name == "ground+orbit default":
        return nodes, None
    table = {}
    for a, b in itertools.combinations(nodes, 2):
        kinds = {a.node_type, b.node_type}
        if kinds == {NodeType.GROUND}:
            table[(a.name, b.name)] = (rng.uniform(1000, 10000), rng.uniform(5, 40))
        elif kinds == {NodeType.SATELLITE}:
            table[(a.name, b.name)] = (rng.uniform(500, 2000), rng.uniform(2, 15))
        else:
            table[(a.name, b.name)] = (rng.uniform(50, 300), rng.uniform(5, 25))
    return nodes, table


def bench_optimizer(seeds: int) -> list[tuple]:
    profile = transformer()
    rows = []
    families = ["ground+orbit", "ground+orbit default", "satellites carry most"]
    for fam, objective in itertools.product(families, ["latency", "throughput"]):
        times, cpu, base, stages, expanded, limited = [], [], [], [], [], 0
        for seed in range(seeds):
            nodes, table = family(fam, seed, profile)
            inst = _Instance(profile, nodes, as_link_model(table), 1, 0, 0)
            t0 = time.perf_counter()
            _relaxed_cost_to_go(inst, "sum")
            base.append(time.perf_counter() - t0)
            opt = PartitionOptimizer(objective, table, max_labels=LABEL_LIMIT)
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                plan = opt.optimize(profile, nodes, source="ground-0", sink="ground-0")
            except PartitionSearchLimitError:
                plan = None
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
            if plan is None:
                limited += 1
                continue
            stages.append(len(plan.stages))
            expanded.append(plan.labels_expanded)
        rows.append(
            (
                fam,
                objective,
                statistics.median(times),
                max(times),
                statistics.median(cpu),
                statistics.median(base),
                f"{min(stages)}-{max(stages)}" if stages else "-",
                int(statistics.median(expanded)) if expanded else 0,
                limited,
                seeds,
            )
        )
    return rows


# -- 2. pipeline -------------------------------------------------------------


def measure_loopback() -> tuple[float, float]:
    """(bandwidth_mbps, one-way latency_ms) of ZeroMQ PUSH/PULL on loopback."""
    ctx = zmq.Context()
    a_in, b_in = ctx.socket(zmq.PULL), ctx.socket(zmq.PULL)
    a_in.bind("tcp://127.0.0.1:*")
    b_in.bind("tcp://127.0.0.1:*")
    a_out, b_out = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    a_out.connect(b_in.getsockopt_string(zmq.LAST_ENDPOINT))
    b_out.connect(a_in.getsockopt_string(zmq.LAST_ENDPOINT))

    def round_trip(payload: bytes, n: int) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            a_out.send(payload)
            b_out.send(b_in.recv())
            a_in.recv()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    round_trip(b"x", 50)
    small = round_trip(b"x" * 64, 200)
    big_bytes = 8 << 20
    big = round_trip(b"x" * big_bytes, 10)
    for s in (a_in, b_in, a_out, b_out):
        s.close(linger=0)
    ctx.term()
    latency_ms = small / 2 * 1e3
    bandwidth_mbps = big_bytes * 8 / ((big - small) / 2) / 1e6
    return bandwidth_mbps, latency_ms


def start_stage(spec_path: Path, start: int, stop: int, next_endpoint: str):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--log-level", "WARNING", "stage",
         "--model", str(spec_path), "--layers", f"{start}:{stop}",
         "--next", next_endpoint, "--idle-timeout-s", "120"],
        stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"stage {start}:{stop} did not start: {line!r}")
    return proc, line.split()[1]


def measure(client, model, x: np.ndarray, n_stream: int) -> tuple[list, float]:
    """(one-batch latencies s, best time of a window-8 stream of n_stream s)."""
    client.run([x] * 10, window=1)  # warm up every stage
    lat = []
    for _ in range(40):
        t0 = time.perf_counter()
        (y,) = client.run([x], window=1)
        lat.append(time.perf_counter() - t0)
    assert np.allclose(y, model.forward(x), rtol=1e-5, atol=1e-6)
    stream_s = math.inf
    for _ in range(3):  # best of three: the machine is shared
        t0 = time.perf_counter()
        client.run([x] * n_stream, window=8)
        stream_s = min(stream_s, time.perf_counter() - t0)
    client.stop()
    client.wait_stopped(10.0)
    return lat, stream_s


def run_direct(spec_path: Path, plan, model, x, n_stream: int):
    client = PipelineClient("")
    procs = []
    nxt = client.endpoint
    try:
        for stage in reversed(plan.stages):
            proc, nxt = start_stage(spec_path, stage.first_layer, stage.end_layer, nxt)
            procs.append(proc)
        client.connect(nxt)
        return measure(client, model, x, n_stream)
    finally:
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        client.close()


def start_mesh_node(args: list[str]):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", "--log-level", "WARNING", "stage",
         "--neighbours", "-", "--idle-timeout-s", "120", *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"mesh node {args} did not start: {line!r}")
    return proc, line.split()[1]


def run_mesh(spec_path: Path, plan, model, x, n_stream: int, workdir: Path):
    """The same stages as mesh nodes: ground - S0 - relay - S1 - S2 - ground.

    Links are as fast as loopback allows (the figures only rank routes), so
    the difference to the direct run is the relay hop: one more process, a
    header parse and a copy per batch.
    """
    s0, s1, s2 = (s.node for s in plan.stages)
    mesh = SpaceMesh()
    for name in ("ground", s0, s1, s2, "relay"):
        mesh.add_node(MeshNode(name))
    for a, b in (
        ("ground", s0),
        (s0, "relay"),
        ("relay", s1),
        (s1, s2),
        (s2, "ground"),
    ):
        mesh.add_link(a, b, 10_000.0, 0.05)
    tables = build_tables(mesh.routing_graph(), expires=time.time() + 3600.0)
    rows = {}
    for node in tables.graph.node_ids:
        rows[node] = workdir / f"{node}.row"
        rows[node].write_bytes(tables.row(node).to_bytes())
    nexts = [s1, s2, "ground"]
    procs, endpoints = {}, {}
    port = MeshPort(tables.row("ground"))
    endpoints["ground"] = port.endpoint
    client = MeshPipelineClient(port, s0)
    try:
        for stage, to in zip(plan.stages, nexts, strict=True):
            procs[stage.node], endpoints[stage.node] = start_mesh_node(
                ["--model", str(spec_path), "--routes", str(rows[stage.node]),
                 "--layers", f"{stage.first_layer}:{stage.end_layer}", "--to", to]
            )  # fmt: skip
        procs["relay"], endpoints["relay"] = start_mesh_node(
            ["--relay", "--routes", str(rows["relay"])]
        )
        g = tables.graph
        for node in [*procs, "ground"]:
            i = g.index_of(node)
            links = g.indices[g.indptr[i] : g.indptr[i + 1]]
            near = {g.node_ids[j]: endpoints[g.node_ids[j]] for j in links}
            if node == "ground":
                port.connect(near)
            else:
                procs[node].stdin.write(json.dumps(near) + "\n")
                procs[node].stdin.flush()
        return measure(client, model, x, n_stream)
    finally:
        for proc in procs.values():
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        client.close()


def bench_pipeline(workdir: Path, batch: int, n_stream: int) -> dict:
    spec, weights = example_mlp(seed=1, sizes=(256, 1024, 1024, 1024, 1024, 256, 10))
    spec_path = save_model(workdir / "mlp.json", spec, weights)
    model = load_model(spec_path)
    doc = profile_model(model, batch, repeats=30)
    rate = doc["device"]["achieved_tflops"]
    profile = ModelProfile.from_measurements(doc)
    bandwidth, latency = measure_loopback()
    nodes = [NodeConfig(f"node-{i}", NodeType.SATELLITE, 1.0, rate) for i in range(3)]
    ground = NodeConfig("ground", NodeType.GROUND, 0.0, rate)  # sends, collects
    names = [n.name for n in [*nodes, ground]]
    table = {(a, b): (bandwidth, latency) for a, b in itertools.combinations(names, 2)}
    plan = PartitionOptimizer("throughput", table, batch_size=batch).optimize(
        profile, [*nodes, ground], source="ground", sink="ground"
    )

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *model.input_shape)).astype(np.float32)
    direct = run_direct(spec_path, plan, model, x, n_stream)
    if len(plan.stages) != 3:
        raise RuntimeError(f"the plan has {len(plan.stages)} stages, expected 3")
    mesh = run_mesh(spec_path, plan, model, x, n_stream, workdir)
    lat, stream_s = direct
    return {
        "stages": [(s.node, s.first_layer, s.end_layer) for s in plan.stages],
        "batch": batch,
        "achieved_gflops": rate * 1e3,
        "loopback": (bandwidth, latency),
        "latency_ms": statistics.median(lat) * 1e3,
        "latency_min_ms": min(lat) * 1e3,
        "plan_latency_ms": plan.estimated_latency_ms,
        "throughput": n_stream * batch / stream_s,
        "plan_throughput": plan.estimated_throughput_per_s,
        "stage_compute_ms": [s.compute_ms for s in plan.stages],
        "mesh_latency_ms": statistics.median(mesh[0]) * 1e3,
        "mesh_latency_min_ms": min(mesh[0]) * 1e3,
        "mesh_throughput": n_stream * batch / mesh[1],
    }


def report_optimizer(seeds: int) -> None:
    print("1. exact optimizer, 200 layers x 20 nodes (target < 0.5 s)")
    header = (
        f"{'family':<22} {'objective':<10} {'median s':>9} {'max s':>7} {'CPU s':>6} "
        f"{'relaxed DP s':>12} {'ratio':>6} {'stages':>6} {'expanded':>8} "
        f"{'limit hit':>9}"
    )
    print(header)
    for fam, obj, med, worst, cpu, base, stages, exp, limited, n in bench_optimizer(
        seeds
    ):
        print(
            f"{fam:<22} {obj:<10} {med:>9.3f} {worst:>7.3f} {cpu:>6.3f} {base:>12.4f} "
            f"{med / base:>6.1f} {stages:>6} {exp:>8} {limited:>4}/{n}"
        )
    print()
    print(f"(limit hit: the search stopped at {LABEL_LIMIT} expansions)")
    print()


def report_pipeline(quick: bool) -> None:
    print("2. three stage processes on loopback vs the plan (MLP, float32)")
    print(f"load average: {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        r = bench_pipeline(Path(tmp), batch=32, n_stream=100 if quick else 300)
    print(
        f"plan stages {r['stages']}, batch {r['batch']}, NumPy achieved "
        f"{r['achieved_gflops']:.1f} GFLOPS, loopback {r['loopback'][0]:.0f} Mbit/s "
        f"{r['loopback'][1]:.3f} ms"
    )
    print(
        f"stage compute estimates (ms): {[round(c, 3) for c in r['stage_compute_ms']]}"
    )
    print(f"{'quantity':<22} {'measured':>10} {'plan':>10} {'ratio':>6}")
    lat, plan_lat = r["latency_ms"], r["plan_latency_ms"]
    ratio = lat / plan_lat
    print(f"{'latency ms/batch':<22} {lat:>10.3f} {plan_lat:>10.3f} {ratio:>6.2f}")
    low = r["latency_min_ms"]
    ratio = low / plan_lat
    print(f"{'  (least of 40)':<22} {low:>10.3f} {plan_lat:>10.3f} {ratio:>6.2f}")
    print(
        f"{'throughput (best of 3)':<22} {r['throughput']:>10.0f} "
        f"{r['plan_throughput']:>10.0f} {r['throughput'] / r['plan_throughput']:>6.2f}"
    )
    print()
    print("   the same stages as mesh nodes, S0 -> S1 through a relay process")
    print(f"{'quantity':<22} {'mesh':>10} {'direct':>10} {'ratio':>6}")
    for name, key, digits in (
        ("latency ms/batch", "latency_ms", 3),
        ("  (least of 40)", "latency_min_ms", 3),
        ("throughput (best of 3)", "throughput", 0),
    ):
        m, d = r[f"mesh_{key}"], r[key]
        print(f"{name:<22} {m:>10.{digits}f} {d:>10.{digits}f} {m / d:>6.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer seeds and batches")
    parser.add_argument(
        "--part", choices=["1", "2", "all"], default="all", help="optimizer, pipeline"
    )
    args = parser.parse_args()
    seeds = 2 if args.quick else 5

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = os.cpu_count()
    print(f"CPU: {cpu}, {cores} logical cores; Python {platform.python_version()}")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")
    print()
    if args.part in ("1", "all"):
        report_optimizer(seeds)
    if args.part in ("2", "all"):
        report_pipeline(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
