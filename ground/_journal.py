"""The daemon's durable state: a journal of accepted updates and checkpoints.

Two files in the state directory:

- ``journal.sqlite`` (``synchronous=FULL``): one row per accepted update,
  ``(agent, round, seq)`` as the primary key, the epoch (the daemon round it
  was accepted in), the staleness and sample count it was aggregated with,
  and its UPDATE body bytes.  A batch of rows is committed before any of
  their ACKs is sent.  Rows outlive their round (without the body) so that a
  late resend of an old update is still recognised as a duplicate.
- ``checkpoint.msgpack``: the global model, the server optimizer's state, the
  model version and the round in progress, written to a temporary file,
  fsync'd and renamed over the old one (and the directory fsync'd), so a
  reader finds either the old checkpoint or the new one, never a mix.

Recovery loads the checkpoint and replays, in acceptance order, the journal
rows whose epoch is the checkpoint's round.  A crash between the checkpoint
rename and the journal cleanup is harmless: those rows belong to an older
epoch and are not replayed.
"""

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from agent._arrays import pack_array, unpack_array

CHECKPOINT_FORMAT = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS updates (
    agent TEXT NOT NULL,
    round INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    num_samples INTEGER NOT NULL,
    staleness INTEGER NOT NULL,
    body BLOB,
    PRIMARY KEY (agent, round, seq)
);
CREATE INDEX IF NOT EXISTS updates_epoch ON updates (epoch);
"""


@dataclass(frozen=True, slots=True)
class JournalRow:
    agent: str
    round: int
    seq: int
    num_samples: int
    staleness: int
    body: bytes


class Journal:
    """Accepted updates, durable before they are ACKed."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def seen(self) -> set[tuple[str, int, int]]:
        """Every ``(agent, round, seq)`` ever accepted."""
        return {
            (a, r, s)
            for a, r, s in self._db.execute("SELECT agent, round, seq FROM updates")
        }

    def append(self, rows: list[tuple[JournalRow, int]]) -> None:
        """Commit ``(row, epoch)`` pairs in one transaction (one fsync)."""
        if not rows:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO updates (agent, round, seq, epoch, num_samples, "
                "staleness, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (r.agent, r.round, r.seq, epoch, r.num_samples, r.staleness, r.body)
                    for r, epoch in rows
                ],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def replay(self, epoch: int) -> Iterator[JournalRow]:
        """The rows accepted in ``epoch``, in the order they were accepted."""
        cur = self._db.execute(
            "SELECT agent, round, seq, num_samples, staleness, body FROM updates "
            "WHERE epoch = ? AND body IS NOT NULL ORDER BY rowid",
            (epoch,),
        )
        for row in cur:
            yield JournalRow(*row)

    def release(self, epoch: int) -> None:
        """Drop the bodies of an epoch that a checkpoint now covers."""
        self._db.execute("UPDATE updates SET body = NULL WHERE epoch <= ?", (epoch,))


@dataclass
class Checkpoint:
    """What a restart needs besides the journal."""

    round: int
    version: int
    rounds_closed: int
    round_opened_s: float
    model: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]


def write_checkpoint(path: str | Path, cp: Checkpoint) -> int:
    """Atomically replace ``path`` with ``cp``; return the bytes written."""
    path = Path(path)
    data = msgpack.packb(
        {
            "format": CHECKPOINT_FORMAT,
            "round": cp.round,
            "version": cp.version,
            "rounds_closed": cp.rounds_closed,
            "round_opened_s": cp.round_opened_s,
            "model": {k: pack_array(v) for k, v in cp.model.items()},
            "optimizer_state": {
                k: pack_array(v) for k, v in cp.optimizer_state.items()
            },
        },
        use_bin_type=True,
    )
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    # The rename itself is durable only once the directory entry is on disk.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(data)


def read_checkpoint(path: str | Path) -> Checkpoint | None:
    """The checkpoint at ``path``, or None when there is none yet."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        obj: Any = msgpack.unpackb(data, raw=False, strict_map_key=True)
        if obj.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(
                f"format {obj.get('format')!r}, expected {CHECKPOINT_FORMAT}"
            )
        return Checkpoint(
            round=int(obj["round"]),
            version=int(obj["version"]),
            rounds_closed=int(obj["rounds_closed"]),
            round_opened_s=float(obj["round_opened_s"]),
            model={k: np.array(unpack_array(v)) for k, v in obj["model"].items()},
            optimizer_state={
                k: np.array(unpack_array(v)) for k, v in obj["optimizer_state"].items()
            },
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(
            f"checkpoint {path} is unreadable ({exc}); move it away to start over "
            "from the configured initial model"
        ) from None
