"""The daemon's durable state: a journal of accepted updates and checkpoints.

In the state directory:

- ``journal-<round>.log``: an append-only log of the updates accepted in that
  round, one record per update (``agent, round, seq``, the sample count and
  staleness it was aggregated with, and its UPDATE body bytes).  A batch of
  records is written and fsync'd before any of their ACKs is sent.  Each
  record is framed as ``<u32 length><u32 crc32><msgpack>``, so a record torn
  by a crash is recognised and cut off on restart; it was never ACKed.
- ``seen.log``: the ``(agent, round, seq)`` keys of every round already
  covered by a checkpoint, so that a late resend of an old update is still
  recognised as a duplicate after its round's log is gone.
- ``checkpoint.msgpack``: the global model, the server optimizer's state, the
  model version and the round in progress, written to a temporary file,
  fsync'd and renamed over the old one (and the directory fsync'd), so a
  reader finds either the old checkpoint or the new one, never a mix.

Recovery loads the checkpoint and replays ``journal-<its round>.log`` in
order.  A crash between the checkpoint rename and :meth:`Journal.release` is
harmless: the older round's log is not replayed, only its keys are kept.

An append-only file, not SQLite, holds the bodies: the journal is written
once, read only after a crash, and dropped whole each round, and a file
costs one write and one fsync per batch where SQLite's WAL added its own
checkpoints and page rewrites (about 3x slower in ``bench/ingest.py``).
"""

import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from agent._arrays import pack_array, unpack_array

CHECKPOINT_FORMAT = 1
_HEADER = struct.Struct("<II")
# Queued parts are written once past this: Linux caps a writev at IOV_MAX =
# 1024 buffers, and a record adds three.
_MAX_IOV = 1020
_MAX_RECORD_BYTES = 1 << 31


@dataclass(frozen=True, slots=True)
class JournalRow:
    agent: str
    round: int
    seq: int
    num_samples: int
    staleness: int
    body: bytes


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _frame(payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _records(path: Path) -> tuple[list[Any], int]:
    """The intact records of a log and the byte offset where they end."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    out, pos = [], 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        start, end = pos + _HEADER.size, pos + _HEADER.size + length
        if length > _MAX_RECORD_BYTES or end > len(data):
            break
        payload = data[start:end]
        if zlib.crc32(payload) != crc:
            break
        out.append(msgpack.unpackb(payload, raw=False))
        pos = end
    return out, pos


class Journal:
    """Accepted updates, durable before they are ACKed; see the module docstring."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._seen_path = self.dir / "seen.log"
        self._open: tuple[int, Any] | None = None
        self._queued: list = []  # record parts not yet written (see write)
        self._keys: dict[int, list[list]] = {}  # epoch -> keys appended this run
        self._dirty = False
        # Cut any torn tail now, so that new records follow intact ones.
        for path in [self._seen_path, *self.dir.glob("journal-*.log")]:
            _, good = _records(path)
            if path.exists() and path.stat().st_size != good:
                with open(path, "r+b") as f:
                    f.truncate(good)
                    os.fsync(f.fileno())

    def _log(self, epoch: int) -> Path:
        return self.dir / f"journal-{epoch}.log"

    def _epochs(self) -> list[int]:
        return sorted(
            int(p.stem.split("-", 1)[1]) for p in self.dir.glob("journal-*.log")
        )

    def close(self) -> None:
        if self._open is not None:
            self.sync()
            os.close(self._open[1])
            self._open = None

    def seen(self) -> set[tuple[str, int, int]]:
        """Every ``(agent, round, seq)`` ever accepted."""
        keys: set[tuple[str, int, int]] = set()
        for batch in _records(self._seen_path)[0]:
            keys.update((a, r, s) for a, r, s in batch)
        for epoch in self._epochs():
            keys.update(
                (rec[0], rec[1], rec[2]) for rec in _records(self._log(epoch))[0]
            )
        return keys

    def write(self, row: JournalRow, epoch: int) -> None:
        """Append one record for ``epoch``; durable only after :meth:`sync`.

        The record's parts (header, fields, body) are queued and written by
        :meth:`sync` in one ``os.writev`` for the whole batch, so a body is
        not copied again, and a batch costs one system call instead of one
        per record.  The queued bodies stay referenced until then; the
        daemon bounds a batch's bytes (``_BATCH_BYTES``).
        """
        if self._open is None or self._open[0] != epoch:
            self.sync()
            self.close()
            path = self._log(epoch)
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._open = (epoch, fd)
            if new:
                _fsync_dir(self.dir)
        prefix = b"\x96" + b"".join(
            msgpack.packb(v)
            for v in (row.agent, row.round, row.seq, row.num_samples, row.staleness)
        ) + _bin_header(len(row.body))  # fmt: skip
        length = len(prefix) + len(row.body)
        crc = zlib.crc32(row.body, zlib.crc32(prefix))
        self._queued += (_HEADER.pack(length, crc), prefix, row.body)
        if len(self._queued) > _MAX_IOV:
            self._flush()
        self._dirty = True
        self._keys.setdefault(epoch, []).append([row.agent, row.round, row.seq])

    def _flush(self) -> None:
        """Write the queued record parts to the open log."""
        parts, self._queued = self._queued, []
        if parts:
            _write_all(self._open[1], parts)

    def sync(self) -> None:
        """Make every record written so far durable (one writev, one fsync)."""
        if self._open is not None:
            self._flush()
        if self._dirty and self._open is not None:
            os.fsync(self._open[1])
        self._dirty = False

    def append(self, rows: list[tuple[JournalRow, int]]) -> None:
        """Write ``(row, epoch)`` records and sync them."""
        for row, epoch in rows:
            self.write(row, epoch)
        self.sync()

    def replay(self, epoch: int) -> Iterator[JournalRow]:
        """The records accepted in ``epoch``, in the order they were accepted."""
        for rec in _records(self._log(epoch))[0]:
            yield JournalRow(*rec)

    def release(self, epoch: int) -> None:
        """Keep only the keys of every round up to ``epoch``; drop their logs."""
        if self._open is not None and self._open[0] <= epoch:
            self.close()
        self.release_files(epoch, self.take_keys(epoch))

    def take_keys(self, epoch: int) -> dict[int, list[list]]:
        """Hand over the keys this process wrote for rounds up to ``epoch``.

        Called by the thread that writes the journal, so that
        :meth:`release_files` can run in another one while new rounds are
        written.
        """
        return {e: self._keys.pop(e) for e in list(self._keys) if e <= epoch}

    def release_files(self, epoch: int, keys: dict[int, list[list]]) -> None:
        """Append the keys of the logs up to ``epoch`` to ``seen.log``; drop them."""
        self.begin_release(epoch, keys).commit()

    def begin_release(self, epoch: int, keys: dict[int, list[list]]) -> "_Pending":
        """Write what :meth:`release_files` writes; its ``commit()`` syncs, unlinks.

        ``keys`` are those :meth:`take_keys` returned; every log is read back
        too, since a round's log may hold records of an earlier process.
        ``commit()`` is a few system calls and touches no open log, so it may
        run in another thread beside
        :meth:`write` for a later epoch.  Keys in ``seen.log`` before the
        checkpoint that covers them are harmless: replay does not read them,
        and ``seen()`` counts the open round's log anyway.
        """
        done = [self._log(e) for e in self._epochs() if e <= epoch]
        flat = []
        for e in self._epochs():
            if e > epoch:
                continue
            # The log also holds what an earlier process (before a crash and
            # restart in the same round) accepted: read it back, and add the
            # keys this process wrote, so no accepted key is forgotten.
            on_disk = [[r[0], r[1], r[2]] for r in _records(self._log(e))[0]]
            known = {tuple(k) for k in on_disk}
            flat.extend(on_disk)
            flat.extend(k for k in keys.get(e, ()) if tuple(k) not in known)
        fd = None
        if flat:
            fd = os.open(self._seen_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            _write_all(fd, [_frame(msgpack.packb(flat, use_bin_type=True))])
        # No fsync of the directory after the unlinks: a log whose unlink is
        # lost in a crash is older than the checkpoint, so it is never
        # replayed, and its keys are already durable in seen.log.
        return _Pending(fd, None, None, done)

    def drop_after(self, epoch: int) -> list[int]:
        """Delete the logs of rounds after ``epoch``; return their epochs.

        The daemon ACKs nothing of a round before the checkpoint that opens
        it is durable, so such logs hold only unacknowledged records (written
        while that checkpoint was being saved when the daemon died); their
        agents still hold the updates and resend them.
        """
        later = [e for e in self._epochs() if e > epoch]
        for e in later:
            self._log(e).unlink()
        if later:
            _fsync_dir(self.dir)
        return later


def _write_all(fd: int, parts: list) -> None:
    total = sum(len(p) for p in parts)
    done = os.writev(fd, parts)
    if done != total:  # a short write: finish it byte by byte
        rest = b"".join(parts)[done:]
        while rest:
            rest = rest[os.write(fd, rest) :]


class _Pending:
    """File work written to the page cache whose ``commit()`` makes it durable.

    ``commit()`` is only system calls (fsync the file, close it, rename it
    into place, fsync the directory, unlink what it replaces), so a second
    thread can run it while the daemon's thread goes on with the GIL.
    """

    def __init__(
        self,
        fd: int | None,
        tmp: Path | None,
        final: Path | None,
        unlink: list[Path],
    ) -> None:
        self.fd, self.tmp, self.final, self.unlink = fd, tmp, final, unlink

    def commit(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None
        if self.tmp is not None:
            os.replace(self.tmp, self.final)
            # The rename is durable only once the directory entry is on disk.
            _fsync_dir(self.final.parent)
        for path in self.unlink:
            path.unlink(missing_ok=True)


@dataclass
class Checkpoint:
    """What a restart needs besides the journal."""

    round: int
    version: int
    rounds_closed: int
    round_opened_s: float
    model: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]


def _bin_header(n: int) -> bytes:
    """msgpack's bin 8/16/32 header (the Packer has none to call)."""
    if n < 1 << 8:
        return b"\xc4" + struct.pack(">B", n)
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


def write_checkpoint(path: str | Path, cp: Checkpoint) -> int:
    """Atomically replace ``path`` with ``cp``; return the bytes written."""
    pending, written = begin_checkpoint(path, cp)
    pending.commit()
    return written


def begin_checkpoint(path: str | Path, cp: Checkpoint) -> tuple[_Pending, int]:
    """Write ``cp`` to a temporary file; ``commit()`` the result to install it.

    Until the commit a reader still finds the old checkpoint.  The arrays
    are copied from their own buffers into the file in one ``writev`` (the
    msgpack headers written by hand), so it needs no second copy of the
    model in memory, and once this returns the model may change.
    """
    path = Path(path)
    packer = msgpack.Packer(use_bin_type=True)
    tmp = path.with_name(path.name + ".tmp")
    parts: list[bytes | memoryview] = []
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        put = parts.append

        def put_tensors(tensors: dict[str, np.ndarray]) -> None:
            put(packer.pack_map_header(len(tensors)))
            for name, array in tensors.items():
                dtype, shape, buf = pack_array(array)
                put(packer.pack(name))
                put(packer.pack_array_header(3))
                put(packer.pack(dtype))
                put(packer.pack(shape))
                put(_bin_header(len(buf)))
                put(buf)

        put(packer.pack_map_header(7))
        for key in ("format", "round", "version", "rounds_closed", "round_opened_s"):
            value = CHECKPOINT_FORMAT if key == "format" else getattr(cp, key)
            put(packer.pack(key))
            put(packer.pack(value))
        put(packer.pack("model"))
        put_tensors(cp.model)
        put(packer.pack("optimizer_state"))
        put_tensors(cp.optimizer_state)
        # writev takes at most IOV_MAX (1024) buffers at a time.
        for start in range(0, len(parts), 1024):
            _write_all(fd, parts[start : start + 1024])
    except BaseException:
        os.close(fd)
        raise
    return _Pending(fd, tmp, path, []), sum(len(p) for p in parts)


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
