"""``python -m ground passes``: predict contact windows from a TLE or OMM file."""

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime

from agent._cli import CommandError
from agent._geo import Position
from agent._stations import GroundStation

log = logging.getLogger(__name__)

STATION_FORMAT = "NAME,LAT_DEG,LON_DEG,ALT_KM[,MIN_ELEVATION_DEG]"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tle", required=True, help="TLE file (2- or 3-line) or OMM .json/.csv/.xml"
    )
    parser.add_argument(
        "--station",
        action="append",
        required=True,
        metavar=STATION_FORMAT,
        help="a ground station; repeat for several (minimum elevation default 5)",
    )
    parser.add_argument(
        "--start",
        required=True,
        help="start time, ISO 8601 (e.g. 2024-11-05T00:00:00Z; no offset means UTC)",
    )
    parser.add_argument("--hours", type=float, required=True, help="search length")
    parser.add_argument(
        "--satellite",
        action="append",
        help="only this satellite (exact name); repeat for several",
    )
    parser.add_argument("--downlink-mbps", type=float, default=100.0)
    parser.add_argument("--uplink-mbps", type=float, default=20.0)
    parser.add_argument(
        "--refraction",
        action="store_true",
        help="apply the minimum elevation to the apparent elevation (Bennett "
        "refraction at 10 C, 1010 mbar); default: geometric elevation",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")


def parse_station(
    spec: str, downlink_mbps: float, uplink_mbps: float, refraction: bool = False
) -> GroundStation:
    parts = [p.strip() for p in spec.split(",")]
    if len(parts) not in (4, 5) or not parts[0]:
        raise CommandError(
            f"--station {spec!r} has {len(parts)} fields; expected {STATION_FORMAT}"
        )
    try:
        numbers = [float(p) for p in parts[1:]]
    except ValueError:
        raise CommandError(
            f"--station {spec!r}: latitude, longitude, altitude and minimum "
            f"elevation must be numbers; expected {STATION_FORMAT}"
        ) from None
    try:
        position = Position(numbers[0], numbers[1], numbers[2])
        extra = {"min_elevation_deg": numbers[3]} if len(numbers) == 4 else {}
        return GroundStation(
            parts[0],
            position,
            uplink_mbps,
            downlink_mbps,
            refraction=refraction,
            **extra,
        )
    except ValueError as exc:
        raise CommandError(f"--station {spec!r}: {exc}") from None


def parse_start(text: str) -> datetime:
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(
            f"--start {text!r} is not ISO 8601; expected e.g. 2024-11-05T00:00:00Z"
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def main(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except BrokenPipeError:
        # the reader (e.g. ``| head``) has gone: stop quietly, as Unix tools
        # do, and keep the interpreter from failing again on its final flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _run(args: argparse.Namespace) -> int:
    from ground._scheduler import SyncScheduler

    if not args.hours > 0:
        raise CommandError(f"--hours {args.hours} must be positive")
    stations = [
        parse_station(s, args.downlink_mbps, args.uplink_mbps, args.refraction)
        for s in args.station
    ]
    start = parse_start(args.start)
    try:
        scheduler = SyncScheduler(stations)
        load = scheduler.add_tle_file(args.tle)
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    for problem in load.problems:
        log.warning("skipped %s: %s", args.tle, problem)
    names = args.satellite or scheduler.satellites
    missing = [n for n in names if n not in scheduler.satellites]
    if missing:
        raise CommandError(f"--satellite {missing} not found in {args.tle}")
    if not names:
        raise CommandError(f"{args.tle} holds no usable element set")
    search = scheduler.search(args.hours, start, names)
    for status in search.failed:
        log.warning(
            "%s: no windows, SGP4 error %d (%s)",
            status.satellite,
            status.error_code,
            status.reason,
        )

    if args.json:
        doc = {
            "start": start.isoformat(),
            "hours": args.hours,
            "refraction": args.refraction,
            "windows": [w.to_dict() for w in search.windows],
            "failed": [
                {
                    "satellite": s.satellite,
                    "error_code": s.error_code,
                    "reason": s.reason,
                }
                for s in search.failed
            ],
            "skipped": [str(p) for p in load.problems],
        }
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0

    header = (
        f"{'satellite':<24} {'station':<12} {'AOS (UTC)':<19} {'TCA':<11} "
        f"{'LOS':<11} {'dur s':>8} {'max el':>6} {'down MB':>9} {'up MB':>8} flags"
    )
    print(header)
    for w in search.windows:
        flags = ",".join(f.name for f in type(w.flags) if f and f in w.flags)
        print(
            f"{w.satellite[:24]:<24} {w.station.name[:12]:<12} "
            f"{w.start_time:%Y-%m-%d %H:%M:%S} "
            f"{_clock(w.tca_time, w.start_time):<11} "
            f"{_clock(w.end_time, w.start_time):<11} {w.duration_seconds:8.1f} "
            f"{w.max_elevation_deg:6.2f} {w.data_capacity_mb:9.1f} "
            f"{w.uplink_capacity_mb:8.1f} {flags}"
        )
    print(
        f"{len(search.windows)} windows, {len(names)} satellites, "
        f"{len(stations)} stations, {len(search.failed)} could not be propagated"
    )
    return 0


def _clock(t: datetime, aos: datetime) -> str:
    """HH:MM:SS, with +Nd when ``t`` falls N days after the AOS date."""
    days = (t.date() - aos.date()).days
    return f"{t:%H:%M:%S}" + (f"+{days}d" if days else "")
