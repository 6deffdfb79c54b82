"""The demo launcher: federated training across a constellation, end to end.

``run_demo(options)`` prepares a run in ``options.out`` and then starts, as
separate processes, the ground aggregator daemon (``python -m ground serve``,
``ground._daemon``, with a generated ``ground.toml``) and one agent per
satellite (``agent._demo_agent``).  All of them compute the same simulated
time from one ``SimClock`` (600x by default), so a day of orbits passes in a
few minutes.  Per run the launcher:

1. splits the data (``ground._data``) into per-satellite shards and a ground
   test split;
2. makes the orbits (a Walker constellation with its epoch at the start of
   the run, or the user's TLEs starting at their epoch) and the station list;
3. makes CURVE key pairs for the daemon, every agent and a ground-side
   observer, and the daemon's allowlist directory of the public keys;
4. starts the processes; while they run, the observer asks the daemon for
   the current model like an agent that holds none, scores each new version
   on the test split and feeds the progress line;
5. stops them at the end of the simulated span and reads the agents' event
   logs and outboxes and the daemon's journal into a ``RunSummary``
   (``ground._report``).

With ``compare`` it repeats the run as the dense synchronous FedAvg baseline
on the same orbits, stations and data.
"""

import bisect
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from agent import _wire as W
from agent._clock import SimClock
from agent._demo_orbit import (
    Window,
    contact_windows,
    station_to_dict,
    tle_epoch,
)
from agent._geo import Position
from agent._keys import make_keypair
from agent._mlp import init_weights
from agent._outbox import Outbox
from agent._stations import GroundStation
from ground._data import DataSplit, prepare_data
from ground._report import ContactRecord, RunSummary

logger = logging.getLogger(__name__)


# name, latitude (deg), longitude (deg), altitude (km), downlink / uplink
# (Mbit/s), elevation mask (deg).  Coordinates of the real sites (KSAT,
# SSC, NASA, CNES/ESA); rates are typical of S/X-band LEO ground terminals.
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
OBSERVER_ID = "ground-observer"
# Round deadline, simulated seconds: a synchronous round waits this long for a
# satellite that has gone quiet; for FEDBUFF/FEDASYNC it is the checkpoint
# period.
ROUND_DEADLINE_S = 4 * 3600.0
GROUND_START_TIMEOUT_S = 30.0
POLL_S = 0.3

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


# -- one run -----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dense_update_bytes(weights: dict[str, np.ndarray], sat_id: str) -> int:
    """The wire size of one dense float32 UPDATE of this model."""
    return len(
        W.encode(
            W.update(
                sat_id, 0, 1, 0.0, base_version=0, num_samples=1,
                metrics={"loss": 0.0, "train_accuracy": 0.0}, delta=weights,
            )
        )
    )  # fmt: skip


def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a process killed mid-line leaves a partial last line
    return events


@dataclass
class _Run:
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


def _write_json(path: Path, obj: Any) -> Path:
    path.write_text(json.dumps(obj, indent=1))
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> Path:
    """Write flat tables of scalars and lists (all ``ground.toml`` needs)."""
    lines = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in table.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path


class Observer:
    """A ground-side client that fetches the global model to score it.

    It speaks to the daemon like an agent that holds no model (a HELLO with
    version -1, answered with the current MODEL) under its own CURVE key, and
    never sends an update, so it cannot change the training.  Each new
    version is scored on the ground's test split.
    """

    def __init__(self, endpoint, curve, clock: SimClock, X_test, y_test) -> None:
        from agent._transport import DealerTransport

        self.transport = DealerTransport(endpoint, OBSERVER_ID, curve=curve)
        self.clock = clock
        self.X_test, self.y_test = X_test, y_test
        self.seq = 0
        # (simulated s, model version, round, test accuracy)
        self.curve: list[tuple[float, int, int, float]] = []

    def poll(self, wait_s: float = 0.3) -> None:
        from agent._mlp import evaluate

        self.seq += 1
        self.transport.send(
            W.encode(W.hello(OBSERVER_ID, self.seq, self.clock.now().timestamp()))
        )
        deadline = time.time() + wait_s
        while time.time() < deadline:
            data = self.transport.recv(deadline - time.time())
            if data is None:
                return
            try:
                message = W.decode(data)
            except W.WireError:
                continue
            if message.type is not W.MessageType.MODEL:
                continue
            version = int(message.body["version"])
            if self.curve and self.curve[-1][1] == version:
                return
            accuracy = evaluate(message.body["weights"], self.X_test, self.y_test)
            self.curve.append(
                (max(0.0, self.clock.elapsed_s()), version, message.round, accuracy)
            )
            return

    def close(self) -> None:
        self.transport.close()


def _launch(run: _Run, progress: Callable[[float, dict | None], None] | None):
    """Start the daemon and the agents, follow the run, stop them at its end."""
    from agent._keys import load_public, load_secret
    from agent._transport import CurveClientKeys

    o = run.options
    d = run.dir
    for sub in ("keys", "allow", "config", "events", "outbox", "logs", "state"):
        (d / sub).mkdir(parents=True, exist_ok=True)

    if o.curve:
        make_keypair(d / "keys", "ground")
        for name in [*run.sat_ids, OBSERVER_ID]:
            public, _ = make_keypair(d / "keys", name)
            (d / "allow" / public.name).write_bytes(public.read_bytes())

    def client_keys(name: str) -> CurveClientKeys | None:
        if not o.curve:
            return None
        public, secret = load_secret(d / "keys" / f"{name}.key_secret")
        return CurveClientKeys(public, secret, load_public(d / "keys" / "ground.key"))

    end_sim_s = o.sim_hours * 3600.0
    clock = SimClock(run.epoch, time.time() + o.startup_s, o.speedup)
    endpoint = f"tcp://127.0.0.1:{_free_port()}"
    model0 = d / "model0.npz"
    np.savez(
        model0,
        **init_weights(run.data.input_dim, o.hidden, run.data.num_classes, o.seed),
    )
    aggregation: dict[str, Any] = {"strategy": run.strategy}
    if run.strategy == "fedbuff":
        aggregation.update(buffer_size=o.buffer_size, staleness_a=0.5)
    elif run.strategy == "fedasync":
        aggregation.update(mixing=0.5, staleness_a=0.5)
    ground_toml = write_toml(
        d / "config" / "ground.toml",
        {
            "ground": {
                "bind": endpoint,
                "state_dir": str(d / "state"),
                "endpoint_file": str(d / "ground.endpoint"),
            },
            "security": {
                "curve": o.curve,
                "secret_key": str(d / "keys" / "ground.key_secret"),
                "allowlist_dir": str(d / "allow"),
            },
            "rounds": {
                "min_participants": 1,
                "expected_agents": run.sat_ids,
                "deadline_s": ROUND_DEADLINE_S,
            },
            "aggregation": aggregation,
            "model": {"npz": str(model0)},
            "metrics": {"enabled": True, "port": 0},
            "clock": {
                "sim_epoch": clock.sim_epoch.isoformat(),
                "wall_start": clock.wall_start,
                "speedup": clock.speedup,
            },
        },
    )
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    procs: dict[str, subprocess.Popen] = {}

    def spawn(name: str, argv: list[str]) -> subprocess.Popen:
        log = open(d / "logs" / f"{name}.log", "w")
        return subprocess.Popen(
            [sys.executable, *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )

    procs["ground"] = spawn(
        "ground",
        ["-m", "ground", "--log-level", o.log_level, "serve", "--config",
         str(ground_toml)],
    )  # fmt: skip
    for sat, tle, shard in zip(
        run.sat_ids, run.tles, run.data.shard_paths, strict=True
    ):
        config = {
            "id": sat,
            "endpoint": endpoint,
            "curve": None
            if not o.curve
            else {
                "secret": str(d / "keys" / f"{sat}.key_secret"),
                "server_public": str(d / "keys" / "ground.key"),
            },
            "clock": clock.to_dict(),
            "end_sim_s": end_sim_s,
            "tle": list(tle),
            "stations": [station_to_dict(s) for s in run.stations],
            "trainer": {
                "kind": "mlp",
                "data": str(shard),
                "hidden": list(o.hidden),
                "local_steps": o.local_steps,
                "lr": o.lr,
                "batch_size": o.batch_size,
                "seed": o.seed,
                "num_classes": run.data.num_classes,
            },
            "compression": run.compression,
            "outbox": str(d / "outbox" / f"{sat}.sqlite"),
            "events": str(d / "events" / f"{sat}.jsonl"),
            "log_level": o.log_level,
        }
        path = _write_json(d / "config" / f"{sat}.json", config)
        procs[sat] = spawn(sat, ["-m", "agent._demo_agent", str(path)])
    _write_json(d / "pids.json", {name: p.pid for name, p in procs.items()})

    observer = None
    wall_started = time.time()
    try:
        while not (d / "ground.endpoint").exists():
            if procs["ground"].poll() is not None:
                break
            if time.time() - wall_started > GROUND_START_TIMEOUT_S:
                raise DemoError(
                    f"the ground daemon did not bind {endpoint} within "
                    f"{GROUND_START_TIMEOUT_S:.0f} s; see {d / 'logs' / 'ground.log'}"
                )
            time.sleep(0.05)
        observer = Observer(
            endpoint,
            client_keys(OBSERVER_ID),
            clock,
            run.data.X_test,
            run.data.y_test,
        )
        while True:
            ground_rc = procs["ground"].poll()
            if ground_rc is not None:
                raise DemoError(
                    f"the ground daemon exited with code {ground_rc}; see "
                    f"{d / 'logs' / 'ground.log'}"
                )
            observer.poll()
            elapsed = max(0.0, clock.elapsed_s())
            if progress is not None:
                last = observer.curve[-1] if observer.curve else None
                progress(
                    min(elapsed, end_sim_s),
                    None if last is None else {"version": last[1], "accuracy": last[3]},
                )
            if elapsed >= end_sim_s:
                break
            time.sleep(POLL_S)
    finally:
        if observer is not None:
            observer.close()
        exit_codes = _stop_all(procs)
    curve = observer.curve if observer is not None else []
    return curve, end_sim_s, exit_codes, time.time() - wall_started


def _stop_all(procs: dict[str, subprocess.Popen], timeout_s: float = 10.0):
    """SIGTERM everything still running, SIGKILL what does not stop in time."""
    exit_codes = {name: p.poll() for name, p in procs.items()}
    for name, p in procs.items():
        if exit_codes[name] is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.time() + timeout_s
    for name, p in procs.items():
        if exit_codes[name] is not None:
            continue
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop on SIGTERM; killing it", name)
            p.kill()
            p.wait()
        # Exit code 0 after our SIGTERM: it was alive until the end.
    return exit_codes


def _summarise(
    run: _Run,
    curve: list[tuple[float, int, int, float]],
    end_sim_s: float,
    exit_codes: dict,
    wall_s: float,
) -> RunSummary:
    from ground._journal import Journal

    d = run.dir
    agents = {sat: _read_events(d / "events" / f"{sat}.jsonl") for sat in run.sat_ids}
    summary = RunSummary(
        label=run.label,
        strategy=run.strategy,
        compression=_describe_compression(run.compression),
        num_satellites=len(run.sat_ids),
        sim_hours=end_sim_s / 3600.0,
        wall_s=wall_s,
    )
    summary.accuracy_curve = [(t / 3600.0, acc, v) for t, v, _, acc in curve]
    summary.rounds = curve[-1][1] if curve else 0
    # What the daemon journaled, i.e. accepted durably before it ACKed.
    journal = Journal(d / "state")
    accepted = journal.seen()
    journal.close()
    summary.updates_aggregated = len(accepted)

    sent_ids, acked_ids, nacked_ids, held_ids = set(), set(), set(), set()
    sends = 0
    windows = contact_windows(run.tles, run.stations, run.epoch, end_sim_s)
    used: set[tuple[str, str, int]] = set()
    lost_satellites = []
    for sat, events in agents.items():
        code = exit_codes.get(sat)
        if code is not None and code != 0:
            lost_satellites.append(sat)
        elif events and events[-1]["event"] != "stop":
            lost_satellites.append(sat)
        for e in events:
            if e["event"] == "sent":
                sent_ids.add((sat, e["round"], e["seq"]))
                sends += 1
                summary.bytes_sent += e["bytes"]
                t_h = e["t_sim_s"]
                for i, w in enumerate(windows):
                    if (
                        w.satellite == sat
                        and w.station == e["station"]
                        and (w.start - run.epoch).total_seconds() - 5 <= t_h
                        and t_h <= (w.end - run.epoch).total_seconds() + 60
                    ):
                        used.add((sat, w.station, i))
            elif e["event"] == "ack":
                acked_ids.add((sat, e["round"], e["seq"]))
            elif e["event"] == "nack":
                nacked_ids.add((sat, e["round"], e["seq"]))
        outbox_path = d / "outbox" / f"{sat}.sqlite"
        if outbox_path.exists():
            with Outbox(outbox_path) as box:
                held_ids |= {(sat, x.round, x.seq) for x in box.pending()}
    summary.updates_sent = len(sent_ids)
    # Lost: sent, yet neither aggregated, nor refused with a NACK, nor still
    # held in the satellite's outbox for a later pass.
    lost = sent_ids - accepted - nacked_ids - held_ids
    lost |= acked_ids - accepted
    summary.updates_lost = len(lost)
    summary.lost_satellites = sorted(lost_satellites)
    dense = _dense_update_bytes(
        init_weights(run.data.input_dim, run.options.hidden, run.data.num_classes, 0),
        run.sat_ids[0],
    )
    summary.dense_bytes_equivalent = sends * dense
    summary.contacts_predicted = len(windows)
    summary.contacts_used = len(used)
    used_index = {i for _, _, i in used}
    summary.contacts = [
        ContactRecord(
            w.satellite,
            w.station,
            (w.start - run.epoch).total_seconds() / 3600.0,
            (w.end - run.epoch).total_seconds() / 3600.0,
            i in used_index,
        )
        for i, w in enumerate(windows)
    ]
    # Bytes the satellites sent while each model version was current.
    steps_s = [t for t, _, _, _ in curve[1:]]
    summary.bytes_per_round = [0] * (len(steps_s) + 1)
    for events in agents.values():
        for e in events:
            if e["event"] == "sent":
                summary.bytes_per_round[bisect.bisect_left(steps_s, e["t_sim_s"])] += e[
                    "bytes"
                ]
    summary.extra.update(
        {
            "updates_held_in_outboxes": len(held_ids),
            "updates_nacked": len(nacked_ids),
            "transmissions": sends,
            "dense_update_bytes": dense,
            "exit_codes": exit_codes,
            "sim_epoch": run.epoch.isoformat(),
        }
    )
    return summary


def _describe_compression(config: dict[str, Any] | None) -> str:
    if not config:
        return "dense float32"
    return ", ".join(f"{k}={v}" for k, v in config.items())


# -- the whole demo ----------------------------------------------------------


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


def run_demo(
    options: DemoOptions,
    progress_factory: Callable[[str, float], Callable] | None = None,
) -> tuple[list[RunSummary], dict[str, Any]]:
    """Run the demo (and the baseline with ``compare``).

    Returns the run summaries (the demo first) and the settings for the report.
    """
    tles, stations, epoch, data = prepare(options)
    plans = [("orbitfl", options.strategy, options.compression)]
    if options.compare:
        plans.append(("baseline", "fedavg", None))
    summaries = []
    for label, strategy, compression in plans:
        run = _Run(
            label,
            strategy,
            compression,
            options.out / f"run-{label}",
            [name for name, _, _ in tles],
            tles,
            stations,
            epoch,
            data,
            options,
        )
        progress = (
            progress_factory(label, options.sim_hours * 3600.0)
            if progress_factory
            else None
        )
        curve, end_sim_s, codes, wall_s = _launch(run, progress)
        summaries.append(_summarise(run, curve, end_sim_s, codes, wall_s))
    return summaries, settings_of(options, stations, data)


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
    }  # fmt: skip


__all__ = ["DemoError", "DemoOptions", "run_demo", "Window"]
