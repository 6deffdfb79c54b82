"""``python -m ground routes``: write every node's routing row for a mesh.

Reads the ``[[link]]`` tables of a nodes file (the one ``ground plan``
reads; relay satellites need only appear in links), builds the snapshot's
link graph, computes all next-hop tables and writes ``DIR/NODE.row`` per
node: the ``RoutingTable.to_bytes`` row that ``agent stage --routes`` loads.
"""

import argparse
import logging
import time
import tomllib
from pathlib import Path

from agent._cli import CommandError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nodes", required=True, help="TOML with [[link]] (a, b, latency_ms, ...)"
    )
    parser.add_argument("--out", required=True, help="directory for NODE.row files")
    parser.add_argument(
        "--valid-s",
        type=float,
        default=3600.0,
        help="seconds from now until the rows expire (default 3600)",
    )


def _load_mesh(path: str):
    from agent._mesh import MeshNode, SpaceMesh

    try:
        doc = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"cannot read nodes file {path}: {exc}") from exc
    names: dict[str, bool] = {}
    for row in doc.get("node", []):
        if isinstance(row.get("name"), str):
            names[row["name"]] = row.get("type") == "ground"
    links, problems = [], []
    for i, row in enumerate(doc.get("link", [])):
        try:
            links.append((row["a"], row["b"], row["bandwidth_mbps"], row["latency_ms"]))
        except KeyError as exc:
            problems.append(f"[[link]] {i + 1} has no {exc.args[0]}")
            continue
        for end in (row["a"], row["b"]):
            names.setdefault(end, False)
    if not links and not problems:
        problems.append("no [[link]] tables: a mesh needs its links")
    mesh = SpaceMesh()
    for name, is_ground in names.items():
        mesh.add_node(MeshNode(name, is_ground=is_ground))
    for i, (a, b, bandwidth_mbps, latency_ms) in enumerate(links):
        try:
            mesh.add_link(a, b, float(bandwidth_mbps), float(latency_ms))
        except (TypeError, ValueError, KeyError) as exc:
            problems.append(f"[[link]] {i + 1} ({a} - {b}): {exc}")
    if problems:
        raise CommandError(f"nodes file {path}: " + "; ".join(problems))
    return mesh


def main(args: argparse.Namespace) -> int:
    from ground._tables import build_tables

    if not args.valid_s > 0:
        raise CommandError(f"--valid-s {args.valid_s} must be a positive duration")
    mesh = _load_mesh(args.nodes)
    try:
        tables = build_tables(mesh.routing_graph(), expires=time.time() + args.valid_s)
    except ValueError as exc:
        raise CommandError(f"cannot route the mesh of {args.nodes}: {exc}") from exc
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for node in tables.graph.node_ids:
        row = tables.row(node)
        (out / f"{node}.row").write_bytes(row.to_bytes())
        unreachable = [
            d for d in tables.graph.node_ids if row.lookup(d).next_hop is None
        ]
        if unreachable:
            log.warning("%s cannot reach %s", node, ", ".join(unreachable))
    print(f"{tables.graph.n_nodes} routing rows in {out}")
    return 0
