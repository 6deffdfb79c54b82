"""``python -m ground plan``: place a model's layers on nodes.

``--model`` is a model spec (``orbitfl-model/1``; flops by shape inference)
or a measured profile (``orbitfl-profile/1`` from ``python -m agent
profile``).  ``--nodes`` is a TOML file::

    [[node]]
    name = "sat-001"
    type = "satellite"        # or "ground"
    memory_gb = 8.0
    compute_tflops = 2.0
    efficiency = 0.5          # optional, achieved / peak

    [[link]]                  # optional; without any, the default link model
    a = "sat-001"
    b = "ground-001"
    bandwidth_mbps = 100.0
    latency_ms = 20.0
"""

import argparse
import json
import sys
import tomllib
from pathlib import Path

from agent._cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model spec or profile JSON")
    parser.add_argument("--nodes", required=True, help="nodes (and links) TOML")
    parser.add_argument(
        "--objective", choices=["latency", "throughput"], default="latency"
    )
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--source", help="node that sends the inputs")
    parser.add_argument("--sink", help="node that collects the outputs")
    parser.add_argument(
        "--device-tflops",
        type=float,
        help="for a measured profile: the TFLOPS the measuring device is declared "
        "with (default: its achieved rate)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def _load_nodes(path: str):
    from ground._partition import NodeConfig

    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"cannot read nodes file {path}: {exc}") from exc
    nodes, problems = [], []
    for i, row in enumerate(doc.get("node", [])):
        try:
            nodes.append(
                NodeConfig(
                    row["name"],
                    row.get("type", "satellite"),
                    row["memory_gb"],
                    row["compute_tflops"],
                    row.get("efficiency", 1.0),
                )
            )
        except KeyError as exc:
            problems.append(f"[[node]] {i + 1} has no {exc.args[0]}")
        except ValueError as exc:
            problems.append(str(exc))
    if not nodes and not problems:
        problems.append("no [[node]] tables")
    table = {}
    for i, row in enumerate(doc.get("link", [])):
        try:
            table[(row["a"], row["b"])] = (row["bandwidth_mbps"], row["latency_ms"])
        except KeyError as exc:
            problems.append(f"[[link]] {i + 1} has no {exc.args[0]}")
    if problems:
        raise CommandError(f"nodes file {path}: " + "; ".join(problems))
    return nodes, (table or None)


def _load_profile(path: str, device_tflops: float | None):
    from agent._nn import ModelSpecError
    from ground._partition import ModelProfile

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read model {path}: {exc}") from exc
    try:
        if isinstance(doc, dict) and doc.get("format") == "orbitfl-profile/1":
            return ModelProfile.from_measurements(doc, device_tflops)
        return ModelProfile.from_spec(path)
    except (ModelSpecError, ValueError, KeyError) as exc:
        raise CommandError(f"model {path}: {exc}") from exc


def format_plan(plan) -> str:
    lines = [
        f"objective {plan.objective.value}, batch {plan.batch_size}: "
        f"latency {plan.estimated_latency_ms:.3f} ms, bottleneck "
        f"{plan.bottleneck_ms:.3f} ms ({plan.estimated_throughput_per_s:.1f} "
        "samples/s)",
        f"{'node':<16} {'layers':<28} {'compute ms':>11} {'transfer ms':>12} "
        f"{'memory MB':>10}",
    ]
    if plan.input_transfer_ms:
        lines.append(
            f"{'(input)':<16} {'':<28} {'':>11} {plan.input_transfer_ms:>12.3f}"
        )
    for s in plan.stages:
        span = f"{s.first_layer}-{s.end_layer - 1} {s.layer_names[0]}"
        if len(s.layer_names) > 1:
            span += f"..{s.layer_names[-1]}"
        lines.append(
            f"{s.node:<16} {span[:28]:<28} {s.compute_ms:>11.3f} "
            f"{s.transfer_ms:>12.3f} {s.memory_mb:>10.4g}"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from ground._partition import InfeasiblePartitionError, PartitionOptimizer

    nodes, links = _load_nodes(args.nodes)
    profile = _load_profile(args.model, args.device_tflops)
    try:
        optimizer = PartitionOptimizer(
            args.objective, links, batch_size=args.batch_size
        )
        plan = optimizer.optimize(profile, nodes, source=args.source, sink=args.sink)
    except (InfeasiblePartitionError, ValueError) as exc:
        raise CommandError(str(exc)) from exc
    if args.json:
        sys.stdout.write(json.dumps(plan.to_dict(), indent=1) + "\n")
    else:
        sys.stdout.write(format_plan(plan) + "\n")
    return 0
