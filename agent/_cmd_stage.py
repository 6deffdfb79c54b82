"""``python -m agent stage``: run one stage of a partitioned model.

Prints ``READY <endpoint>`` on stdout once the stage listens, so a launcher
can chain stages started on free ports.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from agent._cli import CommandError

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="model spec (JSON)")
    parser.add_argument("--weights", help="weights .npz (default: from the spec)")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--layers", help="layer range START:STOP (stop exclusive)")
    which.add_argument("--node", help="take this node's stage from --plan")
    parser.add_argument("--plan", help="plan JSON from `python -m ground plan --json`")
    parser.add_argument(
        "--bind",
        default="tcp://127.0.0.1:*",
        help="endpoint to receive batches on (default: a free loopback port)",
    )
    parser.add_argument("--next", required=True, help="endpoint of the next stage")
    parser.add_argument(
        "--idle-timeout-s",
        type=float,
        default=None,
        help="stop after this long without a message (default: wait for stop)",
    )


def _layer_range(args: argparse.Namespace, n_layers: int, names: list[str]):
    if args.layers is not None:
        try:
            start_s, stop_s = args.layers.split(":")
            start, stop = int(start_s), int(stop_s)
        except ValueError:
            raise CommandError(
                f"--layers {args.layers!r} is not START:STOP, e.g. 0:4"
            ) from None
        return start, stop
    if args.plan is None:
        raise CommandError("--node needs --plan, the plan JSON to read the stage from")
    try:
        plan = json.loads(Path(args.plan).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CommandError(f"cannot read plan {args.plan}: {exc}") from exc
    for stage in plan.get("stages", []):
        if stage.get("node") == args.node:
            if stage.get("layers") != names[stage["first_layer"] : stage["end_layer"]]:
                raise CommandError(
                    f"plan stage of {args.node!r} names layers {stage.get('layers')} "
                    "that are not this model's layers at that range; was the plan "
                    "made for this model?"
                )
            return stage["first_layer"], stage["end_layer"]
    nodes = [s.get("node") for s in plan.get("stages", [])]
    raise CommandError(
        f"node {args.node!r} has no stage in the plan (stages on {nodes})"
    )


def main(args: argparse.Namespace) -> int:
    from agent._nn import ModelSpecError, load_model
    from agent._pipeline import StageWorker

    try:
        model = load_model(args.model, args.weights)
    except ModelSpecError as exc:
        raise CommandError(str(exc)) from exc
    if model.unused_weights:
        log.warning("weights no layer uses: %s", ", ".join(model.unused_weights))
    names = [layer.name for layer in model.layers]
    start, stop = _layer_range(args, len(model), names)
    try:
        worker = StageWorker(model, start, stop, args.next, bind=args.bind)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    print(f"READY {worker.endpoint}", flush=True)
    log.info(
        "stage layers %d:%d (%s .. %s) on %s -> %s",
        start, stop, names[start], names[stop - 1], worker.endpoint, args.next,
    )  # fmt: skip
    try:
        stats = worker.serve(args.idle_timeout_s)
    finally:
        worker.close()
    log.info(
        "stage %d:%d done: %d batches, %d refused, %.3f s computing",
        start, stop, stats.batches, stats.errors, stats.compute_s,
    )  # fmt: skip
    sys.stdout.flush()
    return 0
