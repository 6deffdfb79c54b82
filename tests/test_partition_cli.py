"""The plan, profile and stage commands, run as real subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent._nn import example_cnn, example_mlp, save_model
from ground._partition import ModelProfile, NodeConfig, NodeType, PartitionOptimizer

REPO = Path(__file__).resolve().parent.parent

NODES_TOML = """
[[node]]
name = "sat-001"
type = "satellite"
memory_gb = 0.00012
compute_tflops = 0.001

[[node]]
name = "sat-002"
type = "satellite"
memory_gb = 0.00012
compute_tflops = 0.001
efficiency = 0.5

[[node]]
name = "ground-001"
type = "ground"
memory_gb = 0.0001
compute_tflops = 0.01
"""

LINKS_TOML = """
[[link]]
a = "sat-001"
b = "sat-002"
bandwidth_mbps = 1000.0
latency_ms = 3.0

[[link]]
a = "sat-002"
b = "ground-001"
bandwidth_mbps = 100.0
latency_ms = 20.0
"""


def run(*argv, package="ground"):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", package, "--log-level", "WARNING", *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=60,
    )


@pytest.fixture
def mlp(tmp_path):
    return save_model(tmp_path / "mlp.json", *example_mlp())


def test_plan_prints_the_same_plan_as_the_api(tmp_path, mlp):
    nodes = tmp_path / "nodes.toml"
    nodes.write_text(NODES_TOML + LINKS_TOML)
    out = run("plan", "--model", mlp, "--nodes", nodes, "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    want = PartitionOptimizer(
        links={
            ("sat-001", "sat-002"): (1000.0, 3.0),
            ("sat-002", "ground-001"): (100.0, 20.0),
        }
    ).optimize(
        ModelProfile.from_spec(mlp),
        [
            NodeConfig("sat-001", NodeType.SATELLITE, 0.00012, 0.001),
            NodeConfig("sat-002", NodeType.SATELLITE, 0.00012, 0.001, 0.5),
            NodeConfig("ground-001", NodeType.GROUND, 0.0001, 0.01),
        ],
    )
    assert doc["assignments"] == [list(a) for a in want.assignments]
    assert doc["estimated_latency_ms"] == pytest.approx(want.estimated_latency_ms)
    text = run("plan", "--model", mlp, "--nodes", nodes, "--objective", "throughput")
    assert text.returncode == 0 and "objective throughput" in text.stdout


def test_plan_reports_infeasible_input_in_one_line(tmp_path, mlp):
    nodes = tmp_path / "nodes.toml"
    nodes.write_text(
        NODES_TOML.replace("0.00012", "0.00001").replace("0.0001\n", "0.00002\n")
    )
    out = run("plan", "--model", mlp, "--nodes", nodes)
    assert out.returncode == 2
    assert (
        "layer 'fc0'" in out.stderr
        and "largest memory available is 0.02 MB" in out.stderr
    )
    assert len(out.stderr.strip().splitlines()) == 1


def test_plan_refuses_a_node_without_memory(tmp_path, mlp):
    nodes = tmp_path / "nodes.toml"
    nodes.write_text('[[node]]\nname = "x"\ncompute_tflops = 1.0\n')
    out = run("plan", "--model", mlp, "--nodes", nodes)
    assert out.returncode == 2 and "has no memory_gb" in out.stderr


def test_profile_then_plan_from_the_measurements(tmp_path):
    spec = save_model(tmp_path / "cnn.json", *example_cnn())
    prof = tmp_path / "cnn.profile.json"
    out = run(
        "profile", "--model", spec, "--repeats", "3", "--out", prof, package="agent"
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(prof.read_text())
    assert doc["format"] == "orbitfl-profile/1"
    assert [r["name"] for r in doc["layers"]] == [
        "conv0", "relu0", "conv1", "relu1", "flat", "fc", "prob",
    ]  # fmt: skip
    assert all(r["measured_ms"] > 0 and r["activation_mb"] > 0 for r in doc["layers"])
    profile = ModelProfile.from_measurements(prof)
    # at the device's achieved rate, the equivalent flops reproduce the times
    rate = doc["device"]["achieved_tflops"] * 1e9  # flops per ms
    for row, layer in zip(doc["layers"], profile.layers, strict=True):
        assert layer.flops / rate == pytest.approx(row["measured_ms"])
    nodes = tmp_path / "nodes.toml"
    nodes.write_text(
        NODES_TOML.replace("0.00012", "0.001").replace("0.0001\n", "0.001\n")
    )
    out = run("plan", "--model", prof, "--nodes", nodes, "--json")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["assignments"]) == 7


def test_stage_refuses_a_plan_made_for_another_model(tmp_path, mlp):
    plan = {
        "stages": [
            {"node": "a", "first_layer": 0, "end_layer": 2, "layers": ["x", "y"]}
        ]
    }
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    out = run(
        "stage", "--model", mlp, "--plan", path, "--node", "a", "--next", "tcp://127.0.0.1:1",
        package="agent",
    )  # fmt: skip
    assert out.returncode == 2 and "was the plan made for this model?" in out.stderr
    out = run(
        "stage", "--model", mlp, "--layers", "3:1", "--next", "tcp://127.0.0.1:1",
        package="agent",
    )  # fmt: skip
    assert out.returncode == 2 and "layer range [3, 1)" in out.stderr
