"""kill -9 of a process in the middle of an outbox write (a power cut in a
transaction): nothing committed is lost, nothing half-written appears, and a
sequence number is never handed out twice.

What this does not cover: SIGKILL leaves the page cache intact, so it tests
SQLite's transaction logic, not whether ``fsync`` reaches the platter; a real
power cut needs a device that drops unsynced writes (dm-flakey), which these
machines do not offer.
"""

import hashlib
import random
import sqlite3
import subprocess
import sys
import time

import pytest

from agent._outbox import Outbox
from hil_tests._ledger import RunSummary
from hil_tests._outbox_writer import body_for

N_KILLS = 30
SEED = 20261203


def _check_body(round_: int, body: bytes) -> bool:
    tag = int.from_bytes(body[:4], "big")
    return body[4:] == body_for(round_, tag, len(body) - 4)


def _run_until_killed(db, seed, rng, py_env):
    """Start the writer, kill it after a random BEGIN; return its lines."""
    err = open(db.with_suffix(".stderr"), "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hil_tests._outbox_writer", str(db), str(seed), "256"],
        stdout=subprocess.PIPE,
        stderr=err,
        text=True,
        env=py_env,
    )
    lines = []
    begins_to_wait = rng.randint(1, 12)
    while begins_to_wait:
        line = proc.stdout.readline()
        if not line:
            err.seek(0)
            raise AssertionError(f"writer died by itself: {err.read()}")
        lines.append(line.rstrip("\n"))
        begins_to_wait -= line.startswith("BEGIN")
    # Mostly inside the transaction (a 256 kB put with synchronous=FULL takes
    # a few ms), sometimes just after it.
    time.sleep(rng.choice([0.0, 0.0005, 0.001, 0.002, 0.004, 0.01]))
    proc.kill()
    # Read through the same buffered reader: communicate() would read the
    # pipe underneath it and miss the lines already buffered here.
    rest = proc.stdout.read()
    proc.wait(timeout=30)
    err.close()
    assert proc.returncode == -9, f"writer exited {proc.returncode}, not by SIGKILL"
    lines += [x for x in rest.splitlines() if x]
    return lines


@pytest.mark.timeout(240)
def test_kill9_mid_outbox_write_loses_no_committed_update(tmp_path, py_env):
    db = tmp_path / "outbox.sqlite"
    rng = random.Random(SEED)
    durable: dict[tuple[int, int], str] = {}  # committed and not yet ACKed
    acked: set[tuple[int, int]] = set()
    committed: set[tuple[int, int]] = set()
    seqs_seen: set[int] = set()
    summary = RunSummary("outbox power cut (accounted = acked or stored)")
    for cycle in range(N_KILLS):
        lines = _run_until_killed(db, SEED + cycle, rng, py_env)
        in_flight = None
        for line in lines:
            word, *args = line.split()
            if word == "BEGIN":
                in_flight = (args[0], *map(int, args[1:]))
            elif word == "PUT":
                key = (int(args[0]), int(args[1]))
                assert key[1] not in seqs_seen, f"seq {key[1]} handed out twice"
                seqs_seen.add(key[1])
                durable[key] = args[2]
                committed.add(key)
                in_flight = None
            elif word == "ACK":
                key = (int(args[0]), int(args[1]))
                durable.pop(key)
                acked.add(key)
                in_flight = None
        summary.fault(
            "outbox_kill9_in_transaction" if in_flight else "outbox_kill9_between"
        )

        assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == (
            "ok",
        )
        with Outbox(db, max_entries=100_000, max_bytes=1 << 34, expiry_s=1e9) as box:
            stored = {(e.round, e.seq): e.body for e in box.pending()}
        extra = set(stored) - set(durable)
        missing = set(durable) - set(stored)
        if in_flight and in_flight[0] == "ack":
            key = (in_flight[1], in_flight[2])
            if key in missing:  # the ACK committed; the kill beat the print
                missing.discard(key)
                durable.pop(key)
                acked.add(key)
        if in_flight and in_flight[0] == "put" and extra:
            # The put committed; the kill beat the print.  It must be whole.
            assert len(extra) == 1, f"{len(extra)} unconfirmed entries: {extra}"
            key = extra.pop()
            assert key[0] == in_flight[1], f"entry {key} from a put of another round"
            assert key[1] not in seqs_seen, f"seq {key[1]} handed out twice"
            seqs_seen.add(key[1])
            durable[key] = hashlib.sha256(stored[key]).hexdigest()
            committed.add(key)
        assert not missing, f"cycle {cycle}: committed updates lost: {missing}"
        assert not extra, f"cycle {cycle}: entries nobody committed: {extra}"
        for key, sha in durable.items():
            assert hashlib.sha256(stored[key]).hexdigest() == sha, f"{key} changed"
            assert _check_body(key[0], stored[key]), f"{key} is not whole"

    in_tx = summary.faults["outbox_kill9_in_transaction"]
    assert in_tx >= N_KILLS // 3, (
        f"only {in_tx} of {N_KILLS} kills landed inside a transaction; the test "
        "does not exercise what it claims"
    )
    summary.accounting.produced = committed
    summary.accounting.add_aggregated(acked | set(durable))
    summary.notes = {"acked": len(acked), "still_stored": len(durable)}
    summary.record()
    assert summary.accounting.problems() == []
