"""``python -m agent stage``: run one stage of a partitioned model.

Prints ``READY <endpoint>`` on stdout once the stage listens, so a launcher
can chain stages started on free ports.  Direct mode (``--next ENDPOINT``)
pushes results to the next stage's endpoint; mesh mode (``--routes ROW``)
addresses them to the next stage's node and forwards them through the
node's routing row to its ISL neighbours (``--neighbours``), and relays
traffic for other nodes; ``--relay`` runs a mesh node with no layers.
"""

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from agent._cli import CommandError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", help="weights .npz (default: from the spec)")
    parser.add_argument("--model", help="model spec (JSON); not for --relay")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--layers", help="layer range START:STOP (stop exclusive)")
    which.add_argument("--node", help="take this node's stage from --plan")
    which.add_argument(
        "--relay", action="store_true", help="mesh mode: run no layers, only route"
    )
    parser.add_argument("--plan", help="plan JSON from `python -m ground plan --json`")
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:*",
        help="endpoint to receive batches on (default: a free loopback port)",
    )
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--next", help="direct mode: endpoint of the next stage")
    mode.add_argument(
        "--routes",
        help="mesh mode: this node's routing row (RoutingTable.to_bytes msgpack)",
    )
    parser.add_argument(
        "--neighbours",
        help="mesh mode: JSON {node id: endpoint} of the ISL neighbours, or '-' "
        "to read it as one line from stdin after READY",
    )
    parser.add_argument(
        "--to",
        help="mesh mode: node the results go to (default with --plan: the next "
        "stage's node, or --sink after the last stage)",
    )
    parser.add_argument(
        "--sink", help="mesh mode with --plan: the ground node collecting outputs"
    )
    parser.add_argument(
        "--send-timeout-s",
        type=float,
        default=5.0,
        help="mesh mode: after this long without progress to a neighbour, mark "
        "the link down and reroute (default 5)",
    )
    parser.add_argument(
        "--ttl",
        type=int,
        default=16,
        help="mesh mode: relays a result may pass (default 16)",
    )
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=None,
        help="stop after this long without a message (default: wait for stop)",
    )


def _layer_range(args: argparse.Namespace, names: list[str]):
    """(start, stop, next node from the plan or None)."""
    if args.layers is not None:
        try:
            start_s, stop_s = args.layers.split(":")
            start, stop = int(start_s), int(stop_s)
        except ValueError:
            raise CommandError(
                f"--layers {args.layers!r} is not START:STOP, e.g. 0:4"
            ) from None
        return start, stop, None
    if args.plan is None:
        raise CommandError("--node needs --plan, the plan JSON to read the stage from")
    try:
        plan = json.loads(Path(args.plan).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read plan {args.plan}: {exc}") from exc
    stages = plan.get("stages", [])
    for k, stage in enumerate(stages):
        if stage.get("node") == args.node:
            if stage.get("layers") != names[stage["first_layer"] : stage["end_layer"]]:
                raise CommandError(
                    f"plan stage of {args.node!r} names layers {stage.get('layers')} "
                    "that are not this model's layers at that range; was the plan "
                    "made for this model?"
                )
            after = stages[k + 1].get("node") if k + 1 < len(stages) else None
            return stage["first_layer"], stage["end_layer"], after
    nodes = [s.get("node") for s in stages]
    raise CommandError(
        f"node {args.node!r} has no stage in the plan (stages on {nodes})"
    )


_terminated = False


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM: finish the message in hand, leave the loop, log the counts.

    A flag rather than an exception, so that a message forwarded is always
    counted as forwarded.
    """
    global _terminated
    _terminated = True


def _stop_requested() -> bool:
    return _terminated


def _read_routes(path: str):
    from agent._routing import RoutingTable, RoutingTableError

    try:
        return RoutingTable.from_bytes(Path(path).read_bytes())
    except (OSError, RoutingTableError) as exc:
        raise CommandError(f"cannot read routing row {path}: {exc}") from exc


def _read_neighbours(source: str) -> dict[str, str]:
    try:
        if source == "-":
            text = sys.stdin.readline()
        else:
            text = Path(source).read_text()
        neighbours = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read neighbours from {source}: {exc}") from exc
    if not isinstance(neighbours, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in neighbours.items()
    ):
        raise CommandError(
            f"neighbours from {source} must be a JSON object of node id to "
            f'endpoint, e.g. {{"sat-002": "tcp://10.0.0.2:7001"}}, got {text!r:.80}'
        )
    return neighbours


def _load_stage(args: argparse.Namespace):
    """(model, start, stop, next node from the plan) for --layers / --node."""
    from agent._nn import ModelSpecError, load_model

    if args.model is None:
        raise CommandError("--layers and --node need --model, the model spec")
    try:
        model = load_model(args.model, args.weights)
    except ModelSpecError as exc:
        raise CommandError(str(exc)) from exc
    if model.unused_weights:
        log.warning("weights no layer uses: %s", ", ".join(model.unused_weights))
    names = [layer.name for layer in model.layers]
    start, stop, after = _layer_range(args, names)
    return model, names, start, stop, after


def main(args: argparse.Namespace) -> int:
    if args.routes is not None:
        return _main_mesh(args)
    if args.relay:
        raise CommandError("--relay runs on the mesh: give --routes and --neighbours")
    return _main_direct(args)


def _main_mesh(args: argparse.Namespace) -> int:
    from agent._pipeline import Stage
    from agent._pipeline_mesh import MAX_TTL, MeshPort, MeshStageWorker

    if args.neighbours is None:
        raise CommandError("--routes needs --neighbours (a JSON file, or '-')")
    if not 0 <= args.ttl <= MAX_TTL:
        raise CommandError(f"--ttl {args.ttl} is not in [0, {MAX_TTL}]")
    table = _read_routes(args.routes)
    stage, to = None, None
    if not args.relay:
        model, names, start, stop, after = _load_stage(args)
        if args.node is not None and args.node != table.own_id:
            raise CommandError(
                f"--node {args.node!r} but the routing row belongs to "
                f"{table.own_id!r}; give this node's row"
            )
        to = args.to or after or args.sink
        if to is None:
            raise CommandError(
                "mesh mode needs the node results go to: --to NODE, or --sink "
                "NODE for the last stage of --plan"
            )
        try:
            stage = Stage(model, start, stop)
            table.lookup(to)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        except KeyError as exc:
            raise CommandError(
                f"results go to {to!r}, which is not in the routing row "
                f"({len(table.node_ids)} nodes)"
            ) from exc
    if not args.send_timeout_s > 0:
        raise CommandError(f"--send-timeout-s {args.send_timeout_s} must be > 0")
    port = MeshPort(table, bind=args.bind, send_timeout_s=args.send_timeout_s)
    print(f"READY {port.endpoint}", flush=True)
    try:
        port.connect(_read_neighbours(args.neighbours))
    except ValueError as exc:
        port.close()
        raise CommandError(str(exc)) from exc
    worker = MeshStageWorker(port, stage, to)
    worker.ttl = args.ttl
    what = "relay" if stage is None else f"stage {stage.start}:{stage.stop} -> {to}"
    log.info("%s on %s: %s", table.own_id, port.endpoint, what)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        worker.serve(args.idle_timeout_s, _stop_requested)
    finally:
        port.close()
    if _terminated:
        log.info("%s terminated", table.own_id)
    stats = worker.stats
    log.info(
        "%s done: %s%s",
        table.own_id,
        port.stats.summary(),
        ""
        if stats is None
        else f"; {stats.batches} batches computed, {stats.errors} refused, "
        f"{stats.compute_s:.3f} s computing",
    )
    return 0


def _main_direct(args: argparse.Namespace) -> int:
    from agent._pipeline import StageWorker

    model, names, start, stop, _after = _load_stage(args)
    try:
        worker = StageWorker(model, start, stop, args.next, bind=args.bind)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(f"READY {worker.endpoint}", flush=True)
    log.info(
        "stage layers %d:%d (%s .. %s) on %s -> %s",
        start, stop, names[start], names[stop - 1], worker.endpoint, args.next,
    )  # fmt: skip
    signal.signal(signal.SIGTERM, _terminate)
    try:
        stats = worker.serve(args.idle_timeout_s, _stop_requested)
    finally:
        worker.close()
    log.info(
        "stage %d:%d done: %d batches, %d refused, %.3f s computing",
        start, stop, stats.batches, stats.errors, stats.compute_s,
    )  # fmt: skip
    sys.stdout.flush()
    return 0
