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

For relaying, the launcher also computes the run's contact plan once
(inter-satellite links and every ground pass, ``agent._demo_orbit``), writes
it as JSON, and gives each agent its own loopback ISL endpoint and those of
its ISL neighbours.

With ``compare`` it repeats the run as the dense synchronous FedAvg baseline
on the same orbits, stations and data.
"""

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from agent import _wire as W
from agent._cgr import ContactPlan
from agent._clock import SimClock
from agent._demo_orbit import (
    demo_contact_plan,
    isl_neighbours,
    plan_to_dict,
    station_to_dict,
)
from agent._keys import make_keypair
from agent._mlp import init_weights
from ground._demo_inputs import (
    DEFAULT_COMPRESSION,
    STRATEGIES,
    DemoError,
    DemoOptions,
    RunPlan,
    prepare,
    settings_of,
)
from ground._demo_summary import summarise
from ground._report import RunSummary

logger = logging.getLogger(__name__)


OBSERVER_ID = "ground-observer"
# Round deadline, simulated seconds: a synchronous round waits this long for a
# satellite that has gone quiet; for FEDBUFF/FEDASYNC it is the checkpoint
# period.
ROUND_DEADLINE_S = 4 * 3600.0
GROUND_START_TIMEOUT_S = 30.0
POLL_S = 0.3

# -- one run -----------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: ask Linux for SIGTERM when the launcher dies.

    The children run in their own session (a Ctrl-C reaches only the
    launcher, which then stops them in order), so without this a launcher
    killed with SIGKILL would leave the daemon serving forever.  Elsewhere
    than Linux nothing is set and that case stays uncovered.
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1  # <linux/prctl.h>
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def _launch(
    run: RunPlan,
    progress: Callable[[float, dict | None], None] | None,
    plan: ContactPlan | None = None,
):
    """Start the daemon and the agents, follow the run, stop them at its end.

    With a contact ``plan`` the agents relay over ISLs; without, they only
    hold and upload.
    """
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
            preexec_fn=_die_with_parent,
        )

    relays: dict[str, dict[str, Any]] = {}
    if plan is not None:
        plan_path = _write_json(d / "config" / "contact_plan.json", plan_to_dict(plan))
        isl = {sat: f"tcp://127.0.0.1:{_free_port()}" for sat in run.sat_ids}
        for sat, peers in isl_neighbours(plan, run.sat_ids).items():
            relays[sat] = {
                "plan": str(plan_path),
                "bind": isl[sat],
                "min_gain_s": o.relay_min_gain_s,
                "allowlist": str(d / "allow") if o.curve else None,
                "neighbours": {
                    n: {"endpoint": isl[n], "public": str(d / "keys" / f"{n}.key")}
                    for n in peers
                },
            }
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
            "relay": relays.get(sat),
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


# -- the whole demo ----------------------------------------------------------


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
    # The baseline holds and uploads only, as plain FedAvg would.
    contact_plan = (
        demo_contact_plan(tles, stations, epoch, options.sim_hours * 3600.0)
        if options.relay
        else None
    )
    summaries = []
    for label, strategy, compression in plans:
        run = RunPlan(
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
        curve, end_sim_s, codes, wall_s = _launch(
            run, progress, contact_plan if label == "orbitfl" else None
        )
        summaries.append(summarise(run, curve, end_sim_s, codes, wall_s))
    return summaries, settings_of(options, stations, data)


__all__ = ["DEFAULT_COMPRESSION", "DemoError", "DemoOptions", "STRATEGIES", "run_demo"]
