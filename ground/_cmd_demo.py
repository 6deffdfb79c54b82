"""``python -m ground demo``: federated training across a constellation."""

import argparse
import sys
import time
from pathlib import Path

from agent._cli import CommandError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ground._demo import STRATEGIES

    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument(
        "--agents", type=int, default=8, help="satellites, one process each (8)"
    )
    parser.add_argument(
        "--strategy",
        default="fedbuff",
        choices=STRATEGIES,
        help="aggregation: fedbuff (default), fedasync or synchronous fedavg",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also run the dense synchronous FedAvg baseline on the same orbits",
    )
    parser.add_argument("--tle", type=Path, help="CelesTrak TLE file (default: Walker)")
    parser.add_argument(
        "--stations",
        type=Path,
        help="stations file: NAME,LAT_DEG,LON_DEG,ALT_KM,DOWN_MBPS,UP_MBPS[,MIN_EL]",
    )
    parser.add_argument("--data", type=Path, help=".npz with arrays X and y")
    parser.add_argument(
        "--hours", type=float, default=None, help="simulated hours to run"
    )
    parser.add_argument(
        "--speedup", type=float, default=600.0, help="simulated s per wall s (600)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--alpha", type=float, default=0.5, help="Dirichlet non-IID alpha (0.5)"
    )
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="send dense float32 updates in the main run",
    )
    parser.add_argument(
        "--insecure", action="store_true", help="no CURVE encryption (debugging)"
    )


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from ground._demo import DEFAULT_COMPRESSION, DemoError, DemoOptions, run_demo
    from ground._report import summary_table, write_report

    options = DemoOptions(
        # Absolute, because the daemon and agents resolve the paths in their
        # generated configs against each config file's own directory.
        out=args.out.expanduser().resolve(),
        agents=args.agents,
        strategy=args.strategy,
        compare=args.compare,
        tle=args.tle,
        stations=args.stations,
        data=args.data,
        speedup=args.speedup,
        seed=args.seed,
        alpha=args.alpha,
        curve=not args.insecure,
        compression=None if args.no_compression else DEFAULT_COMPRESSION,
        log_level=args.log_level if args.log_level != "INFO" else "WARNING",
    )
    if args.hours is not None:
        options.sim_hours = args.hours
    try:
        options.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create --out {options.out}: {exc}") from None

    console = Console(stderr=True)
    progress = Progress(
        TextColumn("[bold]{task.fields[label]}"),
        BarColumn(),
        TextColumn("{task.completed:.1f}/{task.total:.0f} sim h"),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )

    def factory(label: str, total_s: float):
        task = progress.add_task(
            label, total=total_s / 3600.0, label=label, status="starting"
        )

        def update(elapsed_s: float, model: dict | None) -> None:
            status = "waiting for the first model"
            if model is not None:
                status = (
                    f"model v{model['version']}  acc {100 * model['accuracy']:.1f}%"
                )
            progress.update(task, completed=elapsed_s / 3600.0, status=status)

        return update

    started = time.time()
    try:
        with progress:
            summaries, settings = run_demo(options, factory)
    except DemoError as exc:
        raise CommandError(str(exc)) from None
    settings["wall_s_total"] = round(time.time() - started, 1)
    paths = write_report(options.out, summaries, settings)
    Console().print(summary_table(summaries))
    print(f"report: {paths['report']}", file=sys.stdout)
    lost = [s for s in summaries if s.updates_lost]
    return 1 if lost else 0
