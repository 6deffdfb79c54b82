"""The demo's summary of one run, from what its processes left behind.

The agents' event logs (JSON lines) say what each satellite sent, when and
over which station, and which ACKs and NACKs it got; their SQLite outboxes
say what is still waiting for a pass; the daemon's journal says what it
accepted durably.  Crossing the three gives the lost-update count.

An update is named by its origin's (satellite, round, seq) wherever it is:
in its origin's outbox, handed over an ISL into a neighbour's outbox (the
neighbour's events carry ``origin``), or in the journal.  It is lost only
when it was made or sent and is now in no outbox, not in the journal and
was not refused with a NACK.
"""

import bisect
import json
from pathlib import Path
from typing import Any

import numpy as np

from agent import _wire as W
from agent._demo_orbit import contact_windows
from agent._mlp import init_weights
from agent._outbox import Outbox
from ground._demo_inputs import RunPlan
from ground._report import ContactRecord, RunSummary


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


def summarise(
    run: RunPlan,
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
    made_ids, handed_ids, relay_acked = set(), set(), set()
    sends = isl_bytes = 0
    windows = contact_windows(run.tles, run.stations, run.epoch, end_sim_s)
    used: set[tuple[str, str, int]] = set()
    lost_satellites = []
    for sat, events in agents.items():
        # Lost: the process had died (non-zero exit, e.g. kill -9) before the
        # run ended.  An agent ends by itself with 0 at the end of the
        # simulated horizon; one still alive at the end is not lost even if it
        # was too slow to log its stop (under load the launcher may SIGKILL it).
        code = exit_codes.get(sat)
        if code is not None and code != 0:
            lost_satellites.append(sat)
        for e in events:
            # Relayed: the event names the origin; the update keeps its id.
            uid = (e.get("origin", sat), e.get("round"), e.get("seq"))
            if e["event"] == "trained":
                made_ids.add(uid)
            elif e["event"] == "handed":
                handed_ids.add(uid)
                isl_bytes += e["bytes"]
            if e["event"] == "sent":
                sent_ids.add(uid)
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
                acked_ids.add(uid)
                if "origin" in e and not e["duplicate"]:
                    relay_acked.add(uid)
            elif e["event"] == "nack":
                nacked_ids.add(uid)
        outbox_path = d / "outbox" / f"{sat}.sqlite"
        if outbox_path.exists():
            with Outbox(outbox_path) as box:
                held_ids |= {_held_id(sat, x) for x in box.pending()}
    summary.updates_sent = len(sent_ids)
    # Lost: made or sent, yet neither aggregated, nor refused with a NACK,
    # nor still held in some satellite's outbox (its own or, relayed, a
    # neighbour's) for a later pass.
    lost = (made_ids | sent_ids) - accepted - nacked_ids - held_ids
    lost |= acked_ids - accepted
    summary.updates_relayed = len(handed_ids)
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
            "relayed_aggregated": len(relay_acked & accepted),
            "relayed_held": len(handed_ids & held_ids),
            "isl_bytes": isl_bytes,
            "transmissions": sends,
            "dense_update_bytes": dense,
            "exit_codes": exit_codes,
            "sim_epoch": run.epoch.isoformat(),
        }
    )
    return summary


def _held_id(sat: str, entry) -> tuple[str, int, int]:
    """The update an outbox entry holds: its own, or the origin's if relayed."""
    if entry.kind == int(W.MessageType.RELAY):
        try:
            message = W.decode(entry.body)
            return (message.sender, message.round, message.seq)
        except W.WireError:
            pass
    return (sat, entry.round, entry.seq)


def _describe_compression(config: dict[str, Any] | None) -> str:
    if not config:
        return "dense float32"
    return ", ".join(f"{k}={v}" for k, v in config.items())
