"""The agent's store-and-forward outbox: updates wait here until ACKed.

An update is written to SQLite (``synchronous=FULL``: on disk when
:meth:`Outbox.put` returns) before it is sent, and deleted only when the
ground's ACK arrives.  After a crash or a reboot the agent finds every
un-ACKed update still here and sends it again; the ground drops duplicates by
(agent id, round, seq), so a resend is always safe.

The sequence counter lives in the same database and is advanced in the same
transaction that stores the update, so seq numbers are never reused across
reboots.

The outbox is bounded twice, by entry count and by stored bytes.  When a new
update does not fit, the entries of the OLDEST round are dropped first (an old
round's update is the least useful: the ground has most likely closed that
round already), each drop counted and returned so the agent can log it.
Entries also expire ``expiry_s`` after they were stored.  The update being
stored is never dropped to make room for itself; one that is larger than the
whole byte budget is refused with an error.
"""

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    round INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    created_s REAL NOT NULL,
    expires_s REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_sent_s REAL,
    nbytes INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (round, seq)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""

_COUNTERS = ("next_seq", "dropped_full", "expired", "acked", "nacked")


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored message: the body bytes and where it stands."""

    round: int
    seq: int
    kind: int
    created_s: float
    expires_s: float
    attempts: int
    last_sent_s: float | None
    body: bytes


class OutboxFull(ValueError):
    """An update is larger than the outbox's whole byte budget."""


class Outbox:
    """A durable FIFO of un-ACKed messages in one SQLite file.

    ``max_entries`` and ``max_bytes`` bound it; ``expiry_s`` is how long an
    entry may wait.  Times are seconds on the agent's clock (simulated or
    real), passed in by the caller so the outbox follows the agent's clock.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_entries: int = 1000,
        max_bytes: int = 256 * 1024 * 1024,
        expiry_s: float = 7 * 86400.0,
    ) -> None:
        problems = []
        if max_entries < 1:
            problems.append(f"max_entries={max_entries} must be >= 1")
        if max_bytes < 1:
            problems.append(f"max_bytes={max_bytes} must be >= 1")
        if not expiry_s > 0:
            problems.append(f"expiry_s={expiry_s} must be > 0")
        if problems:
            raise ValueError("invalid outbox settings: " + "; ".join(problems))
        self.path = Path(path)
        self.max_entries = int(max_entries)
        self.max_bytes = int(max_bytes)
        self.expiry_s = float(expiry_s)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False
        )
        # WAL with synchronous=FULL: a committed transaction survives power loss.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        with self._tx():
            for key in _COUNTERS:
                self._db.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)", (key,)
                )

    def _tx(self):
        return _Transaction(self._db, self._lock)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> "Outbox":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ writes

    def next_seq(self) -> int:
        """Reserve and return a sequence number (durable, never reused)."""
        with self._tx():
            return self._take_seq()

    def _take_seq(self) -> int:
        (seq,) = self._db.execute(
            "SELECT value FROM meta WHERE key = 'next_seq'"
        ).fetchone()
        self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (seq + 1,))
        return seq

    def put(
        self,
        round: int,
        kind: int,
        body: bytes,
        now_s: float,
        *,
        meta: dict[str, int] | None = None,
    ) -> tuple[int, list[tuple[int, int]]]:
        """Store ``body`` durably; return ``(seq, dropped)``.

        ``dropped`` lists the ``(round, seq)`` of older entries removed to make
        room, oldest round first.  ``meta`` values (see :meth:`set_meta`) are
        written in the same transaction.  Raises :class:`OutboxFull` when
        ``body`` alone exceeds ``max_bytes``.
        """
        nbytes = len(body)
        if nbytes > self.max_bytes:
            raise OutboxFull(
                f"an update of {nbytes} bytes cannot fit an outbox of "
                f"max_bytes={self.max_bytes}; raise [outbox] max_mb"
            )
        with self._tx():
            self._expire(now_s)
            dropped = []
            count, total = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM entries"
            ).fetchone()
            victims = self._db.execute(
                "SELECT round, seq, nbytes FROM entries ORDER BY round, seq"
            )
            for r, s, n in victims.fetchall():
                if count + 1 <= self.max_entries and total + nbytes <= self.max_bytes:
                    break
                self._db.execute(
                    "DELETE FROM entries WHERE round = ? AND seq = ?", (r, s)
                )
                dropped.append((r, s))
                count -= 1
                total -= n
            if dropped:
                self._bump("dropped_full", len(dropped))
            seq = self._take_seq()
            self._db.execute(
                "INSERT INTO entries (round, seq, kind, created_s, expires_s, "
                "nbytes, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (round, seq, kind, now_s, now_s + self.expiry_s, nbytes, body),
            )
            for key, value in (meta or {}).items():
                self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                    ("user:" + key, int(value)),
                )
        return seq, dropped

    def mark_sent(self, round: int, seq: int, now_s: float) -> None:
        with self._tx():
            self._db.execute(
                "UPDATE entries SET attempts = attempts + 1, last_sent_s = ? "
                "WHERE round = ? AND seq = ?",
                (now_s, round, seq),
            )

    def ack(self, round: int, seq: int) -> bool:
        """Delete the entry the ground ACKed; False if it was not here."""
        return self._remove(round, seq, "acked")

    def nack(self, round: int, seq: int) -> bool:
        """Delete an entry the ground refused for good; False if it was not here."""
        return self._remove(round, seq, "nacked")

    def _remove(self, round: int, seq: int, counter: str) -> bool:
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM entries WHERE round = ? AND seq = ?", (round, seq)
            )
            if cur.rowcount:
                self._bump(counter, cur.rowcount)
            return cur.rowcount > 0

    def expire(self, now_s: float) -> list[tuple[int, int]]:
        """Delete entries past their expiry; return their ``(round, seq)``."""
        with self._tx():
            return self._expire(now_s)

    def _expire(self, now_s: float) -> list[tuple[int, int]]:
        gone = self._db.execute(
            "SELECT round, seq FROM entries WHERE expires_s <= ? ORDER BY round, seq",
            (now_s,),
        ).fetchall()
        if gone:
            self._db.execute("DELETE FROM entries WHERE expires_s <= ?", (now_s,))
            self._bump("expired", len(gone))
        return [tuple(g) for g in gone]

    def _bump(self, key: str, n: int) -> None:
        self._db.execute("UPDATE meta SET value = value + ? WHERE key = ?", (n, key))

    # ------------------------------------------------------------------- reads

    def pending(self) -> list[Entry]:
        """Every stored entry, oldest round first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT round, seq, kind, created_s, expires_s, attempts, "
                "last_sent_s, body FROM entries ORDER BY round, seq"
            ).fetchall()
        return [Entry(*row) for row in rows]

    def waiting(self) -> list[tuple[int, int, int, int]]:
        """``(round, seq, kind, attempts)`` of every entry, oldest round first.

        Cheaper than :meth:`pending` (no bodies), for the agent's send loop.
        """
        with self._lock:
            return self._db.execute(
                "SELECT round, seq, kind, attempts FROM entries ORDER BY round, seq"
            ).fetchall()

    def body(self, round: int, seq: int) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM entries WHERE round = ? AND seq = ?", (round, seq)
            ).fetchone()
        return None if row is None else row[0]

    def rounds(self) -> set[int]:
        with self._lock:
            rows = self._db.execute("SELECT DISTINCT round FROM entries").fetchall()
        return {r for (r,) in rows}

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0]

    @property
    def nbytes(self) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COALESCE(SUM(nbytes), 0) FROM entries"
            ).fetchone()[0]

    def counters(self) -> dict[str, int]:
        """Lifetime counts: ``dropped_full``, ``expired``, ``acked``, ``nacked``."""
        with self._lock:
            rows = self._db.execute("SELECT key, value FROM meta").fetchall()
        return {k: v for k, v in rows if k != "next_seq"}

    def get_meta(self, key: str, default: int = -1) -> int:
        with self._lock:
            row = self._db.execute(
                "SELECT value FROM meta WHERE key = ?", ("user:" + key,)
            ).fetchone()
        return default if row is None else row[0]

    def set_meta(self, key: str, value: int) -> None:
        """Store a small durable integer (e.g. the last round trained)."""
        with self._tx():
            self._db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                ("user:" + key, int(value)),
            )


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the outbox lock."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock) -> None:
        self._db = db
        self._lock = lock

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        finally:
            self._lock.release()
