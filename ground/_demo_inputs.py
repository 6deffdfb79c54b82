"""The demo's inputs: options, stations, orbits, data, validated in one place.

Everything here runs before any process starts, so a bad argument (an
unreadable TLE file, a data file without ``X``/``y``, zero agents) ends the
demo with one ``DemoError`` line and nothing to clean up.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from agent._demo_orbit import station_to_dict, tle_epoch
from agent._geo import Position
from agent._stations import GroundStation
from ground._data import DataSplit, prepare_data

logger = logging.getLogger(__name__)


def _station(
    name: str, position: Position, downlink_mbps: float, uplink_mbps: float
) -> GroundStation:
    return GroundStation(
        name,
        position,
        uplink_mbps=uplink_mbps,
        downlink_mbps=downlink_mbps,
        min_elevation_deg=10.0,
    )


# Coordinates of the real sites (KSAT, SSC, NASA, CNES/ESA); downlink and
# uplink rates (Mbit/s) typical of S/X-band LEO ground terminals; 10 deg mask.
DEFAULT_STATIONS: tuple[GroundStation, ...] = (
    _station("Svalbard", Position(78.2297, 15.3975, 0.5), 300.0, 10.0),
    _station("Fairbanks", Position(64.8594, -147.8497, 0.2), 150.0, 5.0),
    _station("Kiruna", Position(67.8833, 21.0667, 0.4), 150.0, 5.0),
    _station("Wallops", Position(37.9402, -75.4664, 0.0), 150.0, 5.0),
    _station("Kourou", Position(5.2515, -52.8047, 0.0), 100.0, 2.0),
    _station("Perth", Position(-31.8023, 115.8856, 0.0), 100.0, 2.0),
)

# The default Walker constellation: 550 km, sun-synchronous-like inclination,
# so every satellite passes the polar stations on most orbits.
WALKER_ALTITUDE_KM = 550.0
WALKER_INCLINATION_DEG = 97.6

STRATEGIES = ("fedbuff", "fedasync", "fedavg")

# The main run's update compression (agent._compression); None sends dense.
DEFAULT_COMPRESSION: dict[str, Any] | None = {
    "method": "topk_quantize",
    "sparsity": 0.97,
    "bits": 4,
    "error_feedback": True,
}


class DemoError(ValueError):
    """A problem with the demo's input, stated in one line."""


@dataclass
class DemoOptions:
    out: Path
    agents: int = 8
    strategy: str = "fedbuff"
    compare: bool = False
    tle: Path | None = None
    stations: Path | None = None
    data: Path | None = None
    sim_hours: float = 18.0
    speedup: float = 600.0
    seed: int = 0
    alpha: float = 0.5
    hidden: tuple[int, ...] = (256,)
    local_steps: int = 100
    lr: float = 0.1
    batch_size: int = 32
    buffer_size: int = 2
    compression: dict[str, Any] | None = field(default_factory=lambda: None)
    curve: bool = True
    tle_names: dict[str, str] = field(default_factory=dict)
    startup_s: float = 4.0
    log_level: str = "WARNING"
    # Relay over ISLs when a neighbour reaches the ground this many simulated
    # seconds sooner than the satellite's own next pass (agent._demo_relay).
    relay: bool = True
    relay_min_gain_s: float = 600.0


# -- inputs ------------------------------------------------------------------


def load_tle_file(path: Path) -> list[tuple[str, str, str]]:
    """Read a TLE (CelesTrak) or OMM file into ``(name, line1, line2)``.

    Entries the reader rejects are logged and skipped (one bad entry does not
    sink a file); ``DemoError`` when the file cannot be read or yields nothing.
    """
    from agent._tle import load_elements

    try:
        loaded = load_elements(path)
    except OSError as exc:
        raise DemoError(f"cannot read TLE file {path}: {exc.strerror}") from None
    for problem in loaded.problems:
        logger.warning("TLE file %s: skipped %s", path, problem)
    if not loaded.entries:
        first = f"; first problem: {loaded.problems[0]}" if loaded.problems else ""
        raise DemoError(
            f"TLE file {path} holds no usable element set (two-line sets with "
            f"lines starting '1 ' and '2 ', or OMM){first}"
        )
    return [(e.name, e.line1, e.line2) for e in loaded.entries]


def load_stations_file(path: Path) -> list[GroundStation]:
    """Read ``name,lat_deg,lon_deg,alt_km,downlink_mbps,uplink_mbps[,min_el_deg]``.

    One station per line; blank lines and lines starting with ``#`` are
    skipped.  Every bad line is reported at once.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise DemoError(f"cannot read stations file {path}: {exc.strerror}") from None
    stations, problems = [], []
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) not in (6, 7):
                raise ValueError(f"has {len(parts)} fields")
            numbers = [float(p) for p in parts[1:]]
            stations.append(
                GroundStation(
                    parts[0],
                    Position(*numbers[:3]),
                    uplink_mbps=numbers[4],
                    downlink_mbps=numbers[3],
                    min_elevation_deg=numbers[5] if len(numbers) == 6 else 10.0,
                )
            )
        except ValueError as exc:
            problems.append(f"line {n} {exc}")
    if problems:
        raise DemoError(
            f"stations file {path}: {'; '.join(problems[:3])}; expected "
            "NAME,LAT_DEG,LON_DEG,ALT_KM,DOWNLINK_MBPS,UPLINK_MBPS[,MIN_EL_DEG]"
        )
    if not stations:
        raise DemoError(f"stations file {path} lists no station")
    return stations


def check_options(options: DemoOptions) -> None:
    problems = []
    if options.agents < 1:
        problems.append(f"--agents {options.agents}: need at least 1 agent")
    if options.strategy not in STRATEGIES:
        problems.append(
            f"--strategy {options.strategy}: expected one of {', '.join(STRATEGIES)}"
        )
    if not options.sim_hours > 0:
        problems.append(f"--hours {options.sim_hours}: must be positive")
    if not options.speedup > 0:
        problems.append(f"--speedup {options.speedup}: must be positive")
    if problems:
        raise DemoError("; ".join(problems))


@dataclass
class RunPlan:
    """One run of the demo: what it trains, on which orbits, where it writes."""

    label: str
    strategy: str
    compression: dict[str, Any] | None
    dir: Path
    sat_ids: list[str]
    tles: list[tuple[str, str, str]]
    stations: list[GroundStation]
    epoch: datetime
    data: DataSplit
    options: DemoOptions


def prepare(
    options: DemoOptions,
) -> tuple[list, list[GroundStation], datetime, DataSplit]:
    """Validate inputs and build orbits, stations and data (no processes yet)."""
    check_options(options)
    stations = (
        load_stations_file(options.stations)
        if options.stations
        else list(DEFAULT_STATIONS)
    )
    if options.tle is not None:
        tles = load_tle_file(options.tle)
        if len(tles) < options.agents:
            raise DemoError(
                f"TLE file {options.tle} holds {len(tles)} satellites but "
                f"--agents is {options.agents}; lower --agents"
            )
        tles = tles[: options.agents]
        epoch = max(tle_epoch(l1, l2) for _, l1, l2 in tles).replace(microsecond=0)
        # Agent ids must be wire-safe; the report keeps the catalog names.
        options.tle_names = {f"sat-{i:03d}": n for i, (n, _, _) in enumerate(tles)}
        tles = [(f"sat-{i:03d}", l1, l2) for i, (_, l1, l2) in enumerate(tles)]
    else:
        from agent._walker import walker_tles

        epoch = datetime.now(UTC).replace(microsecond=0)
        planes = max(1, min(options.agents, 4))
        per_plane = -(-options.agents // planes)
        tles = walker_tles(
            planes, per_plane, 1 % planes, WALKER_ALTITUDE_KM,
            WALKER_INCLINATION_DEG, epoch,
        )[: options.agents]  # fmt: skip
    data_dir = options.out / "shards"
    try:
        data = prepare_data(
            data_dir,
            options.agents,
            alpha=options.alpha,
            seed=options.seed,
            data_path=options.data,
            satellite_ids=[name for name, _, _ in tles],
        )
    except ValueError as exc:
        raise DemoError(str(exc)) from None
    return tles, stations, epoch, data


def settings_of(
    options: DemoOptions, stations: Sequence[GroundStation], data: DataSplit
) -> dict[str, Any]:
    return {
        "agents": options.agents,
        "strategy": options.strategy,
        "compare": options.compare,
        "orbits": str(options.tle) if options.tle else "walker",
        "tle_names": options.tle_names,
        "stations": [station_to_dict(s) for s in stations],
        "data": data.name,
        "shard_sizes": data.shard_sizes,
        "test_samples": int(len(data.y_test)),
        "sim_hours": options.sim_hours,
        "speedup": options.speedup,
        "seed": options.seed,
        "alpha": options.alpha,
        "model": {"hidden": list(options.hidden), "local_steps": options.local_steps,
                  "lr": options.lr, "batch_size": options.batch_size},
        "curve": options.curve,
        "relay": options.relay,
        "relay_min_gain_s": options.relay_min_gain_s,
    }  # fmt: skip
